//! The runtime hook for a test's pods: a hooks directory of the test's own holding
//! `sidewall-oci-hook` (registered by its own `install` command) and a containers.conf that
//! reads it. Pods played with `conf()` call the hook; every other test's pods do not.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct OciHook {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl OciHook {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-hook-").tempdir().expect("tempdir");
        let conf = crate::pod::conf_with_hooks(dir.path(), &dir.path().join("hooks.d"));
        Self { dir, conf }
    }

    /// Where fail-open records go: the daemon's `hook_spool_dir`.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The daemon configuration line that reads this hook's records.
    pub fn daemon_config(&self) -> String {
        format!("hook_spool_dir = \"{}\"\n", self.spool().display())
    }

    /// The containers.conf for `pod::Options::containers_conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Registers the hook for the daemon at `server` with `--fail` and `--timeout`.
    pub fn register(&self, server: &str, fail: &str, timeout: &str) {
        self.register_binary(&crate::bin("sidewall-oci-hook"), server, fail, timeout);
    }

    /// The same with a given build of the hook (the bench's release build, say).
    pub fn register_binary(&self, hook: &Path, server: &str, fail: &str, timeout: &str) {
        let spool = self.spool();
        let out = Command::new(hook)
            .args(["--server", server, "--fail", fail, "--timeout", timeout, "--spool-dir"])
            .arg(&spool)
            .args(["install", "--hooks-dir"])
            .arg(self.dir.path().join("hooks.d"))
            .arg("--bin-dir")
            .arg(self.dir.path().join("bin"))
            .output()
            .expect("run sidewall-oci-hook install");
        assert!(out.status.success(), "sidewall-oci-hook install: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The records the hook left for the daemon.
    pub fn spooled(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.spool()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }
}

impl Default for OciHook {
    fn default() -> Self {
        Self::new()
    }
}
