//! `make bench`: sidewall's costs and capacities measured side by side on this machine, written
//! to BENCHMARKS.md. Needs root (it loads the eBPF programs and creates cgroups, network
//! namespaces and pods); `BENCH_QUICK=1` runs tiny iterations to check the bench itself.
//!
//! Everything it creates is owned by a guard that removes it on drop, also when a measurement
//! fails: daemons (stopped by PID, pins cleaned up), cgroups (processes killed by PID), pods,
//! network namespaces (they live and die with swbench's processes), temp dirs.

mod daemon;
mod hook;
mod latency;
mod memory;
mod overhead;
mod pipeline;
mod rawstream;
mod report;
mod stats;
mod sys;
mod tool;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, bail};
use pipeline::Dest;
use report::{Section, Target};

/// What every measurement needs.
pub struct Ctx {
    pub sidewalld: PathBuf,
    pub tool: tool::Tool,
}

struct Params {
    overhead: overhead::Params,
    pipeline: pipeline::Params,
    latency: latency::Params,
    memory: memory::Params,
    hook: hook::Params,
}

impl Params {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                overhead: overhead::Params { rounds: 2, connect_n: 1500, getppid_n: 300_000, forkexec_n: 60 },
                pipeline: pipeline::Params {
                    phases: vec![
                        (Dest::Loopback, vec![20_000.0, 0.0]),
                        (Dest::Unroutable, vec![100_000.0, 0.0]),
                    ],
                    step_seconds: 0.25,
                    max_count: 60_000,
                    refine: 0,
                    profile_seconds: 0.5,
                },
                latency: latency::Params { attempts: 30, interval_ms: 10, warmup: 3 },
                memory: memory::Params { processes: 500, containers: 50, idle_seconds: 2 },
                hook: hook::Params { rounds: 2, runs: 20 },
            }
        } else {
            Self {
                overhead: overhead::Params {
                    rounds: 9,
                    connect_n: 20_000,
                    getppid_n: 5_000_000,
                    forkexec_n: 800,
                },
                pipeline: pipeline::Params {
                    phases: vec![
                        (Dest::Loopback, vec![25_000.0, 50_000.0, 100_000.0, 0.0]),
                        (Dest::Unroutable, vec![50_000.0, 100_000.0, 200_000.0, 400_000.0, 0.0]),
                    ],
                    step_seconds: 2.0,
                    max_count: 1_000_000,
                    refine: 2,
                    profile_seconds: 2.0,
                },
                latency: latency::Params { attempts: 200, interval_ms: 20, warmup: 10 },
                memory: memory::Params { processes: 10_000, containers: 1_000, idle_seconds: 10 },
                hook: hook::Params { rounds: 16, runs: 200 },
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads eBPF programs and creates cgroups and namespaces: run it as root");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let started = Instant::now();
    let mut machine = report::Machine::probe();
    let params = Params::new(quick);
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md")));
    // SIGINT and SIGTERM stop the run at its next check; every guard then cleans up.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("bench: interrupted: stopping at the next check, cleaning up");
        sys::interrupt();
    });
    let work = tempfile::Builder::new().prefix("sidewall-bench-").tempdir().context("tempdir")?;
    let ctx = Arc::new(Ctx { sidewalld: daemon::locate()?, tool: tool::Tool::build(work.path())? });
    eprintln!(
        "bench: {} run, daemon {}, report to {}",
        if quick { "quick" } else { "full" },
        ctx.sidewalld.display(),
        out.display()
    );
    // Building the test image (once) is not part of any measurement.
    tokio::task::spawn_blocking(harness::pod::image).await.context("building the pod image")?;

    let params = Arc::new(params);
    let mut sections: Vec<Section> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    // BENCH_ONLY=7 (say): only the sections whose titles start with it, to check one of them.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    macro_rules! section {
        ($title:expr, $f:expr) => {{
            if $title.starts_with(only.as_str()) {
                measure!($title, $f);
            } else {
                eprintln!("bench: {} skipped (BENCH_ONLY={only})", $title);
            }
        }};
    }
    macro_rules! measure {
        ($title:expr, $f:expr) => {{
            let (ctx, params) = (ctx.clone(), params.clone());
            eprintln!("bench: {} ...", $title);
            let t = Instant::now();
            // Its own task: a panic (the harness panics on failure) ends this measurement only,
            // after its guards have cleaned up.
            match tokio::spawn(async move { $f(ctx, params).await }).await {
                Ok((s, t)) => {
                    sections.push(s);
                    targets.extend(t);
                }
                Err(e) => {
                    let msg = panic_message(e);
                    eprintln!("bench: {} failed: {msg}", $title);
                    sections.push(Section {
                        title: $title.to_string(),
                        notes: vec![format!("**Not measured**: the measurement failed: {msg}")],
                        runtime: t.elapsed(),
                        ..Default::default()
                    });
                    targets.push(Target {
                        measurement: $title.to_string(),
                        target: "—".into(),
                        result: "not measured".into(),
                        met: None,
                    });
                }
            }
            eprintln!("bench: {} done in {}", $title, report::duration(t.elapsed()));
        }};
    }
    section!("1–3. Overhead", run_overhead);
    section!("4. Pipeline throughput", run_pipeline);
    section!("5. Detection latency", run_latency);
    section!("6. Memory", run_memory);
    section!("7. Container start with the runtime hook", run_hook);
    sys::check_interrupted()?;

    machine.load_end = sys::loadavg();
    sys::foreign_daemons(&[]);
    machine.foreign_daemons = sys::foreign_daemons_max();
    let command = format!(
        "{}make bench  # = cargo build --release --workspace && cargo run --release -p sidewall-bench",
        if quick { "BENCH_QUICK=1 " } else { "" }
    );
    let text = report::render(&report::Run {
        machine: &machine,
        command,
        quick,
        runtime: started.elapsed(),
        sections: &sections,
        targets: &targets,
        // Relative to the workspace: the report speaks of the project, not of this machine.
        sidewalld: Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .and_then(|root| ctx.sidewalld.strip_prefix(root).ok())
            .unwrap_or(&ctx.sidewalld)
            .display()
            .to_string(),
    });
    std::fs::write(&out, text).with_context(|| format!("write {}", out.display()))?;
    eprintln!("bench: wrote {} in {}", out.display(), report::duration(started.elapsed()));
    drop(work);
    Ok(())
}

async fn run_overhead(c: Arc<Ctx>, p: Arc<Params>) -> (Section, Vec<Target>) {
    overhead::run(&c, &p.overhead).await
}

async fn run_pipeline(c: Arc<Ctx>, p: Arc<Params>) -> (Section, Vec<Target>) {
    pipeline::run(&c, &p.pipeline).await
}

async fn run_latency(c: Arc<Ctx>, p: Arc<Params>) -> (Section, Vec<Target>) {
    latency::run(&c, &p.latency).await
}

async fn run_memory(c: Arc<Ctx>, p: Arc<Params>) -> (Section, Vec<Target>) {
    memory::run(&c, &p.memory).await
}

async fn run_hook(c: Arc<Ctx>, p: Arc<Params>) -> (Section, Vec<Target>) {
    hook::run(&c, &p.hook).await
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
