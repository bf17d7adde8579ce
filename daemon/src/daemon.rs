//! Wires the stages together and runs them until SIGINT or SIGTERM.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use sidewall_common::AlertBudget;
use sidewall_proto::v1::EventType;
use tokio::sync::watch;

use crate::{
    api::{listen, service::SensorsService},
    clock::Clock,
    config::{Config, LabelFilter, OutputEvents, SensorSet},
    export::{
        alertmanager::{self, Alertmanager},
        delivery::{self, Plan, Retry},
        filter::EventFilter,
        hub::Hub,
        jsonl::{self, JsonlConfig},
        metrics::{self, Metrics, MetricsState},
        otlp, otlp_metrics,
        syslog::{self, Syslog},
    },
    identity::{
        Identity, Sources,
        cgroups::CgroupFs,
        kubernetes::{self, KubeIndex},
        podman::PodmanStore,
    },
    kernel::{
        alerts::AlertLane,
        counters::KernelCounters,
        loader::{self, LoadOptions},
        ringbuf::RingReader,
    },
    net::Net,
    pipeline::{self, Pipeline, enrich::Enricher, publish::Publisher},
    policy::{
        audit::{self, AuditSink},
        enforce::Enforcer,
        engine::PolicyEngine,
        store::{self, PolicyStore},
    },
    process::{ProcessCache, procfs},
    runtime,
    stats::{Stage, Stats},
    status::NodeStatus,
};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // TLS files and the socket group first: a configuration that cannot be served fails
    // before anything is loaded into the kernel.
    let api = listen::prepare(&cfg)?;
    let node = cfg.node();
    let clock = Clock::new();
    let stats = Arc::new(Stats::default());
    let hub = Arc::new(Hub::new(stats.clone(), node.clone(), clock).with_alert_queue(cfg.alert_queue));

    let cgroups = CgroupFs::discover()
        .inspect_err(
            |e| tracing::warn!(error = %e, "no cgroup v2: container identity and socket sensors unavailable"),
        )
        .ok();
    let mut loaded = loader::load(&LoadOptions {
        btf_path: &cfg.btf_path,
        ring_buffer_bytes: cfg.ring_buffer_mb * 1024 * 1024,
        alert_ring_buffer_bytes: cfg.alert_ring_buffer_kb * 1024,
        cgroup_root: cgroups.as_ref().map(|c| c.root()),
        strict: cfg.sensor_set == SensorSet::Strict,
        pin_dir: (!cfg.bpf_pin_dir.is_empty()).then(|| Path::new(&cfg.bpf_pin_dir)),
        off: &cfg.sensors_off,
    })?;
    let reader = RingReader::take(&mut loaded.ebpf)?;
    let alert_reader = RingReader::take_alerts(&mut loaded.ebpf)?;
    let budget = AlertBudget { rate: cfg.alert_rate, burst: cfg.alert_burst };
    let lane = AlertLane::take(&mut loaded.ebpf, budget)?;
    let counters = KernelCounters::take(&mut loaded.ebpf)?;
    // Seed after attaching, so a process started in between is seen by one or the other.
    let mut cache = ProcessCache::new(node.clone(), clock, Duration::from_secs(cfg.process_grace_seconds));
    cache.seed(seeds(&loaded, cgroups.as_ref().map(|c| c.root())));
    if let Some(tasks) = loaded.tasks.take() {
        crate::kernel::tasks::install(tasks);
    }
    tracing::info!(processes = cache.len(), "process cache seeded from /proc");

    let (audit, changes) = AuditSink::channel(audit::QUEUE, stats.clone());
    let policies = PolicyStore::audited(audit);
    let kube = kube_client(&cfg).await?;
    let kube_at_exit = kube.clone();
    let (sources, identity_source) = identity_sources(&cfg, cgroups, &node, kube.clone());
    start_policy_sources(&cfg, kube, &policies);
    let export_file = start_export(&cfg, &hub);
    let otlp = (!cfg.otlp_endpoint.is_empty()).then(|| {
        tracing::info!(endpoint = %cfg.otlp_endpoint, "exporting events as OTLP logs");
        let headers: otlp::Headers = cfg.otlp_headers().into();
        let h = otlp::start(
            &hub,
            stats.clone(),
            cfg.otlp_endpoint.clone(),
            headers,
            node.clone(),
            cfg.export_queue,
        );
        (cfg.otlp_endpoint.clone(), h)
    });
    let otlp_metrics =
        otlp.as_ref().map(|(endpoint, _)| (endpoint.clone(), Arc::new(otlp::Health::default())));
    let outputs = start_outputs(&cfg, &hub, &stats, &node)?;
    let engine = PolicyEngine::new(policies.clone(), Some(Enforcer::take(&mut loaded.ebpf)?));
    let protections = engine.protections();
    let status = Arc::new(NodeStatus {
        node_name: node.clone(),
        kernel: kernel_release(),
        sensors: loaded.sensors.clone(),
        stats: stats.clone(),
        hub: hub.clone(),
        export_file,
        otlp,
        otlp_metrics: otlp_metrics.clone(),
        metrics_address: (!cfg.metrics_address.is_empty()).then(|| cfg.metrics_address.clone()),
        outputs,
        identity_source,
        protections,
        api: api.report.clone(),
    });
    let net = Net::new(clock);
    let flows = net.flows.clone();
    let enricher = Enricher::new(cache, Identity::new(sources), net);

    // Metrics are kept when something reads them: a Prometheus scrape or the OTLP exporter.
    let mut metrics_kept = None;
    if !cfg.metrics_address.is_empty() || otlp_metrics.is_some() {
        let filter = LabelFilter::parse(&cfg.metrics_labels).map_err(anyhow::Error::msg)?;
        let metrics = Arc::new(Metrics::new(filter, cfg.metrics_max_series));
        metrics_kept = Some(metrics.clone());
        let state = MetricsState {
            metrics,
            status: status.clone(),
            flows: flows.clone(),
            policies: policies.clone(),
        };
        if let Some((endpoint, health)) = otlp_metrics {
            let every = Duration::from_secs(cfg.otlp_metrics_interval_seconds);
            tracing::info!(%endpoint, ?every, "exporting metrics as OTLP metrics");
            let target = (endpoint, cfg.otlp_headers().into());
            otlp_metrics::start(state.clone(), target, status.node_name.clone(), every, health);
        }
        if !cfg.metrics_address.is_empty() {
            let addr = cfg.metrics_address.parse().context("metrics_address")?;
            tracing::info!(%addr, "serving Prometheus metrics");
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, state).await {
                    tracing::error!("metrics server: {e:#}");
                }
            });
        }
    }
    let publisher = Publisher::new(hub.clone(), stats, metrics_kept, clock, node);
    let pipeline = Pipeline::new(enricher, engine, publisher);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (runtime_tx, runtime_rx) = tokio::sync::mpsc::channel(runtime::QUEUE);
    if !cfg.hook_spool_dir.is_empty() {
        tokio::spawn(runtime::watch_spool(cfg.hook_spool_dir.clone().into(), runtime_tx.clone()));
    }
    let observed = crate::policy::suggest::start(&hub, cfg.subscriber_queue);
    let svc = SensorsService {
        hub,
        policies,
        status,
        flows,
        observed,
        queue: cfg.subscriber_queue,
        runtime: runtime_tx,
    };
    let api = tokio::spawn(listen::serve(api, svc, stop_rx.clone()));
    let readers = pipeline::Readers { alerts: alert_reader, events: reader, lane };
    let reading = tokio::spawn(pipeline::run(pipeline, readers, counters, runtime_rx, changes, stop_rx));

    tokio::select! {
        r = api => { r.context("API task")?.context("API server")?; }
        r = reading => { r.context("pipeline task")?.context("ring buffer reader")?; }
        s = shutdown_signal() => { tracing::info!(signal = s, "shutting down"); }
    }
    let _ = stop_tx.send(true);
    // Give the API a moment to remove its socket.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let uninstalled = uninstalled(&cfg, kube_at_exit).await;
    drop(loaded);
    if uninstalled && !cfg.bpf_pin_dir.is_empty() {
        loader::cleanup(Path::new(&cfg.bpf_pin_dir))
            .with_context(|| format!("removing {}", cfg.bpf_pin_dir))?;
        tracing::info!(dir = %cfg.bpf_pin_dir, "enforcement removed with the daemon");
    }
    Ok(())
}

/// Whether this daemon stops for an uninstall of its DaemonSet (see `uninstall`).
async fn uninstalled(cfg: &Config, kube: Option<kube::Client>) -> bool {
    let Some((ns, name)) = crate::uninstall::parse(&cfg.uninstall_daemonset) else { return false };
    let Some(client) = kube else {
        tracing::warn!(
            "uninstall_daemonset is set but the Kubernetes API is not used: enforcement stays pinned"
        );
        return false;
    };
    let asked = tokio::time::timeout(Duration::from_secs(10), crate::uninstall::verdict(client, ns, name));
    match asked.await {
        Ok(Ok(crate::uninstall::Verdict::Uninstalled)) => {
            tracing::info!(daemonset = %cfg.uninstall_daemonset, "DaemonSet deleted: uninstall");
            true
        }
        Ok(Ok(crate::uninstall::Verdict::Present)) => false,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot ask for the DaemonSet: enforcement stays pinned");
            false
        }
        Err(_) => {
            tracing::warn!("no answer about the DaemonSet in 10 s: enforcement stays pinned");
            false
        }
    }
}

/// The processes already running: read from /proc, renumbered with the kernel's pids and
/// cgroups when the task iterator runs (see `kernel::tasks`).
fn seeds(loaded: &loader::Loaded, cgroup_root: Option<&Path>) -> Vec<crate::process::cache::Seed> {
    let seeds = procfs::scan("/proc".as_ref(), cgroup_root);
    match loaded.tasks.as_ref().map(|t| t.read()) {
        Some(Ok(tasks)) => crate::kernel::tasks::renumber(seeds, &tasks),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "task iterator failed: processes seeded from /proc alone");
            seeds
        }
        None => seeds,
    }
}

/// The JSON-lines export. A file that cannot be opened (a read-only root filesystem, a
/// missing directory) does not stop the daemon: sensors, enforcement and the API matter more
/// than one consumer. It is logged and shown by `sidewall status` as failing, with the cause.
fn start_export(cfg: &Config, hub: &Hub) -> Option<(String, Arc<jsonl::Health>)> {
    if cfg.export_file.is_empty() {
        return None;
    }
    let jc = JsonlConfig {
        path: cfg.export_file.clone().into(),
        max_bytes: cfg.export_file_max_mb * 1024 * 1024,
        keep: cfg.export_file_keep,
        queue: cfg.export_queue,
        alerts_only: cfg.export_file_events == OutputEvents::Alerts,
    };
    let health = match jsonl::start(hub, jc) {
        Ok(health) => {
            tracing::info!(path = %cfg.export_file, "exporting events as JSON lines");
            health
        }
        Err(e) => {
            let why = format!(
                "cannot open the export file: {e}; no JSON-lines export (in a container, put it under a writable mount such as /run/sidewall)"
            );
            tracing::error!(path = %cfg.export_file, "{why}");
            let health = Arc::new(jsonl::Health::default());
            *health.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            health
        }
    };
    Some((cfg.export_file.clone(), health))
}

/// The outputs with their own delivery: each Alertmanager, and syslog. Each has its own
/// subscription, so one that is down loses only its own events.
fn start_outputs(
    cfg: &Config,
    hub: &Hub,
    stats: &Arc<Stats>,
    node: &str,
) -> anyhow::Result<Vec<(String, String, Arc<delivery::Health>)>> {
    let retry = Retry::new(cfg.output_retries);
    let mut out = Vec::new();
    for (i, base) in cfg.alertmanager_url.iter().enumerate() {
        let url = alertmanager::alerts_url(base).map_err(anyhow::Error::msg).context("alertmanager_url")?;
        tracing::info!(%url, "posting policy alerts to Alertmanager");
        // One name per Alertmanager in status and /metrics: alertmanager, alertmanager_2, ...
        let name = if i == 0 { "alertmanager".to_string() } else { format!("alertmanager_{}", i + 1) };
        let plan = Plan {
            name: &name,
            stage: Stage::Alertmanager,
            filter: EventFilter::only(EventType::PolicyAlert),
            queue: cfg.export_queue,
            retry,
        };
        let h = delivery::start(hub, plan, stats.clone(), Alertmanager::new(url));
        out.push((name, base.clone(), h));
    }
    if !cfg.syslog_address.is_empty() {
        let target = syslog::Target::parse(&cfg.syslog_address)
            .map_err(anyhow::Error::msg)
            .context("syslog_address")?;
        let ca = (!cfg.syslog_tls_ca.is_empty()).then(|| Path::new(&cfg.syslog_tls_ca));
        let all = cfg.syslog_events == OutputEvents::All;
        let output = Syslog::new(target, ca, all, node.to_string())?;
        let filter = if all { EventFilter::default() } else { EventFilter::only(EventType::PolicyAlert) };
        tracing::info!(address = %cfg.syslog_address, all, "sending events to syslog");
        let plan = Plan { name: "syslog", stage: Stage::Syslog, filter, queue: cfg.export_queue, retry };
        let h = delivery::start(hub, plan, stats.clone(), output);
        out.push(("syslog".to_string(), cfg.syslog_address.clone(), h));
    }
    Ok(out)
}

/// A Kubernetes client when the configuration asks for the API.
async fn kube_client(cfg: &Config) -> anyhow::Result<Option<kube::Client>> {
    if !cfg.use_kubernetes() {
        return Ok(None);
    }
    let kubeconfig = (!cfg.kubeconfig.is_empty()).then(|| Path::new(&cfg.kubeconfig));
    let client = kubernetes::client(kubeconfig).await.context("connecting to the Kubernetes API")?;
    Ok(Some(client))
}

/// The identity sources this configuration asks for, and their names for status.
fn identity_sources(
    cfg: &Config,
    cgroups: Option<CgroupFs>,
    node: &str,
    kube: Option<kube::Client>,
) -> (Sources, String) {
    let mut names = vec!["cgroup"];
    // Not checked for existence: podman creates its storage on first use, which can come after
    // this daemon started (the first pod on a fresh node); lookups read it when they need it.
    let podman = (!cfg.podman_storage.is_empty()).then(|| PodmanStore::new(&cfg.podman_storage));
    if podman.is_some() {
        names.push("podman");
    }
    let kube = kube.map(|client| {
        let index = Arc::new(KubeIndex::new());
        tokio::spawn(kubernetes::watch(client, node.to_string(), index.clone()));
        names.push("kubernetes");
        index
    });
    (Sources { cgroups, kube, podman }, names.join("+"))
}

/// Where policies come from besides the built-in default and the API: `--policy-dir`, and
/// SidecarPolicy objects in every namespace.
fn start_policy_sources(cfg: &Config, kube: Option<kube::Client>, policies: &Arc<PolicyStore>) {
    if !cfg.policy_dir.is_empty() {
        let dir = std::path::PathBuf::from(&cfg.policy_dir);
        tracing::info!(dir = %dir.display(), "watching the policy directory");
        tokio::spawn(store::watch_dir(policies.clone(), dir, Duration::from_secs(1)));
    }
    if let Some(client) = kube {
        tokio::spawn(crate::policy::crd::watch(client, policies.clone()));
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
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
