//! Prometheus metrics on `--metrics-address` (`/metrics`, text exposition format).
//!
//! Per-workload labels (namespace, pod, container) are bounded: the `metrics_labels` option
//! picks which of them are kept, and past `metrics_max_series` distinct label sets new ones
//! are counted under the value "other", so a pod churn cannot grow the series without end.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
pub use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as model;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_protobuf, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sidewall_proto::v1::{self as pb, get_events_response::Event};

pub use crate::config::LabelFilter;
use crate::{event, net::flows::FlowGraph, policy::store::PolicyStore, status::NodeStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    kind: String,
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: String,
    action: String,
    severity: String,
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SensorLabels {
    sensor: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabels {
    exporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyChangeLabels {
    source: String,
    kind: String,
    policy: String,
    mode_before: String,
    mode_after: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    namespace: String,
    pod: String,
    source: String,
    destination: String,
    port: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowBytesLabels {
    #[prometheus(flatten)]
    flow: FlowLabels,
    direction: String,
}

pub struct Metrics {
    registry: Registry,
    events: Family<WorkloadLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    lost: Family<StageLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    sensors: Family<SensorLabels, Gauge>,
    policies: Family<ModeLabels, Gauge>,
    exporters: Family<ExporterLabels, Gauge>,
    exporter_sent: Family<ExporterLabels, Counter>,
    exporter_lost: Family<ExporterLabels, Counter>,
    flow_connections: Family<FlowLabels, Counter>,
    flow_bytes: Family<FlowBytesLabels, Counter>,
    policy_changes: Family<PolicyChangeLabels, Counter>,
    api_denied: Family<MethodLabels, Counter>,
    api_refused_handshakes: Counter,
    alerts_ahead: Counter,
    api_certificate_expiry: Family<ListenerLabels, Gauge>,
    process_cache: Gauge,
    subscribers: Gauge,
    filter: LabelFilter,
    max_series: usize,
    seen: Mutex<HashSet<(String, String, String)>>,
    /// Policy names kept as labels, bounded like the workloads.
    seen_policies: Mutex<HashSet<String>>,
}

const OTHER: &str = "other";

impl Metrics {
    pub fn new(filter: LabelFilter, max_series: usize) -> Self {
        let mut registry = Registry::with_prefix("sidewall");
        let m = Self {
            registry: Registry::default(),
            events: Family::default(),
            alerts: Family::default(),
            lost: Family::default(),
            refusals: Family::default(),
            sensors: Family::default(),
            policies: Family::default(),
            exporters: Family::default(),
            exporter_sent: Family::default(),
            exporter_lost: Family::default(),
            flow_connections: Family::default(),
            flow_bytes: Family::default(),
            policy_changes: Family::default(),
            api_denied: Family::default(),
            api_refused_handshakes: Counter::default(),
            alerts_ahead: Counter::default(),
            api_certificate_expiry: Family::default(),
            process_cache: Gauge::default(),
            subscribers: Gauge::default(),
            filter,
            max_series,
            seen: Mutex::new(HashSet::new()),
            seen_policies: Mutex::new(HashSet::new()),
        };
        registry.register("events", "Events by kind and workload", m.events.clone());
        registry.register("alerts", "Policy alerts by rule, action and workload", m.alerts.clone());
        registry.register("events_lost", "Events lost since start, by pipeline stage", m.lost.clone());
        registry.register(
            "kernel_refusals",
            "What the kernel refused or killed since the programs were loaded, by kind; each is an alert",
            m.refusals.clone(),
        );
        registry.register("sensor_up", "1 when a sensor is in the given state", m.sensors.clone());
        registry.register("policies", "Policies in force, by mode", m.policies.clone());
        registry.register("exporter_up", "1 when an exporter works", m.exporters.clone());
        registry.register(
            "exporter_sent",
            "Events an exporter delivered since start",
            m.exporter_sent.clone(),
        );
        registry.register(
            "exporter_lost",
            "Events an exporter lost since start (its queue was full, or its destination refused)",
            m.exporter_lost.clone(),
        );
        registry.register(
            "flow_connections",
            "Loopback connections (or datagrams) between containers of a pod, since start",
            m.flow_connections.clone(),
        );
        registry.register("flow_bytes", "Loopback bytes between containers of a pod", m.flow_bytes.clone());
        registry.register(
            "policy_changes",
            "Policy changes by source (api, file, crd, builtin), kind (added, replaced, deleted, \
             mode_changed), policy, and mode before and after (\"none\" when absent)",
            m.policy_changes.clone(),
        );
        registry.register(
            "api_denied",
            "API calls refused for want of a role, by method",
            m.api_denied.clone(),
        );
        registry.register(
            "api_refused_handshakes",
            "TLS connections to the API refused at the handshake (plaintext, no or an untrusted client certificate)",
            m.api_refused_handshakes.clone(),
        );
        registry.register(
            "api_certificate_expiry_timestamp_seconds",
            "When the server certificate of a TLS listener expires (Unix time)",
            m.api_certificate_expiry.clone(),
        );
        registry.register(
            "alerts_ahead_of_causes",
            "Alerts handled before all the events recorded ahead of them (a flood filled the events ring)",
            m.alerts_ahead.clone(),
        );
        registry.register("process_cache_size", "Processes in the process cache", m.process_cache.clone());
        registry.register(
            "subscribers",
            "Event stream subscribers (gRPC clients, exporters)",
            m.subscribers.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one event (and, for alerts, the alert).
    pub fn observe(&self, ev: &pb::GetEventsResponse) {
        let kind = event::kind_name(event::kind(ev)).to_string();
        let (namespace, pod, container) = self.workload(event::subject(ev));
        if let Some(Event::PolicyChange(c)) = &ev.event {
            self.observe_change(c);
        }
        if let Some(Event::PolicyAlert(a)) = &ev.event {
            let labels = AlertLabels {
                rule: a.rule_id.clone(),
                action: a.action.clone(),
                severity: a.severity.clone(),
                namespace: namespace.clone(),
                pod: pod.clone(),
                container: container.clone(),
            };
            // An aggregated alert stands for `count` violations.
            self.alerts.get_or_create(&labels).inc_by(a.count.max(1));
        }
        self.events.get_or_create(&WorkloadLabels { kind, namespace, pod, container }).inc();
    }

    fn observe_change(&self, c: &pb::PolicyChange) {
        let mode = |v: &Option<pb::PolicyVersion>| v.as_ref().map_or("none".to_string(), |v| v.mode.clone());
        let labels = PolicyChangeLabels {
            source: c.source.clone(),
            kind: c.change.clone(),
            policy: self.policy_label(&c.policy),
            mode_before: mode(&c.before),
            mode_after: mode(&c.after),
        };
        self.policy_changes.get_or_create(&labels).inc();
    }

    /// The policy's name, or "other" past `max_series` names.
    fn policy_label(&self, name: &str) -> String {
        let mut seen = self.seen_policies.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(name) || seen.len() < self.max_series {
            seen.insert(name.to_string());
            return name.to_string();
        }
        OTHER.into()
    }

    /// The workload labels kept by the filter, bounded in number.
    fn workload(&self, p: Option<&pb::Process>) -> (String, String, String) {
        let pod = p.and_then(|p| p.pod.as_ref());
        let c = p.and_then(|p| p.container.as_ref());
        let pick = |keep: bool, v: Option<&String>| {
            if keep { v.cloned().unwrap_or_default() } else { String::new() }
        };
        let key = (
            pick(self.filter.namespace, pod.map(|p| &p.namespace)),
            pick(self.filter.pod, pod.map(|p| &p.name)),
            pick(self.filter.container, c.map(|c| if c.name.is_empty() { &c.role } else { &c.name })),
        );
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) || seen.len() < self.max_series {
            seen.insert(key.clone());
            return key;
        }
        (OTHER.into(), OTHER.into(), OTHER.into())
    }

    /// The registry as it stands, in Prometheus' protobuf data model.
    pub fn families(&self) -> Vec<model::MetricFamily> {
        prometheus_protobuf::encode(&self.registry).unwrap_or_default()
    }

    /// Brings the gauges up to date from the daemon's state.
    fn refresh(&self, status: &NodeStatus, flows: &Mutex<FlowGraph>, policies: &PolicyStore) {
        let snap = status.snapshot();
        for (stage, n) in &snap.lost_by_stage {
            set_total(&self.lost.get_or_create(&StageLabels { stage: stage.clone() }), *n);
        }
        for (kind, n) in &snap.kernel_refusals {
            set_total(&self.refusals.get_or_create(&RefusalLabels { kind: kind.clone() }), *n);
        }
        for s in &snap.sensors {
            for state in ["attached", "skipped", "failed"] {
                let v = i64::from(s.state == state);
                self.sensors
                    .get_or_create(&SensorLabels { sensor: s.name.clone(), state: state.into() })
                    .set(v);
            }
        }
        for e in snap.exporters.iter().filter(|e| e.state != "disabled") {
            let labels = ExporterLabels { exporter: e.name.clone() };
            self.exporters.get_or_create(&labels).set(i64::from(e.state == "ok"));
            set_total(&self.exporter_sent.get_or_create(&labels), e.events);
            set_total(&self.exporter_lost.get_or_create(&labels), e.lost);
        }
        for mode in ["monitor", "enforce"] {
            let n = policies.list().iter().filter(|p| p.mode == mode).count();
            self.policies.get_or_create(&ModeLabels { mode: mode.into() }).set(n as i64);
        }
        if let Some(api) = &snap.api {
            self.update_api(api);
        }
        self.process_cache.set(snap.process_cache_size as i64);
        set_total(&self.alerts_ahead, snap.alerts_ahead_of_causes);
        self.subscribers.set(i64::from(snap.subscribers));
        self.update_flows(flows);
    }

    fn update_api(&self, api: &pb::ApiStatus) {
        for (method, n) in &api.denied_by_method {
            set_total(&self.api_denied.get_or_create(&MethodLabels { method: method.clone() }), *n);
        }
        set_total(&self.api_refused_handshakes, api.refused_handshakes);
        for l in &api.listeners {
            if let Some(t) = l.certificate_not_after {
                let labels = ListenerLabels { address: l.address.clone() };
                self.api_certificate_expiry.get_or_create(&labels).set(t.seconds);
            }
        }
    }

    fn update_flows(&self, flows: &Mutex<FlowGraph>) {
        let pods = flows.lock().unwrap_or_else(|e| e.into_inner()).snapshot(|_| true);
        // Pods come and go: only what the graph holds now is exported. Past `max_series`
        // edges, the rest are summed under "other", like the workload labels.
        self.flow_connections.clear();
        self.flow_bytes.clear();
        let mut edges = 0;
        let other = FlowLabels {
            namespace: OTHER.into(),
            pod: OTHER.into(),
            source: OTHER.into(),
            destination: OTHER.into(),
            port: OTHER.into(),
            protocol: OTHER.into(),
        };
        for p in pods {
            let (namespace, pod) = p
                .pod
                .as_ref()
                .map_or((String::new(), String::new()), |p| (p.namespace.clone(), p.name.clone()));
            for e in p.edges {
                let side = |c: Option<&pb::Container>| {
                    c.map_or_else(String::new, |c| {
                        if c.name.is_empty() { c.role.clone() } else { c.name.clone() }
                    })
                };
                edges += 1;
                if edges > self.max_series {
                    self.flow_connections.get_or_create(&other).inc_by(e.connections);
                    for (direction, n) in [("sent", e.bytes_sent), ("received", e.bytes_received)] {
                        let l = FlowBytesLabels { flow: other.clone(), direction: direction.into() };
                        self.flow_bytes.get_or_create(&l).inc_by(n);
                    }
                    continue;
                }
                let base = FlowLabels {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    source: side(e.source.as_ref()),
                    destination: side(e.destination.as_ref()),
                    port: if e.name.is_empty() { e.port.to_string() } else { e.name.clone() },
                    protocol: e.protocol.clone(),
                };
                set_total(&self.flow_connections.get_or_create(&base), e.connections);
                for (direction, n) in [("sent", e.bytes_sent), ("received", e.bytes_received)] {
                    let l = FlowBytesLabels { flow: base.clone(), direction: direction.into() };
                    set_total(&self.flow_bytes.get_or_create(&l), n);
                }
            }
        }
    }
}

/// Sets a counter to a total kept elsewhere (the stats, the flow graph), which only grows.
fn set_total(c: &Counter, total: u64) {
    c.inner().store(total, std::sync::atomic::Ordering::Relaxed);
}

/// The metrics and the daemon state their gauges are read from: what /metrics and the OTLP
/// metrics exporter render.
#[derive(Clone)]
pub struct MetricsState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<NodeStatus>,
    pub flows: Arc<Mutex<FlowGraph>>,
    pub policies: Arc<PolicyStore>,
}

impl MetricsState {
    /// The text exposition, gauges brought up to date.
    pub fn text(&self) -> String {
        self.metrics.refresh(&self.status, &self.flows, &self.policies);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.metrics.registry);
        out
    }

    /// The same metrics as Prometheus' protobuf data model, for other exporters.
    pub fn families(&self) -> Vec<model::MetricFamily> {
        self.metrics.refresh(&self.status, &self.flows, &self.policies);
        self.metrics.families()
    }
}

async fn scrape(State(s): State<MetricsState>) -> impl IntoResponse {
    let body = s.text();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// Serves /metrics (and /healthz) on `addr` until the process ends.
/// 200 "ok" when every sensor the configuration asks for is attached; 503 with the
/// problems, one per line, otherwise (what the DaemonSet's probes check).
async fn healthz(State(state): State<MetricsState>) -> (axum::http::StatusCode, String) {
    let problems = state.status.health_problems();
    if problems.is_empty() {
        (axum::http::StatusCode::OK, "ok\n".into())
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

pub async fn serve(addr: SocketAddr, state: MetricsState) -> anyhow::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).route("/healthz", get(healthz)).with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding metrics address {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_in(ns: &str, pod: &str, container: &str) -> pb::GetEventsResponse {
        pb::GetEventsResponse {
            event: Some(Event::ProcessExec(pb::ProcessExec {
                process: Some(pb::Process {
                    pod: Some(pb::Pod { namespace: ns.into(), name: pod.into(), ..Default::default() }),
                    container: Some(pb::Container { name: container.into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn series_are_bounded_and_labels_filtered() {
        let all = LabelFilter::parse(&["namespace".into(), "pod".into(), "container".into()]).expect("valid");
        let m = Metrics::new(all, 2);
        m.observe(&exec_in("a", "p1", "app"));
        m.observe(&exec_in("a", "p2", "app"));
        m.observe(&exec_in("a", "p3", "app"));
        m.observe(&exec_in("a", "p1", "app"));
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(
            out.contains(
                r#"sidewall_events_total{kind="process_exec",namespace="a",pod="p1",container="app"} 2"#
            ),
            "{out}"
        );
        assert!(out.contains(r#"namespace="other",pod="other",container="other"} 1"#), "{out}");
        assert!(!out.contains("p3"));

        let ns_only = LabelFilter::parse(&["namespace".into()]).expect("valid");
        let m = Metrics::new(ns_only, 100);
        m.observe(&exec_in("a", "p1", "app"));
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(out.contains(r#"namespace="a",pod="",container=""} 1"#), "{out}");
        assert!(LabelFilter::parse(&["node".into()]).is_err());
    }

    #[test]
    fn policy_changes_are_counted_by_source_kind_and_modes() {
        let all = LabelFilter::parse(&["namespace".into()]).expect("valid");
        let m = Metrics::new(all, 1);
        let v = |mode: &str| Some(pb::PolicyVersion { hash: "sha256:00".into(), mode: mode.into() });
        let change = |policy: &str, kind: &str, before, after| pb::GetEventsResponse {
            event: Some(Event::PolicyChange(pb::PolicyChange {
                policy: policy.into(),
                change: kind.into(),
                source: "api".into(),
                actor: None,
                before,
                after,
            })),
            ..Default::default()
        };
        m.observe(&change("shop/web", "mode_changed", v("enforce"), v("monitor")));
        m.observe(&change("shop/api", "deleted", v("monitor"), None));
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(
            out.contains(r#"sidewall_policy_changes_total{source="api",kind="mode_changed",policy="shop/web",mode_before="enforce",mode_after="monitor"} 1"#),
            "{out}"
        );
        // Past the bound of one policy name: "other".
        assert!(
            out.contains(r#"kind="deleted",policy="other",mode_before="monitor",mode_after="none"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"sidewall_events_total{kind="policy_change""#), "{out}");
    }

    #[test]
    fn an_aggregated_alert_counts_the_violations_it_stands_for() {
        let all = LabelFilter::parse(&["namespace".into(), "pod".into(), "container".into()]).expect("valid");
        let m = Metrics::new(all, 10);
        let alert = |count: u64| pb::GetEventsResponse {
            event: Some(Event::PolicyAlert(pb::PolicyAlert {
                rule_id: "loopback-egress".into(),
                action: "blocked".into(),
                count,
                ..Default::default()
            })),
            ..Default::default()
        };
        m.observe(&alert(0));
        m.observe(&alert(41));
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(out.contains(r#"sidewall_alerts_total{rule="loopback-egress",action="blocked""#), "{out}");
        assert!(out.lines().any(|l| l.starts_with("sidewall_alerts_total{") && l.ends_with(" 42")), "{out}");
    }

    #[test]
    fn flows_are_counters_bounded_like_the_workloads() {
        use crate::net::flows::{Endpoint, Flow};
        let pod = pb::Pod { name: "web".into(), namespace: "shop".into(), ..Default::default() };
        let c = |name: &str| pb::Container { id: name.into(), name: name.into(), ..Default::default() };
        let (app, proxy) = (c("app"), c("proxy"));
        let mut g = FlowGraph::default();
        for port in [8080, 8081, 8082] {
            let f = Flow {
                netns_cookie: 1,
                netns: 1,
                protocol: "tcp",
                source: Endpoint { pod: Some(&pod), container: Some(&proxy) },
                destination: Endpoint { pod: Some(&pod), container: Some(&app) },
                port,
                name: "",
            };
            g.record(&f, 2, (10, 20), sidewall_proto::Timestamp { seconds: 1, nanos: 0 });
        }
        let all = LabelFilter::parse(&["namespace".into(), "pod".into(), "container".into()]).expect("valid");
        let m = Metrics::new(all, 2);
        m.update_flows(&Mutex::new(g));
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(out.contains("# TYPE sidewall_flow_connections counter"), "{out}");
        assert!(
            out.contains(r#"sidewall_flow_connections_total{namespace="shop",pod="web",source="proxy",destination="app",port="8080",protocol="tcp"} 2"#),
            "{out}"
        );
        // The third edge is past the bound of 2: summed under "other".
        assert!(!out.contains(r#"port="8082""#), "{out}");
        assert!(out.contains(r#"port="other",protocol="other"} 2"#), "{out}");
        assert!(out.contains(r#"port="other",protocol="other",direction="received"} 20"#), "{out}");
    }
}
