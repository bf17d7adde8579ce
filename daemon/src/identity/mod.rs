//! Workload identity: cgroup id -> cgroup path -> container (and, later, pod).
//!
//! Standalone mode knows what the cgroup path tells: the runtime, the container id, the
//! Kubernetes pod uid and QoS class. Processes outside any container are "host".

pub mod cgroup_path;
pub mod cgroups;

use std::{collections::HashMap, sync::Arc};

use sidewall_proto::v1 as pb;

use self::cgroups::CgroupFs;

/// Who a cgroup belongs to. Shared by every event of that cgroup.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Workload {
    pub pod: Option<pb::Pod>,
    pub container: Option<pb::Container>,
}

/// Bound on remembered cgroups; past it the map is rebuilt on demand (lookups are cheap).
const MAX_CGROUPS: usize = 65_536;

pub struct Identity {
    cgroups: Option<CgroupFs>,
    by_id: HashMap<u64, Arc<Workload>>,
    unknown: Arc<Workload>,
}

impl Identity {
    pub fn new(cgroups: Option<CgroupFs>) -> Self {
        Self {
            cgroups,
            by_id: HashMap::new(),
            unknown: Arc::new(Workload::default()),
        }
    }

    /// The workload of a cgroup id. Unknown ids (cgroup gone before we looked) give an empty
    /// workload; they are not cached, so a later lookup can still succeed.
    pub fn resolve(&mut self, cgroup_id: u64) -> Arc<Workload> {
        if let Some(w) = self.by_id.get(&cgroup_id) {
            return w.clone();
        }
        let Some(path) = self.cgroups.as_ref().and_then(|c| c.path_of(cgroup_id)) else {
            return self.unknown.clone();
        };
        if self.by_id.len() >= MAX_CGROUPS {
            self.by_id.clear();
        }
        let w = Arc::new(workload_of_path(&path));
        self.by_id.insert(cgroup_id, w.clone());
        w
    }

    /// Forgets a removed cgroup.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.by_id.remove(&cgroup_id);
    }
}

/// What a cgroup path alone says about its workload.
pub fn workload_of_path(path: &str) -> Workload {
    let id = cgroup_path::parse(path);
    let pod = (!id.pod_uid.is_empty()).then(|| pb::Pod {
        uid: id.pod_uid.clone(),
        ..Default::default()
    });
    let container = if id.container_id.is_empty() {
        // Not a container: host processes, or a pod's own cgroup (its pause/infra process).
        pod.is_none().then(|| pb::Container {
            role: "host".into(),
            cgroup_path: path.into(),
            ..Default::default()
        })
    } else {
        Some(pb::Container {
            id: id.container_id,
            runtime: id.runtime.into(),
            qos_class: id.qos_class.into(),
            cgroup_path: path.into(),
            ..Default::default()
        })
    };
    Workload { pod, container }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_container_paths() {
        let host = workload_of_path("/system.slice/sshd.service");
        assert_eq!(host.container.expect("host container").role, "host");
        let id = "a".repeat(64);
        let w = workload_of_path(&format!("/libpod_parent/{}/libpod-{id}", "b".repeat(64)));
        let c = w.container.expect("container");
        assert_eq!((c.id.as_str(), c.runtime.as_str()), (id.as_str(), "podman"));
    }
}
