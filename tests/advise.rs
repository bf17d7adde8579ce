//! `sidewall policy suggest` on the scenario catalog's benign pod, live: the pod's healthy
//! traffic is observed, the daemon suggests a policy (SuggestPolicy), the policy is loaded in
//! enforce mode, and then the same healthy traffic raises no alert while the catalog's
//! attacks against that pod (a sidecar reaching the app's port, squatting a port,
//! exfiltrating outside the pod) are each caught and blocked by the kernel.

use std::{process::Command, time::Duration};

use harness::{
    Daemon, EventStream,
    scenario::{self, ManifestPod, Scenario},
};
use sidewall_proto::v1::{
    AddPolicyRequest, GetEventsRequest, GetEventsResponse, PolicyAlert, SuggestPolicyRequest,
    get_events_response::Event,
};

/// Failure guards only: every wait ends on an event or a condition.
const WAIT: Duration = Duration::from_secs(60);

fn pod_of(ev: &GetEventsResponse) -> Option<&str> {
    let p = match &ev.event {
        Some(Event::ProcessBind(b)) => b.process.as_ref(),
        Some(Event::PolicyAlert(a)) => a.process.as_ref(),
        _ => None,
    };
    p.and_then(|p| p.pod.as_ref()).map(|p| p.name.as_str())
}

fn alert(ev: &GetEventsResponse) -> Option<&PolicyAlert> {
    match &ev.event {
        Some(Event::PolicyAlert(a)) => Some(a),
        _ => None,
    }
}

/// An alert raised by the container runtime's own setup (`runc init` joining the pod's
/// namespaces for `podman exec`), not by the workload.
fn runtime_setup(a: &PolicyAlert) -> bool {
    a.process.as_ref().is_some_and(|p| {
        (p.binary.starts_with("/dev/fd/") || p.binary == "/proc/self/exe" || p.binary.ends_with("/runc"))
            && p.arguments.first().is_some_and(|a| a == "init")
    })
}

/// Runs the benign steps of the scenario; each must succeed as the catalog says.
fn benign_steps(sc: &Scenario, pod: &ManifestPod) {
    for step in &sc.steps {
        let out = pod.exec_command(&step.container, &step.argv(std::process::id())).output().expect("exec");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = step.enforce.stdout.as_deref().unwrap_or("");
        assert!(
            out.status.success() && stdout.trim().starts_with(want),
            "step {:?}: {:?} {stdout:?} {:?}",
            step.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The daemon's suggestion for the pod (its name and document) once it has seen all three
/// of the pod's flows.
async fn suggestion(d: &Daemon, pod: &str) -> (String, String) {
    let mut client = d.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let req = SuggestPolicyRequest { pod_regex: pod.into(), ..Default::default() };
        let resp = client.suggest_policy(req).await.expect("SuggestPolicy").into_inner();
        if let Some(p) = resp.policies.first() {
            let doc = &p.document;
            let seen =
                ["# to storefront: 8080", "# to mesh-proxy: 15001", "bind: [15001, 15006]", "bind: [8080]"];
            if seen.iter().all(|s| doc.contains(s)) {
                return (p.name.clone(), doc.clone());
            }
            assert!(tokio::time::Instant::now() < deadline, "the suggestion never covered the flows:\n{doc}");
        }
        assert!(tokio::time::Instant::now() < deadline, "no suggestion for {pod}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `argv` in `container` and waits for the first alert of the pod after it; every
/// alert of the pod in between is returned too (there must be none).
async fn attack(
    feed: &mut EventStream,
    pod: &ManifestPod,
    container: &str,
    argv: &[&str],
) -> (PolicyAlert, std::process::Output) {
    let args: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let out = pod.exec_command(container, &args).output().expect("exec");
    let ev = feed
        .find(&format!("an alert for {argv:?}"), WAIT, |ev| {
            alert(ev).is_some_and(|a| !runtime_setup(a)) && pod_of(ev) == Some(pod.name.as_str())
        })
        .await;
    (alert(&ev).cloned().expect("an alert"), out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suggested_policy_allows_the_benign_pod_and_catches_attacks() {
    harness::require_root();
    let sc = scenario::load(&scenario::catalog_dir().join("benign-mesh-and-logs"));
    let d = Daemon::with_config("sensor_set = \"strict\"").await;
    let mut feed = d.events(GetEventsRequest::default()).await;
    let pod = ManifestPod::play("adv", &sc.manifest()).expect("pod");

    // The pod is up when its three listeners are bound (in whatever order).
    let bound = |ev: &GetEventsResponse, r: &scenario::Ready| match &ev.event {
        Some(Event::ProcessBind(b)) => {
            pod_of(ev) == Some(pod.name.as_str())
                && b.process
                    .as_ref()
                    .and_then(|p| p.container.as_ref())
                    .is_some_and(|c| c.name == r.container)
                && b.socket.as_ref().and_then(|s| s.local.as_ref()).is_some_and(|l| l.port == r.port)
        }
        _ => false,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sc.ready.iter().all(|r| feed.seen.iter().any(|ev| bound(ev, r))) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(feed.next(left).await.is_some(), "the pod's listeners never all bound");
    }
    benign_steps(&sc, &pod);
    let (name, doc) = suggestion(&d, &pod.name).await;
    println!("{doc}");

    // The CLI asks the daemon for the same.
    let out = Command::new(harness::bin("sidewall"))
        .args(["--server", &d.server_arg(), "policy", "suggest", "--pod", &pod.name, "-o", "yaml"])
        .output()
        .expect("sidewall policy suggest");
    let yaml = String::from_utf8_lossy(&out.stdout);
    let short = name.split('/').nth(1).unwrap_or_default();
    assert!(
        out.status.success()
            && yaml.contains("kind: SidecarPolicy")
            && yaml.contains(&format!("  name: {short}\n")),
        "{yaml} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let enforce = doc.replacen("  mode: monitor\n", "  mode: enforce\n", 1);
    let mut client = d.client().await;
    let key =
        client.add_policy(AddPolicyRequest { document: enforce }).await.expect("valid").into_inner().name;
    assert_eq!(key, name);
    // The loaded policy against the suggestion, in the policy's terms: only the mode differs.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("suggested.yaml");
    std::fs::write(&file, &doc).expect("write");
    let out = Command::new(harness::bin("sidewall"))
        .args(["--server", &d.server_arg(), "policy", "diff", &key])
        .arg(&file)
        .output()
        .expect("sidewall policy diff");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "+ spec.mode: enforce -> monitor\n", "{out:?}");

    // The healthy traffic again, under the suggested policy in enforce mode; then the attacks.
    // The first alert of the pod after the healthy steps must be the first attack's.
    benign_steps(&sc, &pod);
    let (a, out) =
        attack(&mut feed, &pod, "log-shipper", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "x"])
            .await;
    assert_eq!(
        (a.rule_id.as_str(), a.action.as_str(), a.policy.as_str()),
        ("loopback-egress", "blocked", key.as_str()),
        "{a:?}"
    );
    assert!(!out.status.success(), "the connect was refused");
    let (a, _) =
        attack(&mut feed, &pod, "log-shipper", &["/bin/swtool", "bind-tcp", "127.0.0.1", "9090"]).await;
    assert_eq!((a.rule_id.as_str(), a.action.as_str()), ("port-squatting", "blocked"), "{a:?}");
    let (a, _) =
        attack(&mut feed, &pod, "storefront", &["/bin/swtool", "connect-tcp", "192.0.2.10", "443", "x"])
            .await;
    assert_eq!((a.rule_id.as_str(), a.action.as_str()), ("egress", "blocked"), "{a:?}");

    // Offline, on the daemon's own recording of this pod: `sidewall policy test` replays both
    // benign runs and the attacks through the same engine, and finds exactly the attacks.
    let lines = export_of(&d, &pod.name).await;
    let (policy, events) = (dir.path().join("suggested.yaml"), dir.path().join("pod.jsonl"));
    std::fs::write(&policy, &doc).expect("write");
    std::fs::write(&events, lines).expect("write");
    let out = Command::new(harness::bin("sidewall"))
        .args(["policy", "test"])
        .arg(&policy)
        .arg("--events")
        .arg(&events)
        .arg("--enforce")
        .output()
        .expect("sidewall policy test");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "something fires: {report}");
    let fired: Vec<&str> = report.lines().filter_map(|l| l.split("  rule=").nth(1)).collect();
    let fired: Vec<&str> = fired.iter().filter_map(|l| l.split(" policy=").next()).collect();
    assert_eq!(
        fired,
        ["loopback-egress action=blocked", "port-squatting action=blocked", "egress action=blocked",],
        "{report}"
    );
}

/// The lines of the daemon's export about `pod`, once its last attack's alert is written.
async fn export_of(d: &Daemon, pod: &str) -> String {
    let needle = format!("\"name\":\"{pod}\"");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&d.export).unwrap_or_default();
        let mine: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
        if mine.iter().any(|l| l.contains("\"policy_alert\"") && l.contains("\"rule_id\":\"egress\"")) {
            return mine.join("\n") + "\n";
        }
        assert!(tokio::time::Instant::now() < deadline, "the export never held the egress alert");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the suggestion `doc` covers what the pod was seen doing before it: each ready
/// port bound by its container, each allowed loopback connect and unix connect.
fn covers(doc: &str, sc: &Scenario) -> bool {
    let Ok(v) = serde_yaml_ng::from_str::<serde_json::Value>(doc) else { return false };
    let rule = |c: &str| {
        v["spec"]["containers"].as_array().and_then(|rs| rs.iter().find(|r| r["name"] == c)).cloned()
    };
    let has = |c: &str, field: &str, want: &str| {
        rule(c)
            .is_some_and(|r| serde_json::to_string(&r["loopback"][field]).unwrap_or_default().contains(want))
    };
    let bound = sc.ready.iter().all(|r| has(&r.container, "bind", &r.port.to_string()));
    let connected = sc.steps.iter().filter(|s| s.enforce.alerts.is_empty()).all(|s| {
        let line = s.command.join(" ");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.iter().position(|w| *w == "connect-tcp" || *w == "connect-unix") {
            Some(i) if words[i] == "connect-tcp" => {
                words.get(i + 2).is_none_or(|port| has(&s.container, "connect", port))
            }
            // The rule names the socket as its listener bound it, not as the step typed it.
            Some(_) => has(&s.container, "unix", "names"),
            None => true,
        }
    });
    bound && connected
}

/// The catalog's attack scenarios: each pod's benign part (its listeners, the steps its
/// policy allows) is observed, a policy suggested and enforced, and then each attack step is
/// caught under the suggested policy: by the rule the catalog names, or stopped (blocked or
/// killed) by a stricter one of the suggestion first.
#[tokio::test(flavor = "multi_thread")]
async fn suggested_policies_catch_the_catalogs_attacks() {
    harness::require_root();
    let d = Daemon::with_config("sensor_set = \"strict\"").await;
    let mut feed = d.events(GetEventsRequest::default()).await;
    let mut client = d.client().await;
    let mut failures = Vec::new();
    for (n, sc) in scenario::catalog().into_iter().filter(|s| !s.benign).enumerate() {
        let pod = ManifestPod::play(&format!("sg{n}"), &sc.manifest()).expect("pod");
        let deadline = tokio::time::Instant::now() + WAIT;
        let bound = |ev: &GetEventsResponse, r: &scenario::Ready| match &ev.event {
            Some(Event::ProcessBind(b)) => {
                pod_of(ev) == Some(pod.name.as_str())
                    && b.process
                        .as_ref()
                        .and_then(|p| p.container.as_ref())
                        .is_some_and(|c| c.name == r.container)
                    && b.socket.as_ref().and_then(|s| s.local.as_ref()).is_some_and(|l| l.port == r.port)
            }
            _ => false,
        };
        while !sc.ready.iter().all(|r| feed.seen.iter().any(|ev| bound(ev, r))) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(feed.next(left).await.is_some(), "{}: the pod's listeners never all bound", sc.name);
        }
        for step in sc.steps.iter().filter(|s| s.enforce.alerts.is_empty()) {
            let out =
                pod.exec_command(&step.container, &step.argv(std::process::id())).output().expect("exec");
            assert!(out.status.success(), "{}: allowed step {:?} failed: {out:?}", sc.name, step.name);
        }
        let (name, doc) = loop {
            let req = SuggestPolicyRequest { pod_regex: pod.name.clone(), ..Default::default() };
            let resp = client.suggest_policy(req).await.expect("SuggestPolicy").into_inner();
            if let Some(p) = resp.policies.first()
                && covers(&p.document, &sc)
            {
                break (p.name.clone(), p.document.clone());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: the suggestion never covered the pod: {resp:?}",
                sc.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let enforce = doc.replacen("  mode: monitor\n", "  mode: enforce\n", 1);
        client.add_policy(AddPolicyRequest { document: enforce }).await.expect("valid");
        for step in sc.steps.iter().filter(|s| !s.enforce.alerts.is_empty()) {
            let want = &step.enforce.alerts[0].rule;
            let mut cmd = pod.exec_command(&step.container, &step.argv(std::process::id()));
            let exec = tokio::task::spawn_blocking(move || cmd.output());
            let deadline = tokio::time::Instant::now() + WAIT;
            let caught = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match feed.next(left).await {
                    Some(ev) if pod_of(&ev) == Some(pod.name.as_str()) => {
                        if let Some(a) = alert(&ev).filter(|a| !runtime_setup(a) && a.policy == name) {
                            break Some(a.clone());
                        }
                    }
                    Some(_) => {}
                    None => break None,
                }
            };
            let _ = exec.await;
            match caught {
                Some(a) if a.rule_id == *want => {
                    println!("{}: {:?}: {} {}", sc.name, step.name, a.rule_id, a.action)
                }
                // A stricter rule of the suggestion can stop the attack first (reading the app's
                // /proc/<pid>/ns before entering it, a unix socket the pod never used).
                Some(a) if a.action == "killed" || a.action == "blocked" => println!(
                    "{}: {:?}: {} {} (first; the catalog's policy raises {want})",
                    sc.name, step.name, a.rule_id, a.action
                ),
                Some(a) => failures.push(format!(
                    "{}: {:?}: first alert {} {} ({}), want {want}",
                    sc.name, step.name, a.rule_id, a.action, a.message
                )),
                None => failures.push(format!("{}: {:?}: no alert", sc.name, step.name)),
            }
        }
        client.delete_policy(sidewall_proto::v1::DeletePolicyRequest { name }).await.expect("delete");
    }
    assert!(failures.is_empty(), "{} attack(s) not caught:\n{}", failures.len(), failures.join("\n"));
}
