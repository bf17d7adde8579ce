//! Workload identity: cgroup id -> cgroup path -> container -> pod.
//!
//! The cgroup path says the runtime, the container id, and for Kubernetes the pod uid and QoS
//! class (`cgroup_path`). Names come from the Kubernetes API (`kubernetes`) or, for podman
//! pods, from podman's on-disk state (`podman`). Paths are learned when the runtime creates the
//! cgroup (the cgroup_mkdir sensor) or looked up by id on first sight (`cgroups`).

pub mod cgroup_path;
pub mod cgroups;
pub mod kubernetes;
pub mod podman;
pub mod roles;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use sidewall_proto::v1 as pb;

use self::{cgroup_path::CgroupIdentity, cgroups::CgroupFs, kubernetes::KubeIndex, podman::PodmanStore};

/// Who a cgroup belongs to. Shared by every event of that cgroup.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Workload {
    pub pod: Option<pb::Pod>,
    pub container: Option<pb::Container>,
}

/// Bound on remembered cgroups; past it the cache is rebuilt on demand (lookups are cheap).
const MAX_CGROUPS: usize = 65_536;
/// How soon to ask again when a source did not know a container yet.
const RETRY: Duration = Duration::from_millis(500);

/// Where names come from, besides the cgroup path.
#[derive(Default)]
pub struct Sources {
    pub cgroups: Option<CgroupFs>,
    pub kube: Option<Arc<KubeIndex>>,
    pub podman: Option<PodmanStore>,
}

struct Cached {
    workload: Arc<Workload>,
    /// KubeIndex generation the entry was built at.
    generation: u64,
    /// Set when names were missing: look again after this instant.
    retry_at: Option<Instant>,
}

pub struct Identity {
    sources: Sources,
    /// Paths from cgroup_mkdir records, so lookups need no syscall.
    paths: HashMap<u64, String>,
    cache: HashMap<u64, Cached>,
    unknown: Arc<Workload>,
    /// Names a runtime hook gave for cgroups whose container the sources did not know yet
    /// (from the OCI annotations); the sources' names win when they have them.
    hints: HashMap<u64, Workload>,
}

impl Identity {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            paths: HashMap::new(),
            cache: HashMap::new(),
            unknown: Arc::new(Workload::default()),
            hints: HashMap::new(),
        }
    }

    /// The id of the cgroup at `path` (relative to the cgroup2 mount): its directory's inode.
    pub fn cgroup_id_of(&self, path: &str) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let fs = self.sources.cgroups.as_ref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup v2 filesystem is mounted")
        })?;
        Ok(std::fs::metadata(fs.root().join(path.trim_start_matches('/')))?.ino())
    }

    /// Names for `cgroup` from its runtime, used where the sources have none.
    pub fn hint(&mut self, cgroup: u64, names: Workload) {
        if self.hints.len() >= MAX_CGROUPS {
            self.hints.clear();
        }
        self.hints.insert(cgroup, names);
        self.cache.remove(&cgroup);
    }

    /// Whether the names of `cgroup` are final (false: a source may still name it better).
    pub fn complete(&self, cgroup: u64) -> bool {
        self.cache.get(&cgroup).is_some_and(|c| c.retry_at.is_none())
    }

    /// A cgroup created by a runtime: remember its path.
    pub fn learn(&mut self, id: u64, path: &str) {
        if self.paths.len() >= MAX_CGROUPS {
            self.paths.clear();
        }
        self.paths.insert(id, path.to_string());
    }

    /// A removed cgroup.
    pub fn forget(&mut self, id: u64) {
        self.paths.remove(&id);
        self.cache.remove(&id);
        self.hints.remove(&id);
    }

    /// The workload of a cgroup id. An id whose cgroup is already gone gives an empty workload
    /// and is not cached, so a later lookup can still succeed.
    pub fn resolve(&mut self, cgroup_id: u64) -> Arc<Workload> {
        let generation = self.sources.kube.as_ref().map_or(0, |k| k.generation());
        if let Some(c) = self.cache.get(&cgroup_id)
            && c.generation == generation
            && c.retry_at.is_none_or(|t| Instant::now() < t)
        {
            return c.workload.clone();
        }
        let Some(path) = self.path_of(cgroup_id) else {
            return self.unknown.clone();
        };
        let (mut workload, complete) = self.workload_of_path(&path);
        if let Some(h) = self.hints.get(&cgroup_id) {
            fill_names(&mut workload, h);
        }
        let workload = Arc::new(workload);
        if self.cache.len() >= MAX_CGROUPS {
            self.cache.clear();
        }
        let retry_at = (!complete).then(|| Instant::now() + RETRY);
        self.cache.insert(cgroup_id, Cached { workload: workload.clone(), generation, retry_at });
        workload
    }

    /// The processes in cgroup `id` now (its `cgroup.procs`), empty if it is gone or the
    /// cgroup2 mount is unknown.
    pub fn procs_of(&self, id: u64) -> Vec<u32> {
        let (Some(fs), Some(path)) = (self.sources.cgroups.as_ref(), self.path_of(id)) else {
            return Vec::new();
        };
        let file = fs.root().join(path.trim_start_matches('/')).join("cgroup.procs");
        std::fs::read_to_string(file)
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn path_of(&self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        self.sources.cgroups.as_ref()?.path_of(id)
    }

    /// The workload and whether its names are complete (false: ask the sources again later).
    pub fn workload_of_path(&self, path: &str) -> (Workload, bool) {
        let id = cgroup_path::parse(path);
        let mut w = base_workload(&id, path);
        let complete = match &mut w.container {
            Some(c) if !c.id.is_empty() => self.name_container(&id, c, &mut w.pod),
            // A pod-level cgroup (pause process): the pod may still be named.
            None => self.name_pod(&id, &mut w.pod),
            Some(_) => true,
        };
        (w, complete)
    }

    fn name_container(&self, id: &CgroupIdentity, c: &mut pb::Container, pod: &mut Option<pb::Pod>) -> bool {
        if let Some(kube) = &self.sources.kube {
            if let Some((p, k)) = kube.container_by_id(&c.id) {
                (c.name, c.image, c.role) = (k.name, k.image, k.role);
                *pod = Some(p);
                return true;
            }
            if let Some(p) = (!id.pod_uid.is_empty()).then(|| kube.pod_by_uid(&id.pod_uid)).flatten() {
                *pod = Some(p);
            }
        }
        if id.runtime == "podman"
            && let Some(m) = self.sources.podman.as_ref().and_then(|s| s.lookup(&c.id))
        {
            (c.name, c.image, c.role) = (m.name, m.image, m.role.to_string());
            if let Some(name) = m.pod_name {
                *pod = Some(pb::Pod {
                    // podman pods have no namespace; `kube play` manifests land in "default".
                    namespace: "default".into(),
                    name,
                    uid: id.podman_pod_id.clone(),
                    annotations: m.annotations.into_iter().collect(),
                    ..Default::default()
                });
            }
            return true;
        }
        // Names from the API, or podman's record of a container it is still creating, may
        // come a little after the container starts: ask again.
        self.sources.kube.is_none() && !(id.runtime == "podman" && self.sources.podman.is_some())
    }

    fn name_pod(&self, id: &CgroupIdentity, pod: &mut Option<pb::Pod>) -> bool {
        let Some(kube) = &self.sources.kube else {
            return true;
        };
        match kube.pod_by_uid(&id.pod_uid) {
            Some(p) => {
                *pod = Some(p);
                true
            }
            None => id.pod_uid.is_empty(),
        }
    }
}

/// Fills the names `w` lacks from `hint`.
fn fill_names(w: &mut Workload, hint: &Workload) {
    if let (Some(c), Some(h)) = (w.container.as_mut(), hint.container.as_ref())
        && c.name.is_empty()
    {
        c.name.clone_from(&h.name);
        if c.image.is_empty() {
            c.image.clone_from(&h.image);
        }
        if c.role.is_empty() {
            c.role.clone_from(&h.role);
        }
    }
    let Some(h) = hint.pod.as_ref() else { return };
    match w.pod.as_mut() {
        Some(p) if p.name.is_empty() => {
            let uid = std::mem::take(&mut p.uid);
            *p = h.clone();
            if !uid.is_empty() {
                p.uid = uid;
            }
        }
        Some(_) => {}
        None => w.pod = Some(h.clone()),
    }
}

/// What the cgroup path alone says.
fn base_workload(id: &CgroupIdentity, path: &str) -> Workload {
    let pod = (!id.pod_uid.is_empty()).then(|| pb::Pod { uid: id.pod_uid.clone(), ..Default::default() });
    let container = if !id.container_id.is_empty() {
        Some(pb::Container {
            id: id.container_id.clone(),
            runtime: id.runtime.into(),
            qos_class: id.qos_class.into(),
            cgroup_path: path.into(),
            ..Default::default()
        })
    } else if pod.is_none() {
        // Not in a container: the host.
        Some(pb::Container { role: "host".into(), cgroup_path: path.into(), ..Default::default() })
    } else {
        None
    };
    Workload { pod, container }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_container_paths() {
        let ident = Identity::new(Sources::default());
        let (host, complete) = ident.workload_of_path("/system.slice/sshd.service");
        assert!(complete);
        assert_eq!(host.container.expect("host container").role, "host");
        let id = "a".repeat(64);
        let (w, _) = ident.workload_of_path(&format!("/libpod_parent/{}/libpod-{id}", "b".repeat(64)));
        let c = w.container.expect("container");
        assert_eq!((c.id.as_str(), c.runtime.as_str()), (id.as_str(), "podman"));
    }

    #[test]
    fn learned_paths_resolve_without_the_filesystem() {
        let mut ident = Identity::new(Sources::default());
        let id = "c".repeat(64);
        ident.learn(77, &format!("/kubepods/burstable/pod0d3f7e1c-8a3b-4f2e-9c1d-2b5a6e7f8091/{id}"));
        let w = ident.resolve(77);
        assert_eq!(w.container.as_ref().map(|c| c.id.as_str()), Some(id.as_str()));
        assert_eq!(w.pod.as_ref().map(|p| p.uid.as_str()), Some("0d3f7e1c-8a3b-4f2e-9c1d-2b5a6e7f8091"));
        ident.forget(77);
        assert_eq!(*ident.resolve(77), Workload::default(), "forgotten and not on disk");
    }

    #[test]
    fn a_runtime_hint_names_what_the_sources_do_not() {
        let mut ident = Identity::new(Sources::default());
        let id = "d".repeat(64);
        ident.learn(78, &format!("/kubepods/besteffort/pod0d3f7e1c-8a3b-4f2e-9c1d-2b5a6e7f8091/{id}"));
        assert_eq!(ident.resolve(78).container.as_ref().map(|c| c.name.as_str()), Some(""));
        let hint = Workload {
            pod: Some(pb::Pod { name: "web".into(), namespace: "shop".into(), ..Default::default() }),
            container: Some(pb::Container {
                name: "proxy".into(),
                role: "sidecar".into(),
                ..Default::default()
            }),
        };
        ident.hint(78, hint);
        let w = ident.resolve(78);
        let c = w.container.as_ref().expect("container");
        assert_eq!((c.id.as_str(), c.name.as_str(), c.role.as_str()), (id.as_str(), "proxy", "sidecar"));
        let pod = w.pod.as_ref().expect("pod");
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        assert_eq!(pod.uid, "0d3f7e1c-8a3b-4f2e-9c1d-2b5a6e7f8091", "the path's uid is kept");
    }
}
