//! Alertmanager output: each `policy_alert` (an aggregated one too) posted to Alertmanager's
//! API (`POST /api/v2/alerts`) with the labels a SOC routes on and the details as
//! annotations. Alertmanager then groups, deduplicates, silences and routes them. Batching,
//! retries and loss accounting are `delivery`'s.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Map, Value, json};
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::delivery::Output;

/// How much of a refusal's body is kept for the error message.
const ERROR_BODY: usize = 4096;

/// The alerts endpoint of an Alertmanager base URL ("http://am:9093", "https://am/prefix").
pub fn alerts_url(base: &str) -> Result<http::Uri, String> {
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!("{base:?} must start with http:// or https://"));
    }
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    url.parse::<http::Uri>().map_err(|e| format!("{base:?} is not a URL: {e}"))
}

pub struct Alertmanager {
    url: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Alertmanager {
    pub fn new(url: http::Uri) -> Self {
        let builder = HttpsConnectorBuilder::new().with_native_roots().unwrap_or_else(|e| {
            // https:// then fails with a certificate error, visible in status; http:// works.
            tracing::warn!(error = %e, "no system CA certificates for the Alertmanager output");
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        });
        let connector = builder.https_or_http().enable_http1().build();
        Self { url, client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = Limited::new(resp.into_body(), ERROR_BODY)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        Err(format!("HTTP {status}: {body}"))
    }
}

impl Output for Alertmanager {
    type Item = Value;

    fn item(&self, ev: &pb::GetEventsResponse) -> Option<Value> {
        alert(ev)
    }

    async fn send(&mut self, batch: &[Value]) -> Result<(), String> {
        let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        self.post(body).await
    }
}

/// A policy alert as an Alertmanager alert; None for any other event. Labels identify the
/// alert (Alertmanager merges alerts with equal labels); what differs between two
/// occurrences (process, exec_id, message) goes in annotations.
pub fn alert(ev: &pb::GetEventsResponse) -> Option<Value> {
    let Some(Event::PolicyAlert(a)) = &ev.event else { return None };
    let process = a.process.as_ref();
    let pod = process.and_then(|p| p.pod.as_ref());
    let container = process.and_then(|p| p.container.as_ref());
    let peer = a.peer.as_ref().and_then(|p| p.container.as_ref());
    let mut labels = Map::new();
    for (k, v) in [
        ("alertname", a.rule_id.as_str()),
        ("severity", &a.severity),
        ("namespace", pod.map_or("", |p| &p.namespace)),
        ("pod", pod.map_or("", |p| &p.name)),
        ("container", container.map_or("", |c| &c.name)),
        ("role", container.map_or("", |c| &c.role)),
        ("peer_container", peer.map_or("", |c| &c.name)),
        ("mitre_technique", &a.mitre_technique),
        ("policy", &a.policy),
        ("action", &a.action),
        ("node", &ev.node_name),
        ("source", "sidewall"),
    ] {
        // Alertmanager refuses empty label values; an absent label matches "" in routes.
        if !v.is_empty() {
            labels.insert(k.into(), v.into());
        }
    }
    let mut annotations = Map::new();
    annotations.insert("summary".into(), a.message.clone().into());
    annotations.insert("message".into(), a.message.clone().into());
    if let Some(p) = process {
        let what = if p.pid > 0 { format!("{} (pid {})", p.binary, p.pid) } else { p.binary.clone() };
        annotations.insert("process".into(), what.into());
        annotations.insert("exec_id".into(), p.exec_id.clone().into());
    }
    annotations.insert("mode".into(), a.mode.clone().into());
    if !a.enforced_by.is_empty() {
        annotations.insert("enforced_by".into(), a.enforced_by.clone().into());
    }
    if a.count > 0 {
        annotations.insert("count".into(), a.count.to_string().into());
        annotations.insert("sample".into(), a.sample.join(", ").into());
    }
    annotations.retain(|_, v| v.as_str().is_some_and(|s| !s.is_empty()));
    let mut out = json!({ "labels": labels, "annotations": annotations });
    if let Some(t) = ev.time.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
    {
        out["startsAt"] = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_carries_the_labels_a_soc_routes_on() {
        let ev = pb::GetEventsResponse {
            event: Some(Event::PolicyAlert(pb::PolicyAlert {
                rule_id: "loopback-egress".into(),
                severity: "high".into(),
                action: "blocked".into(),
                policy: "shop/web".into(),
                mitre_technique: "T1021".into(),
                message: "probe reached app:8080".into(),
                process: Some(pb::Process {
                    pid: 7,
                    binary: "/bin/swtool".into(),
                    exec_id: "abc".into(),
                    pod: Some(pb::Pod { namespace: "shop".into(), name: "web".into(), ..Default::default() }),
                    container: Some(pb::Container {
                        name: "probe".into(),
                        role: "sidecar".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                peer: Some(pb::Process {
                    container: Some(pb::Container { name: "app".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            node_name: "n1".into(),
            time: Some(sidewall_proto::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
        };
        let a = alert(&ev).expect("an alert");
        let l = &a["labels"];
        for (k, v) in [
            ("alertname", "loopback-egress"),
            ("severity", "high"),
            ("namespace", "shop"),
            ("pod", "web"),
            ("container", "probe"),
            ("role", "sidecar"),
            ("peer_container", "app"),
            ("mitre_technique", "T1021"),
            ("policy", "shop/web"),
            ("action", "blocked"),
            ("node", "n1"),
        ] {
            assert_eq!(l[k], v, "{k}");
        }
        assert_eq!(a["annotations"]["process"], "/bin/swtool (pid 7)");
        assert_eq!(a["annotations"]["exec_id"], "abc");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.005Z");
        // Nothing empty: Alertmanager refuses empty label values.
        assert!(l.as_object().is_some_and(|m| m.values().all(|v| v != "")), "{l}");
    }

    #[test]
    fn only_alerts_are_posted_and_urls_are_checked() {
        assert!(alert(&pb::GetEventsResponse::default()).is_none());
        assert_eq!(alerts_url("http://am:9093/").expect("valid").to_string(), "http://am:9093/api/v2/alerts");
        assert!(alerts_url("am:9093").unwrap_err().contains("must start with http://"));
    }
}
