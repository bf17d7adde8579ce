//! Seeds the process cache from /proc, so processes older than the daemon are known.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use sidewall_common::Namespaces;

use super::cache::Seed;

/// Reads every process under `proc_root`. Processes that vanish mid-read are skipped.
pub fn scan(proc_root: &Path, cgroup2_root: Option<&Path>) -> Vec<Seed> {
    let ticks = clock_ticks();
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_process(&proc_root.join(pid.to_string()), pid, ticks, cgroup2_root))
        .collect()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn read_process(dir: &Path, pid: u32, ticks: u64, cgroup2_root: Option<&Path>) -> Option<Seed> {
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let (comm, ppid, start_ticks) = parse_stat(&stat)?;
    let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
    let (uid, gid) = parse_ids(&status);
    let argv = crate::kernel::decode::split_nul(&fs::read(dir.join("cmdline")).unwrap_or_default());
    let binary = fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_string())
        // Kernel threads have no executable; show them as ps does.
        .unwrap_or_else(|_| format!("[{comm}]"));
    let cwd = fs::read_link(dir.join("cwd")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let cgroup_id = cgroup2_root
        .and_then(|root| cgroup_id(root, &fs::read_to_string(dir.join("cgroup")).ok()?))
        .unwrap_or(0);
    Some(Seed {
        pid,
        ppid,
        uid,
        gid,
        start_ns: start_ticks.saturating_mul(1_000_000_000 / ticks),
        binary,
        argv,
        cwd,
        cgroup_id,
        ns: namespaces(&dir.join("ns")),
    })
}

/// (comm, ppid, starttime in clock ticks) from /proc/PID/stat. comm may contain spaces and
/// parentheses, so split at the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // Fields after comm start at field 3 (state); ppid is field 4, starttime field 22.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// Real uid and gid from /proc/PID/status.
fn parse_ids(status: &str) -> (u32, u32) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

/// The cgroup v2 id of a process: the inode of its directory under the cgroup2 mount.
fn cgroup_id(root: &Path, proc_cgroup: &str) -> Option<u64> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path: PathBuf = root.join(rel.trim_start_matches('/'));
    fs::metadata(path).ok().map(|m| m.ino())
}

fn namespaces(ns_dir: &Path) -> Namespaces {
    let inum = |name: &str| {
        fs::read_link(ns_dir.join(name)).ok().and_then(|l| parse_ns_link(&l.to_string_lossy())).unwrap_or(0)
    };
    Namespaces {
        uts: inum("uts"),
        ipc: inum("ipc"),
        mnt: inum("mnt"),
        pid: inum("pid"),
        pid_for_children: inum("pid_for_children"),
        net: inum("net"),
        time: inum("time"),
        time_for_children: inum("time_for_children"),
        cgroup: inum("cgroup"),
        user: inum("user"),
    }
}

/// A host pid's pid in its own (innermost) pid namespace: the last field of NSpid.
pub fn innermost_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

/// "net:[4026531840]" -> 4026531840
pub fn parse_ns_link(link: &str) -> Option<u32> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let s = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(parse_stat(s), Some(("a) b (c)".to_string(), 7, 12345)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("net:4026531840"), None);
    }

    #[test]
    fn scan_finds_this_process_with_its_namespaces() {
        let me = std::process::id();
        let seeds = scan(Path::new("/proc"), None);
        let s = seeds.iter().find(|s| s.pid == me).expect("own process seeded");
        let own_net = fs::read_link("/proc/self/ns/net").expect("ns link");
        assert_eq!(Some(s.ns.net), parse_ns_link(&own_net.to_string_lossy()));
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(s.binary.starts_with('/'));
        assert!(s.start_ns > 0);
    }
}
