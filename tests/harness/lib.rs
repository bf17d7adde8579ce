//! Test harness: a real sidewalld loading the real eBPF programs, test-owned cgroups, and
//! gRPC clients. Everything a test creates is removed when it is dropped, also on failure.
//! Tests must run as root.

pub mod cgroup;
pub mod chart;
pub mod daemon;
pub mod events;
pub mod hook;
pub mod netns;
pub mod pod;
pub mod scenario;
pub mod tls;

pub use cgroup::TestCgroup;
pub use daemon::Daemon;
pub use events::EventStream;

use std::path::PathBuf;

/// A binary of this workspace, built by `cargo build --workspace` next to the test binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|d| d.parent()).map(|d| d.join(name)).expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `make test`) first",
        path.display()
    );
    path
}

/// A kubeconfig for a scripted API server on 127.0.0.1:`port` (plain HTTP, no credentials).
pub fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         current-context: test\nusers:\n- name: test\n  user: {{}}\n"
    )
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests load eBPF programs and must run as root");
}
