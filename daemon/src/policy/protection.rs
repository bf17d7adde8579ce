//! How each container's rule reached the kernel, for the status model: through the runtime
//! hook (before the entry point ran, the runtime waited), at the cgroup's creation (the
//! daemon saw the mkdir; usually in time, never promised), or late (the daemon first saw one
//! of its processes: what ran before had no rule). Written by the policy engine, read by
//! `status`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use sidewall_proto::{Timestamp, v1 as pb};

use crate::identity::Workload;

/// Bound on the containers remembered; past it the oldest knowledge is dropped wholesale.
const MAX_CONTAINERS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Hook,
    Cgroup,
    Late,
}

impl Protection {
    pub fn name(self) -> &'static str {
        match self {
            Protection::Hook => "hook",
            Protection::Cgroup => "cgroup",
            Protection::Late => "late",
        }
    }
}

struct Entry {
    protection: Protection,
    since: SystemTime,
    /// Filled by `describe` once the cgroup is known to be a container's.
    workload: Option<(Option<pb::Pod>, pb::Container)>,
    policy: String,
}

#[derive(Default)]
pub struct Protections {
    by_cgroup: Mutex<HashMap<u64, Entry>>,
}

impl Protections {
    /// `cgroup`'s rule went in by way of `p`. The first way wins, except the hook: a rule the
    /// runtime waited for is one the container started under, whatever came first.
    pub fn protect(&self, cgroup: u64, p: Protection) {
        let mut map = self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CONTAINERS && !map.contains_key(&cgroup) {
            map.clear();
        }
        let e = map.entry(cgroup).or_insert(Entry {
            protection: p,
            since: SystemTime::now(),
            workload: None,
            policy: String::new(),
        });
        if p == Protection::Hook && e.protection != Protection::Hook {
            (e.protection, e.since) = (p, SystemTime::now());
        }
    }

    /// Names and policy as of the last compile; a cgroup that is no container's is dropped.
    pub fn describe(&self, cgroup: u64, w: &Workload, policy: &str) {
        let mut map = self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(&cgroup) else { return };
        match w.container.as_ref().filter(|c| !c.id.is_empty()) {
            Some(c) => {
                e.workload = Some((w.pod.clone(), c.clone()));
                e.policy = policy.to_string();
            }
            None => {
                map.remove(&cgroup);
            }
        }
    }

    pub fn forget(&self, cgroup: u64) {
        self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner()).remove(&cgroup);
    }

    pub fn get(&self, cgroup: u64) -> Option<Protection> {
        self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner()).get(&cgroup).map(|e| e.protection)
    }

    /// The containers described so far, by pod and container name.
    pub fn snapshot(&self) -> Vec<pb::ContainerProtection> {
        let map = self.by_cgroup.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<pb::ContainerProtection> = map
            .iter()
            .filter_map(|(cgroup, e)| {
                let (pod, container) = e.workload.clone()?;
                Some(pb::ContainerProtection {
                    cgroup_id: *cgroup,
                    pod,
                    container: Some(container),
                    protection: e.protection.name().into(),
                    policy: e.policy.clone(),
                    since: Some(timestamp(e.since)),
                })
            })
            .collect();
        let key = |c: &pb::ContainerProtection| {
            let pod = c.pod.as_ref().map(|p| (p.namespace.clone(), p.name.clone())).unwrap_or_default();
            (pod, c.container.as_ref().map(|c| c.name.clone()).unwrap_or_default(), c.cgroup_id)
        };
        out.sort_by_key(key);
        out
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str) -> Workload {
        Workload {
            pod: Some(pb::Pod { name: "web".into(), namespace: "default".into(), ..Default::default() }),
            container: Some(pb::Container { id: id.into(), name: "app".into(), ..Default::default() }),
        }
    }

    #[test]
    fn first_way_wins_but_the_hook_overrides() {
        let p = Protections::default();
        p.protect(7, Protection::Cgroup);
        p.protect(7, Protection::Late);
        assert_eq!(p.get(7), Some(Protection::Cgroup));
        p.protect(7, Protection::Hook);
        p.protect(7, Protection::Cgroup);
        assert_eq!(p.get(7), Some(Protection::Hook));
        p.protect(8, Protection::Late);
        assert_eq!(p.get(8), Some(Protection::Late));
    }

    #[test]
    fn only_described_containers_are_listed() {
        let p = Protections::default();
        p.protect(7, Protection::Hook);
        p.protect(8, Protection::Cgroup);
        p.protect(9, Protection::Cgroup);
        assert!(p.snapshot().is_empty(), "nothing described yet");
        p.describe(7, &container("a"), "default/guard");
        p.describe(8, &Workload::default(), "");
        let list = p.snapshot();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].protection.as_str(), list[0].policy.as_str()), ("hook", "default/guard"));
        assert_eq!(p.get(8), None, "not a container: dropped");
        p.forget(7);
        assert!(p.snapshot().is_empty());
    }
}
