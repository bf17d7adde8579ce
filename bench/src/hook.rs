//! Measurement 7: what the runtime hook adds to a container's start.
//!
//! The same one-container pod is played with podman alternately without and with
//! `sidewall-oci-hook` registered (a containers.conf with a hooks directory of its own), the
//! daemon running in both cases; `podman kube play` returns once the pod's containers have
//! started, so its wall time is the start latency. Rounds pair the two, as elsewhere.

use std::time::Instant;

use anyhow::Context as _;

use harness::{
    hook::OciHook,
    pod::{Options, Pod, Spec},
};

use crate::{
    Ctx,
    daemon::Sidewalld,
    report::{self, Section, Table, Target},
    stats, sys,
};

pub struct Params {
    pub rounds: usize,
    /// Runs of the hook alone, against a running container.
    pub runs: usize,
}

struct Outcome {
    without: Vec<f64>,
    with: Vec<f64>,
    /// Wall time of one hook run (spawn, connect, PrepareContainer, exit), ns.
    hook: Vec<f64>,
}

/// A signed duration in ms ("+12.3 ms", "-4.0 ms").
fn signed_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:+.1} ms", v / 1e6))
}

pub async fn run(ctx: &Ctx, p: &Params) -> (Section, Vec<Target>) {
    let start = Instant::now();
    let mut s = Section { title: "7. Container start with the runtime hook".into(), ..Default::default() };
    s.how = vec![format!(
        "A daemon with the built-in configuration. A podman pod of one container (`/bin/sleep`) is played \
         {} times without the hook and {} times with `sidewall-oci-hook --fail closed --timeout 10s` \
         registered at createRuntime (a containers.conf with a hooks directory of its own), alternating; \
         each time the wall time of `podman kube play` (it returns once the containers started) is taken, \
         and the pod is removed untimed. A pod has two containers that start (its infra container and \
         the app), so the hook runs twice per play: connect to the daemon's unix socket, PrepareContainer \
         (the daemon resolves the cgroup, names the container, compiles its rule into the kernel's maps), \
         exit. Rounds alternate the order (without-with, then with-without) so that what one play \
         leaves behind (the removal of the previous pod) weighs on both alike; difference = median over \
         rounds of (with − without). Then the hook alone: `sidewall-oci-hook` run {} times by hand with \
         the OCI state of the running hooked container on stdin (PrepareContainer is idempotent), each \
         run timed from spawn to exit: what the runtime waits for, per container.",
        p.rounds, p.rounds, p.runs
    )];
    let mut targets = Vec::new();
    match measure(ctx, p).await {
        Err(e) => {
            s.notes.push(format!("**Not measured**: {e:#}"));
            targets.push(Target {
                measurement: "7. hook start latency".into(),
                target: "—".into(),
                result: "not measured".into(),
                met: None,
            });
        }
        Ok(Outcome { without, with, hook }) => {
            let diffs: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
            let mut t = Table::new(&["Pod start", "Plays", "p50", "p90", "max"]);
            for (name, v) in [("without the hook", &without), ("with the hook", &with)] {
                t.row(vec![
                    name.into(),
                    v.len().to_string(),
                    report::ns(stats::percentile(v, 50.0)),
                    report::ns(stats::percentile(v, 90.0)),
                    report::ns(stats::percentile(v, 100.0)),
                ]);
            }
            t.row(vec![
                "difference (paired)".into(),
                diffs.len().to_string(),
                signed_ms(stats::percentile(&diffs, 50.0)),
                signed_ms(stats::percentile(&diffs, 90.0)),
                signed_ms(stats::percentile(&diffs, 100.0)),
            ]);
            t.row(vec![
                "the hook alone, one container".into(),
                hook.len().to_string(),
                report::ns(stats::percentile(&hook, 50.0)),
                report::ns(stats::percentile(&hook, 90.0)),
                report::ns(stats::percentile(&hook, 100.0)),
            ]);
            s.tables.push((String::new(), t));
            s.notes.push(format!(
                "The hook adds about {} per container started (median of the hook alone; a pod starts two), \
                 the price of having the rule in the kernel before the entry point's first instruction. A pod \
                 start takes hundreds of milliseconds here and varies between plays by tens of milliseconds, \
                 far more than that cost: the paired difference of whole pod starts is bound by that noise.",
                report::ns(stats::median(&hook))
            ));
            targets.push(Target {
                measurement: "7. hook start latency".into(),
                target: "— (reported)".into(),
                result: format!(
                    "{} per container (hook alone, median); pod start {} (paired median)",
                    report::ns(stats::median(&hook)),
                    signed_ms(stats::median(&diffs))
                ),
                met: None,
            });
        }
    }
    s.runtime = start.elapsed();
    (s, targets)
}

async fn measure(ctx: &Ctx, p: &Params) -> anyhow::Result<Outcome> {
    let hook = OciHook::new();
    let d = Sidewalld::start(&ctx.sidewalld, &hook.daemon_config(), false).await?;
    let binary = ctx.sidewalld.with_file_name("sidewall-oci-hook");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: run `cargo build --release --workspace`",
        binary.display()
    );
    hook.register_binary(&binary, &format!("unix://{}", d.socket.display()), "closed", "10s");
    sys::foreign_daemons(&[d.pid()]);
    let spec = [Spec { name: "swb-start", command: &["/bin/sleep", "1000000"], ..Default::default() }];
    let hooked = Options { containers_conf: Some(hook.conf()), ..Default::default() };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // One untimed play of each first: podman's own caches.
    for round in 0..=p.rounds {
        let (mut a, mut b) = (None, None);
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for hooked_run in order {
            sys::check_interrupted()?;
            let opts = if hooked_run { &hooked } else { &Options::default() };
            let t = Instant::now();
            let pod = tokio::task::block_in_place(|| Pod::play_with("swbstart", &spec, opts));
            let ns = t.elapsed().as_nanos() as f64;
            tokio::task::block_in_place(|| drop(pod));
            *(if hooked_run { &mut b } else { &mut a }) = Some(ns);
        }
        if round > 0
            && let (Some(a), Some(b)) = (a, b)
        {
            without.push(a);
            with.push(b);
        }
    }
    let pod = tokio::task::block_in_place(|| Pod::play_with("swbstart", &spec, &hooked));
    let id = pod.container_id("swb-start");
    let state = format!(
        "{{\"ociVersion\":\"1.0.2\",\"id\":\"{id}\",\"status\":\"creating\",\"pid\":{},\"bundle\":\"/var/lib/containers/storage/overlay-containers/{id}/userdata\"}}",
        pod.host_pid("swb-start")
    );
    let server = format!("unix://{}", d.socket.display());
    let mut hook_runs = Vec::new();
    for _ in 0..p.runs {
        sys::check_interrupted()?;
        let t = Instant::now();
        let out = tokio::task::block_in_place(|| run_hook(&binary, &server, &state))?;
        hook_runs.push(t.elapsed().as_nanos() as f64);
        anyhow::ensure!(out.status.success(), "the hook failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    tokio::task::block_in_place(|| drop(pod));
    drop(d);
    Ok(Outcome { without, with, hook: hook_runs })
}

/// One run of the hook as the runtime makes it: the state on stdin, wait for the exit.
fn run_hook(binary: &std::path::Path, server: &str, state: &str) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(binary)
        .args(["--server", server, "--fail", "closed", "--timeout", "10s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("the hook's stdin")?.write_all(state.as_bytes())?;
    Ok(child.wait_with_output()?)
}
