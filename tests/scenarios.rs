//! The attack-scenario catalog (`tests/scenarios/`) on real podman pods against a real
//! sidewalld: every scenario runs in monitor mode and in enforce mode, each in a fresh pod, and
//! must raise exactly the alerts its catalog entry expects, with the expected action, and
//! leave its commands with the expected result. The run prints a table (`make scenarios`
//! shows it): scenario, step, mode, what was detected, whether it was blocked, the command's
//! result and the detection latency (from the start of the attack command to the alert's
//! arrival at this gRPC client).
//!
//! Scenarios run one after the other, and each policy is loaded only while its scenario runs:
//! a daemon enforces for the whole node, and the catalog's container names are its own.
//!
//! The deploy/ checks (manifests, Helm chart, kind script) are in `scenarios/deploy.rs`.

#[path = "scenarios/deploy.rs"]
mod deploy;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use harness::{
    Daemon,
    scenario::{self, ExpectedAlert, ManifestPod, Scenario, Step},
};
use sidewall_proto::v1::{
    AddPolicyRequest, DeletePolicyRequest, EventType, Filter, GetEventsRequest, GetEventsResponse,
    ListPoliciesRequest, PolicyAlert, Process, SetPolicyModeRequest, get_events_response::Event,
};
use tokio::sync::mpsc;

/// Pod names of this run: `scn-<pid>-<n>`.
const PREFIX: &str = "scn";
/// How long a step's alerts may take after its command has ended.
const ALERT_WAIT: Duration = Duration::from_secs(10);
const READY_WAIT: Duration = Duration::from_secs(30);
const MODES: [&str; 2] = ["monitor", "enforce"];

/// An event of this run's pods, stamped with its arrival at this client.
struct Seen {
    at: Instant,
    /// From the kernel's record of the event (the event's time) to its arrival here.
    kernel_to_client: Option<Duration>,
    ev: GetEventsResponse,
}

struct Feed {
    rx: mpsc::UnboundedReceiver<Seen>,
}

impl Feed {
    async fn start(d: &Daemon) -> Self {
        let kinds = [
            EventType::ProcessExec,
            EventType::ProcessBind,
            EventType::ProcessNamespace,
            EventType::ProcessAccess,
            EventType::PolicyAlert,
        ];
        let req = GetEventsRequest {
            allow_list: vec![Filter {
                event_set: kinds.iter().map(|k| *k as i32).collect(),
                pod_regex: vec![format!("{PREFIX}-{}-.*", std::process::id())],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut stream = d.events(req).await;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(ev) = stream.next(Duration::from_secs(3600)).await {
                let (at, wall) = (Instant::now(), SystemTime::now());
                let kernel_to_client = ev
                    .time
                    .as_ref()
                    .map(|t| UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
                    .and_then(|t| wall.duration_since(t).ok());
                if tx.send(Seen { at, kernel_to_client, ev }).is_err() {
                    return;
                }
            }
        });
        Self { rx }
    }

    /// The next event, or None at `deadline`.
    async fn next_until(&mut self, deadline: Instant) -> Option<Seen> {
        tokio::time::timeout_at(deadline.into(), self.rx.recv()).await.ok().flatten()
    }

    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

fn container_of(p: Option<&Process>) -> &str {
    p.and_then(|p| p.container.as_ref()).map_or("", |c| c.name.as_str())
}

fn pod_of(p: Option<&Process>) -> &str {
    p.and_then(|p| p.pod.as_ref()).map_or("", |c| c.name.as_str())
}

/// An alert raised by the container runtime's own setup (`runc init` joining the pod's
/// namespaces before the container's first exec), not by the workload.
fn is_runtime_setup(a: &PolicyAlert) -> bool {
    a.process.as_ref().is_some_and(|p| {
        (p.binary.starts_with("/dev/fd/") || p.binary == "/proc/self/exe" || p.binary.ends_with("/runc"))
            && p.arguments.first().is_some_and(|a| a == "init")
    })
}

fn alert_of<'a>(ev: &'a GetEventsResponse, pod: &str) -> Option<&'a PolicyAlert> {
    match &ev.event {
        Some(Event::PolicyAlert(a)) if pod_of(a.process.as_ref()) == pod => Some(a),
        _ => None,
    }
}

/// One line of the table: one step of one scenario in one mode.
struct Row {
    scenario: String,
    step: String,
    mode: &'static str,
    detected: String,
    blocked: String,
    result: String,
    latency: Option<Duration>,
    /// From the kernel's event to the alert's arrival here.
    pipeline: Option<Duration>,
    gap: Option<String>,
}

/// Everything seen while one scenario ran in one mode.
struct Run<'a> {
    sc: &'a Scenario,
    mode: &'static str,
    pod: ManifestPod,
    /// Events of this pod, with their arrival.
    log: Vec<Seen>,
    /// Indexes into `log` of alerts already matched to a step.
    used: BTreeSet<usize>,
    failures: Vec<String>,
}

impl Run<'_> {
    fn fail(&mut self, what: String) {
        self.failures.push(format!("{} [{}]: {what}", self.sc.name, self.mode));
    }

    fn keep(&mut self, ev: Seen) {
        let p = match &ev.ev.event {
            Some(Event::ProcessExec(e)) => e.process.as_ref(),
            Some(Event::ProcessBind(b)) => b.process.as_ref(),
            Some(Event::ProcessNamespace(n)) => n.process.as_ref(),
            Some(Event::ProcessAccess(a)) => a.process.as_ref(),
            Some(Event::PolicyAlert(a)) => a.process.as_ref(),
            _ => None,
        };
        if pod_of(p) == self.pod.name {
            self.log.push(ev);
        }
    }

    /// Waits until every `ready` port of the scenario is bound by its container.
    async fn wait_ready(&mut self, feed: &mut Feed) {
        let deadline = Instant::now() + READY_WAIT;
        let bound = |log: &[Seen], container: &str, port: u32| {
            log.iter().any(|Seen { ev: e, .. }| {
                matches!(&e.event, Some(Event::ProcessBind(b))
                    if container_of(b.process.as_ref()) == container
                        && b.result == "success"
                        && b.socket.as_ref().and_then(|s| s.local.as_ref()).is_some_and(|l| l.port == port))
            })
        };
        for r in self.sc.ready.clone() {
            while !bound(&self.log, &r.container, r.port) {
                match feed.next_until(deadline).await {
                    Some(ev) => self.keep(ev),
                    None => {
                        let seen: Vec<String> = self.log.iter().map(|x| describe(&x.ev)).collect();
                        self.fail(format!(
                            "{} never bound port {}; events of the pod: {seen:?}",
                            r.container, r.port
                        ));
                        return;
                    }
                }
            }
        }
    }

    /// The first unused alert after `since` that `want` describes.
    fn find(&self, want: &ExpectedAlert, step: &Step, since: Instant) -> Option<usize> {
        self.log.iter().enumerate().position(|(i, Seen { at, ev: e, .. })| {
            !self.used.contains(&i)
                && *at >= since
                && alert_of(e, &self.pod.name).is_some_and(|a| {
                    !is_runtime_setup(a)
                        && a.rule_id == want.rule
                        && a.action == want.action
                        && a.mode == self.mode
                        && a.policy == self.sc.policy_key()
                        && container_of(a.process.as_ref()) == step.container
                        && want.peer.as_deref().is_none_or(|p| container_of(a.peer.as_ref()) == p)
                })
        })
    }

    /// Runs one attack step: the command in its container while the feed is read, then the
    /// alerts it must raise.
    async fn step(&mut self, feed: &mut Feed, step: &Step) -> Row {
        let expect = step.expect(self.mode).clone();
        let allowed = expect.alerts.is_empty();
        // A step the policy allows must raise nothing: what earlier steps raised is in first.
        if allowed {
            self.sync(feed).await;
        }
        let argv = step.argv(std::process::id());
        let mut cmd = self.pod.exec_command(&step.container, &argv);
        let start = Instant::now();
        let mut exec = tokio::task::spawn_blocking(move || cmd.output());
        let out = loop {
            tokio::select! {
                out = &mut exec => break out.expect("exec task").expect("podman exec"),
                Some(ev) = feed.rx.recv() => self.keep(ev),
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let code = out.status.code().unwrap_or(-1);

        // The expected alerts, each matched once; the latency is the first one's.
        let deadline = Instant::now() + ALERT_WAIT;
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for want in &expect.alerts {
            loop {
                if let Some(i) = self.find(want, step, start) {
                    self.used.insert(i);
                    found.push(i);
                    break;
                }
                match feed.next_until(deadline).await {
                    Some(ev) => self.keep(ev),
                    None => {
                        missing.push(format!("{}/{}", want.rule, want.action));
                        break;
                    }
                }
            }
        }
        let first = found.iter().copied().min_by_key(|i| self.log[*i].at);
        let latency = first.map(|i| self.log[i].at.saturating_duration_since(start));
        let pipeline = first.and_then(|i| self.log[i].kernel_to_client);

        if !missing.is_empty() {
            let seen: Vec<String> = self
                .log
                .iter()
                .filter_map(|x| alert_of(&x.ev, &self.pod.name))
                .map(|a| {
                    format!(
                        "{}/{} by {} ({})",
                        a.rule_id,
                        a.action,
                        container_of(a.process.as_ref()),
                        a.message
                    )
                })
                .collect();
            self.fail(format!(
                "step {:?}: expected alerts {missing:?} (rule/action) did not arrive within {ALERT_WAIT:?} \
                 of the command's end; alerts seen from the pod: {seen:?}",
                step.name
            ));
        }
        if allowed && self.sync(feed).await {
            let raised: Vec<String> = self
                .log
                .iter()
                .filter(|x| x.at >= start)
                .filter_map(|x| alert_of(&x.ev, &self.pod.name))
                .filter(|a| !is_runtime_setup(a))
                .map(|a| {
                    format!(
                        "{}/{} by {}: {}",
                        a.rule_id,
                        a.action,
                        container_of(a.process.as_ref()),
                        a.message
                    )
                })
                .collect();
            if !raised.is_empty() {
                self.fail(format!("step {:?} is allowed, but raised {raised:?}", step.name));
            }
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if expect.exit.is_some_and(|e| e != code) {
            self.fail(format!(
                "step {:?}: exit {code}, expected {:?}; stdout {stdout:?}, stderr {stderr:?}",
                step.name, expect.exit
            ));
        }
        if let Some(prefix) = &expect.stdout
            && !stdout.starts_with(prefix.as_str())
        {
            self.fail(format!("step {:?}: stdout {stdout:?} does not start with {prefix:?}", step.name));
        }
        if let Some(part) = &expect.stdout_contains
            && !stdout.contains(part.as_str())
        {
            self.fail(format!("step {:?}: stdout {stdout:?} does not contain {part:?}", step.name));
        }

        let actions: Vec<&PolicyAlert> =
            found.iter().filter_map(|i| alert_of(&self.log[*i].ev, &self.pod.name)).collect();
        let detected = if actions.is_empty() {
            "-".to_string()
        } else {
            actions.iter().map(|a| format!("{} ({})", a.rule_id, a.action)).collect::<Vec<_>>().join(", ")
        };
        let stopped = actions.iter().any(|a| a.action == "blocked" || a.action == "killed") && code != 0;
        let first_line = stdout.lines().next().unwrap_or("");
        let blocked = match (allowed, self.mode, stopped) {
            (true, _, _) => "allowed".to_string(),
            // Killed, but only after the command had done its work and said so.
            (false, "enforce", true) if code == 137 && !first_line.is_empty() => "late".to_string(),
            (false, "enforce", true) => "yes".to_string(),
            (false, _, _) => "no".to_string(),
        };
        let result = match code {
            137 if first_line.is_empty() => "killed (137)".to_string(),
            137 => format!("killed (137): {}", truncate(first_line, 28)),
            _ if first_line.is_empty() => format!("exit {code}"),
            _ => format!("exit {code}: {}", truncate(first_line, 28)),
        };
        Row {
            scenario: self.sc.name.clone(),
            step: step.name.clone(),
            mode: self.mode,
            detected,
            blocked,
            result,
            latency,
            pipeline,
            gap: expect.gap.clone(),
        }
    }

    /// Execs a marker in the pod and waits for its exec event: everything the daemon saw
    /// before it has been processed.
    async fn sync(&mut self, feed: &mut Feed) -> bool {
        let marker = format!("scenario-sync-{}-{}", self.pod.name, self.log.len());
        let container = self.sc.steps[0].container.clone();
        let out = self.pod.exec(&container, &["/bin/echo", &marker]);
        if !out.status.success() {
            self.fail(format!("the sync exec failed: {}", String::from_utf8_lossy(&out.stderr)));
            return false;
        }
        let deadline = Instant::now() + ALERT_WAIT;
        let synced = |log: &[Seen]| {
            log.iter().any(|Seen { ev: e, .. }| {
                matches!(&e.event, Some(Event::ProcessExec(x))
                    if x.process.as_ref().is_some_and(|p| p.arguments == [marker.clone()]))
            })
        };
        while !synced(&self.log) {
            match feed.next_until(deadline).await {
                Some(ev) => self.keep(ev),
                None => {
                    self.fail("the sync exec was never reported".into());
                    return false;
                }
            }
        }
        true
    }

    /// Fails the run on any alert of this pod that no step expects (for the benign
    /// scenario: none at all), and on any raised by the runtime's own container setup.
    async fn check_no_other_alerts(&mut self, feed: &mut Feed) {
        if !self.sync(feed).await {
            return;
        }
        // Alerts raised by late socket records, or by the daemon's own kill.
        let grace = Instant::now() + Duration::from_millis(500);
        while let Some(ev) = feed.next_until(grace).await {
            self.keep(ev);
        }
        let expected: BTreeSet<&str> = self
            .sc
            .steps
            .iter()
            .flat_map(|s| s.expect(self.mode).alerts.iter().map(|a| a.rule.as_str()))
            .collect();
        let (mut setup, mut unexpected) = (Vec::new(), Vec::new());
        for a in self.log.iter().filter_map(|x| alert_of(&x.ev, &self.pod.name)) {
            let line = format!(
                "{}/{} by {} {:?}: {}",
                a.rule_id,
                a.action,
                container_of(a.process.as_ref()),
                a.process.as_ref().map(|p| &p.arguments),
                a.message
            );
            if is_runtime_setup(a) {
                setup.push(line);
            } else if !expected.contains(a.rule_id.as_str()) {
                unexpected.push(line);
            }
        }
        if !setup.is_empty() {
            self.fail(format!("the runtime's container setup (runc init) raised alerts: {setup:?}"));
        }
        if !unexpected.is_empty() {
            let what = if self.sc.benign { "the benign pod raised alerts" } else { "unexpected alerts" };
            self.fail(format!("{what}: {unexpected:?}"));
        }
    }
}

/// A short description of an event, for failure messages.
fn describe(e: &GetEventsResponse) -> String {
    match &e.event {
        Some(Event::ProcessExec(x)) => {
            let p = x.process.as_ref();
            format!("exec {} {}", container_of(p), p.map_or("", |p| p.binary.as_str()))
        }
        Some(Event::ProcessBind(b)) => format!(
            "bind {} port {} {}",
            container_of(b.process.as_ref()),
            b.socket.as_ref().and_then(|s| s.local.as_ref()).map_or(0, |l| l.port),
            b.result
        ),
        Some(Event::ProcessNamespace(n)) => {
            let p = n.process.as_ref();
            format!(
                "namespace {} {} {:?} {} changed={:?} result={} target={}",
                container_of(p),
                p.map_or("", |p| p.binary.as_str()),
                p.map(|p| &p.arguments),
                n.operation,
                n.changed,
                n.result,
                container_of(n.target.as_ref())
            )
        }
        Some(Event::ProcessAccess(a)) => {
            let p = a.process.as_ref();
            format!(
                "access {} {} {} {}",
                container_of(p),
                p.map_or("", |p| p.binary.as_str()),
                a.access,
                a.path
            )
        }
        Some(Event::PolicyAlert(a)) => {
            format!("alert {}/{} by {}: {}", a.rule_id, a.action, container_of(a.process.as_ref()), a.message)
        }
        _ => "other".into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

async fn set_mode(d: &Daemon, sc: &Scenario, mode: &str) {
    d.client()
        .await
        .set_policy_mode(SetPolicyModeRequest { name: sc.policy_key(), mode: mode.into() })
        .await
        .unwrap_or_else(|e| panic!("{}: set mode {mode}: {e}", sc.name));
}

/// What running scenarios produced.
#[derive(Default)]
struct Outcome {
    rows: Vec<Row>,
    failures: Vec<String>,
}

/// Runs `sc` in one mode in a fresh pod; returns its rows and failures.
async fn run_mode(d: &Daemon, feed: &mut Feed, sc: &Scenario, mode: &'static str) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    set_mode(d, sc, mode).await;
    feed.drain();
    let pod = match ManifestPod::play(PREFIX, &sc.manifest()) {
        Ok(p) => p,
        Err(e) => return (rows, vec![format!("{} [{mode}]: {e}", sc.name)]),
    };
    let mut run = Run { sc, mode, pod, log: Vec::new(), used: BTreeSet::new(), failures: Vec::new() };
    run.wait_ready(feed).await;
    if run.failures.is_empty() {
        for step in &sc.steps {
            rows.push(run.step(feed, step).await);
        }
        run.check_no_other_alerts(feed).await;
    }
    (rows, std::mem::take(&mut run.failures))
}

/// Runs `sc` in both modes, each once in a fresh pod. A mode that fails fails the run: its
/// failures say what the catalog expects and what this run saw.
async fn run_scenario(d: &Daemon, feed: &mut Feed, sc: &Scenario, out: &mut Outcome) {
    let added = d
        .client()
        .await
        .add_policy(AddPolicyRequest { document: sc.policy() })
        .await
        .unwrap_or_else(|e| panic!("{}: policy.yaml refused: {}", sc.name, e.message()))
        .into_inner();
    assert_eq!(added.name, sc.policy_key(), "{}: the policy is named after the scenario", sc.name);
    for mode in MODES {
        let t = Instant::now();
        let (mut rows, failures) = run_mode(d, feed, sc, mode).await;
        let verdict = if failures.is_empty() { "ok" } else { "FAILED" };
        eprintln!("scenario {} [{mode}]: {verdict} in {:.1?}", sc.name, t.elapsed());
        for f in &failures {
            eprintln!("  {f}");
        }
        out.rows.append(&mut rows);
        out.failures.extend(failures);
    }
    let _ = d.client().await.delete_policy(DeletePolicyRequest { name: sc.policy_key() }).await;
}

fn table(rows: &[Row]) -> String {
    let header =
        ["scenario", "step", "mode", "detected (action)", "blocked", "result", "latency", "kernel->client"];
    let mut notes: Vec<String> = Vec::new();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let mut result = r.result.clone();
            if let Some(gap) = &r.gap {
                let n = notes.iter().position(|x| x == gap).unwrap_or_else(|| {
                    notes.push(gap.clone());
                    notes.len() - 1
                });
                result.push_str(&format!(" [{}]", n + 1));
            }
            [
                r.scenario.clone(),
                r.step.clone(),
                r.mode.to_string(),
                r.detected.clone(),
                r.blocked.clone(),
                result,
                r.latency.map_or("-".into(), |l| format!("{} ms", l.as_millis())),
                r.pipeline.map_or("-".into(), |l| format!("{:.1} ms", l.as_secs_f64() * 1000.0)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, x) in widths.iter_mut().zip(c) {
            *w = (*w).max(x.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::from("|");
        for (x, w) in c.iter().zip(widths) {
            s.push_str(&format!(" {x:<w$} |"));
        }
        s + "\n"
    };
    let mut out = line(&header.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for c in &cells {
        out.push_str(&line(c));
    }
    if !notes.is_empty() {
        out.push_str("\nKnown limits recorded in the catalog:\n");
        for (i, n) in notes.iter().enumerate() {
            out.push_str(&format!("  [{}] {n}\n", i + 1));
        }
    }
    out.push_str(
        "\nlatency: from the start of the attack command (`podman exec`, ~100 ms of its own) to the alert's \
         arrival at this gRPC client; the namespace attacks include their own 1 s `sleep`.\n\
         kernel->client: from the kernel's record of the event (the alert's time) to its arrival here.\n",
    );
    out
}

/// The catalog covers every detection, in both modes, with a benign baseline.
#[test]
fn the_catalog_covers_every_rule() {
    let catalog = scenario::catalog();
    let rules: BTreeSet<String> = catalog
        .iter()
        .flat_map(|s| &s.steps)
        .flat_map(|s| s.monitor.alerts.iter().chain(&s.enforce.alerts))
        .map(|a| a.rule.clone())
        .collect();
    for rule in [
        "loopback-egress",
        "loopback-unix",
        "port-squatting",
        "egress",
        "namespace-transition",
        "process-access",
        "runtime-socket",
    ] {
        assert!(rules.contains(rule), "no scenario raises {rule}");
    }
    assert!(catalog.iter().any(|s| s.benign), "a benign baseline");
    for sc in &catalog {
        assert!(["default", "strict"].contains(&sc.sensor_set.as_str()), "{}: sensor_set", sc.name);
        assert!(!sc.steps.is_empty(), "{}: no steps", sc.name);
        assert!(sc.policy().contains("mode: monitor"), "{}: policies start in monitor mode", sc.name);
        for step in &sc.steps {
            for mode in MODES {
                let e = step.expect(mode);
                let wrong: Vec<_> = e
                    .alerts
                    .iter()
                    .filter(|a| {
                        let ok: &[&str] = if mode == "monitor" {
                            &["would_block", "would_kill", "alert"]
                        } else {
                            &["blocked", "killed", "alert"]
                        };
                        !ok.contains(&a.action.as_str())
                    })
                    .collect();
                assert!(wrong.is_empty(), "{}: {:?} in {mode}: actions {wrong:?}", sc.name, step.name);
                if sc.benign {
                    assert!(e.alerts.is_empty(), "{}: a benign step expects no alert", sc.name);
                }
            }
        }
        // Egress only ever to TEST-NET-1, in a pod without a network (see the harness); the
        // other addresses are the pod's own stack in any of their forms.
        for step in &sc.steps {
            for arg in &step.command {
                let Ok(ip) = arg.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) else { continue };
                let test_net = matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[..3] == [192, 0, 2]);
                assert!(
                    ip.is_loopback() || ip.is_unspecified() || test_net,
                    "{}: {arg} is not a loopback, unspecified or TEST-NET-1 address",
                    sc.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attack_scenarios_in_monitor_and_enforce_mode() {
    // SIDEWALL_SCENARIOS=a,b runs only those scenarios.
    let only: Vec<String> = std::env::var("SIDEWALL_SCENARIOS")
        .map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let catalog: Vec<Scenario> =
        scenario::catalog().into_iter().filter(|s| only.is_empty() || only.contains(&s.name)).collect();
    assert!(!catalog.is_empty(), "no scenario matches SIDEWALL_SCENARIOS={only:?}");
    let started = Instant::now();
    let mut out = Outcome::default();
    for set in ["default", "strict"] {
        let group: Vec<&Scenario> = catalog.iter().filter(|s| s.sensor_set == set).collect();
        if group.is_empty() {
            continue;
        }
        let d = Daemon::with_config(&format!("sensor_set = \"{set}\"")).await;
        let mut feed = Feed::start(&d).await;
        let failed_before = out.failures.len();
        for sc in group {
            run_scenario(&d, &mut feed, sc, &mut out).await;
        }
        if out.failures.len() > failed_before {
            let lost = d.status().await.lost_by_stage;
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let diagnosis = format!(
                "daemon ({set} set): events lost by stage: {lost:?}; last lines of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            out.failures.push(diagnosis);
        }
    }
    println!("\n{}", table(&out.rows));
    let steps: usize = catalog.iter().map(|s| s.steps.len()).sum();
    println!(
        "{} scenarios, {steps} attack and baseline steps, each in monitor and enforce mode, in {:.0?}",
        catalog.len(),
        started.elapsed()
    );
    let failures = out.failures;
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Scenarios run against the daemon in its image: the strict sensor set's /proc, ptrace,
/// namespace and unix socket attacks, which the container reaches only through the host's PID
/// namespace, the chart's capabilities and its mounts; and the benign baseline.
const IN_IMAGE: &[&str] = &["benign-mesh-and-logs", "host-escape", "proc-environ", "unix-channel"];
/// The scenario whose pod keeps running while the daemon's container restarts.
const ACROSS_RESTART: &str = "loopback-probe";

/// Waits until the daemon holds policy `key` in `mode`.
async fn wait_policy(d: &Daemon, key: &str, mode: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let list = d.client().await.list_policies(ListPoliciesRequest {}).await.map_err(|e| e.to_string())?;
        let list = list.into_inner().policies;
        if list.iter().any(|p| p.name == key && p.mode == mode) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<_> = list.iter().map(|p| format!("{} ({})", p.name, p.mode)).collect();
            return Err(format!("the daemon never loaded {key} in {mode} mode; it holds {names:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// sidewalld in the image `make image` built, run under podman exactly as the chart's
/// DaemonSet says (harness::chart): the attack scenarios pass against it; a pod keeps its
/// rules while the daemon's container is killed, after the container starts again, and once
/// it is stopped as an update stops it.
#[tokio::test(flavor = "multi_thread")]
async fn attack_scenarios_against_the_daemon_in_its_image_as_the_chart_runs_it() {
    let mut d = Daemon::in_image("sensorSet: strict\n").await;
    let (options, config) = d.pod_spec().expect("a daemon in its image");
    for want in ["--read-only", "--cap-drop", "--pid", "--cgroupns"] {
        assert!(options.iter().any(|o| o == want), "{want}: {options:?}");
    }
    assert!(!options.iter().any(|o| o.contains("privileged")), "{options:?}");
    assert!(config.contains("sensor_set = \"strict\""), "{config}");
    let probe = d.probe();
    assert!(
        probe.status.success(),
        "the chart's probe fails on a healthy daemon: {}{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );

    let catalog = scenario::catalog();
    let mut feed = Feed::start(&d).await;
    let mut out = Outcome::default();
    for sc in catalog.iter().filter(|s| IN_IMAGE.contains(&s.name.as_str())) {
        run_scenario(&d, &mut feed, sc, &mut out).await;
    }

    // A pod started under one daemon container keeps its rules while the container is down
    // and after it starts again. Its policy comes from a source that outlives the daemon (a
    // cluster's objects; here the policy directory the chart's extra volume mounts).
    let sc = catalog.iter().find(|s| s.name == ACROSS_RESTART).expect("the scenario");
    let doc = sc.policy().replace("  mode: monitor\n", "  mode: enforce\n");
    std::fs::write(d.policy_dir().join(format!("{}.yaml", sc.name)), doc).expect("write policy");
    wait_policy(&d, &sc.policy_key(), "enforce").await.unwrap_or_else(|e| panic!("{e}"));
    let pod = ManifestPod::play(PREFIX, &sc.manifest()).unwrap_or_else(|e| panic!("{}: {e}", sc.name));
    let mut run =
        Run { sc, mode: "enforce", pod, log: Vec::new(), used: BTreeSet::new(), failures: Vec::new() };
    run.wait_ready(&mut feed).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures);
    for step in &sc.steps {
        out.rows.push(run.step(&mut feed, step).await);
    }

    drop(feed);
    d.crash();
    let blocked: Vec<&Step> = sc.steps.iter().filter(|s| !s.enforce.alerts.is_empty()).collect();
    assert!(!blocked.is_empty(), "{}: a step the policy blocks", sc.name);
    for step in &blocked {
        let got = run
            .pod
            .exec_command(&step.container, &step.argv(std::process::id()))
            .output()
            .expect("podman exec");
        let stdout = String::from_utf8_lossy(&got.stdout).trim().to_string();
        if step.enforce.exit.is_some_and(|e| Some(e) != got.status.code())
            || step.enforce.stdout.as_ref().is_some_and(|p| !stdout.starts_with(p.as_str()))
        {
            out.failures.push(format!(
                "{} {:?} while the daemon's container was down: {:?} {stdout:?}, expected {:?} {:?}",
                sc.name,
                step.name,
                got.status.code(),
                step.enforce.exit,
                step.enforce.stdout
            ));
        }
    }

    d.restart().await;
    let probe = d.probe();
    assert!(
        probe.status.success(),
        "the probe after the restart: {}",
        String::from_utf8_lossy(&probe.stdout)
    );
    let mut feed = Feed::start(&d).await;
    wait_policy(&d, &sc.policy_key(), "enforce").await.unwrap_or_else(|e| panic!("{e}"));
    for step in &sc.steps {
        // Listeners bound before the restart are not attributed to their container again (the
        // daemon learns port owners from bind records, and seeds none): the alert names the
        // port, not the peer. Recorded as a known limit; blocked and alerted all the same.
        let mut step = step.clone();
        for a in &mut step.enforce.alerts {
            if a.peer.take().is_some() {
                step.enforce.gap = Some(
                    "after a daemon restart, a listener bound before it is not attributed to its \
                     container: the alert names the port, not the peer"
                        .into(),
                );
            }
        }
        let mut row = run.step(&mut feed, &step).await;
        row.step = format!("{} (after restart)", row.step);
        out.rows.push(row);
    }
    out.failures.append(&mut run.failures);

    // A daemon pod stopped as an update or a drain stops it (SIGTERM) leaves enforcement in
    // place for the next one.
    drop(feed);
    d.stop();
    assert!(d.pins.exists(), "{} is gone after a stop", d.pins.display());
    for step in &blocked {
        let got = run
            .pod
            .exec_command(&step.container, &step.argv(std::process::id()))
            .output()
            .expect("podman exec");
        if step.enforce.exit.is_some_and(|e| Some(e) != got.status.code()) {
            out.failures.push(format!(
                "{} {:?} once the daemon's container stopped: exit {:?}, expected {:?}",
                sc.name,
                step.name,
                got.status.code(),
                step.enforce.exit
            ));
        }
    }

    println!("\n{}", table(&out.rows));
    assert!(out.failures.is_empty(), "{} failure(s):\n{}", out.failures.len(), out.failures.join("\n"));
}
