//! The `sidewall` CLI against a real daemon.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use harness::{Daemon, TestCgroup, bin};

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_attached_sensors() {
    let d = Daemon::start().await;
    let out =
        Command::new(bin("sidewall")).args(["--server", &d.server_arg(), "status"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["process_exec", "process_exit", "process_fork"] {
        assert!(text.lines().any(|l| l.contains(line) && l.contains("attached")), "{line} attached:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn getevents_compact_prints_one_line_per_event() {
    let d = Daemon::start().await;
    let mut cli = Command::new(bin("sidewall"))
        .args(["--server", &d.server_arg(), "getevents", "-o", "compact", "--binary", "/bin/echo"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let stdout = cli.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let cg = TestCgroup::new("cli");
    let start = Instant::now();
    let mut lines = Vec::new();
    // The stream may not be registered yet when the first echo runs (or only between its exec
    // and its exit): repeat until an exec line is seen.
    'outer: while start.elapsed() < Duration::from_secs(30) {
        cg.command("/bin/echo").arg("from-cli-test").stdout(Stdio::null()).status().expect("echo");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let exec = line.contains(" exec ");
            lines.push(line);
            if exec {
                break 'outer;
            }
        }
    }
    let _ = cli.kill();
    let _ = cli.wait();
    let line =
        lines.iter().find(|l| l.contains(" exec ")).unwrap_or_else(|| panic!("no exec line in {lines:#?}"));
    assert!(line.contains("exec") && line.contains("/bin/echo from-cli-test"), "{line}");
    assert!(line.contains("host"), "not in a container: {line}");
    assert!(!line.contains('{'), "compact, not JSON: {line}");
}

#[test]
fn no_daemon_is_one_line_and_nonzero() {
    let out = Command::new(bin("sidewall"))
        .args(["--server", "unix:///nonexistent/sidewall.sock", "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unix:///nonexistent/sidewall.sock"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_regex_exits_2_with_the_reason() {
    let d = Daemon::start().await;
    let out = Command::new(bin("sidewall"))
        .args(["--server", &d.server_arg(), "getevents", "--binary", "("])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid request") && err.contains("binary_regex"), "{err}");
}
