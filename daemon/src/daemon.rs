//! Wires the stages together and runs them until SIGINT or SIGTERM.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    api::{
        listen,
        service::{SensorsService, StatusSource},
    },
    config::Config,
    export::{
        hub::Hub,
        jsonl::{self, JsonlConfig},
    },
    identity::{Identity, cgroups::CgroupFs},
    kernel::{
        loader::{self, LoadOptions},
        ringbuf::{KernelDrops, RingReader},
    },
    pipeline::{self, Pipeline},
    process::{Clock, ProcessCache, procfs},
    stats::Stats,
};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let node = cfg.node();
    let clock = Clock::new();
    let stats = Arc::new(Stats::default());
    let hub = Arc::new(Hub::new(stats.clone(), node.clone(), clock));

    let mut loaded = loader::load(&LoadOptions {
        btf_path: &cfg.btf_path,
        ring_buffer_bytes: cfg.ring_buffer_mb * 1024 * 1024,
    })?;
    let reader = RingReader::take(&mut loaded.ebpf)?;
    let drops = KernelDrops::take(&mut loaded.ebpf)?;

    let cgroups = CgroupFs::discover()
        .inspect_err(|e| tracing::warn!(error = %e, "no cgroup v2: container identity unavailable"))
        .ok();
    // Seed after attaching, so a process started in between is seen by one or the other.
    let mut cache = ProcessCache::new(
        node.clone(),
        clock,
        Duration::from_secs(cfg.process_grace_seconds),
    );
    cache.seed(procfs::scan("/proc".as_ref(), cgroups.as_ref().map(|c| c.root())));
    tracing::info!(processes = cache.len(), "process cache seeded from /proc");

    let export_file = start_export(&cfg, &hub)?;
    let status = Arc::new(StatusSource {
        node_name: node.clone(),
        kernel: kernel_release(),
        sensors: loaded.sensors.clone(),
        stats: stats.clone(),
        export_file,
        identity_source: "standalone",
    });
    let pipeline = Pipeline::new(cache, Identity::new(cgroups), hub.clone(), stats, clock, node);

    let (stop_tx, stop_rx) = watch::channel(false);
    let svc = SensorsService {
        hub,
        status,
        queue: cfg.subscriber_queue,
    };
    let address = cfg.address();
    tracing::info!(%address, "serving the gRPC API");
    let api = tokio::spawn(listen::serve(address, svc, stop_rx.clone()));
    let reading = tokio::spawn(pipeline::run(pipeline, reader, drops, stop_rx));

    tokio::select! {
        r = api => { r.context("API task")?.context("API server")?; }
        r = reading => { r.context("pipeline task")?.context("ring buffer reader")?; }
        s = shutdown_signal() => { tracing::info!(signal = s, "shutting down"); }
    }
    let _ = stop_tx.send(true);
    // Give the API a moment to remove its socket.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(loaded);
    Ok(())
}

fn start_export(cfg: &Config, hub: &Hub) -> anyhow::Result<Option<(String, Arc<jsonl::Health>)>> {
    if cfg.export_file.is_empty() {
        return Ok(None);
    }
    let jc = JsonlConfig {
        path: cfg.export_file.clone().into(),
        max_bytes: cfg.export_file_max_mb * 1024 * 1024,
        keep: cfg.export_file_keep,
        queue: cfg.export_queue,
    };
    let health = jsonl::start(hub, jc).with_context(|| format!("opening export file {}", cfg.export_file))?;
    tracing::info!(path = %cfg.export_file, "exporting events as JSON lines");
    Ok(Some((cfg.export_file.clone(), health)))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
