//! Process cache in the spirit of Tetragon's: one entry per live pid, immutable once built,
//! shared by `Arc` so events and children reference it without copying. Exited processes stay
//! for a grace period (late events still resolve), then are evicted: memory is bounded by the
//! live processes, their ancestors, and the exits of the last grace period.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use sidewall_common::{Header, Namespaces, flags};
use sidewall_proto::v1 as pb;

use crate::clock::Clock;
use crate::kernel::decode::{Exec, absolute_binary};

/// How many ancestors a process_exec event carries at most.
pub const MAX_ANCESTORS: usize = 16;

#[derive(Debug)]
pub struct ProcEntry {
    /// The process as the API shows it, without workload identity (added per event, so that
    /// identity learned later still shows).
    pub process: pb::Process,
    pub parent: Option<Arc<ProcEntry>>,
    /// Boot-time ns the process (not this image) started, for start_time of later images.
    pub start_ns: u64,
}

impl ProcEntry {
    /// Parent first, then its parent, up to MAX_ANCESTORS.
    pub fn ancestors(&self) -> impl Iterator<Item = &Arc<ProcEntry>> {
        std::iter::successors(self.parent.as_ref(), |p| p.parent.as_ref()).take(MAX_ANCESTORS)
    }
}

/// Facts about a process read from /proc at start.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub start_ns: u64,
    pub binary: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub cgroup_id: u64,
    pub ns: Namespaces,
}

pub struct ProcessCache {
    node: String,
    clock: Clock,
    grace: Duration,
    by_pid: HashMap<u32, Arc<ProcEntry>>,
    exited: VecDeque<(Instant, u32, Arc<ProcEntry>)>,
}

pub fn exec_id(node: &str, ktime: u64, pid: u32) -> String {
    STANDARD.encode(format!("{node}:{ktime}:{pid}"))
}

pub fn namespaces(ns: &Namespaces) -> pb::Namespaces {
    pb::Namespaces {
        uts: ns.uts,
        ipc: ns.ipc,
        mnt: ns.mnt,
        pid: ns.pid,
        pid_for_children: ns.pid_for_children,
        net: ns.net,
        time: ns.time,
        time_for_children: ns.time_for_children,
        cgroup: ns.cgroup,
        user: ns.user,
    }
}

/// The inverse of `namespaces`: the kernel's form of the API's namespace inodes.
pub fn abi_namespaces(n: &pb::Namespaces) -> Namespaces {
    Namespaces {
        uts: n.uts,
        ipc: n.ipc,
        mnt: n.mnt,
        pid: n.pid,
        pid_for_children: n.pid_for_children,
        net: n.net,
        time: n.time,
        time_for_children: n.time_for_children,
        cgroup: n.cgroup,
        user: n.user,
    }
}

impl ProcessCache {
    pub fn new(node: impl Into<String>, clock: Clock, grace: Duration) -> Self {
        Self { node: node.into(), clock, grace, by_pid: HashMap::new(), exited: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Every entry, oldest process first.
    pub fn by_start(&self) -> Vec<Arc<ProcEntry>> {
        let mut all: Vec<Arc<ProcEntry>> = self.by_pid.values().cloned().collect();
        all.sort_by_key(|e| (e.start_ns, e.process.pid));
        all
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<ProcEntry>> {
        self.by_pid.get(&pid)
    }

    /// Seeds processes that existed before the daemon. Parents are linked when they are
    /// among the seeds, whatever the order they come in.
    pub fn seed(&mut self, mut seeds: Vec<Seed>) {
        // Parents start before their children, so start order inserts parents first.
        seeds.sort_by_key(|s| (s.start_ns, s.pid));
        for s in seeds {
            let parent = self.by_pid.get(&s.ppid).cloned();
            let process = pb::Process {
                exec_id: exec_id(&self.node, s.start_ns, s.pid),
                pid: s.pid,
                tid: s.pid,
                uid: s.uid,
                gid: s.gid,
                binary: s.binary,
                // argv[0] is not an argument.
                arguments: s.argv.into_iter().skip(1).collect(),
                cwd: s.cwd,
                start_time: Some(self.clock.timestamp(s.start_ns)),
                ppid: s.ppid,
                parent_exec_id: parent.as_ref().map(|p| p.process.exec_id.clone()).unwrap_or_default(),
                cgroup_id: s.cgroup_id,
                namespaces: Some(namespaces(&s.ns)),
                source: "procfs".into(),
                ..Default::default()
            };
            self.by_pid.insert(s.pid, Arc::new(ProcEntry { process, parent, start_ns: s.start_ns }));
        }
    }

    /// A new image for `e.hdr.pid`. Its parent is the real parent's current entry.
    pub fn on_exec(&mut self, e: &Exec) -> Arc<ProcEntry> {
        let h = &e.hdr;
        let previous = self.by_pid.get(&h.pid);
        let start_ns = previous.map_or(h.ktime, |p| p.start_ns);
        let parent = self.parent_of(h);
        let binary = absolute_binary(&e.filename, &e.cwd);
        let process = pb::Process {
            exec_id: exec_id(&self.node, h.ktime, h.pid),
            binary,
            arguments: e.argv.iter().skip(1).cloned().collect(),
            arguments_truncated: h.flags & flags::ARGS_TRUNCATED != 0,
            cwd: e.cwd.clone(),
            cwd_truncated: h.flags & flags::CWD_TRUNCATED != 0,
            start_time: Some(self.clock.timestamp(start_ns)),
            source: "exec".into(),
            ..self.base(h, parent.as_ref())
        };
        let entry = Arc::new(ProcEntry { process, parent, start_ns });
        self.by_pid.insert(h.pid, entry.clone());
        entry
    }

    /// A new process, still running its parent's image.
    pub fn on_fork(&mut self, h: &Header) -> Arc<ProcEntry> {
        let parent = self.parent_of(h);
        let inherited = parent.as_ref().map(|p| &p.process);
        let process = pb::Process {
            exec_id: exec_id(&self.node, h.ktime, h.pid),
            binary: inherited.map(|p| p.binary.clone()).unwrap_or_default(),
            arguments: inherited.map(|p| p.arguments.clone()).unwrap_or_default(),
            arguments_truncated: inherited.is_some_and(|p| p.arguments_truncated),
            cwd: inherited.map(|p| p.cwd.clone()).unwrap_or_default(),
            start_time: Some(self.clock.timestamp(h.ktime)),
            source: "fork".into(),
            ..self.base(h, parent.as_ref())
        };
        let entry = Arc::new(ProcEntry { process, parent, start_ns: h.ktime });
        self.by_pid.insert(h.pid, entry.clone());
        entry
    }

    /// The process ended: return its entry (made up from the header if it was unknown) and
    /// schedule its eviction.
    pub fn on_exit(&mut self, h: &Header, now: Instant) -> Arc<ProcEntry> {
        let entry = match self.by_pid.get(&h.pid) {
            Some(e) => e.clone(),
            None => self.unknown(h),
        };
        self.exited.push_back((now + self.grace, h.pid, entry.clone()));
        entry
    }

    /// The entry for an event's process; processes never seen get an entry from the header.
    /// A record made in the process's context names the cgroup the kernel had it in at that
    /// moment: when the entry says otherwise, the process moved (a runtime's init joins its
    /// container's cgroup before its exec; that exec's record may still be on its way behind
    /// a flood), and the entry follows the kernel.
    pub fn lookup(&mut self, h: &Header) -> Arc<ProcEntry> {
        let Some(e) = self.by_pid.get(&h.pid) else { return self.unknown(h) };
        if h.flags & flags::NO_PROCESS != 0 || h.cgroup_id == 0 || e.process.cgroup_id == h.cgroup_id {
            return e.clone();
        }
        let process = pb::Process { cgroup_id: h.cgroup_id, ..e.process.clone() };
        let moved = Arc::new(ProcEntry { process, parent: e.parent.clone(), start_ns: e.start_ns });
        self.by_pid.insert(h.pid, moved.clone());
        moved
    }

    /// Drops exited processes whose grace period is over, unless the pid was reused (same
    /// image: same exec id, even if a late record moved the entry to another cgroup).
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut evicted = 0;
        while let Some((deadline, _, _)) = self.exited.front() {
            if *deadline > now {
                break;
            }
            let Some((_, pid, entry)) = self.exited.pop_front() else {
                break;
            };
            if self.by_pid.get(&pid).is_some_and(|cur| cur.process.exec_id == entry.process.exec_id) {
                self.by_pid.remove(&pid);
                evicted += 1;
            }
        }
        evicted
    }

    fn parent_of(&self, h: &Header) -> Option<Arc<ProcEntry>> {
        self.by_pid.get(&h.ppid).cloned()
    }

    fn unknown(&mut self, h: &Header) -> Arc<ProcEntry> {
        let parent = self.parent_of(h);
        let process = pb::Process {
            exec_id: exec_id(&self.node, h.ktime, h.pid),
            source: "unknown".into(),
            ..self.base(h, parent.as_ref())
        };
        let entry = Arc::new(ProcEntry { process, parent, start_ns: h.ktime });
        self.by_pid.insert(h.pid, entry.clone());
        entry
    }

    /// The fields every entry takes from the record header.
    fn base(&self, h: &Header, parent: Option<&Arc<ProcEntry>>) -> pb::Process {
        pb::Process {
            pid: h.pid,
            tid: h.tid,
            uid: h.uid,
            gid: h.gid,
            ppid: h.ppid,
            parent_exec_id: parent.map(|p| p.process.exec_id.clone()).unwrap_or_default(),
            cgroup_id: h.cgroup_id,
            namespaces: Some(namespaces(&h.ns)),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(pid: u32, ppid: u32, ktime: u64) -> Header {
        Header { pid, tid: pid, ppid, ktime, ..Default::default() }
    }

    fn exec(pid: u32, ppid: u32, ktime: u64, file: &str) -> Exec {
        Exec {
            hdr: hdr(pid, ppid, ktime),
            filename: file.into(),
            argv: vec![file.into(), "-x".into()],
            cwd: "/w".into(),
        }
    }

    fn cache() -> ProcessCache {
        ProcessCache::new("n1", Clock::new(), Duration::from_secs(30))
    }

    #[test]
    fn exec_id_is_base64_of_node_ktime_pid() {
        assert_eq!(exec_id("n1", 5, 7), STANDARD.encode("n1:5:7"));
    }

    #[test]
    fn fork_then_exec_links_parents_and_keeps_start() {
        let mut c = cache();
        let shell = c.on_exec(&exec(10, 1, 100, "/bin/sh"));
        let child = c.on_fork(&hdr(11, 10, 200));
        assert_eq!(child.process.binary, "/bin/sh");
        assert_eq!(child.process.source, "fork");
        assert_eq!(child.process.parent_exec_id, shell.process.exec_id);
        let img = c.on_exec(&exec(11, 10, 300, "./ls"));
        assert_eq!(img.process.binary, "/w/ls");
        assert_eq!(img.process.arguments, ["-x"]);
        assert_eq!(img.process.parent_exec_id, shell.process.exec_id);
        assert_ne!(img.process.exec_id, child.process.exec_id);
        assert_eq!(img.start_ns, 200, "start time is the fork, not the exec");
        let anc: Vec<u32> = img.ancestors().map(|a| a.process.pid).collect();
        assert_eq!(anc, [10]);
    }

    #[test]
    fn seeds_link_parents_in_any_order() {
        let mut c = cache();
        let s = |pid, ppid, start_ns| Seed {
            pid,
            ppid,
            start_ns,
            binary: format!("/b{pid}"),
            ..Default::default()
        };
        c.seed(vec![s(3, 2, 30), s(1, 0, 10), s(2, 1, 20)]);
        let three = c.get(3).expect("seeded");
        let anc: Vec<u32> = three.ancestors().map(|a| a.process.pid).collect();
        assert_eq!(anc, [2, 1]);
        assert_eq!(three.process.source, "procfs");
    }

    #[test]
    fn exited_entries_are_evicted_after_grace_unless_reused() {
        let mut c = cache();
        let t0 = Instant::now();
        c.on_exec(&exec(20, 1, 1, "/a"));
        c.on_exec(&exec(21, 1, 1, "/b"));
        c.on_exit(&hdr(20, 1, 2), t0);
        c.on_exit(&hdr(21, 1, 2), t0);
        c.on_exec(&exec(21, 1, 3, "/c")); // pid reused within the grace period
        assert_eq!(c.sweep(t0 + Duration::from_secs(29)), 0);
        assert_eq!(c.sweep(t0 + Duration::from_secs(31)), 1);
        assert!(c.get(20).is_none());
        assert_eq!(c.get(21).expect("reused pid kept").process.binary, "/c");
    }

    #[test]
    fn a_process_that_moved_cgroup_is_found_where_the_kernel_says() {
        let mut c = cache();
        // runc init forked in the runtime's cgroup...
        let forked = c.on_fork(&Header { cgroup_id: 10, ..hdr(50, 1, 5) });
        // ...joined the container's (cgroup 20), and refused something before its exec's record
        // was read.
        let moved = c.lookup(&Header { cgroup_id: 20, ..hdr(50, 1, 6) });
        assert_eq!((moved.process.cgroup_id, &moved.process.exec_id), (20, &forked.process.exec_id));
        assert_eq!(c.get(50).map(|e| e.process.cgroup_id), Some(20), "the cache follows");
        // Records made outside the process's context say nothing of its cgroup.
        let other = Header { cgroup_id: 30, flags: flags::NO_PROCESS, ..hdr(50, 1, 7) };
        assert_eq!(c.lookup(&other).process.cgroup_id, 20);
        // A late record that moves an exited process does not keep it past its grace.
        let t0 = Instant::now();
        c.on_exit(&Header { cgroup_id: 20, ..hdr(50, 1, 8) }, t0);
        c.lookup(&Header { cgroup_id: 40, ..hdr(50, 1, 9) });
        assert_eq!(c.sweep(t0 + Duration::from_secs(31)), 1);
        assert!(c.get(50).is_none());
    }

    #[test]
    fn unknown_process_gets_an_entry_from_the_header() {
        let mut c = cache();
        let e = c.on_exit(&hdr(99, 1, 5), Instant::now());
        assert_eq!((e.process.pid, e.process.source.as_str()), (99, "unknown"));
    }
}
