//! The daemon's side of the runtime hook (`sidewall-oci-hook`, see docs/runtime-hook.md).
//!
//! The runtime calls the hook when a container is created and waits for it before the entry
//! point runs; the hook asks `PrepareContainer`, which reaches the pipeline task (the one
//! owner of the policy engine) as a `Request` and is answered once the container's rule is in
//! the kernel. A hook that got no answer and lets the container start anyway (fail-open)
//! leaves an `UnguardedStart` record in the spool directory; `watch_spool` hands each record
//! to the pipeline, which reports it as an `unguarded_start` policy_alert.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use sidewall_common::enforce as bits;
use sidewall_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::{
    identity::{Identity, Workload, roles},
    policy::engine::PolicyEngine,
};

/// The answer to a prepare request, and whether its names are final (false: the Kubernetes
/// API may still name the pod better; the API handler asks again while the hook waits).
pub type Answer = Result<(pb::PrepareContainerResponse, bool), String>;

pub enum Request {
    Prepare { req: pb::PrepareContainerRequest, reply: oneshot::Sender<Answer> },
    Unguarded(pb::UnguardedStart),
}

/// Requests queued for the pipeline; a full queue makes the hook wait (and time out).
pub const QUEUE: usize = 256;

/// Compiles the rule of the container `req` describes into the kernel, and says which.
pub fn prepare(engine: &mut PolicyEngine, ids: &mut Identity, req: &pb::PrepareContainerRequest) -> Answer {
    let path = checked_path(&req.cgroup_path)?;
    let cgroup = ids.cgroup_id_of(path).map_err(|e| {
        format!(
            "container {}: cgroup {path}: {e} (is the hook run at the createRuntime stage?)",
            short(&req.container_id)
        )
    })?;
    ids.learn(cgroup, path);
    let mut names_from = "daemon";
    if !named(&ids.resolve(cgroup)) {
        match names_from_annotations(&req.annotations) {
            Some(w) => {
                ids.hint(cgroup, w);
                names_from = "annotations";
            }
            None => names_from = "none",
        }
    }
    let prepared = engine.prepare(cgroup, ids);
    let w = ids.resolve(cgroup);
    let resp = pb::PrepareContainerResponse {
        cgroup_id: cgroup,
        policy: prepared.policy,
        rule: prepared.rule,
        mode: prepared.mode.into(),
        enforced: flag_names(prepared.flags),
        names_from: names_from.into(),
        pod: w.pod.clone(),
        container: w.container.clone(),
    };
    tracing::info!(
        container = short(&req.container_id),
        cgroup,
        policy = %resp.policy,
        enforced = ?resp.enforced,
        names_from,
        "container prepared by the runtime hook"
    );
    Ok((resp, ids.complete(cgroup)))
}

/// The alert for a container that started without waiting for its rule.
pub fn unguarded_alert(
    engine: &PolicyEngine,
    ids: &mut Identity,
    rec: &pb::UnguardedStart,
) -> pb::PolicyAlert {
    let req = rec.container.clone().unwrap_or_default();
    let live = checked_path(&req.cgroup_path).ok().and_then(|p| Some((p, ids.cgroup_id_of(p).ok()?)));
    let (cgroup, w) = match live {
        Some((path, id)) => {
            ids.learn(id, path);
            if !named(&ids.resolve(id))
                && let Some(h) = names_from_annotations(&req.annotations)
            {
                ids.hint(id, h);
            }
            (id, (*ids.resolve(id)).clone())
        }
        // Gone already: what the hook knew.
        None => {
            let mut w = names_from_annotations(&req.annotations).unwrap_or_default();
            let c = w.container.get_or_insert_with(Default::default);
            (c.id, c.cgroup_path) = (req.container_id.clone(), req.cgroup_path.clone());
            (0, w)
        }
    };
    let process = pb::Process {
        pid: req.pid,
        cgroup_id: cgroup,
        pod: w.pod.clone(),
        container: w.container.clone(),
        ..Default::default()
    };
    let (policy, mode) = engine.governing(&process).unwrap_or_default();
    let name = w.container.as_ref().map(|c| c.name.as_str()).filter(|n| !n.is_empty());
    let pod = w.pod.as_ref().map(|p| format!(" of pod {}/{}", p.namespace, p.name)).unwrap_or_default();
    let when =
        rec.time.and_then(|t| t.to_datetime()).map(|t| format!(" at {}", t.to_rfc3339())).unwrap_or_default();
    pb::PolicyAlert {
        rule_id: "unguarded_start".into(),
        severity: "high".into(),
        // Impair Defenses: the container ran while its guard was not in place.
        mitre_technique: "T1562".into(),
        policy,
        action: "alert".into(),
        message: format!(
            "container {}{pod} started{when} without its rule in the kernel: the runtime hook got no answer from sidewalld ({}) and lets containers start (fail-open)",
            name.unwrap_or(short(&req.container_id)),
            if rec.reason.is_empty() { "no reason given" } else { &rec.reason },
        ),
        process: Some(process),
        mode: mode.into(),
        trigger: pb::EventType::Unspecified as i32,
        ..Default::default()
    }
}

/// Hands the records the hook left in `dir` to the pipeline, once a second, and removes each
/// one handed over. A record that cannot be read is renamed `*.invalid` and reported once.
pub async fn watch_spool(dir: PathBuf, tx: mpsc::Sender<Request>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (path, rec) in read_spool(&dir) {
            if tx.send(Request::Unguarded(rec)).await.is_err() {
                return;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a handled unguarded-start record");
            }
        }
    }
}

/// The valid records in `dir` (oldest name first); invalid ones are set aside.
pub fn read_spool(dir: &Path) -> Vec<(PathBuf, pb::UnguardedStart)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<pb::UnguardedStart>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(rec) => out.push((path, rec)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable unguarded-start record set aside");
                let _ = std::fs::rename(&path, path.with_extension("invalid"));
            }
        }
    }
    out
}

/// A cgroup path relative to the cgroup2 mount, without a way out of it.
fn checked_path(path: &str) -> Result<&str, String> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!(
            "cgroup_path {path:?}: expected an absolute cgroup v2 path, as in /proc/PID/cgroup"
        ));
    }
    Ok(path)
}

fn named(w: &Workload) -> bool {
    w.container.as_ref().is_some_and(|c| !c.name.is_empty())
        && w.pod.as_ref().is_some_and(|p| !p.name.is_empty())
}

/// The names CRI-O and containerd put in a container's OCI annotations. podman (4.x `kube
/// play`) puts none there; the daemon reads podman's own storage instead.
pub fn names_from_annotations(a: &HashMap<String, String>) -> Option<Workload> {
    let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k)).cloned().unwrap_or_default();
    let pod_name = get(&["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"]);
    let namespace = get(&["io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace"]);
    let uid = get(&["io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"]);
    let name = get(&["io.kubernetes.container.name", "io.kubernetes.cri.container-name"]);
    let image = get(&["io.kubernetes.cri-o.ImageName", "io.kubernetes.cri.image-name"]);
    let kind = get(&["io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri.container-type"]);
    if pod_name.is_empty() && name.is_empty() {
        return None;
    }
    let role = if kind == "sandbox" {
        "infra"
    } else {
        roles::app_or_sidecar(a.get(roles::SIDECARS_ANNOTATION).map(String::as_str), &name, &image)
    };
    Some(Workload {
        pod: (!pod_name.is_empty()).then(|| pb::Pod { name: pod_name, namespace, uid, ..Default::default() }),
        container: Some(pb::Container { name, image, role: role.into(), ..Default::default() }),
    })
}

/// What the kernel enforces, by name.
pub fn flag_names(flags: u32) -> Vec<String> {
    [
        (bits::LOOPBACK, "loopback"),
        (bits::BIND, "bind"),
        (bits::EGRESS, "egress"),
        (bits::KILL_NAMESPACE, "kill_namespace"),
        (bits::SYSCTL, "loopback_routing"),
        (bits::KILL_RUNTIME_SOCKET, "kill_runtime_socket"),
        (bits::KILL_ACCESS, "kill_access"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn cri_o_and_containerd_annotations_name_the_workload() {
        let crio = map(&[
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", "0d3f7e1c-8a3b-4f2e-9c1d-2b5a6e7f8091"),
            ("io.kubernetes.container.name", "proxy"),
            ("io.kubernetes.cri-o.ContainerType", "container"),
            ("io.kubernetes.cri-o.ImageName", "docker.io/envoyproxy/envoy:v1.30"),
        ]);
        let w = names_from_annotations(&crio).expect("named");
        let (pod, c) = (w.pod.expect("pod"), w.container.expect("container"));
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        assert_eq!((c.name.as_str(), c.role.as_str()), ("proxy", "sidecar"));

        let containerd = map(&[
            ("io.kubernetes.cri.sandbox-name", "web"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.container-name", "app"),
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.image-name", "registry.local/shop/app:1"),
            ("sidewall.io/sidecars", "proxy"),
        ]);
        let w = names_from_annotations(&containerd).expect("named");
        assert_eq!(w.container.as_ref().map(|c| (c.name.as_str(), c.role.as_str())), Some(("app", "app")));
        let sandbox = map(&[
            ("io.kubernetes.cri.sandbox-name", "web"),
            ("io.kubernetes.cri.container-type", "sandbox"),
        ]);
        assert_eq!(
            names_from_annotations(&sandbox).and_then(|w| w.container).map(|c| c.role),
            Some("infra".into())
        );
    }

    #[test]
    fn podman_kube_play_annotations_name_nothing() {
        // What podman 4.3 `kube play` put in a container's config.json on this project's machines.
        let podman = map(&[
            ("io.container.manager", "libpod"),
            ("io.kubernetes.cri-o.ContainerType", "container"),
            (
                "io.kubernetes.cri-o.SandboxID",
                "fb9a95b4c79578ded8a2bd72637849fd67f45d91b8b268b0872ae7b1f6c15bfd",
            ),
            ("io.podman.annotations.privileged", "FALSE"),
        ]);
        assert_eq!(names_from_annotations(&podman), None);
    }

    #[test]
    fn cgroup_paths_must_stay_in_the_mount() {
        assert!(checked_path("/libpod_parent/a/libpod-b").is_ok());
        let e = checked_path("libpod_parent/x").expect_err("relative");
        assert!(e.contains("cgroup_path \"libpod_parent/x\""), "{e}");
        assert!(checked_path("/a/../../etc").is_err());
    }

    #[test]
    fn spool_records_are_read_and_bad_ones_set_aside() {
        let dir = tempfile::tempdir().expect("tmp");
        let rec = pb::UnguardedStart {
            container: Some(pb::PrepareContainerRequest {
                container_id: "c".repeat(64),
                cgroup_path: "/gone".into(),
                pid: 42,
                ..Default::default()
            }),
            reason: "no answer within 10 ms".into(),
            ..Default::default()
        };
        std::fs::write(dir.path().join("a.json"), serde_json::to_string(&rec).expect("json")).expect("write");
        std::fs::write(dir.path().join("b.json"), "{not json").expect("write");
        std::fs::write(dir.path().join("c.tmp"), "in progress").expect("write");
        let found = read_spool(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, rec);
        assert!(dir.path().join("b.invalid").exists());
        assert!(dir.path().join("c.tmp").exists(), "unfinished records are left alone");
    }

    #[test]
    fn flags_by_name() {
        assert_eq!(flag_names(bits::LOOPBACK | bits::KILL_NAMESPACE), ["loopback", "kill_namespace"]);
        assert!(flag_names(0).is_empty());
    }
}
