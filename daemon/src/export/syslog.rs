//! Syslog output for SIEMs: one RFC 5424 message per event, octet-counted (RFC 6587) over TCP
//! or TLS (RFC 5425). An alert's fields travel as structured data (`[sidewall@32473 ...]`,
//! 32473 being the enterprise number RFC 5612 reserves for documentation and examples, so the
//! SD-ID is well formed without claiming anyone's number), which SIEM parsers read without a
//! custom pattern. Batching, retries and loss accounting are `delivery`'s.

use std::{fmt::Write as _, path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use sidewall_proto::v1::{self as pb, get_events_response::Event};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::delivery::Output;
use crate::event;

/// The SD-ID of sidewall's structured data.
pub const SD_ID: &str = "sidewall@32473";
/// syslog facility: security/authorization messages (4).
const FACILITY: u8 = 4;

/// Where the messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    /// "tcp://host:port" or "tls://host:port".
    pub fn parse(address: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = address.strip_prefix("tcp://") {
            (false, r)
        } else if let Some(r) = address.strip_prefix("tls://") {
            (true, r)
        } else {
            return Err(format!("{address:?} must be tcp://host:port or tls://host:port"));
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{address:?} has no port"))?;
        let port = port.parse().map_err(|_| format!("{address:?}: {port:?} is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{address:?} has no host"));
        }
        Ok(Self { host: host.into(), port, tls })
    }
}

type Stream = Box<dyn AsyncWrite + Unpin + Send + Sync>;

pub struct Syslog {
    target: Target,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    all: bool,
    node: String,
    pid: u32,
    conn: Option<Stream>,
}

impl Syslog {
    /// `ca`: PEM file of the CA that signs the server's certificate (TLS only; None: the
    /// system's CAs). `all`: every event, not only alerts.
    pub fn new(target: Target, ca: Option<&Path>, all: bool, node: String) -> anyhow::Result<Self> {
        let tls = if target.tls {
            let config = ClientConfig::builder().with_root_certificates(roots(ca)?).with_no_client_auth();
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| anyhow::anyhow!("syslog_address: {:?}: {e}", target.host))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self { target, tls, all, node, pid: std::process::id(), conn: None })
    }

    async fn connect(&self) -> Result<Stream, String> {
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let s = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
                Ok(Box::new(s))
            }
        }
    }
}

fn roots(ca: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("syslog_tls_ca {}: {e}", path.display()))?;
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("syslog_tls_ca {}: {e}", path.display()))?
        }
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        anyhow::bail!(
            "syslog_tls_ca {}: no CA certificate",
            ca.map_or("(system)".into(), |p| p.display().to_string())
        );
    }
    Ok(roots)
}

impl Output for Syslog {
    type Item = Vec<u8>;

    fn item(&self, ev: &pb::GetEventsResponse) -> Option<Vec<u8>> {
        let alert = matches!(ev.event, Some(Event::PolicyAlert(_)));
        (alert || self.all).then(|| frame(&message(ev, &self.node, self.pid)))
    }

    async fn send(&mut self, batch: &[Vec<u8>]) -> Result<(), String> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_mut() else { return Err("not connected".into()) };
        let mut written = async {
            for m in batch {
                conn.write_all(m).await?;
            }
            conn.flush().await
        }
        .await;
        if let Err(e) = written.as_mut() {
            // A broken connection is opened again on the retry.
            self.conn = None;
            return Err(format!("write: {e}"));
        }
        Ok(())
    }
}

/// Octet-counting framing (RFC 6587 3.4.1): "LEN SP MSG".
pub fn frame(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`. The MSG
/// is the alert's message, or the event's canonical JSON for other events.
pub fn message(ev: &pb::GetEventsResponse, node: &str, pid: u32) -> String {
    let kind = event::kind_name(event::kind(ev));
    let (severity, sd, msg) = match &ev.event {
        Some(Event::PolicyAlert(a)) => (alert_severity(&a.severity), alert_data(ev, a), a.message.clone()),
        _ => (6, "-".to_string(), serde_json::to_string(ev).unwrap_or_default()),
    };
    let time = ev
        .time
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or_else(|| "-".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let host = header_field(if ev.node_name.is_empty() { node } else { &ev.node_name }, 255);
    format!(
        "<{}>1 {time} {host} sidewalld {pid} {} {sd} {msg}",
        FACILITY * 8 + severity,
        header_field(kind, 32)
    )
}

/// syslog severity of an alert: critical 2, high 3 (error), medium 4 (warning), low 5 (notice).
fn alert_severity(s: &str) -> u8 {
    match s {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        _ => 5,
    }
}

/// The alert's fields as one SD-ELEMENT; empty ones left out.
fn alert_data(ev: &pb::GetEventsResponse, a: &pb::PolicyAlert) -> String {
    let process = a.process.as_ref();
    let pod = process.and_then(|p| p.pod.as_ref());
    let container = process.and_then(|p| p.container.as_ref());
    let peer = a.peer.as_ref().and_then(|p| p.container.as_ref());
    let pid = process.filter(|p| p.pid > 0).map(|p| p.pid.to_string()).unwrap_or_default();
    let count = if a.count > 0 { a.count.to_string() } else { String::new() };
    let mut sd = format!("[{SD_ID}");
    for (k, v) in [
        ("rule_id", a.rule_id.as_str()),
        ("severity", &a.severity),
        ("action", &a.action),
        ("mode", &a.mode),
        ("enforced_by", &a.enforced_by),
        ("policy", &a.policy),
        ("mitre_technique", &a.mitre_technique),
        ("namespace", pod.map_or("", |p| &p.namespace)),
        ("pod", pod.map_or("", |p| &p.name)),
        ("container", container.map_or("", |c| &c.name)),
        ("container_id", container.map_or("", |c| &c.id)),
        ("role", container.map_or("", |c| &c.role)),
        ("peer_container", peer.map_or("", |c| &c.name)),
        ("pid", &pid),
        ("binary", process.map_or("", |p| &p.binary)),
        ("exec_id", process.map_or("", |p| &p.exec_id)),
        ("count", &count),
        ("node", &ev.node_name),
    ] {
        if !v.is_empty() {
            let _ = write!(sd, " {k}=\"{}\"", escape(v));
        }
    }
    sd.push(']');
    sd
}

/// PARAM-VALUE escaping (RFC 5424 6.3.3): '"', '\' and ']' take a backslash.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` long, "-" when empty.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if s.is_empty() { "-".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> pb::GetEventsResponse {
        pb::GetEventsResponse {
            event: Some(Event::PolicyAlert(pb::PolicyAlert {
                rule_id: "loopback-egress".into(),
                severity: "high".into(),
                action: "blocked".into(),
                message: "probe reached \"app\"".into(),
                policy: "shop/web]".into(),
                process: Some(pb::Process {
                    pid: 7,
                    binary: "/bin/swtool".into(),
                    pod: Some(pb::Pod { namespace: "shop".into(), name: "web".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            node_name: "n1".into(),
            time: Some(sidewall_proto::Timestamp { seconds: 1_700_000_000, nanos: 5_000 }),
        }
    }

    #[test]
    fn an_alert_is_an_rfc5424_message_with_structured_data() {
        let m = message(&alert(), "other", 42);
        assert_eq!(
            m,
            "<35>1 2023-11-14T22:13:20.000005Z n1 sidewalld 42 policy_alert [sidewall@32473 \
             rule_id=\"loopback-egress\" severity=\"high\" action=\"blocked\" policy=\"shop/web\\]\" \
             namespace=\"shop\" pod=\"web\" pid=\"7\" binary=\"/bin/swtool\" node=\"n1\"] probe reached \"app\""
        );
        let f = frame(&m);
        assert!(f.starts_with(format!("{} <35>1 ", m.len()).as_bytes()));
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(
            Target::parse("tls://siem.example:6514"),
            Ok(Target { host: "siem.example".into(), port: 6514, tls: true })
        );
        assert_eq!(Target::parse("tcp://[::1]:514").map(|t| t.host), Ok("::1".into()));
        assert!(Target::parse("udp://h:514").unwrap_err().contains("must be tcp://host:port or tls://"));
        assert!(Target::parse("tcp://h").is_err());
        assert!(Target::parse("tcp://h:x").is_err());
    }
}
