//! The daemon as a Kubernetes node runs it: health probes that fail when a sensor the
//! configuration asks for is not attached, an export file on a read-only filesystem, pin
//! directories per node on a shared bpffs, and the policy watches against an API server that
//! refuses them (backoff) or serves both policy kinds (namespaced ones confined).

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use harness::{Daemon, TestCgroup, daemon::Launch};
use sidewall_proto::v1::ListPoliciesRequest;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// (status code, body) of GET `path` on 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

/// `sidewall status --healthy` against `d`: (exit code, stdout + stderr).
fn cli_healthy(d: &Daemon) -> (i32, String) {
    let out = Command::new(harness::bin("sidewall"))
        .args(["--server", &d.server_arg(), "status", "--healthy"])
        .output()
        .expect("run sidewall");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn metrics_up(port: u16) {
    let start = Instant::now();
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "metrics port {port} never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_probes_pass_when_every_sensor_asked_for_is_attached() {
    let port = free_port();
    let d = Daemon::with_config(&format!("metrics_address = \"127.0.0.1:{port}\"\n")).await;
    let status = d.status().await;
    assert!(status.healthy, "{:?}\n{}", status.health_problems, d.log());
    assert_eq!(cli_healthy(&d), (0, "healthy\n".to_string()));
    metrics_up(port).await;
    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".to_string()));
}

/// A container without the cgroup2 filesystem (here: a private mount namespace where every
/// cgroup2 mount is unmounted; the host's mounts are untouched): the socket sensors cannot
/// attach, and the probes must say so instead of passing.
#[tokio::test(flavor = "multi_thread")]
async fn health_probes_fail_when_a_sensor_asked_for_did_not_attach() {
    let port = free_port();
    let script = "for m in $(findmnt -n -l -t cgroup2 -o TARGET | sort -r); do umount -l \"$m\" || exit 1; done; exec \"$0\" \"$@\"";
    let launch = Launch {
        wrapper: ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
            .map(String::from)
            .to_vec(),
        flags: Vec::new(),
    };
    let d = Daemon::launched(&[], &format!("metrics_address = \"127.0.0.1:{port}\"\n"), launch).await;

    let status = d.status().await;
    assert!(!status.healthy, "{:#?}", status.sensors);
    let problems = status.health_problems.join("\n");
    assert!(problems.contains("sensor inet_connect failed: "), "{problems}");
    assert!(problems.contains("no cgroup v2 filesystem"), "{problems}");
    // Sensors the configuration did not ask for (the strict set) are no problem.
    assert!(!problems.contains("unix_connect"), "{problems}");

    let (code, text) = cli_healthy(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not healthy: sensor ") && text.contains("inet_connect"), "{text}");

    metrics_up(port).await;
    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sensor inet_connect failed"), "{body}");
}

/// A read-only tmpfs mounted for one test, unmounted when dropped (also on failure).
struct ReadOnlyMount(tempfile::TempDir);

impl ReadOnlyMount {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-ro-").tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a read-only tmpfs on {}", dir.path().display());
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_file_on_a_read_only_filesystem_does_not_stop_the_daemon() {
    let ro = ReadOnlyMount::new();
    let path = ro.path().join("events.json");
    let launch =
        Launch { wrapper: Vec::new(), flags: vec!["--export-file".into(), path.display().to_string()] };
    let d = Daemon::launched(&[], "", launch).await;

    let status = d.status().await;
    let export = status.exporters.iter().find(|e| e.name == "export_file").expect("export_file exporter");
    assert_eq!(export.state, "failing", "{export:?}");
    assert!(export.detail.starts_with(&path.display().to_string()), "{export:?}");
    assert!(export.detail.contains("Read-only file system"), "{export:?}");
    assert!(d.log().contains("cannot open the export file"), "{}", d.log());
    // The rest works: sensors attached, the API answers.
    assert!(status.healthy, "{:?}", status.health_problems);
}

/// A bpffs directory of the test's own, removed when dropped.
struct PinRoot(PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pinned_link(dir: &Path) -> u64 {
    let link = dir.join("links/connect4");
    std::fs::metadata(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())).ino()
}

/// Two kind nodes on one host share its bpffs: with `{node}` in the pin directory each daemon
/// pins apart, and a daemon on a directory another running daemon holds refuses to start
/// rather than replace (and so detach) that daemon's enforcing programs.
#[tokio::test(flavor = "multi_thread")]
async fn daemons_sharing_a_bpffs_keep_their_pins_apart() {
    let root = PinRoot(PathBuf::from(format!("/sys/fs/bpf/sidewall-test-nodes-{}", std::process::id())));
    let pin_dir = format!("{}/{{node}}", root.0.display());
    let node = |name: &str| Launch {
        wrapper: Vec::new(),
        flags: ["--bpf-pin-dir", &pin_dir, "--node-name", name].map(String::from).to_vec(),
    };
    let a = Daemon::launched(&[], "", node("kind-worker")).await;
    let mut b = Daemon::launched(&[], "", node("kind-worker2")).await;
    let (a_pins, b_pins) = (root.0.join("kind-worker"), root.0.join("kind-worker2"));
    let (a_link, b_link) = (pinned_link(&a_pins), pinned_link(&b_pins));

    // A restart of one leaves the other's pins alone (it replaces only its own).
    b.restart().await;
    assert_eq!(pinned_link(&a_pins), a_link);
    assert_ne!(pinned_link(&b_pins), b_link, "a restarted daemon pins its programs anew");

    // A third daemon configured onto a's directory is refused, and a's programs stay pinned.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(harness::bin("sidewalld"))
        .args(["--node-name", "kind-worker", "--bpf-pin-dir", &pin_dir])
        .arg("--grpc-address")
        .arg(format!("unix://{}", dir.path().join("s.sock").display()))
        .output()
        .expect("run sidewalld");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("bpf_pin_dir {} is in use by another running sidewalld", a_pins.display())),
        "{stderr}"
    );
    assert_eq!(pinned_link(&a_pins), a_link);
    assert!(a.status().await.healthy && b.status().await.healthy);
}

// ---------------------------------------------------------------------------------------
// Policy watches against a scripted Kubernetes API.

/// What the scripted API answers for a list of one path.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    List(String),
    /// A Status failure with this code and reason.
    Fail(u16, &'static str),
}

/// Answers lists by path (`answers`); watches are held open with no events; anything else is
/// 404. Records when each path was listed.
struct ScriptedApi {
    port: u16,
    lists: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl ScriptedApi {
    async fn start(answers: HashMap<&'static str, Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let lists = Arc::new(Mutex::new(HashMap::new()));
        let (seen, answers) = (lists.clone(), Arc::new(answers));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (seen, answers) = (seen.clone(), answers.clone());
                tokio::spawn(async move { answer(conn, &seen, &answers).await });
            }
        });
        Self { port, lists }
    }

    /// Writes a kubeconfig for this server into `dir`.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, harness::kubeconfig(self.port)).expect("write kubeconfig");
        path
    }

    /// Waits until `path` was listed `n` times; returns when each list came.
    async fn listed(&self, path: &str, n: usize, d: &Daemon) -> Vec<Instant> {
        let start = Instant::now();
        loop {
            let times = self.lists.lock().await.get(path).cloned().unwrap_or_default();
            if times.len() >= n {
                return times;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{path} listed {} times, not {n}:\n{}",
                times.len(),
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn answer(
    mut conn: TcpStream,
    seen: &Mutex<HashMap<String, Vec<Instant>>>,
    answers: &HashMap<&str, Answer>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if query.split('&').any(|kv| kv == "watch=true") {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if conn.write_all(head.as_bytes()).await.is_ok() {
            let _ = conn.read(&mut [0u8; 1]).await;
        }
        return;
    }
    seen.lock().await.entry(path.to_string()).or_default().push(Instant::now());
    let (code, body) = match answers.get(path) {
        Some(Answer::List(body)) => (200, body.clone()),
        Some(Answer::Fail(code, reason)) => (*code, status_body(*code, reason)),
        None => (404, status_body(404, "NotFound")),
    };
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn status_body(code: u16, reason: &str) -> String {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("scripted {reason}"), "reason": reason, "code": code})
    .to_string()
}

fn empty_pods() -> Answer {
    Answer::List(
        r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"2000"},"items":[]}"#.into(),
    )
}

const POLICIES: &str = "/apis/sidewall.io/v1alpha1/sidecarpolicies";
const CLUSTER_POLICIES: &str = "/apis/sidewall.io/v1alpha1/clustersidecarpolicies";

/// A missing CRD (404) and a forbidding RBAC (403, here also for the pods of the node) are
/// retried with growing delays (0.8 s doubling, plus jitter), not in a loop against the
/// apiserver; the log says what to check.
#[tokio::test(flavor = "multi_thread")]
async fn policy_watches_back_off_when_the_crd_is_missing_or_forbidden() {
    let api = ScriptedApi::start(HashMap::from([
        ("/api/v1/pods", Answer::Fail(403, "Forbidden")),
        (POLICIES, Answer::Fail(404, "NotFound")),
        (CLUSTER_POLICIES, Answer::Fail(403, "Forbidden")),
    ]))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path());
    let d = Daemon::with_config(&format!("kubernetes = \"on\"\nkubeconfig = \"{}\"\n", kubeconfig.display()))
        .await;

    for path in ["/api/v1/pods", POLICIES, CLUSTER_POLICIES] {
        let times = api.listed(path, 4, &d).await;
        // Lower bounds only: a busy machine can only make the gaps longer.
        for (i, pair) in times.windows(2).take(3).enumerate() {
            let gap = pair[1] - pair[0];
            let least = Duration::from_millis(700) * 2u32.pow(i as u32);
            assert!(gap >= least, "{path}: retry {} came after {gap:?}, before {least:?}", i + 1);
        }
    }
    let log = d.log();
    assert!(log.contains("the SidecarPolicy CRD is not installed"), "{log}");
    assert!(log.contains("needs list and watch on clustersidecarpolicies"), "{log}");
}

fn policy_list(kind: &str, items: &[serde_json::Value]) -> Answer {
    Answer::List(
        serde_json::json!({"apiVersion": "sidewall.io/v1alpha1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "10"}, "items": items})
        .to_string(),
    )
}

fn policy_object(kind: &str, namespace: Option<&str>, name: &str, namespaces: &[&str]) -> serde_json::Value {
    let mut metadata =
        serde_json::json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": "9"});
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.into();
    }
    serde_json::json!({"apiVersion": "sidewall.io/v1alpha1", "kind": kind, "metadata": metadata,
        "spec": {"mode": "enforce", "selector": {"namespaces": namespaces},
                 "containers": [{"role": "sidecar", "processAccess": "deny"}]}})
}

/// A namespaced SidecarPolicy that selects other namespaces is refused (the previous version,
/// here none, stays); a ClusterSidecarPolicy may select them; one confined to its own
/// namespace is taken.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_cluster_policy_may_select_other_namespaces() {
    let api = ScriptedApi::start(HashMap::from([
        ("/api/v1/pods", empty_pods()),
        (
            POLICIES,
            policy_list(
                "SidecarPolicy",
                &[
                    policy_object("SidecarPolicy", Some("tenant"), "grab-all", &["*"]),
                    policy_object("SidecarPolicy", Some("tenant"), "grab-system", &["kube-system"]),
                    policy_object("SidecarPolicy", Some("tenant"), "own", &[]),
                ],
            ),
        ),
        (
            CLUSTER_POLICIES,
            policy_list("ClusterSidecarPolicy", &[policy_object("ClusterSidecarPolicy", None, "guard", &[])]),
        ),
    ]))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path());
    let d = Daemon::with_config(&format!("kubernetes = \"on\"\nkubeconfig = \"{}\"\n", kubeconfig.display()))
        .await;

    let start = Instant::now();
    let by_name = loop {
        let list = d.client().await.list_policies(ListPoliciesRequest {}).await.expect("list").into_inner();
        let by_name: HashMap<String, String> =
            list.policies.into_iter().map(|p| (p.name.clone(), p.source.clone())).collect();
        if by_name.contains_key("*/guard") && by_name.contains_key("tenant/own") {
            break by_name;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "policies: {by_name:?}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(by_name.get("*/guard").map(String::as_str), Some("cluster-crd"));
    assert_eq!(by_name.get("tenant/own").map(String::as_str), Some("crd"));
    assert!(
        !by_name.contains_key("tenant/grab-all") && !by_name.contains_key("tenant/grab-system"),
        "{by_name:?}"
    );
    let log = d.log();
    for name in ["grab-all", "grab-system"] {
        assert!(
            log.contains(&format!("sidecarpolicies/tenant/{name}: spec.selector.namespaces[0]: a SidecarPolicy selects pods of its own namespace \"tenant\" only")),
            "{log}"
        );
    }
}

fn daemonset(deleting: bool) -> Answer {
    let mut ds = serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "sidewall", "namespace": "sidewall", "uid": "ds-uid", "resourceVersion": "5"}});
    if deleting {
        ds["metadata"]["deletionTimestamp"] = "2026-12-04T20:00:00Z".into();
    }
    Answer::List(ds.to_string())
}

/// At SIGTERM the daemon asks for its DaemonSet: deleted (404) or being deleted means an
/// uninstall, and the enforcement it pinned goes with it; still there (a rolling update, a
/// drain) means the pins stay for the next daemon.
#[tokio::test(flavor = "multi_thread")]
async fn enforcement_is_removed_when_the_daemonset_is_uninstalled_and_kept_otherwise() {
    const DAEMONSET: &str = "/apis/apps/v1/namespaces/sidewall/daemonsets/sidewall";
    for (case, answer, removed) in [
        ("deleted", Answer::Fail(404, "NotFound"), true),
        ("being deleted", daemonset(true), true),
        ("still there", daemonset(false), false),
    ] {
        let api = ScriptedApi::start(HashMap::from([
            ("/api/v1/pods", empty_pods()),
            (POLICIES, policy_list("SidecarPolicy", &[])),
            (CLUSTER_POLICIES, policy_list("ClusterSidecarPolicy", &[])),
            (DAEMONSET, answer),
        ]))
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = api.kubeconfig(dir.path());
        let mut d = Daemon::with_config(&format!(
            "kubernetes = \"on\"\nkubeconfig = \"{}\"\nuninstall_daemonset = \"sidewall/sidewall\"\n",
            kubeconfig.display()
        ))
        .await;
        let pins = d.pins.clone();
        pinned_link(&pins);
        d.stop();
        let asked = api.lists.lock().await.get(DAEMONSET).map_or(0, Vec::len);
        assert_eq!(asked, 1, "{case}: the DaemonSet was asked for {asked} times\n{}", d.log());
        assert_eq!(
            !pins.exists(),
            removed,
            "{case}: {} exists: {}\n{}",
            pins.display(),
            pins.exists(),
            d.log()
        );
    }
}

/// sidewalld in a pid namespace and a cgroup namespace of its own, as in a kind node (whose
/// pid namespace is not the kernel's) or a container with a private cgroup namespace: a
/// process already running in a container's cgroup when the daemon starts is seeded under the
/// pid the kernel reports, so its events name its binary, arguments and parent, not an
/// unknown process; and its cgroup, which /proc shows there as `/../<cgroup>`, is its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_in_its_own_pid_and_cgroup_namespaces_knows_the_processes_already_running() {
    let node = TestCgroup::new("node"); // the daemon's cgroup: the root of its cgroup namespace
    let app = TestCgroup::new("app"); // a container's, outside that root
    let procs = |cg: &TestCgroup| cg.path.join("cgroup.procs").display().to_string();
    // The node's first process starts the container's, then becomes the daemon.
    let inner = format!("(echo 0 > {} && exec sleep 1000) & exec \"$0\" \"$@\"", procs(&app));
    let outer = format!(
        "echo 0 > {} && exec unshare --pid --fork --mount-proc --cgroup --kill-child sh -c '{inner}' \"$0\" \"$@\"",
        procs(&node)
    );
    let launch = Launch { wrapper: ["sh", "-c", &outer].map(String::from).to_vec(), flags: Vec::new() };
    let mut d = Daemon::launched(&[], "", launch).await;

    let pids = app.pids();
    let &[sleeper] = pids.as_slice() else { panic!("one process in the container cgroup: {pids:?}") };
    let sleeper = sleeper as u32;
    let status = std::fs::read_to_string(format!("/proc/{sleeper}/status")).expect("status");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap_or_default().to_string();
    assert_eq!(nspid.split_whitespace().count(), 3, "in a pid namespace of its own: {nspid}");
    let seen_there = Command::new("nsenter")
        .args(["--target", &sleeper.to_string(), "--cgroup", "cat", &format!("/proc/{sleeper}/cgroup")])
        .output()
        .expect("run nsenter");
    let seen_there = String::from_utf8_lossy(&seen_there.stdout);
    assert!(seen_there.contains("0::/../"), "relative in the daemon's cgroup namespace: {seen_there}");

    let mut events = d.events(Default::default()).await;
    // SAFETY: kill(2) of the process this test started, in its own cgroup.
    unsafe { libc::kill(sleeper as i32, libc::SIGKILL) };
    let ev = events
        .find("the exit of the process seeded at start", Duration::from_secs(60), |e| {
            harness::events::exit_of(e, sleeper).is_some()
        })
        .await;
    let exit = harness::events::exit_of(&ev, sleeper).expect("exit");
    let p = exit.process.as_ref().expect("process");
    assert!(p.binary.ends_with("/sleep") && p.arguments == ["1000"], "{p:#?}\n{}", d.log());
    assert_eq!(p.cgroup_id, app.id, "{p:#?}");
    let c = p.container.as_ref().expect("container");
    assert!(c.cgroup_path.ends_with(app.path.file_name().and_then(|n| n.to_str()).unwrap_or("?")), "{c:#?}");
    assert!(!p.parent_exec_id.is_empty(), "its parent, the daemon, is known too: {p:#?}");
    d.stop();
}
