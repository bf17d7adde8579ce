//! What a unit test does when this machine cannot run it (not root, no kernel BTF, no cgroup
//! v2): it fails and says why. A developer without root sets `SIDEWALL_SKIP_PRIVILEGED=1` to
//! skip such tests knowingly; each skipped test prints that it was skipped, and why.

use std::io::Write as _;

/// The variable that turns "cannot run here" from a failure into a printed skip.
pub const SKIP_VAR: &str = "SIDEWALL_SKIP_PRIVILEGED";

/// Whether the calling test can run. `missing` is what this machine lacks for it (`None`: it
/// lacks nothing). When something is missing the test fails with the reason, unless
/// `SIDEWALL_SKIP_PRIVILEGED=1`, where it prints that it was skipped and the caller returns.
#[must_use]
pub fn can_run(missing: Option<String>) -> bool {
    let Some(why) = missing else { return true };
    let current = std::thread::current();
    let test = current.name().unwrap_or("this test");
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        // Straight to stderr: the test harness hides what `eprintln!` prints in passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} ({SKIP_VAR}=1)");
        return false;
    }
    panic!("{test} cannot run here: {why}; set {SKIP_VAR}=1 to skip the tests that need this");
}

/// What is missing for a test that needs root, if anything.
pub fn root() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| format!("it needs root (running as uid {euid})"))
}

/// What is missing for a test that reads `path`, if anything.
pub fn file(path: &str) -> Option<String> {
    (!std::path::Path::new(path).exists()).then(|| format!("it needs {path}, which does not exist"))
}
