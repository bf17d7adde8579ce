//! A cgroup v2 directory owned by one test: commands started through it run inside it from
//! their first instruction. Dropping it kills what is left in it (by PID) and removes it.

use std::{
    fs,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestCgroup {
    pub path: PathBuf,
    /// The cgroup id the kernel reports for tasks in it (its directory's inode).
    pub id: u64,
}

/// The cgroup2 mount: /sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on unified ones.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 filesystem is mounted")
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = cgroup2_root().join(format!("sidewall-test-{}-{name}-{n}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let id = fs::metadata(&path).expect("stat cgroup").ino();
        Self { path, id }
    }

    /// A command that joins this cgroup between fork and exec.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        command_in(&self.path.join("cgroup.procs"), program)
    }

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            for pid in self.pids() {
                // SAFETY: plain kill(2) of a process in this test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove test cgroup {}", self.path.display());
    }
}

/// A command that writes itself into the cgroup whose `cgroup.procs` is `procs` between fork
/// and exec, so that it runs in that cgroup from its first instruction.
pub fn command_in(procs: &Path, program: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new(program.as_ref());
    let procs_c = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    cmd
}
