//! What the bench reads from /proc, and guards for what it creates: every guard removes its
//! object on drop (also when a measurement fails or panics), processes by PID only.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Child,
    sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static FOREIGN_MAX: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Marks the run as interrupted (SIGINT/SIGTERM): measurements stop at their next check and
/// unwind through their guards.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the host and every container share, and the one
/// swbench prints.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (comm, utime + stime in clock ticks) of a process or thread `stat` file.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, t)| t as f64 / ticks_per_second())
}

/// CPU seconds per thread name of a process (threads with the same name are summed).
pub fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((comm, ticks)) = parse_stat(&text) else { continue };
        let secs = ticks as f64 / ticks_per_second();
        match out.iter_mut().find(|(c, _)| *c == comm) {
            Some((_, s)) => *s += secs,
            None => out.push((comm, secs)),
        }
    }
    out
}

/// Memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub pss: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some(Memory {
        rss: field(&status, "VmRSS:"),
        hwm: field(&status, "VmHWM:"),
        anon: field(&status, "RssAnon:"),
        pss: field(&rollup, "Pss:"),
    })
}

/// sidewalld processes on this machine that the bench did not start (other people's tests
/// on a shared machine): they load their own programs, which every configuration pays for.
/// Also remembers the largest count seen (`foreign_daemons_max`).
pub fn foreign_daemons(mine: &[u32]) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    let n = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !mine.contains(pid))
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sidewalld"))
        .count();
    FOREIGN_MAX.fetch_max(n, Ordering::Relaxed);
    n
}

pub fn foreign_daemons_max() -> usize {
    FOREIGN_MAX.load(Ordering::Relaxed)
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Kills (SIGKILL, by PID) and reaps children the bench started, when dropped.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A parent cgroup under the cgroup2 root with child cgroups named like containers'
/// (`docker-<64 hex>.scope`), so that the daemon resolves each as a container. Dropping it
/// kills every process left in them (by PID) and removes the directories.
pub struct ContainerCgroups {
    pub parent: PathBuf,
    pub children: Vec<PathBuf>,
}

impl ContainerCgroups {
    pub fn new() -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let parent =
            harness::cgroup::cgroup2_root().join(format!("sidewall-bench-{}-ctr-{n}", std::process::id()));
        fs::create_dir(&parent).with_context(|| format!("mkdir {}", parent.display()))?;
        Ok(Self { parent, children: Vec::new() })
    }

    /// Creates one more container-like cgroup and returns its path.
    pub fn add(&mut self) -> anyhow::Result<PathBuf> {
        let i = self.children.len() as u64;
        // A 64-hex id unique to this run and index.
        let id = format!("{:016x}{:016x}{:016x}{:016x}", 0x5eed_u64, std::process::id(), i, 0xbe9c_u64);
        let path = self.parent.join(format!("docker-{id}.scope"));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        self.children.push(path.clone());
        Ok(path)
    }
}

fn pids_of(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills what is left in `cgroup` and removes it, retrying while processes exit.
pub fn remove_cgroup(cgroup: &Path) {
    for _ in 0..100 {
        for pid in pids_of(cgroup) {
            // SAFETY: kill(2) of a process in a cgroup this bench created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("warning: could not remove cgroup {}", cgroup.display());
}

impl Drop for ContainerCgroups {
    fn drop(&mut self) {
        for c in self.children.iter().rev() {
            remove_cgroup(c);
        }
        remove_cgroup(&self.parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let text = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(text), Some(("a (b) c".to_string(), 12)));
    }
}
