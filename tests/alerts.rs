//! The alert lane on real pods: no flood can hide an alert. One container sends forbidden
//! datagrams as fast as it can (each refused in the kernel), a second fills the telemetry ring
//! with allowed connects, while a third commits a single violation; that violation's alert
//! reaches the gRPC client and the export file every time, and the refusal flood is accounted
//! for exactly: the alerts sent one by one plus the counts of the aggregated alerts equal the
//! refusals the kernel made (and those the flooder saw).

use std::{collections::HashMap, fs, time::Duration};

use harness::{
    Daemon, EventStream,
    pod::{Options, Pod, Spec},
};
use sidewall_proto::v1::{EventType, Filter, GetEventsRequest, PolicyAlert, get_events_response::Event};

const TRIALS: usize = 20;
const WAIT: Duration = Duration::from_secs(30);
/// The flood's own bound, should the test fail before stopping it.
const FLOOD_SECONDS: &str = "120";

/// flood<tag> may reach nothing on loopback; app<tag> may bind 7000 only; noisy<tag> may
/// connect to 9999 (telemetry only).
fn policy(tag: &str) -> String {
    format!(
        "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: lane\nspec:\n  mode: enforce\n  containers:\n    - name: flood{tag}\n      loopback:\n        connect: []\n      action: block\n    - name: app{tag}\n      loopback:\n        bind: [7000]\n      action: block\n    - name: noisy{tag}\n      loopback:\n        connect:\n          - ports: [9999]\n      action: block\n"
    )
}

fn container_of(a: &PolicyAlert) -> &str {
    a.process.as_ref().and_then(|p| p.container.as_ref()).map_or("", |c| c.name.as_str())
}

/// Individual alerts and aggregated counts, per container.
#[derive(Default, Debug)]
struct Seen {
    single: HashMap<String, u64>,
    aggregated: HashMap<String, u64>,
    aggregated_alerts: u64,
    /// Alerts by container, rule, trigger, action and enforcer: what a failure shows.
    kinds: std::collections::BTreeMap<String, u64>,
}

impl Seen {
    fn add(&mut self, a: &PolicyAlert) {
        let c = container_of(a).to_string();
        let mut kind = format!("{c}/{}/{}/{}/{}", a.rule_id, a.trigger, a.action, a.enforced_by);
        if a.enforced_by.is_empty() {
            // Not the kernel's refusal: say what it was.
            let p = a.process.as_ref();
            kind += &format!(
                " {:?} {:?} {:?} {:?}",
                a.message,
                p.map(|p| (&p.binary, p.pid, &p.source, p.cgroup_id)),
                a.socket.as_ref().map(|s| (&s.local, &s.remote)),
                a.peer.as_ref().map(|p| (&p.binary, p.pid))
            );
        }
        *self.kinds.entry(kind).or_default() += 1;
        if a.count > 0 {
            *self.aggregated.entry(c).or_default() += a.count;
            self.aggregated_alerts += 1;
        } else {
            *self.single.entry(c).or_default() += 1;
        }
    }

    fn total(&self, c: &str) -> u64 {
        self.single.get(c).copied().unwrap_or(0) + self.aggregated.get(c).copied().unwrap_or(0)
    }
}

/// Reads the stream until `done` holds for what was seen (or panics after WAIT).
async fn read_until(
    d: &Daemon,
    events: &mut EventStream,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match events.next(left).await {
            Some(ev) => {
                if let Some(Event::PolicyAlert(a)) = &ev.event {
                    seen.add(a);
                }
            }
            None => {
                let st = d.status().await;
                panic!(
                    "timed out waiting for {what}; seen {seen:?}; daemon: lost {:?}, alerts ahead of causes {}, refused {:?}",
                    st.lost_by_stage, st.alerts_ahead_of_causes, st.kernel_refusals
                )
            }
        }
    }
}

/// Waits until the rule of each of `containers` of `pod` is in the kernel (the daemon lists
/// them with their policy): before, what they do is only judged after the fact, and a count
/// of the kernel's refusals would miss it.
async fn rules_in_force(d: &Daemon, pod: &Pod, containers: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = d.status().await;
        let guarded = |name: &str| {
            status.containers.iter().any(|c| {
                c.container.as_ref().is_some_and(|c| c.name == name)
                    && c.pod.as_ref().is_some_and(|p| p.name == pod.name)
                    && !c.policy.is_empty()
            })
        };
        if containers.iter().all(|c| guarded(c)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "rules never in force: {:#?}", status.containers);
        // The daemon learns a container from its first process seen: give it one.
        for c in containers {
            pod.exec(c, &["/bin/true"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_flood_can_hide_an_alert() {
    let tag = "l";
    let (flooder, app, noisy) = (format!("flood{tag}"), format!("app{tag}"), format!("noisy{tag}"));
    let dir = tempfile::tempdir().expect("policy dir");
    fs::write(dir.path().join("lane.yaml"), policy(tag)).expect("write policy");
    // A small budget and small queues: the flood must overrun them. The export file is the
    // SOC's, of alerts only: telemetry cannot rotate them away.
    let d = Daemon::with_config(&format!(
        "policy_dir = \"{}\"\nalert_rate = 20\nalert_burst = 20\nsubscriber_queue = 256\nexport_file_events = \"alerts\"\n",
        dir.path().display()
    ))
    .await;
    // Every event: the flood's telemetry competes with the alerts for this client's queues.
    let mut events = d.events(GetEventsRequest::default()).await;
    let pod = Pod::play_with(
        "lane",
        &[
            Spec { name: &flooder, command: &["/bin/sleep", "3600"], ..Default::default() },
            Spec { name: &app, command: &["/bin/sleep", "3600"], ..Default::default() },
            Spec { name: &noisy, command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    );
    rules_in_force(&d, &pod, &[&flooder, &app, &noisy]).await;
    // The first refusal is heard.
    let mut seen = Seen::default();
    for _ in 0..100 {
        let o = pod.exec(&app, &["/bin/swtool", "bind-tcp", "127.0.0.1", "7001"]);
        if String::from_utf8_lossy(&o.stdout).starts_with("error EPERM") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    read_until(&d, &mut events, &mut seen, "the first refusal's alert", |s| s.total(&app) >= 1).await;
    let app_before = seen.total(&app);

    // The floods, in the background, for as long as the trials last: telemetry (which the
    // daemon cannot keep up with: the kernel drops it), and refusals.
    let stop = "/stop-flood";
    let noise =
        pod.spawn(&noisy, &["/bin/swtool", "flood-connect", "127.0.0.1", "9999", FLOOD_SECONDS, stop]);
    let flood = pod.spawn(&flooder, &["/bin/swtool", "flood-udp", "127.0.0.1", "9999", FLOOD_SECONDS, stop]);
    // It is flooding once its refusals exceed the budget.
    read_until(&d, &mut events, &mut seen, "the flood's first alerts", |s| s.total(&flooder) >= 10).await;

    for trial in 1..=TRIALS as u64 {
        let o = pod.exec(&app, &["/bin/swtool", "bind-tcp", "127.0.0.1", "7001"]);
        let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(text.starts_with("error EPERM"), "trial {trial}: {text}");
        read_until(&d, &mut events, &mut seen, &format!("trial {trial}'s alert"), |s| {
            s.total(&app) >= app_before + trial
        })
        .await;
        assert_eq!(seen.aggregated.get(&app), None, "one refusal a trial stays within the app's budget");
    }

    for c in [&flooder, &noisy] {
        let o = pod.exec(c, &["/bin/touch", stop]);
        assert!(o.status.success(), "stopping {c}'s flood: {}", String::from_utf8_lossy(&o.stderr));
    }
    let noise = noise.wait_with_output().expect("noise output");
    let noise = String::from_utf8_lossy(&noise.stdout).trim().to_string();
    assert!(noise.starts_with("ok"), "telemetry flood: {noise}");
    let out = flood.wait_with_output().expect("flood output");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "ok sent N refused M other K"
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ok"), "flood: {text}");
    let flood_refused: u64 = words[4].parse().expect("refused count");
    assert!(flood_refused > 10_000, "a flood worth the name: {text}");

    // Every refusal of the flood is in some alert: one by one, or in an aggregated count
    // (drained a tick or two after the flood ends).
    read_until(&d, &mut events, &mut seen, "the flood's aggregated counts", |s| {
        s.total(&flooder) >= flood_refused
    })
    .await;
    if seen.total(&flooder) != flood_refused {
        let st = d.status().await;
        panic!(
            "alerts {seen:?}, flood: {text}, kernel refused {:?}, lost {:?}",
            st.kernel_refusals, st.lost_by_stage
        );
    }
    assert!(seen.aggregated_alerts > 0, "the flood went over its budget: {seen:?}");

    // The kernel's own count agrees, kind by kind (this daemon's counters start at its load,
    // and the pod refused nothing else). They reach the status within a tick.
    let want = [("send", flood_refused), ("bind", seen.total(&app))];
    let mut refused = HashMap::new();
    for _ in 0..30 {
        refused = d.status().await.kernel_refusals;
        if want.iter().all(|(k, n)| refused.get(*k) == Some(n)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (kind, n) in want {
        assert_eq!(
            refused.get(kind).copied(),
            Some(n),
            "{kind}: kernel refusals {refused:?}, alerts {seen:?}"
        );
    }
    // Nothing was lost on the alert lane.
    let lost = d.status().await.lost_by_stage;
    assert_eq!(lost.get("kernel_alert_ringbuf").copied().unwrap_or(0), 0, "{lost:?}");
    assert_eq!(lost.get("alert_queue").copied().unwrap_or(0), 0, "{lost:?}");

    // The export file has every trial's alert too, and the same flood counts.
    let mut file = Seen::default();
    for _ in 0..50 {
        file = Seen::default();
        let export = fs::read_to_string(&d.export).unwrap_or_default();
        let telemetry =
            export.lines().find(|l| !l.contains("\"policy_alert\"") && !l.contains("\"lost_events\""));
        assert_eq!(telemetry, None, "an export file of alerts only");
        for line in export.lines().filter(|l| l.contains("\"policy_alert\"")) {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let a = &v["policy_alert"];
            let c = a["process"]["container"]["name"].as_str().unwrap_or("").to_string();
            match a["count"].as_str().and_then(|n| n.parse::<u64>().ok()).or_else(|| a["count"].as_u64()) {
                Some(n) if n > 0 => *file.aggregated.entry(c).or_default() += n,
                _ => *file.single.entry(c).or_default() += 1,
            }
        }
        if file.total(&app) >= app_before + TRIALS as u64 && file.total(&flooder) >= flood_refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(file.total(&app), seen.total(&app), "export file {file:?}, stream {seen:?}");
    assert_eq!(file.single.get(&app), seen.single.get(&app), "the app's alerts, one by one");
    assert_eq!(file.total(&flooder), flood_refused, "export file {file:?}");
}

/// noisy<tag> may connect to 9999 (telemetry only); intruder<tag> dies for any namespace change.
fn kill_policy(tag: &str) -> String {
    format!(
        "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: kills\nspec:\n  mode: enforce\n  containers:\n    - name: noisy{tag}\n      loopback:\n        connect:\n          - ports: [9999]\n      action: block\n    - name: intruder{tag}\n      namespaceChanges: deny\n      action: kill\n"
    )
}

/// Reads the stream until `kills` (the kills of `container` heard, aggregated ones by their
/// count) reaches `want` (or panics after WAIT).
async fn count_kills(events: &mut EventStream, container: &str, want: u64, kills: &mut u64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while *kills < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match events.next(left).await {
            Some(ev) => {
                if let Some(Event::PolicyAlert(a)) = &ev.event
                    && container_of(a) == container
                    && a.action == "killed"
                {
                    *kills += a.count.max(1);
                }
            }
            None => panic!("timed out waiting for {what}; {kills} kills heard"),
        }
    }
}

/// A container that fills the telemetry ring buffer cannot hide a kill: the record of a
/// process the kernel killed travels on the alert lane, so each of the intruder's kills is
/// heard while the noisy container's telemetry is being dropped at the kernel.
#[tokio::test(flavor = "multi_thread")]
async fn a_telemetry_flood_cannot_hide_a_kill() {
    let tag = "k";
    let (noisy, intruder) = (format!("noisy{tag}"), format!("intruder{tag}"));
    let dir = tempfile::tempdir().expect("policy dir");
    fs::write(dir.path().join("kills.yaml"), kill_policy(tag)).expect("write policy");
    // The smallest telemetry ring, so that the flood overruns it.
    let d = Daemon::with_config(&format!("policy_dir = \"{}\"\nring_buffer_mb = 1\n", dir.path().display()))
        .await;
    // Alerts only: the test is about the kernel's ring, not this client's queue.
    let alerts_only = Filter { event_set: vec![EventType::PolicyAlert as i32], ..Default::default() };
    let mut events = d.events(GetEventsRequest { allow_list: vec![alerts_only], ..Default::default() }).await;
    let pod = Pod::play_with(
        "kills",
        &[
            Spec { name: &noisy, command: &["/bin/sleep", "3600"], ..Default::default() },
            Spec { name: &intruder, command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    );
    rules_in_force(&d, &pod, &[&noisy, &intruder]).await;
    // The first kill is heard.
    let mut kills = 0u64;
    let mut last = None;
    for _ in 0..100 {
        let o = pod.exec(&intruder, &["/bin/swtool", "clone-userns"]);
        last = o.status.code();
        if last == Some(137) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last, Some(137), "the rule never killed: {}", d.log());
    count_kills(&mut events, &intruder, 1, &mut kills, "the first kill's alert").await;
    let before = kills;
    let dropped_before = d.status().await.lost_by_stage.get("kernel_ringbuf").copied().unwrap_or(0);

    let stop = "/stop-flood";
    let flood =
        pod.spawn(&noisy, &["/bin/swtool", "flood-connect", "127.0.0.1", "9999", FLOOD_SECONDS, stop]);
    // The flood is on once the kernel drops telemetry.
    for _ in 0..300 {
        if d.status().await.lost_by_stage.get("kernel_ringbuf").copied().unwrap_or(0) > dropped_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for trial in 1..=TRIALS as u64 {
        let o = pod.exec(&intruder, &["/bin/swtool", "clone-userns"]);
        assert_eq!(o.status.code(), Some(137), "trial {trial}: {}", String::from_utf8_lossy(&o.stdout));
        count_kills(&mut events, &intruder, before + trial, &mut kills, &format!("trial {trial}'s kill"))
            .await;
    }
    let dropped = d.status().await.lost_by_stage.get("kernel_ringbuf").copied().unwrap_or(0);
    let o = pod.exec(&noisy, &["/bin/touch", stop]);
    assert!(o.status.success(), "stopping the flood: {}", String::from_utf8_lossy(&o.stderr));
    let out = flood.wait_with_output().expect("flood output");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(text.starts_with("ok"), "flood: {text}");
    // The proof holds only if telemetry was being dropped while the kills happened.
    assert!(dropped > dropped_before, "the flood never filled the telemetry ring ({dropped}): {text}");
    assert_eq!(kills, before + TRIALS as u64, "every kill heard once");
    let lost = d.status().await.lost_by_stage;
    assert_eq!(lost.get("kernel_alert_ringbuf").copied().unwrap_or(0), 0, "{lost:?}");
}
