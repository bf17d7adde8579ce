//! Container isolation signals: namespace transitions (clone with CLONE_NEW*, and setns or
//! unshare at the syscall in the strict set), namespace drift (a container process found in
//! namespaces that are not its container's), and one process reaching into another (ptrace,
//! process_vm_*, /proc/<pid>/ files).
//!
//! A container's namespaces are those of the first process seen in its cgroup; a namespace
//! inode is owned by the container (or host) whose baseline holds it, which names the target
//! of a transition into someone else's namespaces.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use sidewall_common::{Namespaces, access_op};

use crate::process::ProcEntry;

/// A container's (or the host's) namespaces and the first process seen with them.
#[derive(Clone)]
struct Baseline {
    ns: Namespaces,
    first: Arc<ProcEntry>,
}

#[derive(Debug)]
pub enum IsoEvent {
    Namespace {
        owner: Arc<ProcEntry>,
        operation: &'static str,
        before: Namespaces,
        after: Namespaces,
        result: String,
        target: Option<Arc<ProcEntry>>,
        target_host: bool,
    },
    Access {
        owner: Arc<ProcEntry>,
        access: &'static str,
        target: Option<Arc<ProcEntry>>,
        path: String,
        cross: bool,
    },
}

/// Bounds on what is remembered.
const MAX_BASELINES: usize = 65_536;

#[derive(Default)]
pub struct Isolation {
    baselines: HashMap<u64, Baseline>,
    /// Namespace inode -> cgroup id of the container whose baseline holds it.
    owners: HashMap<u32, u64>,
    host: Option<Baseline>,
    /// Namespaces last reported per pid: one change is reported once.
    reported: HashMap<u32, Namespaces>,
    /// Pids seen in their container's own namespaces. Only such a process (or its child) can
    /// drift: the runtime's setup processes (runc init) sit in the container's cgroup with the
    /// host's namespaces before they join the container's, and are not breakouts.
    home: HashSet<u32>,
}

/// The namespace types that differ, by the names users know them by.
pub fn changed(a: &Namespaces, b: &Namespaces) -> Vec<&'static str> {
    let pairs = [
        ("mnt", a.mnt != b.mnt),
        ("net", a.net != b.net),
        ("pid", a.pid != b.pid || a.pid_for_children != b.pid_for_children),
        ("uts", a.uts != b.uts),
        ("ipc", a.ipc != b.ipc),
        ("user", a.user != b.user),
        ("cgroup", a.cgroup != b.cgroup),
        ("time", a.time != b.time || a.time_for_children != b.time_for_children),
    ];
    pairs.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect()
}

fn inodes(ns: &Namespaces) -> [u32; 10] {
    [
        ns.uts,
        ns.ipc,
        ns.mnt,
        ns.pid,
        ns.pid_for_children,
        ns.net,
        ns.time,
        ns.time_for_children,
        ns.cgroup,
        ns.user,
    ]
}

pub fn errno_name(ret: i64) -> String {
    if ret >= 0 {
        return "success".into();
    }
    match -ret {
        1 => "EPERM".into(),
        9 => "EBADF".into(),
        12 => "ENOMEM".into(),
        22 => "EINVAL".into(),
        28 => "ENOSPC".into(),
        38 => "ENOSYS".into(),
        13 => "EACCES".into(),
        e => format!("errno {e}"),
    }
}

impl Isolation {
    /// The host's namespaces (those of pid 1, or of this daemon when pid 1's are unreadable).
    pub fn set_host(&mut self, first: Arc<ProcEntry>, ns: Namespaces) {
        self.host = Some(Baseline { ns, first });
    }

    /// Whether the process, or its parent, was seen inside its container's own namespaces.
    pub fn from_home(&self, entry: &ProcEntry) -> bool {
        self.home.contains(&entry.process.pid)
            || entry.parent.as_ref().is_some_and(|p| self.home.contains(&p.process.pid))
    }

    /// Whether `pid` was seen inside its container's own namespaces.
    pub fn is_home(&self, pid: u32) -> bool {
        self.home.contains(&pid)
    }

    /// The host's pid namespace inode, when known.
    pub fn host_pidns(&self) -> Option<u32> {
        self.host.as_ref().map(|h| h.ns.pid)
    }

    /// Learns a container's baseline from the first process seen in its cgroup with a mount
    /// namespace of its own. (The runtime's `runc init` runs in the container's cgroup with the
    /// host's namespaces before it builds the container's; it is not the container.)
    /// Returns whether this set the container's baseline.
    pub fn observe(&mut self, entry: &Arc<ProcEntry>, ns: &Namespaces, in_container: bool) -> bool {
        let cgroup = entry.process.cgroup_id;
        let host_mnt = self.host.as_ref().map(|h| h.ns.mnt);
        if !in_container || ns.mnt == 0 || host_mnt == Some(ns.mnt) || self.baselines.contains_key(&cgroup) {
            return false;
        }
        // runc init enters the cgroup with the mounts of the runtime that started it, which
        // need not be pid 1's (a runtime in a mount namespace of its own, or pid 1 unreadable
        // and this daemon's own mounts taken for the host's): that is the runtime, not the
        // container.
        let runtime_mounts = entry
            .parent
            .as_ref()
            .filter(|p| p.process.cgroup_id != cgroup)
            .and_then(|p| p.process.namespaces.as_ref())
            .is_some_and(|p| p.mnt == ns.mnt);
        if runtime_mounts {
            return false;
        }
        if self.baselines.len() >= MAX_BASELINES {
            self.baselines.clear();
            self.owners.clear();
        }
        let host = self.host.as_ref().map(|h| inodes(&h.ns)).unwrap_or_default();
        for inode in inodes(ns) {
            // The host's own namespaces stay the host's, even in containers that share them.
            // Inode numbers are reused once a namespace is gone: the newest owner wins.
            if inode != 0 && !host.contains(&inode) {
                self.owners.insert(inode, cgroup);
            }
        }
        self.baselines.insert(cgroup, Baseline { ns: *ns, first: entry.clone() });
        self.home.insert(entry.process.pid);
        true
    }

    /// A container process in namespaces that are not its container's, reported once. Only a
    /// process seen at home (or the child of one) can drift.
    pub fn drift(&mut self, entry: &Arc<ProcEntry>, ns: &Namespaces, in_container: bool) -> Option<IsoEvent> {
        if !in_container || ns.mnt == 0 {
            return None;
        }
        let base = self.baselines.get(&entry.process.cgroup_id)?.ns;
        let pid = entry.process.pid;
        if base == *ns {
            self.home.insert(pid);
            return None;
        }
        let parent = entry.parent.as_ref().map(|p| p.process.pid);
        let from_home = self.home.contains(&pid) || parent.is_some_and(|p| self.home.contains(&p));
        if !from_home || self.reported.get(&pid) == Some(ns) {
            return None;
        }
        self.reported.insert(pid, *ns);
        // A child inherits its parent's drift; the parent's report covers it.
        if parent.is_some_and(|p| self.reported.get(&p) == Some(ns)) {
            return None;
        }
        Some(self.namespace_event(entry, "drift", base, *ns, "success".into()))
    }

    /// clone(CLONE_NEW*) by a container process: the child's namespaces differ from its
    /// parent's. (Runtimes and host services create namespaces all the time; those are not
    /// reported here.)
    pub fn fork(
        &mut self,
        child: &Arc<ProcEntry>,
        parent_ns: &Namespaces,
        child_ns: &Namespaces,
        killed: bool,
    ) -> Option<IsoEvent> {
        let parent_home = child.parent.as_ref().is_some_and(|p| self.home.contains(&p.process.pid));
        // A clone the kernel killed for is reported even from a parent not known to be at home.
        if !(parent_home || killed) || parent_ns.mnt == 0 || child_ns.mnt == 0 {
            return None;
        }
        if parent_ns == child_ns {
            self.home.insert(child.process.pid);
            return None;
        }
        self.reported.insert(child.process.pid, *child_ns);
        Some(self.namespace_event(child, "clone", *parent_ns, *child_ns, "success".into()))
    }

    /// setns or unshare at the syscall.
    pub fn transition(
        &mut self,
        entry: &Arc<ProcEntry>,
        operation: &'static str,
        before: Namespaces,
        after: Namespaces,
        ret: i64,
    ) -> IsoEvent {
        if ret == 0 {
            self.reported.insert(entry.process.pid, after);
        }
        self.namespace_event(entry, operation, before, after, errno_name(ret))
    }

    /// `target_cgroup`: the target's container as the kernel resolved it (0: unknown), which
    /// decides whether the access crosses containers even when no target process is known.
    pub fn access(
        &mut self,
        owner: Arc<ProcEntry>,
        op: u32,
        target: Option<Arc<ProcEntry>>,
        target_cgroup: u64,
        path: String,
    ) -> IsoEvent {
        let access = match op {
            access_op::PTRACE_ATTACH => "ptrace_attach",
            access_op::PTRACE_SEIZE => "ptrace_seize",
            access_op::VM_READV => "process_vm_readv",
            access_op::VM_WRITEV => "process_vm_writev",
            access_op::FOREIGN_FILE => "proc_foreign_file",
            _ => "proc_open",
        };
        let target_cgroup = if target_cgroup != 0 {
            target_cgroup
        } else {
            target.as_ref().map_or(0, |t| t.process.cgroup_id)
        };
        let cross = target_cgroup != 0 && target_cgroup != owner.process.cgroup_id;
        IsoEvent::Access { owner, access, target, path, cross }
    }

    /// A container's cgroup was removed: its namespaces are gone (and their inode numbers
    /// free for reuse by others).
    pub fn forget_cgroup(&mut self, cgroup: u64) {
        if self.baselines.remove(&cgroup).is_some() {
            self.owners.retain(|_, c| *c != cgroup);
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.reported.remove(&pid);
        self.home.remove(&pid);
    }

    fn namespace_event(
        &self,
        entry: &Arc<ProcEntry>,
        operation: &'static str,
        before: Namespaces,
        after: Namespaces,
        result: String,
    ) -> IsoEvent {
        let (target, target_host) = self.target(entry.process.cgroup_id, &before, &after);
        IsoEvent::Namespace { owner: entry.clone(), operation, before, after, result, target, target_host }
    }

    /// Whose namespaces were entered: another container's, or the host's.
    fn target(
        &self,
        own_cgroup: u64,
        before: &Namespaces,
        after: &Namespaces,
    ) -> (Option<Arc<ProcEntry>>, bool) {
        let entered: HashSet<u32> =
            inodes(after).into_iter().filter(|i| *i != 0 && !inodes(before).contains(i)).collect();
        let other = entered.iter().find_map(|i| {
            let cgroup = *self.owners.get(i)?;
            (cgroup != own_cgroup).then(|| self.baselines.get(&cgroup).map(|b| b.first.clone()))?
        });
        if other.is_some() {
            return (other, false);
        }
        match &self.host {
            Some(h) if entered.iter().any(|i| inodes(&h.ns).contains(i)) => (Some(h.first.clone()), true),
            _ => (None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Clock, process::ProcessCache};
    use sidewall_common::Header;

    fn ns(base: u32) -> Namespaces {
        Namespaces {
            uts: base,
            ipc: base + 1,
            mnt: base + 2,
            pid: base + 3,
            pid_for_children: base + 3,
            net: base + 4,
            time: 1,
            time_for_children: 1,
            cgroup: base + 5,
            user: 2,
        }
    }

    fn entry(cache: &mut ProcessCache, pid: u32, ppid: u32, cgroup: u64) -> Arc<ProcEntry> {
        cache.lookup(&Header { pid, ppid, cgroup_id: cgroup, ..Default::default() })
    }

    #[test]
    fn runc_init_with_the_runtimes_mounts_is_no_baseline() {
        let mut c = ProcessCache::new("n", Clock::new(), std::time::Duration::from_secs(1));
        let mut iso = Isolation::default();
        // The host as this daemon sees it (pid 1 unreadable: its own, private mounts).
        iso.set_host(entry(&mut c, 1, 0, 1), ns(100));
        // The runtime, on the host, in mounts that are not the daemon's.
        let runtime = c.lookup(&Header { pid: 50, ppid: 1, cgroup_id: 1, ns: ns(500), ..Default::default() });
        // runc init execs in the container's cgroup, still with the runtime's mounts.
        let init = c.lookup(&Header { pid: 51, ppid: 50, cgroup_id: 40, ns: ns(500), ..Default::default() });
        assert!(Arc::ptr_eq(init.parent.as_ref().expect("parent"), &runtime));
        iso.observe(&init, &ns(500), true);
        // The container's first process, in the namespaces runc built.
        let shell = c.lookup(&Header { pid: 52, ppid: 51, cgroup_id: 40, ns: ns(300), ..Default::default() });
        iso.observe(&shell, &ns(300), true);
        assert!(iso.is_home(52), "the container's process is at home");
        assert!(!iso.is_home(51), "runc init is not");
    }

    #[test]
    fn drift_into_a_sibling_container_names_it_once() {
        let mut c = ProcessCache::new("n", Clock::new(), std::time::Duration::from_secs(1));
        let mut iso = Isolation::default();
        iso.set_host(entry(&mut c, 1, 0, 1), ns(100));
        let (app, side) = (entry(&mut c, 10, 1, 20), entry(&mut c, 30, 1, 40));
        iso.observe(&app, &ns(200), true);
        iso.observe(&side, &ns(300), true);
        assert!(iso.drift(&side, &ns(300), true).is_none(), "at home");
        let mut entered = ns(300);
        entered.mnt = ns(200).mnt;
        let ev = iso.drift(&side, &entered, true).expect("drift");
        let IsoEvent::Namespace { operation, target, target_host, before, after, .. } = ev else { panic!() };
        assert_eq!((operation, target_host), ("drift", false));
        assert_eq!(target.map(|t| t.process.pid), Some(10), "the app container's first process");
        assert_eq!(changed(&before, &after), ["mnt"]);
        assert!(iso.drift(&side, &entered, true).is_none(), "reported once");
        let setup = entry(&mut c, 35, 1, 40);
        assert!(
            iso.drift(&setup, &ns(100), true).is_none(),
            "runtime setup in host namespaces, never at home"
        );
        let fresh = entry(&mut c, 70, 1, 80);
        iso.observe(&fresh, &ns(100), true);
        iso.observe(&fresh, &ns(400), true);
        assert!(
            iso.drift(&fresh, &ns(400), true).is_none(),
            "the host's namespaces are no container's baseline"
        );
        let child = entry(&mut c, 31, 30, 40);
        assert!(iso.drift(&child, &entered, true).is_none(), "inherited by a child");
    }

    #[test]
    fn entering_host_namespaces_is_marked() {
        let mut c = ProcessCache::new("n", Clock::new(), std::time::Duration::from_secs(1));
        let mut iso = Isolation::default();
        iso.set_host(entry(&mut c, 1, 0, 1), ns(100));
        let side = entry(&mut c, 30, 1, 40);
        iso.observe(&side, &ns(300), true);
        let mut after = ns(300);
        after.net = ns(100).net;
        let IsoEvent::Namespace { target_host, result, .. } =
            iso.transition(&side, "setns", ns(300), after, 0)
        else {
            panic!()
        };
        assert!(target_host);
        assert_eq!(result, "success");
        assert_eq!(errno_name(-1), "EPERM");
    }

    #[test]
    fn clone_with_new_namespaces() {
        let mut c = ProcessCache::new("n", Clock::new(), std::time::Duration::from_secs(1));
        let mut iso = Isolation::default();
        iso.set_host(entry(&mut c, 1, 0, 1), ns(900));
        let parent = entry(&mut c, 49, 1, 7);
        iso.observe(&parent, &ns(100), true);
        let child = entry(&mut c, 50, 49, 7);
        let mut child_ns = ns(100);
        child_ns.user = 9;
        let ev = iso.fork(&child, &ns(100), &child_ns, false).expect("clone event");
        let IsoEvent::Namespace { before, after, .. } = ev else { panic!() };
        assert_eq!(changed(&before, &after), ["user"]);
        let setup = entry(&mut c, 60, 1, 8);
        assert!(
            iso.fork(&setup, &ns(100), &child_ns, false).is_none(),
            "parent never at home: runtime setup"
        );
        // Unless the kernel killed the caller for it: the parent's history may have been lost.
        let lost = entry(&mut c, 61, 1, 8);
        assert!(iso.fork(&lost, &ns(100), &child_ns, true).is_some(), "a kill is always reported");
    }
}
