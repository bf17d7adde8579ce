//! Measurement 5: from a forbidden action to the `policy_alert` at a gRPC client.
//!
//! A container of a pod connects on loopback to a port its (monitor-mode) policy does not allow;
//! swbench takes CLOCK_MONOTONIC right before each connect and prints it with the connection's
//! local port; the client takes the same clock when the alert arrives, and matches the two by
//! that port.

use std::{
    collections::HashMap,
    fs,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::bail;
use harness::pod::{Pod, Spec};
use sidewall_proto::v1::{EventType, Filter, GetEventsRequest, get_events_response::Event};

use crate::{
    Ctx,
    daemon::Sidewalld,
    report::{self, Section, Table, Target},
    stats, sys,
};

pub struct Params {
    pub attempts: usize,
    pub interval_ms: u64,
    /// First attempts left out of the percentiles (the container's first events resolve its
    /// identity and compile its policy).
    pub warmup: usize,
}

const PORT: u16 = 19090;
const ALLOWED: u16 = 19091;

struct Outcome {
    /// Latency in ns per attempt (NaN: no alert).
    latencies: Vec<f64>,
    load_before: String,
    load_after: String,
    alerts: usize,
    unmatched: usize,
}

pub async fn run(ctx: &Ctx, p: &Params) -> (Section, Vec<Target>) {
    let start = Instant::now();
    let result = measure(ctx, p).await;
    let mut s = Section { title: "5. Detection latency".into(), ..Default::default() };
    s.how = vec![format!(
        "A daemon with the built-in configuration and a `policy_dir` holding one monitor-mode policy: the \
         container `swb-lat` of a podman pod may connect on loopback to port {ALLOWED} only. In the \
         container, `swbench latency-loop` serves 127.0.0.1:{PORT} itself and connects to it {} times, \
         every {} ms, taking CLOCK_MONOTONIC right before each connect (the host and the container share \
         that clock). A gRPC client (GetEvents, `policy_alert` only) takes the same clock when each alert \
         arrives and matches alert and attempt by the connection's local port. Latency = arrival − \
         before connect; it includes the handshake, since the alert is raised from the `process_connect` \
         event, which the daemon emits when the handshake completes. It also includes up to 1 ms of \
         waiting in the ring buffer: while events flow, the daemon reads it on a 1 ms timer rather than \
         being woken by each record (`daemon/src/kernel/ringbuf.rs`). The first {} attempts are left out \
         of the percentiles (the container's first events resolve its identity). Command: `podman exec \
         <pod>-swb-lat-<pid> /swbench latency-loop 127.0.0.1 {PORT} {} {}`.",
        p.attempts,
        p.interval_ms,
        p.warmup,
        p.attempts,
        p.interval_ms * 1000
    )];
    let mut targets = Vec::new();
    match result {
        Err(e) => {
            s.notes.push(format!("**Not measured**: {e:#}"));
            targets.push(Target {
                measurement: "5. detection latency".into(),
                target: "p99 < 5 ms".into(),
                result: "not measured".into(),
                met: None,
            });
        }
        Ok(o) => {
            let measured: Vec<f64> = o.latencies.iter().skip(p.warmup).copied().collect();
            let all = &o.latencies;
            let p50 = stats::percentile(&measured, 50.0);
            let p99 = stats::percentile(&measured, 99.0);
            let mut t =
                Table::new(&["Attempts", "Alerts matched", "p50", "p90", "p99", "max", "Target", "Met?"]);
            let matched = measured.iter().filter(|x| x.is_finite()).count();
            let met = p99.map(|v| v < 5e6 && matched == measured.len());
            t.row(vec![
                format!("{} (after {} warm-up)", measured.len(), p.warmup),
                matched.to_string(),
                report::ns(p50),
                report::ns(stats::percentile(&measured, 90.0)),
                report::ns(p99),
                report::ns(stats::percentile(&measured, 100.0)),
                "p99 < 5 ms".into(),
                report::met(met),
            ]);
            t.row(vec![
                format!("{} (all)", all.len()),
                all.iter().filter(|x| x.is_finite()).count().to_string(),
                report::ns(stats::percentile(all, 50.0)),
                report::ns(stats::percentile(all, 90.0)),
                report::ns(stats::percentile(all, 99.0)),
                report::ns(stats::percentile(all, 100.0)),
                "—".into(),
                "—".into(),
            ]);
            s.tables.push((String::new(), t));
            if matched < measured.len() {
                s.notes.push(format!(
                    "{} attempts got no alert within 3 s of the last one ({} alerts received, {} not matched \
                     to an attempt): a missing alert counts as a miss of the target.",
                    measured.len() - matched,
                    o.alerts,
                    o.unmatched
                ));
            }
            let mut slow: Vec<f64> = measured.iter().copied().filter(|x| *x >= 5e6).collect();
            slow.sort_by(|a, b| b.total_cmp(a));
            if let Some(v) = p99.filter(|v| *v >= 5e6) {
                s.notes.push(format!(
                    "**Why p99 misses 5 ms** ({}): {} of {} attempts took 5 ms or more ({}), the rest at most {}; \
                     load average {} before and {} after. The alert passes the kernel's ring buffer, the \
                     daemon's pipeline task (decode, process cache, identity, socket join by cookie, detection), \
                     the hub and the gRPC stream; on this shared 2-core VM a moment when other processes hold \
                     both cores (or the daemon's once-a-second housekeeping runs) stalls one of them, and with \
                     {} attempts, {} such stalls make the p99.",
                    report::ns(Some(v)),
                    slow.len(),
                    measured.len(),
                    slow.iter().map(|x| report::ns(Some(*x))).collect::<Vec<_>>().join(", "),
                    report::ns(measured.iter().copied().filter(|x| *x < 5e6).reduce(f64::max)),
                    o.load_before,
                    o.load_after,
                    measured.len(),
                    measured.len().div_ceil(100)
                ));
            }
            targets.push(Target {
                measurement: "5. detection latency".into(),
                target: "p99 < 5 ms".into(),
                result: format!("p50 {}, p99 {}", report::ns(p50), report::ns(p99)),
                met,
            });
        }
    }
    s.runtime = start.elapsed();
    (s, targets)
}

async fn measure(ctx: &Ctx, p: &Params) -> anyhow::Result<Outcome> {
    let name = format!("swb-lat-{}", std::process::id());
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("latency.yaml"),
        format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: bench-latency\nspec:\n  mode: monitor\n  containers:\n    - name: {name}\n      loopback:\n        connect:\n          - ports: [{ALLOWED}]\n      action: block\n"
        ),
    )?;
    let d = Sidewalld::start(&ctx.sidewalld, &format!("policy_dir = \"{}\"", dir.path().display()), false)
        .await?;
    d.wait_policy("default/bench-latency").await?;
    eprintln!("bench: latency: starting the pod");
    let pod = Pod::play(
        "swblat",
        &[Spec { name: &name, command: &["/bin/sleep", "1000000"], ..Default::default() }],
        &[],
    );
    ctx.tool.copy_into(pod.host_pid(&name))?;
    let before = d.status().await?.subscribers;
    let req = GetEventsRequest {
        allow_list: vec![Filter {
            event_set: vec![EventType::PolicyAlert as i32],
            container: vec![name.clone()],
            ..Default::default()
        }],
        deny_list: vec![],
    };
    let mut stream = d.client().await?.get_events(req).await?.into_inner();
    let arrivals: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let a2 = arrivals.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            let now = sys::monotonic_ns();
            if let Some(Event::PolicyAlert(a)) = ev.event
                && a.rule_id == "loopback-egress"
            {
                let port = a.socket.and_then(|s| s.local).map_or(0, |l| l.port);
                a2.lock().unwrap_or_else(|e| e.into_inner()).push((port, now));
            }
        }
    });
    let start = Instant::now();
    while d.status().await?.subscribers <= before {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the GetEvents stream was never registered");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sys::check_interrupted()?;
    sys::foreign_daemons(&[d.pid()]);
    eprintln!("bench: latency: {} attempts", p.attempts);
    let load_before = sys::loadavg();
    let out = tokio::task::block_in_place(|| {
        pod.exec(
            &name,
            &[
                "/swbench",
                "latency-loop",
                "127.0.0.1",
                &PORT.to_string(),
                &p.attempts.to_string(),
                &(p.interval_ms * 1000).to_string(),
            ],
        )
    });
    let load_after = sys::loadavg();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let attempts: Vec<(u64, u32, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["t", t, port, result] => Some((t.parse().ok()?, port.parse().ok()?, result.to_string())),
                _ => None,
            }
        })
        .collect();
    if attempts.len() != p.attempts {
        bail!(
            "latency-loop: {} of {} attempts reported: {}",
            attempts.len(),
            p.attempts,
            text.lines().last().unwrap_or("")
        );
    }
    if let Some((_, _, r)) = attempts.iter().find(|(_, _, r)| r != "ok") {
        bail!("a connect of the latency loop failed: {r} (monitor mode must not block)");
    }
    // Alerts still on their way.
    let mut last = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = arrivals.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n >= attempts.len() && n == last {
            break;
        }
        last = n;
    }
    reader.abort();
    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let by_port: HashMap<u32, u64> = arrivals.iter().rev().map(|(p, t)| (*p, *t)).collect();
    let latencies: Vec<f64> = attempts
        .iter()
        .map(|(t, port, _)| by_port.get(port).filter(|a| *a >= t).map_or(f64::NAN, |a| (a - t) as f64))
        .collect();
    let ports: std::collections::HashSet<u32> = attempts.iter().map(|(_, p, _)| *p).collect();
    let unmatched = arrivals.iter().filter(|(p, _)| !ports.contains(p)).count();
    drop(pod);
    drop(d);
    if arrivals.is_empty() {
        bail!("no policy_alert arrived");
    }
    Ok(Outcome { latencies, load_before, load_after, alerts: arrivals.len(), unmatched })
}
