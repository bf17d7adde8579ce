//! Every process as the kernel sees it, read with the `task_pids` BPF iterator: its pid in
//! the initial pid namespace (what every record carries), its pid in the daemon's own
//! namespace (what /proc and kill(2) take here), and its cgroup v2 id. A daemon in a pid
//! namespace of its own (a kind node, a pod without hostPID) translates between the two; one
//! in a private cgroup namespace, whose /proc/<pid>/cgroup paths are relative (`/../..`),
//! gets the cgroup from here.

use std::{
    collections::HashMap,
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    os::unix::fs::MetadataExt as _,
    sync::{Mutex, OnceLock},
};

use anyhow::Context as _;
use aya::{Btf, Ebpf, programs::Iter};
use sidewall_common::TaskPids;

use crate::process::cache::Seed;

/// The inode of the daemon's own pid namespace.
pub fn own_pid_ns() -> u32 {
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino() as u32)
}

/// Kernel pids to this daemon's, when its pid namespace is not the initial one.
struct Pids {
    iter: TaskIter,
    map: Mutex<HashMap<u32, u32>>,
}

static PIDS: OnceLock<Pids> = OnceLock::new();

/// Translates pids from now on, if this daemon's pid namespace is not the kernel's initial one.
pub fn install(iter: TaskIter) {
    if own_pid_ns() != sidewall_common::wire::PROC_PID_INIT_INO {
        tracing::info!("pid namespace of its own: kernel pids are translated for /proc and kill");
        let _ = PIDS.set(Pids { iter, map: Mutex::new(HashMap::new()) });
    }
}

/// The pid this daemon's /proc and kill(2) know the process by, that the kernel reports as
/// `kernel_pid`; None when it is not visible from here (or gone): nothing must then be read
/// or killed in its name, since that number may be another process here.
pub fn local_pid(kernel_pid: u32) -> Option<u32> {
    let Some(pids) = PIDS.get() else { return Some(kernel_pid) };
    pids.find(|map| map.get(&kernel_pid).copied())
}

/// The other way: the kernel's pid of a process this daemon knows as `local` (from
/// cgroup.procs or /proc), as records and the process cache name it.
pub fn kernel_pid(local: u32) -> Option<u32> {
    let Some(pids) = PIDS.get() else { return Some(local) };
    pids.find(|map| map.iter().find(|(_, l)| **l == local).map(|(k, _)| *k))
}

impl Pids {
    /// `lookup` in the map, read again once when it misses (a process born since).
    fn find(&self, lookup: impl Fn(&HashMap<u32, u32>) -> Option<u32>) -> Option<u32> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = lookup(&map) {
            return Some(found);
        }
        match self.iter.read() {
            Ok(tasks) => {
                *map = tasks.iter().filter(|t| t.ns_pid != 0).map(|t| (t.kernel_pid, t.ns_pid)).collect();
            }
            Err(e) => tracing::warn!(error = %e, "task iterator failed: a pid is not translated"),
        }
        lookup(&map)
    }
}

/// The loaded iterator program; each `read` runs it once over every task.
pub struct TaskIter {
    prog: OwnedFd,
}

impl TaskIter {
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<Self> {
        let prog = ebpf.program_mut("task_pids").context("program task_pids missing from the object")?;
        let p: &mut Iter = prog.try_into()?;
        p.load("task", btf).context("loading iter/task task_pids")?;
        let prog = p.fd()?.as_fd().try_clone_to_owned().context("holding task_pids")?;
        Ok(Self { prog })
    }

    /// One record per process.
    pub fn read(&self) -> std::io::Result<Vec<TaskPids>> {
        let link = super::loader::bpf_link_create(self.prog.as_raw_fd(), 0, BPF_TRACE_ITER)?;
        let mut file = std::fs::File::from(iter_create(&link)?);
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        Ok(raw.chunks_exact(size_of::<TaskPids>()).map(parse).collect())
    }
}

fn parse(c: &[u8]) -> TaskPids {
    let u32_at = |i: usize| u32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&c[8..16]);
    TaskPids { kernel_pid: u32_at(0), ns_pid: u32_at(4), cgroup_id: u64::from_ne_bytes(id) }
}

/// `bpf(BPF_ITER_CREATE)`: link_fd, flags; a readable descriptor of the iterator's output.
fn iter_create(link: &OwnedFd) -> std::io::Result<OwnedFd> {
    let attr = [link.as_raw_fd() as u32, 0u32];
    // SAFETY: a bpf_attr of the size passed, filled for BPF_ITER_CREATE.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ITER_CREATE, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// bpf(2) command and attach type (include/uapi/linux/bpf.h).
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// Seeds from /proc, read in the daemon's pid namespace, renumbered as the kernel numbers
/// them (records name processes by kernel pid), with the kernel's cgroup ids. A process the
/// iterator did not see (started after it ran) keeps what /proc said when the namespaces
/// agree, and is left out otherwise: its exec or fork record will bring it.
pub fn renumber(seeds: Vec<Seed>, tasks: &[TaskPids]) -> Vec<Seed> {
    // In the initial namespace both numberings agree.
    let same = tasks.iter().all(|t| t.ns_pid == t.kernel_pid);
    let by_ns: HashMap<u32, &TaskPids> =
        tasks.iter().filter(|t| t.ns_pid != 0).map(|t| (t.ns_pid, t)).collect();
    let kernel_pid = |ns_pid: u32| by_ns.get(&ns_pid).map(|t| t.kernel_pid);
    seeds
        .into_iter()
        .filter_map(|mut s| {
            match by_ns.get(&s.pid) {
                Some(t) => {
                    s.pid = t.kernel_pid;
                    if t.cgroup_id != 0 {
                        s.cgroup_id = t.cgroup_id;
                    }
                }
                None if same => {}
                None => return None,
            }
            // The parent of our namespace's first process is outside it: ppid 0 there.
            s.ppid = if same { s.ppid } else { kernel_pid(s.ppid).unwrap_or(0) };
            Some(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(pid: u32, ppid: u32, cgroup_id: u64) -> Seed {
        Seed {
            pid,
            ppid,
            uid: 0,
            gid: 0,
            start_ns: 1,
            binary: "/bin/sleep".into(),
            argv: vec![],
            cwd: "/".into(),
            cgroup_id,
            ns: Default::default(),
        }
    }

    #[test]
    fn seeds_take_kernel_pids_and_cgroups_in_a_pid_namespace_of_their_own() {
        let tasks = [
            TaskPids { kernel_pid: 5000, ns_pid: 1, cgroup_id: 70 },
            TaskPids { kernel_pid: 5007, ns_pid: 2, cgroup_id: 71 },
            TaskPids { kernel_pid: 1, ns_pid: 0, cgroup_id: 1 },
        ];
        let got = renumber(vec![seed(1, 0, 0), seed(2, 1, 0), seed(3, 1, 0)], &tasks);
        let got: Vec<(u32, u32, u64)> = got.iter().map(|s| (s.pid, s.ppid, s.cgroup_id)).collect();
        assert_eq!(got, [(5000, 0, 70), (5007, 5000, 71)]);
    }

    #[test]
    fn in_the_initial_namespace_only_the_cgroups_change() {
        let tasks = [TaskPids { kernel_pid: 42, ns_pid: 42, cgroup_id: 9 }];
        let got = renumber(vec![seed(42, 1, 0), seed(43, 42, 5)], &tasks);
        let got: Vec<(u32, u32, u64)> = got.iter().map(|s| (s.pid, s.ppid, s.cgroup_id)).collect();
        assert_eq!(got, [(42, 1, 9), (43, 42, 5)]);
    }
}
