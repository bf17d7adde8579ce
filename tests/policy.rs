//! Policies on real pods: detections, in-kernel enforcement (EPERM at the cgroup hooks,
//! SIGKILL for namespace changes), monitor mode, and refusal of malformed policies.
//! Container names are unique to these tests, so the policies never touch other tests' pods.

use std::{fs, time::Duration};

use harness::{
    Daemon, EventStream,
    pod::{Options, Pod, Spec},
};
use sidewall_proto::v1::{
    AddPolicyRequest, GetEventsRequest, GetFlowsRequest, PolicyAlert, SetPolicyModeRequest,
    get_events_response::Event,
};

const WAIT: Duration = Duration::from_secs(30);

fn policy(name: &str, mode: &str, rules: &str) -> String {
    format!(
        "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  containers:\n{rules}"
    )
}

/// web serves 127.0.0.1:8080 and :9090; intruder is where the attacks run.
const SERVE_BOTH: &[&str] =
    &["/bin/sh", "-c", "/bin/swtool serve-tcp 127.0.0.1 8080 & exec /bin/swtool serve-tcp 127.0.0.1 9090"];

/// The guard policy for the containers of `pod(tag)`. Each test has its own tag: every test's
/// daemon enforces for the whole node, so tests running side by side must not share names.
fn guard(tag: &str) -> String {
    format!(
        "    - name: intruder{tag}\n      loopback:\n        connect:\n          - container: web{tag}\n            ports: [8080]\n        bind: [7000]\n      action: block\n"
    )
}

/// A pod with containers `web<tag>` and `intruder<tag>`.
fn pod(tag: &str) -> Pod {
    pod_with(tag, false)
}

/// The same, with a privileged intruder (allowed to write the pod's network sysctls).
fn pod_with(tag: &str, privileged: bool) -> Pod {
    let (web, intruder) = (format!("web{tag}"), format!("intruder{tag}"));
    Pod::play_with(
        "pol",
        &[
            Spec { name: &web, command: SERVE_BOTH, ..Default::default() },
            Spec { name: &intruder, command: &["/bin/sleep", "3600"], privileged },
        ],
        &Options { share_process_namespace: true, ..Default::default() },
    )
}

async fn alert(events: &mut EventStream, what: &str, rule: &str) -> PolicyAlert {
    let ev = events
        .find(what, WAIT, |e| matches!(&e.event, Some(Event::PolicyAlert(a)) if a.rule_id == rule))
        .await;
    let Some(Event::PolicyAlert(a)) = ev.event else { unreachable!() };
    a
}

fn out(pod: &Pod, container: &str, args: &[&str]) -> (String, Option<i32>) {
    let o = pod.exec(container, args);
    (String::from_utf8_lossy(&o.stdout).trim().to_string(), o.status.code())
}

/// The shell commands among `ways` that were not killed before printing anything (a kill in
/// the kernel leaves exit status 137 and no output).
fn not_killed(pod: &Pod, container: &str, ways: &[String]) -> Vec<String> {
    ways.iter()
        .filter_map(|way| {
            let (text, code) = out(pod, container, &["/bin/sh", "-c", way]);
            (code != Some(137) || !text.is_empty()).then(|| format!("{way}: {code:?} {text:?}"))
        })
        .collect()
}

/// Waits until both servers in `web` answer (they start with the pod).
fn wait_serving(pod: &Pod, web: &str) {
    for _ in 0..50 {
        if out(pod, web, &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"]).0.starts_with("ok") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("web never served");
}

async fn daemon_with_policy(doc: &str, extra: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("policy dir");
    fs::write(dir.path().join("guard.yaml"), doc).expect("write policy");
    let d = Daemon::with_config(&format!("policy_dir = \"{}\"\n{extra}", dir.path().display())).await;
    // The directory is read on start; give the watcher its first pass.
    for _ in 0..50 {
        let mut c = d.client().await;
        let list =
            c.list_policies(sidewall_proto::v1::ListPoliciesRequest {}).await.expect("list").into_inner();
        if list.policies.iter().any(|p| p.name == "default/guard") {
            return (d, dir);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("policy not loaded:\n{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_and_bind_rules_are_enforced_in_the_kernel() {
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("a")), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("a");
    wait_serving(&pod, "weba");

    // Allowed: web:8080.
    assert!(
        out(&pod, "intrudera", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "hi"])
            .0
            .starts_with("ok pong")
    );
    // Forbidden: web:9090, refused in the kernel.
    let (text, _) = out(&pod, "intrudera", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"]);
    assert_eq!(text, "error EPERM: connect");
    let a = alert(&mut events, "the blocked loopback connect", "loopback-egress").await;
    assert_eq!(
        (a.action.as_str(), a.mode.as_str(), a.mitre_technique.as_str()),
        ("blocked", "enforce", "T1021")
    );
    assert_eq!(a.policy, "default/guard");
    assert_eq!(
        a.process.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.name.as_str()),
        Some("intrudera")
    );
    assert_eq!(a.peer.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.name.as_str()), Some("weba"));
    // Only 127.0.0.1:8080 was allowed; the other loopback forms are no way around it, nor the
    // unspecified addresses (a connect to them goes to the local host).
    for target in ["127.0.0.2", "::ffff:127.0.0.1", "::1", "0.0.0.0", "::", "::ffff:0.0.0.0"] {
        let (text, _) = out(&pod, "intrudera", &["/bin/swtool", "connect-tcp", target, "9090"]);
        assert_eq!(text, "error EPERM: connect", "{target}");
    }

    // TCP Fast Open connects from sendto(): the same hook, the same refusal.
    let (text, _) = out(&pod, "intrudera", &["/bin/swtool", "fastopen-tcp", "127.0.0.1", "9090", "x"]);
    assert_eq!(text, "error EPERM: sendto", "fast open");
    let (text, _) = out(&pod, "intrudera", &["/bin/swtool", "fastopen-tcp", "127.0.0.1", "8080", "x"]);
    assert_eq!(text, "ok pong x", "fast open to the allowed port");

    // Binding a port it may not own.
    let (text, _) = out(&pod, "intrudera", &["/bin/swtool", "bind-tcp", "0.0.0.0", "8081"]);
    assert_eq!(text, "error EPERM: bind");
    let a = alert(&mut events, "the blocked bind", "port-squatting").await;
    assert_eq!(a.action, "blocked");
    assert!(out(&pod, "intrudera", &["/bin/swtool", "bind-tcp", "0.0.0.0", "7000"]).0.starts_with("ok"));

    // Monitor mode: nothing is blocked, the alert says what enforce would do.
    d.client()
        .await
        .set_policy_mode(SetPolicyModeRequest { name: "guard".into(), mode: "monitor".into() })
        .await
        .expect("mode");
    let mut allowed = false;
    for _ in 0..30 {
        if out(&pod, "intrudera", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"]).0.starts_with("ok") {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "monitor mode lifts the block");
    let a = events
        .find(
            "a would_block alert",
            WAIT,
            |e| matches!(&e.event, Some(Event::PolicyAlert(a)) if a.action == "would_block"),
        )
        .await;
    let Some(Event::PolicyAlert(a)) = a.event else { unreachable!() };
    assert_eq!((a.rule_id.as_str(), a.mode.as_str()), ("loopback-egress", "monitor"));
}

/// A connection `swtool hold-tcp` keeps open from a container, sending a byte a second; its
/// lines arrive on a channel.
struct Held {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Held {
    /// Connects to `port` on loopback, trying again while nothing listens there yet.
    fn open(pod: &Pod, container: &str, port: &str) -> Self {
        let mut last = None;
        for _ in 0..50 {
            let mut child = pod.spawn(container, &["/bin/swtool", "hold-tcp", "127.0.0.1", port, "120"]);
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, lines) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let held = Self { child, lines };
            last = held.line();
            if last.as_deref() == Some("ok connected") {
                return held;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no connection to {port}: {last:?}");
    }

    fn line(&self) -> Option<String> {
        self.lines.recv_timeout(WAIT).ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The podman exec client, by its PID; the pod's removal ends what it ran.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn established_flows_that_a_new_policy_forbids_are_cut() {
    // At first no rule covers the pod (the guard is for other names).
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("h-none")), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    // web listens and never answers nor closes: only sidewall can end these connections.
    let listen_both =
        "/bin/swtool bind-tcp 127.0.0.1 8080 3600 & exec /bin/swtool bind-tcp 127.0.0.1 9090 3600";
    let pod = Pod::play_with(
        "pol",
        &[
            Spec { name: "webh", command: &["/bin/sh", "-c", listen_both], ..Default::default() },
            Spec { name: "intruderh", command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    );
    // Opened while no rule covers them.
    let forbidden = Held::open(&pod, "intruderh", "9090");
    let allowed = Held::open(&pod, "intruderh", "8080");

    // A rule in monitor mode: the forbidden flow is reported as what enforce would cut.
    let doc = policy("guard-h", "monitor", &guard("h"));
    d.client().await.add_policy(AddPolicyRequest { document: doc }).await.expect("add");
    let ev = events
        .find(
            "would_cut",
            WAIT,
            |e| matches!(&e.event, Some(Event::PolicyAlert(a)) if a.action == "would_cut"),
        )
        .await;
    let Some(Event::PolicyAlert(a)) = ev.event else { unreachable!() };
    assert_eq!((a.mode.as_str(), a.policy.as_str()), ("monitor", "default/guard-h"));
    assert_eq!(a.socket.as_ref().and_then(|s| s.remote.as_ref()).map(|r| r.port), Some(9090));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(forbidden.lines.try_recv().is_err(), "monitor mode cuts nothing");

    d.client()
        .await
        .set_policy_mode(SetPolicyModeRequest { name: "guard-h".into(), mode: "enforce".into() })
        .await
        .expect("mode");
    let ev = events
        .find("the cut", WAIT, |e| matches!(&e.event, Some(Event::PolicyAlert(a)) if a.action == "cut"))
        .await;
    let Some(Event::PolicyAlert(a)) = ev.event else { unreachable!() };
    assert_eq!((a.rule_id.as_str(), a.mode.as_str()), ("loopback-egress", "enforce"));
    let container = |p: Option<&sidewall_proto::v1::Process>| {
        p.and_then(|p| p.container.as_ref()).map(|c| c.name.clone()).unwrap_or_default()
    };
    assert_eq!(
        (container(a.process.as_ref()), container(a.peer.as_ref())),
        ("intruderh".into(), "webh".into())
    );
    assert_eq!(a.socket.as_ref().and_then(|s| s.remote.as_ref()).map(|r| r.port), Some(9090));

    assert_eq!(forbidden.line().as_deref(), Some("error ECONNABORTED: send"), "the forbidden flow stops");
    // The allowed one keeps flowing: it would have failed by now (a send a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(allowed.lines.try_recv().is_err(), "the allowed flow is untouched");
    let mut allowed = allowed;
    assert!(allowed.child.try_wait().expect("wait").is_none(), "the allowed flow is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_first_action_is_a_forbidden_connect_is_blocked() {
    let (_d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("i")), "").await;
    let (web, intruder) = ("webi", "intruderi");
    let pod = Pod::play_with(
        "pol",
        &[
            Spec { name: web, command: SERVE_BOTH, ..Default::default() },
            Spec {
                name: intruder,
                command: &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"],
                ..Default::default()
            },
        ],
        &Options::default(),
    );
    let mut logs = String::new();
    for _ in 0..100 {
        logs = pod.logs(intruder);
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its entry point is the connect; EPERM (not ECONNREFUSED or a reply) is the kernel's refusal.
    assert_eq!(logs.lines().next(), Some("error EPERM: connect"), "{logs}");
}

/// A sidecar whose entry point is itself the attack: the kernel must have armed it before its
/// first instruction. Twenty containers start side by side, each a try; none may escape.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_point_that_attacks_is_killed_every_time() {
    let names: Vec<String> = (0..20).map(|i| format!("entryk{i}")).collect();
    let rules: String = names
        .iter()
        .map(|n| format!("    - name: {n}\n      namespaceChanges: deny\n      action: kill\n"))
        .collect();
    let (_d, _dir) = daemon_with_policy(&policy("guard", "enforce", &rules), "").await;
    let attack: &[&str] = &["/bin/swtool", "clone-userns"];
    let specs: Vec<Spec<'_>> =
        names.iter().map(|n| Spec { name: n, command: attack, ..Default::default() }).collect();
    let pod = Pod::play_with("entry", &specs, &Options { run_once: true, ..Default::default() });
    let escaped: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let code = pod.wait(n);
            (code != 137).then(|| format!("{n}: exit {code}: {}", pod.logs(n).trim()))
        })
        .collect();
    assert!(escaped.is_empty(), "escaped the kill: {escaped:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pods_own_address_is_no_way_around_a_loopback_rule() {
    let (_d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("j")), "").await;
    // web listens on every address; the pod gets an address of its own besides loopback, as a
    // pod IP (the test pods have no network; a privileged web adds it to lo).
    let serve_any = "/bin/swtool serve-tcp 0.0.0.0 8080 & exec /bin/swtool serve-tcp 0.0.0.0 9090";
    let pod = Pod::play_with(
        "pol",
        &[
            Spec { name: "webj", command: &["/bin/sh", "-c", serve_any], privileged: true },
            Spec { name: "intruderj", command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    );
    let (text, code) = out(&pod, "webj", &["/bin/ip", "addr", "add", "192.0.2.77/32", "dev", "lo"]);
    assert_eq!(code, Some(0), "{text}");
    wait_serving(&pod, "webj");
    // The daemon reads the pod's addresses within seconds; until then the connect may pass.
    let mut refused = String::new();
    for _ in 0..100 {
        refused = out(&pod, "intruderj", &["/bin/swtool", "connect-tcp", "192.0.2.77", "9090"]).0;
        if refused == "error EPERM: connect" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, "error EPERM: connect", "the pod's own address is the loopback to the rule");
    let allowed = out(&pod, "intruderj", &["/bin/swtool", "connect-tcp", "192.0.2.77", "8080", "x"]).0;
    assert!(allowed.starts_with("ok pong"), "the allowed port stays open there: {allowed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_policy_is_refused_and_the_old_one_still_enforces() {
    let (d, dir) = daemon_with_policy(&policy("guard", "enforce", &guard("b")), "").await;
    let pod = pod("b");
    wait_serving(&pod, "webb");
    let blocked = || {
        out(&pod, "intruderb", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"]).0
            == "error EPERM: connect"
    };
    assert!(blocked());

    // Over the API: refused with the field and the line.
    let bad = policy("guard", "enforce", &guard("b").replace("ports: [8080]", "ports: [http]"));
    let err =
        d.client().await.add_policy(AddPolicyRequest { document: bad.clone() }).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("spec.containers[0].loopback.connect[0].ports[0]"), "{}", err.message());
    assert!(err.message().contains("line 12"), "{}", err.message());

    // In the policy directory: the broken file is refused, the previous version stays.
    fs::write(dir.path().join("guard.yaml"), &bad).expect("overwrite");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(d.log().contains("policy refused"), "{}", d.log());
    assert!(blocked(), "the old policy still enforces");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_change_is_killed_in_the_kernel() {
    let rules = "    - name: intruderc\n      namespaceChanges: deny\n      action: kill\n";
    let (mut d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("c");
    // An attacker's shell in the container: the daemon arms it (it runs inside its container's
    // namespaces) when it sees its exec, and its children inherit that in the kernel.
    let attack = "sleep 1; exec /bin/swtool clone-userns";
    let (text, code) = out(&pod, "intruderc", &["/bin/sh", "-c", attack]);
    assert_eq!(code, Some(137), "SIGKILL, not {text:?}");
    let a = alert(&mut events, "the namespace alert", "namespace-transition").await;
    assert_eq!(
        (a.action.as_str(), a.severity.as_str(), a.mitre_technique.as_str()),
        ("killed", "critical", "T1611")
    );
    // Exec'd straight into the container (no shell the daemon saw first): the kernel arms it
    // at its exec into the container's mounts, before the daemon hears of it.
    let (text, code) = out(&pod, "intruderc", &["/bin/swtool", "clone-userns"]);
    assert_eq!(code, Some(137), "SIGKILL at once, not {text:?}");
    // The neighbour, not covered by the rule, does the same unharmed.
    let (text, code) = out(&pod, "webc", &["/bin/swtool", "clone-userns"]);
    assert_eq!(code, Some(0), "{text}");
    // With the daemon killed, what arms and kills lives on in the kernel; and after it is back.
    d.crash();
    let (text, code) = out(&pod, "intruderc", &["/bin/swtool", "clone-userns"]);
    assert_eq!(code, Some(137), "SIGKILL while the daemon is down, not {text:?}");
    let (text, code) = out(&pod, "intruderc", &["/bin/sh", "-c", "exec /bin/swtool clone-userns"]);
    assert_eq!(code, Some(137), "a shell's child too, not {text:?}");
    d.restart().await;
    let (text, code) = out(&pod, "intruderc", &["/bin/swtool", "clone-userns"]);
    assert_eq!(code, Some(137), "SIGKILL after the restart, not {text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_benign_pod_raises_no_alert() {
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("d")), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("d");
    wait_serving(&pod, "webd");
    for _ in 0..5 {
        assert!(
            out(&pod, "intruderd", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "x"])
                .0
                .starts_with("ok")
        );
    }
    assert!(out(&pod, "intruderd", &["/bin/swtool", "bind-tcp", "127.0.0.1", "7000"]).0.starts_with("ok"));
    // The last connect's close shows everything before it was processed.
    events
        .find("the sidecar's traffic", WAIT, |e| {
            matches!(&e.event, Some(Event::ProcessBind(b))
            if b.socket.as_ref().and_then(|s| s.local.as_ref()).is_some_and(|l| l.port == 7000))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while events.next(Duration::from_millis(200)).await.is_some() {}
    let alerts: Vec<_> =
        events.seen.iter().filter(|e| matches!(e.event, Some(Event::PolicyAlert(_)))).collect();
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_and_runtime_sockets_are_detected() {
    // Egress only to 10.0.0.0/8 (enforced, so nothing ever leaves the pod: it has no route
    // anyway), and no runtime sockets (strict set, for unix connects).
    let rules = "    - name: intrudere\n      egress:\n        - cidr: 10.0.0.0/8\n          ports: [443]\n      runtimeSockets: deny\n      action: block\n";
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "sensor_set = \"strict\"").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("e");
    let (text, _) = out(&pod, "intrudere", &["/bin/swtool", "connect-tcp", "192.0.2.10", "443"]);
    assert_eq!(text, "error EPERM: connect", "blocked before routing");
    let a = alert(&mut events, "the egress alert", "egress").await;
    assert_eq!((a.action.as_str(), a.mitre_technique.as_str()), ("blocked", "T1041"));

    let _ = out(&pod, "intrudere", &["/bin/swtool", "connect-unix", "/run/podman/podman.sock"]);
    let a = alert(&mut events, "the runtime socket alert", "runtime-socket").await;
    assert_eq!((a.severity.as_str(), a.mitre_technique.as_str()), ("critical", "T1610"));
    assert!(a.message.contains("/run/podman/podman.sock"), "{}", a.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_another_containers_secrets_is_killed_in_the_kernel() {
    let rules = "    - name: intruderm\n      processAccess: deny\n      action: kill\n";
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "sensor_set = \"strict\"").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("m");
    wait_serving(&pod, "webm");
    // The web server's environment, by a relative path from a shell the daemon has seen.
    let web = pod.pod_pid("webm");
    let read = format!("sleep 1; cd /proc/{web} && exec cat environ");
    let (text, code) = out(&pod, "intruderm", &["/bin/sh", "-c", &read]);
    assert_eq!((code, text.as_str()), (Some(137), ""), "killed before reading a byte");
    let a = alert(&mut events, "the access alert", "process-access").await;
    assert_eq!(a.action, "killed");
    // Its own container's processes are not another container's.
    let own = pod.pod_pid("intruderm");
    let (_, code) = out(&pod, "intruderm", &["/bin/sh", "-c", &format!("sleep 1; cat /proc/{own}/environ")]);
    assert_eq!(code, Some(0), "same container");
    assert_eq!(out(&pod, "intruderm", &["/bin/ps"]).1, Some(0), "ps reads what it needs, unharmed");
    // A thread's stat (what `ps -T` reads) neither: held open long enough for the daemon to
    // have acted had it judged otherwise.
    let stat = format!("exec 3</proc/{web}/task/{web}/stat && cat <&3 >/dev/null && sleep 2");
    assert_eq!(out(&pod, "intruderm", &["/bin/sh", "-c", &stat]).1, Some(0), "a thread's stat is harmless");

    // The app's files, by every way through procfs to its mounts: judged on the file opened
    // (whose mount namespace is the app's), not on the path typed.
    let o = pod.exec("webm", &["/bin/sh", "-c", "echo s3cret > /etc/secret"]);
    assert!(o.status.success());
    let ways = [
        format!("cat /proc/{web}/root/etc/secret"),
        format!("cat /proc/{web}/cwd/etc/secret"),
        format!("cd /proc/{web}/root/etc && cat secret"),
        format!("ln -s /proc/{web}/root /etc/r && cat /etc/r/etc/secret"),
        format!("cat /proc/{web}/task/{web}/root/etc/secret"),
        format!("cat /proc/{web}/exe"),
        format!("ls /proc/{web}/fd"),
        format!("cat /proc/{web}/task/{web}/environ"),
        format!("cat /proc/{web}/mountinfo"),
    ];
    let escaped = not_killed(&pod, "intruderm", &ways);
    assert!(escaped.is_empty(), "not killed before reading: {escaped:#?}");
    // Taking control of the app's process: the tracer dies as the attach returns, and the
    // app, detached, keeps serving.
    let (text, code) = out(&pod, "intruderm", &["/bin/swtool", "ptrace-attach", &web.to_string()]);
    assert_eq!((code, text.as_str()), (Some(137), ""), "killed at the attach");
    let serving = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let probe = ["/bin/timeout", "1", "/bin/swtool", "connect-tcp", "127.0.0.1", "9090"];
        out(&pod, "intruderm", &probe).0.starts_with("ok pong")
    });
    assert!(serving, "the traced server (the container's first process) serves again after the tracer died");
    // Its own files, by the same ways, stay its own.
    let own_ways =
        [format!("cat /proc/{own}/root/etc/hostname"), "cat /proc/self/root/etc/hostname".to_string()];
    for way in own_ways {
        assert_eq!(out(&pod, "intruderm", &["/bin/sh", "-c", &way]).1, Some(0), "{way}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_socket_connect_is_killed_in_the_kernel() {
    let rules = "    - name: intruderk\n      runtimeSockets: deny\n      action: kill\n";
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "sensor_set = \"strict\"").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("k");
    // From a shell the daemon has seen inside its container (and so armed, with its children).
    let attack = "sleep 1; exec /bin/swtool connect-unix /run/containerd/containerd.sock";
    let (text, code) = out(&pod, "intruderk", &["/bin/sh", "-c", attack]);
    assert_eq!(code, Some(137), "SIGKILL before the connect returns, not {text:?}");
    let a = alert(&mut events, "the runtime socket alert", "runtime-socket").await;
    assert_eq!((a.action.as_str(), a.severity.as_str()), ("killed", "critical"));
    // Any other unix socket is none of the rule's business.
    let (text, code) =
        out(&pod, "intruderk", &["/bin/sh", "-c", "sleep 1; exec /bin/swtool connect-unix /run/other.sock"]);
    assert_eq!((text.as_str(), code), ("error ENOENT: connect", Some(1)));

    // A runtime listening in the neighbour's mounts, reached by every other way: the kernel
    // judges the socket reached (the address its owner bound), not the path typed.
    let serve = "mkdir -p /run/containerd; /bin/swtool serve-unix /run/app.sock & \
                 exec /bin/swtool serve-unix /run/containerd/containerd.sock";
    let mut runtime = pod.spawn("webk", &["/bin/sh", "-c", serve]);
    let reach = |container: &str, path: &str| out(&pod, container, &["/bin/swtool", "connect-unix", path]);
    let listening = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        reach("webk", "/run/containerd/containerd.sock").0 == "ok pong"
            && reach("webk", "/run/app.sock").0 == "ok pong"
    });
    assert!(listening, "the neighbour's sockets never answered");
    let web = pod.pod_pid("webk");
    let sock = format!("/proc/{web}/root/run/containerd/containerd.sock");
    let ways = [
        format!("exec /bin/swtool connect-unix {sock}"),
        format!("cd /proc/{web}/root/run/containerd && exec /bin/swtool connect-unix containerd.sock"),
        format!("ln -s {sock} /etc/rt.sock && exec /bin/swtool connect-unix /etc/rt.sock"),
        format!(
            "cd /proc/{web}/cwd/run && exec /bin/swtool connect-unix ./containerd/../containerd/containerd.sock"
        ),
    ];
    let escaped = not_killed(&pod, "intruderk", &ways);
    let _ = runtime.kill();
    let _ = runtime.wait();
    assert!(escaped.is_empty(), "reached the runtime: {escaped:#?}");
    let ev = events
        .find("the connect by another path", WAIT, |e| match &e.event {
            Some(Event::ProcessConnect(c)) => c.socket.as_ref().is_some_and(|s| {
                s.requested_path == sock
                    && s.remote.as_ref().is_some_and(|r| r.path == "/run/containerd/containerd.sock")
            }),
            _ => false,
        })
        .await;
    let Some(Event::ProcessConnect(c)) = &ev.event else { unreachable!() };
    let peer = c.peer.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.name.as_str());
    assert_eq!(peer, Some("webk"), "the listening process is named");
    // Another socket of the neighbour's, by the same way: none of the rule's business.
    let (text, code) = reach("intruderk", &format!("/proc/{web}/root/run/app.sock"));
    assert_eq!((text.as_str(), code), ("ok pong", Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn rerouting_traffic_into_the_loopback_is_refused() {
    let rules = "    - name: intruderf\n      loopbackRouting: deny\n      action: block\n";
    let (mut d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod_with("f", true);
    // The pod's own network namespace: the host's sysctls are never touched.
    let write = "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet";
    let o = pod.exec("intruderf", &["/bin/sh", "-c", write]);
    assert!(!o.status.success(), "the write is refused");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not permitted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = alert(&mut events, "the sysctl alert", "loopback-routing").await;
    assert_eq!((a.action.as_str(), a.mitre_technique.as_str()), ("blocked", "T1599"));
    assert!(a.message.contains("route_localnet"), "{}", a.message);
    // A container the rule does not cover may still do it (in its own pod's namespace).
    let o = pod.exec("webf", &["/bin/sh", "-c", "cat /proc/sys/net/ipv4/conf/all/route_localnet"]);
    assert!(o.status.success());
    // The refusal is pinned like the other enforcing programs: it holds while the daemon is down.
    d.crash();
    let o = pod.exec("intruderf", &["/bin/sh", "-c", write]);
    assert!(!o.status.success(), "still refused while the daemon is down");
    d.restart().await;
    let o = pod.exec("intruderf", &["/bin/sh", "-c", write]);
    assert!(!o.status.success(), "and after it is back");
    d.crash();
    assert!(d.cleanup().status.success());
    let o = pod.exec("intruderf", &["/bin/sh", "-c", write]);
    assert!(o.status.success(), "cleanup removes the refusal: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn enforcement_outlives_a_crash_and_cleanup_removes_every_trace() {
    let (mut d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("g")), "").await;
    let pod = pod("g");
    wait_serving(&pod, "webg");
    let blocked = || {
        out(&pod, "intruderg", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"]).0
            == "error EPERM: connect"
    };
    assert!(blocked());
    d.crash();
    assert!(blocked(), "still enforced while the daemon is down");
    d.restart().await;
    assert!(blocked(), "and after it is back");
    assert!(
        out(&pod, "intruderg", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080"]).0.starts_with("ok pong")
    );
    d.crash();
    let o = d.cleanup();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.pins.exists(), "the pinned programs and maps are gone");
    assert!(!blocked(), "nothing of sidewall is left enforcing");
}

/// A unix socket is as much a channel between the containers of a pod as loopback TCP: the
/// connect names both ends, is an edge of the flow graph, and `loopback.unix` rules it.
#[tokio::test(flavor = "multi_thread")]
async fn a_unix_channel_between_containers_is_an_edge_and_a_rule() {
    let rules = "    - name: intruderu\n      loopback:\n        unix:\n          - container: webu\n            names: [\"@allowed\"]\n      action: alert\n";
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", rules), "sensor_set = \"strict\"").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("u");
    let serve = "/bin/swtool serve-unix @allowed & exec /bin/swtool serve-unix @secret";
    let mut server = pod.spawn("webu", &["/bin/sh", "-c", serve]);
    let reach = |name: &str| out(&pod, "intruderu", &["/bin/swtool", "connect-unix", name]);
    let listening = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        reach("@allowed").0 == "ok pong"
    });
    assert!(listening, "the app's abstract socket never answered");
    assert_eq!(reach("@secret").0, "ok pong", "an alert rule does not stop it");
    let _ = server.kill();
    let _ = server.wait();
    let a = alert(&mut events, "the unix channel alert", "loopback-unix").await;
    assert!(a.message.contains("webu:@secret"), "{}", a.message);
    let peer = a.peer.as_ref().and_then(|p| p.container.as_ref()).map(|c| c.name.as_str());
    assert_eq!(peer, Some("webu"), "the alert names the listening container");
    // Both channels are edges of the pod's flow graph; only the forbidden one alerted.
    let mut c = d.client().await;
    let flows = c
        .get_flows(GetFlowsRequest { pod_regex: pod.name.clone(), ..Default::default() })
        .await
        .expect("flows")
        .into_inner();
    let edges: Vec<(String, String, String)> = flows
        .pods
        .iter()
        .flat_map(|p| &p.edges)
        .filter(|e| e.protocol == "unix")
        .map(|e| {
            let name =
                |c: Option<&sidewall_proto::v1::Container>| c.map_or(String::new(), |c| c.name.clone());
            (name(e.source.as_ref()), name(e.destination.as_ref()), e.name.clone())
        })
        .collect();
    for want in ["@allowed", "@secret"] {
        assert!(
            edges.iter().any(|(s, d, n)| s == "intruderu" && d == "webu" && n == want),
            "no edge intruderu -> webu:{want}/unix in {edges:?}"
        );
    }
    // The export file has every alert the stream had: one, for the forbidden channel only.
    // (The file's writer is a subscriber of its own: wait until it has written the alert.)
    let count = || {
        let export = fs::read_to_string(&d.export).unwrap_or_default();
        export.lines().filter(|l| l.contains("\"rule_id\":\"loopback-unix\"")).count()
    };
    for _ in 0..50 {
        if count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(), 1, "alerts in the export file");
}

/// Every refusal the kernel makes is heard: the kernel's own count of what it refused equals
/// the alerts that reported it, kind by kind.
#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_of_the_kernel_is_an_alert() {
    let (d, _dir) = daemon_with_policy(&policy("guard", "enforce", &guard("r")), "").await;
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = pod("r");
    wait_serving(&pod, "webr");
    let tries: [(&str, &[&str], &str); 3] = [
        ("connect", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090"], "loopback-egress"),
        ("send", &["/bin/swtool", "send-udp", "127.0.0.1", "9091", "x"], "loopback-egress"),
        ("bind", &["/bin/swtool", "bind-tcp", "127.0.0.1", "7001"], "port-squatting"),
    ];
    let (attempts, mut alerts) = (4, std::collections::HashMap::<&str, u64>::new());
    for (kind, args, rule) in tries {
        for _ in 0..attempts {
            let (text, _) = out(&pod, "intruderr", args);
            assert!(text.starts_with("error EPERM"), "{kind}: {text}");
            alert(&mut events, kind, rule).await;
            *alerts.entry(kind).or_default() += 1;
        }
    }
    // The kernel's counters reach the status within a tick.
    let mut c = d.client().await;
    let mut refused = std::collections::HashMap::new();
    for _ in 0..30 {
        let status =
            c.get_status(sidewall_proto::v1::GetStatusRequest {}).await.expect("status").into_inner();
        refused = status.kernel_refusals;
        if ["connect", "send", "bind"].iter().all(|k| refused.get(*k).copied().unwrap_or(0) >= attempts) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for kind in ["connect", "send", "bind"] {
        assert_eq!(
            refused.get(kind).copied(),
            alerts.get(kind).copied(),
            "{kind}: refusals {refused:?}, alerts {alerts:?}"
        );
    }
}
