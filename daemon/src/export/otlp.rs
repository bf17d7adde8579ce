//! OpenTelemetry export: events and alerts as OTLP log records over gRPC to a collector,
//! batched (up to 512 records or one second). A batch the collector refuses is counted as
//! lost (stage "otlp") and the exporter reports itself failing until a batch goes through.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::{
    filter::EventFilter,
    hub::{Hub, Receiver},
};
use crate::{
    event,
    stats::{Stage, Stats},
};

const BATCH: usize = 512;
const FLUSH: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Health {
    pub sent: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// gRPC metadata sent with every export (`otlp_headers`, `OTEL_EXPORTER_OTLP_HEADERS`):
/// most collectors and hosted backends authenticate with it.
pub type Headers = Arc<[(String, String)]>;

/// Subscribes to the hub and exports to `endpoint` ("http://host:4317") until the end.
pub fn start(
    hub: &Hub,
    stats: Arc<Stats>,
    endpoint: String,
    headers: Headers,
    node: String,
    queue: usize,
) -> Arc<Health> {
    let (_sub, rx) = hub.subscribe("otlp", Stage::Otlp, EventFilter::default(), queue);
    let health = Arc::new(Health::default());
    tokio::spawn(run(rx, (endpoint, headers), node, stats, health.clone()));
    health
}

/// A request carrying `headers` as metadata.
pub fn request<T>(message: T, headers: &[(String, String)]) -> Result<tonic::Request<T>, String> {
    let mut req = tonic::Request::new(message);
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|_| format!("header {k:?}: not a valid name"))?;
        let value = v.parse().map_err(|_| format!("header {k:?}: not a valid value"))?;
        req.metadata_mut().insert(key, value);
    }
    Ok(req)
}

async fn run(
    mut rx: Receiver,
    (endpoint, headers): (String, Headers),
    node: String,
    stats: Arc<Stats>,
    health: Arc<Health>,
) {
    let mut client: Option<LogsServiceClient<tonic::transport::Channel>> = None;
    let mut batch: Vec<LogRecord> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    batch.push(record(&ev));
                    if batch.len() < BATCH {
                        continue;
                    }
                }
                None => return,
            },
            _ = tick.tick() => {}
        }
        if batch.is_empty() {
            continue;
        }
        let records = std::mem::take(&mut batch);
        let n = records.len() as u64;
        match send(&mut client, &endpoint, &headers, &node, records).await {
            Ok(()) => {
                health.sent.fetch_add(n, Relaxed);
                *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                stats.count_lost(Stage::Otlp, n);
                client = None;
                tracing::warn!(endpoint = %endpoint, error = %e, "OTLP export failed");
                *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }
}

async fn send(
    client: &mut Option<LogsServiceClient<tonic::transport::Channel>>,
    endpoint: &str,
    headers: &[(String, String)],
    node: &str,
    records: Vec<LogRecord>,
) -> Result<(), String> {
    if client.is_none() {
        *client = Some(
            LogsServiceClient::connect(endpoint.to_string()).await.map_err(|e| format!("connect: {e}"))?,
        );
    }
    let Some(c) = client.as_mut() else { return Err("no client".into()) };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(node)),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    };
    c.export(request(req, headers)?).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok(())
}

/// What every export says it comes from: sidewalld on this node (`host.name`,
/// `k8s.node.name`), then the attributes of `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`
/// as the OpenTelemetry SDKs read them (e.g. `k8s.cluster.name=prod`), which win.
pub(crate) fn resource(node: &str) -> Resource {
    static FROM_ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    let env = FROM_ENV.get_or_init(|| {
        let attrs = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        let service = std::env::var("OTEL_SERVICE_NAME").ok();
        env_attributes(&attrs, service.as_deref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "OTEL_RESOURCE_ATTRIBUTES ignored");
            Vec::new()
        })
    });
    Resource { attributes: resource_attributes(node, env), ..Default::default() }
}

fn resource_attributes(node: &str, env: &[(String, String)]) -> Vec<KeyValue> {
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), "sidewalld".into()),
        ("host.name".into(), node.into()),
        ("k8s.node.name".into(), node.into()),
    ];
    for (k, v) in env {
        match attrs.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => attrs.push((k.clone(), v.clone())),
        }
    }
    attrs.iter().map(|(k, v)| kv(k, v)).collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES` (the OpenTelemetry resource SDK specification), then
/// `OTEL_SERVICE_NAME` as `service.name`. One malformed entry discards
/// the whole variable, as the specification says.
fn env_attributes(attrs: &str, service: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = parse_pairs(attrs)?;
    if let Some(s) = service.filter(|s| !s.is_empty()) {
        out.push(("service.name".into(), s.into()));
    }
    Ok(out)
}

/// `key1=value1,key2=value2`, values percent-encoded: the format of the OpenTelemetry
/// variables (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`).
pub fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (k, v) = entry.split_once('=').ok_or_else(|| format!("{entry:?} is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{entry:?} has no key"));
        }
        out.push((
            k.to_string(),
            percent_decode(v.trim()).ok_or_else(|| format!("{entry:?}: bad percent-encoding"))?,
        ));
    }
    Ok(out)
}

fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sidewall".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub(crate) fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// One event as a log record: the canonical JSON as the body, the fields a SOC pipeline
/// routes on as attributes (OpenTelemetry semantic conventions where they exist).
pub fn record(ev: &pb::GetEventsResponse) -> LogRecord {
    let kind = event::kind_name(event::kind(ev));
    let mut attributes = vec![kv("event.name", kind)];
    if let Some(p) = event::subject(ev) {
        attributes.push(kv("process.pid", &p.pid.to_string()));
        attributes.push(kv("process.executable.path", &p.binary));
        if let Some(pod) = &p.pod {
            attributes.push(kv("k8s.namespace.name", &pod.namespace));
            attributes.push(kv("k8s.pod.name", &pod.name));
        }
        if let Some(c) = &p.container {
            attributes.push(kv("k8s.container.name", &c.name));
            attributes.push(kv("container.id", &c.id));
            attributes.push(kv("sidewall.container.role", &c.role));
        }
    }
    let (severity, text) = match &ev.event {
        Some(Event::PolicyAlert(a)) => {
            attributes.extend([
                kv("sidewall.rule_id", &a.rule_id),
                kv("sidewall.action", &a.action),
                kv("sidewall.severity", &a.severity),
                kv("sidewall.mitre_technique", &a.mitre_technique),
                kv("sidewall.policy", &a.policy),
                kv("sidewall.mode", &a.mode),
            ]);
            if let Some(c) = a.peer.as_ref().and_then(|p| p.container.as_ref()) {
                attributes.push(kv("sidewall.peer.container.name", &c.name));
            }
            match a.severity.as_str() {
                "critical" => (SeverityNumber::Fatal, "FATAL"),
                "high" => (SeverityNumber::Error, "ERROR"),
                _ => (SeverityNumber::Warn, "WARN"),
            }
        }
        Some(Event::LostEvents(_)) => (SeverityNumber::Warn, "WARN"),
        Some(Event::PolicyChange(c)) => {
            attributes.extend([
                kv("sidewall.policy", &c.policy),
                kv("sidewall.change", &c.change),
                kv("sidewall.source", &c.source),
            ]);
            // Less protection than before: a deletion, or enforce switched to monitor.
            let was_enforced = c.before.as_ref().is_some_and(|v| v.mode == "enforce");
            let enforced = c.after.as_ref().is_some_and(|v| v.mode == "enforce");
            if c.change == "deleted" || (was_enforced && !enforced) {
                (SeverityNumber::Warn, "WARN")
            } else {
                (SeverityNumber::Info, "INFO")
            }
        }
        _ => (SeverityNumber::Info, "INFO"),
    };
    let nanos = ev.time.map_or(0, |t| t.seconds.max(0) as u64 * 1_000_000_000 + t.nanos.max(0) as u64);
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(serde_json::to_string(ev).unwrap_or_default())),
        }),
        attributes,
        event_name: kind.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_follow_the_opentelemetry_variables() {
        let env =
            env_attributes("k8s.cluster.name=prod, team=sec%20ops ,host.name=h2", Some("sw")).expect("valid");
        let attrs: Vec<(String, String)> = resource_attributes("n1", &env)
            .into_iter()
            .map(|a| {
                let v = match a.value.and_then(|v| v.value) {
                    Some(Value::StringValue(s)) => s,
                    _ => String::new(),
                };
                (a.key, v)
            })
            .collect();
        let want = [
            ("service.name", "sw"),
            ("host.name", "h2"),
            ("k8s.node.name", "n1"),
            ("k8s.cluster.name", "prod"),
            ("team", "sec ops"),
        ];
        assert_eq!(attrs, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert!(env_attributes("a=1,broken", None).unwrap_err().contains("\"broken\" is not key=value"));
        assert!(env_attributes("a=%zz", None).is_err());
        assert_eq!(env_attributes("", None), Ok(Vec::new()));
    }

    #[test]
    fn alerts_carry_their_fields_as_attributes() {
        let ev = pb::GetEventsResponse {
            event: Some(Event::PolicyAlert(pb::PolicyAlert {
                rule_id: "loopback-egress".into(),
                severity: "critical".into(),
                action: "blocked".into(),
                process: Some(pb::Process {
                    pid: 7,
                    pod: Some(pb::Pod { namespace: "shop".into(), name: "web".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            time: Some(sidewall_proto::Timestamp { seconds: 2, nanos: 5 }),
            ..Default::default()
        };
        let r = record(&ev);
        let attr = |k: &str| {
            r.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
        };
        assert_eq!(attr("sidewall.rule_id").as_deref(), Some("loopback-egress"));
        assert_eq!(attr("k8s.pod.name").as_deref(), Some("web"));
        assert_eq!(r.severity_number, SeverityNumber::Fatal as i32);
        assert_eq!(r.time_unix_nano, 2_000_000_005);
    }
}
