//! Namespace transitions, namespace drift and cross-container process access, from the real
//! programs: on the host in a test cgroup, and between the containers of a real pod.

use std::{fs, time::Duration};

use harness::{
    Daemon, EventStream, TestCgroup,
    pod::{Options, Pod, Spec},
};
use sidewall_proto::v1::{
    GetEventsRequest, Process, ProcessAccess, ProcessNamespace, get_events_response::Event,
};

const WAIT: Duration = Duration::from_secs(30);
const STRICT: &str = "sensor_set = \"strict\"";

fn ns_inode(pid: &str, kind: &str) -> u32 {
    let link = fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns link");
    let s = link.to_string_lossy();
    s.split_once(":[").and_then(|(_, r)| r.strip_suffix(']')).and_then(|n| n.parse().ok()).expect("inode")
}

fn container_name(p: Option<&Process>) -> &str {
    p.and_then(|p| p.container.as_ref()).map_or("", |c| c.name.as_str())
}

async fn namespace_event(
    events: &mut EventStream,
    what: &str,
    pred: impl Fn(&ProcessNamespace) -> bool,
) -> ProcessNamespace {
    let ev =
        events.find(what, WAIT, |e| matches!(&e.event, Some(Event::ProcessNamespace(n)) if pred(n))).await;
    let Some(Event::ProcessNamespace(n)) = ev.event else { unreachable!() };
    n
}

async fn access_event(
    events: &mut EventStream,
    what: &str,
    pred: impl Fn(&ProcessAccess) -> bool,
) -> ProcessAccess {
    let ev = events.find(what, WAIT, |e| matches!(&e.event, Some(Event::ProcessAccess(a)) if pred(a))).await;
    let Some(Event::ProcessAccess(a)) = ev.event else { unreachable!() };
    a
}

/// An app and a privileged sidecar that can see each other's processes: the breakout setting.
fn shared_pod() -> Pod {
    let sleep = ["/bin/sleep", "3600"];
    Pod::play_with(
        "iso",
        &[
            Spec { name: "app", command: &sleep, ..Default::default() },
            Spec { name: "proxy", command: &sleep, privileged: true },
        ],
        &Options {
            annotations: &[("sidewall.io/sidecars", "proxy")],
            share_process_namespace: true,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn unshare_at_the_syscall_with_before_and_after() {
    let d = Daemon::with_config(STRICT).await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let cg = TestCgroup::new("unshare");
    for (flag, kind) in [("-U", "user"), ("-n", "net")] {
        let mut c = cg.command("/usr/bin/unshare").args([flag, "/bin/true"]).spawn().expect("spawn");
        let pid = c.id();
        assert!(c.wait().expect("wait").success());
        let n = namespace_event(&mut events, &format!("unshare {flag}"), |n| {
            n.operation == "unshare" && n.process.as_ref().is_some_and(|p| p.pid == pid)
        })
        .await;
        assert_eq!(n.changed, [kind], "unshare {flag}");
        assert_eq!(n.result, "success");
        let (before, after) = (n.before.expect("before"), n.after.expect("after"));
        let (b, a) = if kind == "user" { (before.user, after.user) } else { (before.net, after.net) };
        assert_eq!(b, ns_inode("self", kind), "before is where the test runs");
        assert_ne!(a, b, "after is a new namespace");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clone3_into_a_new_user_namespace() {
    // The default set sees this: the fork sensor compares parent and child namespaces.
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = Pod::play(
        "clone",
        &[Spec { name: "app", command: &["/bin/sleep", "3600"], ..Default::default() }],
        &[],
    );
    let out = pod.exec("app", &["/bin/swtool", "clone-userns"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let n = namespace_event(&mut events, "clone into a user namespace", |n| {
        n.operation == "clone"
            && container_name(n.process.as_ref()) == "app"
            && n.process.as_ref().is_some_and(|p| p.binary.ends_with("swtool"))
    })
    .await;
    assert_eq!(n.changed, ["user"], "{n:?}");
    let app_user = ns_inode(&pod.host_pid("app").to_string(), "user");
    assert_eq!(n.before.as_ref().map(|b| b.user), Some(app_user));
    assert_ne!(n.after.as_ref().map(|a| a.user), Some(app_user));
    // The runtime building the container (runc init) is not reported as a clone.
    let setup = events.seen.iter().find(|e| {
        matches!(&e.event, Some(Event::ProcessNamespace(n)) if n.operation == "clone"
            && n.process.as_ref().is_some_and(|p| !p.binary.ends_with("swtool")))
    });
    assert!(setup.is_none(), "{setup:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_joining_the_apps_namespaces_names_the_app() {
    let d = Daemon::with_config(STRICT).await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = shared_pod();
    let app_pid = pod.pod_pid("app").to_string();
    let app_mnt = ns_inode(&pod.host_pid("app").to_string(), "mnt");
    let proxy_mnt = ns_inode(&pod.host_pid("proxy").to_string(), "mnt");
    assert_ne!(app_mnt, proxy_mnt);

    // nsenter: through /proc/<pid>/ns/mnt.
    let out = pod.exec("proxy", &["/bin/nsenter", "-t", &app_pid, "-m", "/bin/true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = namespace_event(&mut events, "setns by nsenter", |n| {
        n.operation == "setns"
            && container_name(n.process.as_ref()) == "proxy"
            && n.changed.contains(&"mnt".to_string())
    })
    .await;
    assert_eq!(n.before.as_ref().map(|b| b.mnt), Some(proxy_mnt));
    assert_eq!(n.after.as_ref().map(|a| a.mnt), Some(app_mnt));
    assert_eq!(container_name(n.target.as_ref()), "app", "the owner of the namespace entered");
    assert!(!n.target_host);

    // setns through a pidfd.
    let out = pod.exec("proxy", &["/bin/swtool", "setns-pidfd", &app_pid, "mnt", "/bin/true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let n = namespace_event(&mut events, "setns through a pidfd", |n| {
        n.operation == "setns"
            && n.process.as_ref().is_some_and(|p| p.binary.ends_with("swtool"))
            && n.after.as_ref().is_some_and(|a| a.mnt == app_mnt)
    })
    .await;
    assert_eq!(n.before.as_ref().map(|b| b.mnt), Some(proxy_mnt));
    assert_eq!(container_name(n.target.as_ref()), "app");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_reported_by_the_default_set() {
    let d = Daemon::start().await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = shared_pod();
    let app_pid = pod.pod_pid("app").to_string();
    let app_mnt = ns_inode(&pod.host_pid("app").to_string(), "mnt");
    let out = pod.exec("proxy", &["/bin/nsenter", "-t", &app_pid, "-m", "/bin/echo", "drifted"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = namespace_event(&mut events, "drift of the sidecar's process", |n| {
        n.operation == "drift" && container_name(n.process.as_ref()) == "proxy"
    })
    .await;
    assert_eq!(n.changed, ["mnt"]);
    assert_eq!(n.after.as_ref().map(|a| a.mnt), Some(app_mnt));
    assert_eq!(container_name(n.target.as_ref()), "app", "{n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_reading_and_tracing_the_app_is_cross_container_access() {
    let d = Daemon::with_config(STRICT).await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = shared_pod();
    let app_pid = pod.pod_pid("app").to_string();
    let app_host_pid = pod.host_pid("app");
    let environ = format!("/proc/{app_pid}/environ");

    let out = pod.exec("proxy", &["/bin/cat", &environ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = access_event(&mut events, "read of the app's environ", |a| {
        a.access == "proc_open" && a.path == environ
    })
    .await;
    assert_eq!(container_name(a.process.as_ref()), "proxy");
    assert_eq!(a.target.as_ref().map(|t| t.pid), Some(app_host_pid), "pod pid translated to the host's");
    assert_eq!(container_name(a.target.as_ref()), "app");
    assert!(a.cross_container);

    // The same file by a relative path: seen on the opened file, not on the path.
    let out = pod.exec("proxy", &["/bin/sh", "-c", &format!("cd /proc/{app_pid} && cat environ >/dev/null")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = access_event(&mut events, "relative read of the app's environ", |a| {
        a.access == "proc_open" && a.path == "environ"
    })
    .await;
    assert_eq!(container_name(a.process.as_ref()), "proxy");
    assert_eq!(a.target.as_ref().map(|t| t.pid), Some(app_host_pid));
    assert!(a.cross_container);
    let resolved = events
        .seen
        .iter()
        .filter(|e| matches!(&e.event, Some(Event::ProcessAccess(a)) if a.path == "environ"))
        .count();
    assert_eq!(resolved, 1, "an open reported by its path is not reported again by its file");

    let out = pod.exec("proxy", &["/bin/swtool", "ptrace-attach", &app_pid]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let a = access_event(&mut events, "ptrace attach", |a| a.access == "ptrace_attach").await;
    assert_eq!(container_name(a.target.as_ref()), "app");
    assert!(a.cross_container);

    let _ = pod.exec("proxy", &["/bin/swtool", "vm-read", &app_pid, "0"]);
    let a = access_event(&mut events, "process_vm_readv", |a| a.access == "process_vm_readv").await;
    assert_eq!(a.target.as_ref().map(|t| t.pid), Some(app_host_pid));

    // A process reading its own /proc entries is not an access to another.
    let _ = pod.exec("app", &["/bin/cat", "/proc/self/environ"]);
    let own = events.seen.iter().any(|e| {
        matches!(&e.event, Some(Event::ProcessAccess(a)) if a.path.contains("self") && container_name(a.process.as_ref()) == "app")
    });
    assert!(!own);
}
