//! OpenTelemetry metrics: every interval, the metrics of `/metrics` are pushed as OTLP metrics
//! to the collector that receives the OTLP logs. Counters become cumulative monotonic sums
//! (since the daemon started), gauges stay gauges; names and labels are those of `/metrics`,
//! so a dashboard reads the same series through a collector as through a scrape.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
    metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point::Value,
    },
};

use super::metrics::{MetricsState, model};
use super::otlp::{Headers, Health, kv, resource, scope};

type Client = MetricsServiceClient<tonic::transport::Channel>;

/// Pushes `state`'s metrics to `endpoint` every `interval` until the end, reporting to
/// `health`.
pub fn start(
    state: MetricsState,
    (endpoint, headers): (String, Headers),
    node: String,
    interval: Duration,
    health: Arc<Health>,
) {
    tokio::spawn(run(state, (endpoint, headers), node, interval, health));
}

async fn run(
    state: MetricsState,
    (endpoint, headers): (String, Headers),
    node: String,
    interval: Duration,
    health: Arc<Health>,
) {
    let started = unix_nanos();
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let metrics = to_otlp(&state.families(), started, unix_nanos());
        let points: u64 = metrics.iter().map(|m| points(m) as u64).sum();
        match send(&mut client, &endpoint, &headers, &node, metrics).await {
            Ok(()) => {
                health.sent.fetch_add(points, Relaxed);
                *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                // The next push carries the same cumulative values: nothing is lost but time.
                client = None;
                tracing::warn!(endpoint = %endpoint, error = %e, "OTLP metrics export failed");
                *health.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }
}

async fn send(
    client: &mut Option<Client>,
    endpoint: &str,
    headers: &[(String, String)],
    node: &str,
    metrics: Vec<Metric>,
) -> Result<(), String> {
    if client.is_none() {
        *client = Some(Client::connect(endpoint.to_string()).await.map_err(|e| format!("connect: {e}"))?);
    }
    let Some(c) = client.as_mut() else { return Err("no client".into()) };
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(node)),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, ..Default::default() }],
            ..Default::default()
        }],
    };
    c.export(super::otlp::request(req, headers)?)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok(())
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        _ => 0,
    }
}

/// Counters and gauges of the registry as OTLP metrics (sidewall has no other kinds).
pub fn to_otlp(families: &[model::MetricFamily], start_ns: u64, now_ns: u64) -> Vec<Metric> {
    families
        .iter()
        .filter_map(|f| {
            let point = |m: &model::Metric, value: f64, start: u64| NumberDataPoint {
                attributes: m.label.iter().map(|l| kv(&l.name, &l.value)).collect(),
                start_time_unix_nano: start,
                time_unix_nano: now_ns,
                value: Some(Value::AsDouble(value)),
                ..Default::default()
            };
            let data = match model::MetricType::try_from(f.r#type).ok()? {
                model::MetricType::Counter => Data::Sum(Sum {
                    data_points: f
                        .metric
                        .iter()
                        .filter_map(|m| Some(point(m, m.counter.as_ref()?.value, start_ns)))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                model::MetricType::Gauge => Data::Gauge(Gauge {
                    data_points: f
                        .metric
                        .iter()
                        .filter_map(|m| Some(point(m, m.gauge.as_ref()?.value, 0)))
                        .collect(),
                }),
                _ => return None,
            };
            Some(Metric {
                name: f.name.trim_end_matches("_total").to_string(),
                description: f.help.clone(),
                unit: f.unit.clone(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sidewall_proto::v1 as pb;

    use super::*;
    use crate::export::metrics::{LabelFilter, Metrics};

    #[test]
    fn counters_become_cumulative_sums_with_their_labels() {
        let all = LabelFilter::parse(&["namespace".into(), "pod".into(), "container".into()]).expect("valid");
        let m = Metrics::new(all, 10);
        let ev = pb::GetEventsResponse {
            event: Some(pb::get_events_response::Event::PolicyAlert(pb::PolicyAlert {
                rule_id: "loopback-egress".into(),
                action: "blocked".into(),
                severity: "medium".into(),
                process: Some(pb::Process {
                    pod: Some(pb::Pod { namespace: "shop".into(), name: "web".into(), ..Default::default() }),
                    container: Some(pb::Container { name: "proxy".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        m.observe(&ev);
        m.observe(&ev);
        let metrics = to_otlp(&m.families(), 10, 20);
        let alerts = metrics.iter().find(|m| m.name == "sidewall_alerts").expect("alerts metric");
        let Some(Data::Sum(sum)) = &alerts.data else { panic!("a sum: {alerts:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let p = &sum.data_points[0];
        assert_eq!((p.value, p.start_time_unix_nano, p.time_unix_nano), (Some(Value::AsDouble(2.0)), 10, 20));
        let attr = |k: &str| p.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone());
        assert_eq!(attr("rule"), Some(kv("", "loopback-egress").value.expect("value")));
        assert_eq!(attr("container"), Some(kv("", "proxy").value.expect("value")));
        let cache = metrics.iter().find(|m| m.name == "sidewall_process_cache_size").expect("gauge");
        assert!(matches!(cache.data, Some(Data::Gauge(_))));
    }
}
