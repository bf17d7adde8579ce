//! The status model: what `sidewall status` (GetStatus), `/metrics` and the OTLP metrics
//! report about this node: sensors, counts and losses by stage, and each exporter's health.
//! Read by the API and the exporters; it only reads the other stages' shared counters.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use sidewall_proto::v1 as pb;

use crate::{
    api::listen::ApiReport,
    export::{delivery, hub::Hub, jsonl, otlp},
    kernel::loader::{SensorReport, SensorState},
    policy::protection::Protections,
    stats::{Stage, Stats},
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything GetStatus reports.
pub struct NodeStatus {
    pub node_name: String,
    pub kernel: String,
    pub sensors: Vec<SensorReport>,
    pub stats: Arc<Stats>,
    /// For the number of event subscribers.
    pub hub: Arc<Hub>,
    pub export_file: Option<(String, Arc<jsonl::Health>)>,
    pub otlp: Option<(String, Arc<otlp::Health>)>,
    /// The OTLP metrics exporter (same endpoint); its `events` count data points.
    pub otlp_metrics: Option<(String, Arc<otlp::Health>)>,
    pub metrics_address: Option<String>,
    /// Outputs with their own delivery (Alertmanager, syslog): name, target, health.
    pub outputs: Vec<(String, String, Arc<delivery::Health>)>,
    pub identity_source: String,
    /// How each container's rule reached the kernel.
    pub protections: Arc<Protections>,
    /// The API's listeners and refusals.
    pub api: Arc<ApiReport>,
}

impl NodeStatus {
    pub fn snapshot(&self) -> pb::GetStatusResponse {
        let stats = &self.stats;
        pb::GetStatusResponse {
            version: VERSION.into(),
            kernel: self.kernel.clone(),
            node_name: self.node_name.clone(),
            uptime_seconds: stats.started.elapsed().as_secs(),
            sensors: self.sensors.iter().map(sensor_status).collect(),
            events_by_kind: stats.events_by_kind().into_iter().map(|(k, n)| (k.into(), n)).collect(),
            lost_by_stage: stats.lost_by_stage().into_iter().map(|(k, n)| (k.into(), n)).collect(),
            process_cache_size: stats.process_cache_size.load(Relaxed),
            alerts_ahead_of_causes: stats.alerts_ahead_of_causes.load(Relaxed),
            subscribers: self.hub.subscriber_count() as u32,
            identity_source: self.identity_source.clone(),
            exporters: self.exporters(),
            kernel_refusals: stats.kernel_refusals().into_iter().map(|(k, n)| (k.into(), n)).collect(),
            containers: self.protections.snapshot(),
            api: Some(self.api.snapshot()),
            healthy: self.health_problems().is_empty(),
            health_problems: self.health_problems(),
        }
    }

    /// What makes this node unhealthy for a probe: a sensor the configuration asks for that
    /// is not attached (a skipped one was not asked for). Empty: healthy.
    pub fn health_problems(&self) -> Vec<String> {
        self.sensors
            .iter()
            .filter_map(|s| match &s.state {
                SensorState::Failed(why) => Some(format!("sensor {} failed: {why}", s.name)),
                _ => None,
            })
            .collect()
    }

    fn exporters(&self) -> Vec<pb::ExporterStatus> {
        let mut out = Vec::new();
        let disabled = |name: &str| pb::ExporterStatus {
            name: name.into(),
            state: "disabled".into(),
            ..Default::default()
        };
        out.push(match &self.export_file {
            None => disabled("export_file"),
            Some((path, h)) => {
                let last_error = h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                pb::ExporterStatus {
                    name: "export_file".into(),
                    state: if last_error.is_some() { "failing" } else { "ok" }.into(),
                    detail: last_error.map_or_else(|| path.clone(), |e| format!("{path}: {e}")),
                    events: h.written.load(Relaxed),
                    lost: self.stats.lost(Stage::ExportFile) + h.failed.load(Relaxed),
                }
            }
        });
        let otlp_status =
            |name: &str, exporter: &Option<(String, Arc<otlp::Health>)>, lost: u64| match exporter {
                None => disabled(name),
                Some((endpoint, h)) => {
                    let last_error = h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    pb::ExporterStatus {
                        name: name.into(),
                        state: if last_error.is_some() { "failing" } else { "ok" }.into(),
                        detail: last_error.map_or_else(|| endpoint.clone(), |e| format!("{endpoint}: {e}")),
                        events: h.sent.load(Relaxed),
                        lost,
                    }
                }
            };
        out.push(otlp_status("otlp", &self.otlp, self.stats.lost(Stage::Otlp)));
        // A refused metrics push loses nothing: the next one carries the same totals.
        out.push(otlp_status("otlp_metrics", &self.otlp_metrics, 0));
        for (name, target, h) in &self.outputs {
            out.push(delivery::status(name, target, h));
        }
        out.push(match &self.metrics_address {
            None => disabled("prometheus"),
            Some(a) => pb::ExporterStatus {
                name: "prometheus".into(),
                state: "ok".into(),
                detail: format!("http://{a}/metrics"),
                ..Default::default()
            },
        });
        out
    }
}

fn sensor_status(s: &SensorReport) -> pb::SensorStatus {
    let (state, reason) = match &s.state {
        SensorState::Attached => ("attached", String::new()),
        SensorState::Skipped(why) => ("skipped", why.clone()),
        SensorState::Failed(why) => ("failed", why.clone()),
    };
    pb::SensorStatus { name: s.name.into(), state: state.into(), reason, hook: s.hook.into() }
}
