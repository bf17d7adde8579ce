//! `sidewall status`: the daemon's health as aligned text, or its JSON form.

use std::collections::HashMap;

use sidewall_proto::v1::{ApiStatus, GetStatusResponse};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum StatusFormat {
    #[default]
    Text,
    Json,
}

pub fn render(status: &GetStatusResponse, format: StatusFormat) -> anyhow::Result<String> {
    match format {
        StatusFormat::Text => Ok(text(status)),
        StatusFormat::Json => Ok(serde_json::to_string_pretty(status)?),
    }
}

/// `--healthy`: "healthy" on stdout, or an error listing the problems (exit 1).
pub fn health(s: &GetStatusResponse) -> anyhow::Result<()> {
    if s.healthy {
        println!("healthy");
        return Ok(());
    }
    let problems =
        if s.health_problems.is_empty() { "unhealthy".to_string() } else { s.health_problems.join("; ") };
    anyhow::bail!("not healthy: {problems}")
}

pub fn text(s: &GetStatusResponse) -> String {
    let mut node = or_unknown(&s.node_name).to_string();
    if !s.identity_source.is_empty() {
        node.push_str(&format!(" (identity: {})", s.identity_source));
    }
    let mut rows = vec![
        ["version:".into(), or_unknown(&s.version).into()],
        ["node:".into(), node],
        ["kernel:".into(), or_unknown(&s.kernel).into()],
        ["uptime:".into(), uptime(s.uptime_seconds)],
        ["process cache:".into(), format!("{} processes", s.process_cache_size)],
        ["subscribers:".into(), s.subscribers.to_string()],
    ];
    if s.alerts_ahead_of_causes > 0 {
        // Only under a telemetry flood: worth a line then.
        rows.push(["alerts ahead of causes:".into(), s.alerts_ahead_of_causes.to_string()]);
    }
    let summary = table(&rows, "");
    let sensors: Vec<[String; 4]> = s
        .sensors
        .iter()
        .map(|x| [x.name.clone(), x.state.clone(), x.hook.clone(), x.reason.clone()])
        .collect();
    let exporters: Vec<[String; 5]> = s
        .exporters
        .iter()
        .map(|x| {
            [
                x.name.clone(),
                x.state.clone(),
                format!("events={}", x.events),
                format!("lost={}", x.lost),
                x.detail.clone(),
            ]
        })
        .collect();
    let mut sections = vec![
        summary,
        section("sensors", &with_header(["NAME", "STATE", "HOOK", "REASON"], sensors)),
        section("events by kind", &counters(&s.events_by_kind)),
        section("lost by stage", &counters(&s.lost_by_stage)),
        section("refused or killed by the kernel", &counters(&s.kernel_refusals)),
        section("exporters", &with_header(["NAME", "STATE", "EVENTS", "LOST", "DETAIL"], exporters)),
        section(
            "containers (how each rule reached the kernel)",
            &with_header(["POD", "CONTAINER", "PROTECTION", "POLICY"], containers(s)),
        ),
    ];
    // Older daemons say nothing of their API.
    if let Some(api) = &s.api {
        sections.extend(api_sections(api));
        if !api.warnings.is_empty() {
            let warnings: String = api.warnings.iter().map(|w| format!("WARNING: {w}\n")).collect();
            sections.insert(0, warnings);
        }
    }
    sections.join("\n")
}

/// The listeners, and the calls and handshakes refused.
fn api_sections(api: &ApiStatus) -> [String; 2] {
    let listeners: Vec<[String; 3]> = api
        .listeners
        .iter()
        .map(|l| {
            let mut detail = l.detail.clone();
            if let Some(t) = l.certificate_not_after {
                let when = chrono::DateTime::<chrono::Utc>::from_timestamp(t.seconds, 0)
                    .map_or_else(|| t.seconds.to_string(), |d| d.to_rfc3339());
                detail.push_str(&format!(", expires {when}"));
            }
            if !l.last_error.is_empty() {
                detail.push_str(&format!("; reload failed: {}", l.last_error));
            }
            [l.address.clone(), l.security.clone(), detail]
        })
        .collect();
    let mut refused = counters(&api.denied_by_method);
    if api.refused_handshakes > 0 {
        refused.push(["TLS handshakes".into(), api.refused_handshakes.to_string()]);
    }
    [
        section("api listeners", &with_header(["ADDRESS", "SECURITY", "DETAIL"], listeners)),
        section("api refusals", &refused),
    ]
}

/// hook: the runtime waited for the rule; cgroup: compiled at the cgroup's creation; late:
/// compiled after the container's processes ran.
fn containers(s: &GetStatusResponse) -> Vec<[String; 4]> {
    s.containers
        .iter()
        .map(|c| {
            let pod =
                c.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_else(|| "-".into());
            let container =
                c.container.as_ref().map_or("", |c| if c.name.is_empty() { &c.id } else { &c.name });
            let policy = if c.policy.is_empty() { "-" } else { c.policy.as_str() };
            [pod, container.to_string(), c.protection.clone(), policy.to_string()]
        })
        .collect()
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

fn section<const N: usize>(title: &str, rows: &[[String; N]]) -> String {
    if rows.is_empty() { format!("{title}: none\n") } else { format!("{title}:\n{}", table(rows, "  ")) }
}

/// A header only when there are rows, so that an empty section reads "none".
fn with_header<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> Vec<[String; N]> {
    if rows.is_empty() {
        return rows;
    }
    std::iter::once(header.map(String::from)).chain(rows).collect()
}

fn counters(map: &HashMap<String, u64>) -> Vec<[String; 2]> {
    let mut rows: Vec<_> = map.iter().map(|(k, v)| [k.clone(), v.to_string()]).collect();
    rows.sort();
    rows
}

/// Left-aligned columns two spaces apart, one row per line.
fn table<const N: usize>(rows: &[[String; N]], indent: &str) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(indent);
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `3d 4h 5m 6s`, leaving out leading zero units.
fn uptime(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut rest = secs;
    let mut parts = Vec::new();
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || !parts.is_empty() || size == 1 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidewall_proto::v1::{Container, ContainerProtection, ExporterStatus, Pod, SensorStatus};

    #[test]
    fn uptime_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(3_600), "1h 0m 0s");
        assert_eq!(uptime(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn full_status() {
        let status = GetStatusResponse {
            version: "0.1.0".into(),
            kernel: "6.8.0-45-generic".into(),
            node_name: "n1".into(),
            uptime_seconds: 7_384,
            sensors: vec![
                SensorStatus {
                    name: "process_exec".into(),
                    state: "attached".into(),
                    reason: String::new(),
                    hook: "tp_btf/sched_process_exec".into(),
                },
                SensorStatus {
                    name: "net".into(),
                    state: "skipped".into(),
                    reason: "disabled in config".into(),
                    hook: "kprobe/tcp_connect".into(),
                },
            ],
            events_by_kind: HashMap::from([("process_exit".into(), 5), ("process_exec".into(), 7)]),
            lost_by_stage: HashMap::new(),
            process_cache_size: 312,
            alerts_ahead_of_causes: 0,
            subscribers: 1,
            identity_source: "kubernetes".into(),
            exporters: vec![ExporterStatus {
                name: "file".into(),
                state: "ok".into(),
                detail: "/var/log/sidewall/events.json".into(),
                events: 12,
                lost: 0,
            }],
            kernel_refusals: HashMap::from([("connect".into(), 2)]),
            containers: vec![ContainerProtection {
                cgroup_id: 7,
                pod: Some(Pod { namespace: "shop".into(), name: "web".into(), ..Default::default() }),
                container: Some(Container { name: "proxy".into(), ..Default::default() }),
                protection: "hook".into(),
                policy: "shop/guard".into(),
                since: None,
            }],
            api: None,
            healthy: true,
            health_problems: vec![],
        };
        let want = "\
version:        0.1.0
node:           n1 (identity: kubernetes)
kernel:         6.8.0-45-generic
uptime:         2h 3m 4s
process cache:  312 processes
subscribers:    1

sensors:
  NAME          STATE     HOOK                       REASON
  process_exec  attached  tp_btf/sched_process_exec
  net           skipped   kprobe/tcp_connect         disabled in config

events by kind:
  process_exec  7
  process_exit  5

lost by stage: none

refused or killed by the kernel:
  connect  2

exporters:
  NAME  STATE  EVENTS     LOST    DETAIL
  file  ok     events=12  lost=0  /var/log/sidewall/events.json

containers (how each rule reached the kernel):
  POD       CONTAINER  PROTECTION  POLICY
  shop/web  proxy      hook        shop/guard
";
        assert_eq!(text(&status), want);
    }

    #[test]
    fn empty_status() {
        let out = text(&GetStatusResponse::default());
        assert!(out.starts_with("version:        unknown\n"), "{out}");
        assert!(out.contains("sensors: none\n"), "{out}");
        assert!(
            out.ends_with("exporters: none\n\ncontainers (how each rule reached the kernel): none\n"),
            "{out}"
        );
    }

    #[test]
    fn api_warnings_come_first_and_refusals_last() {
        use sidewall_proto::v1::ApiListener;
        let status = GetStatusResponse {
            api: Some(ApiStatus {
                listeners: vec![
                    ApiListener {
                        address: "unix:///run/sidewall/sidewall.sock".into(),
                        security: "unix".into(),
                        detail: "mode 0600, group root".into(),
                        ..Default::default()
                    },
                    ApiListener {
                        address: "tcp://0.0.0.0:50051".into(),
                        security: "insecure".into(),
                        detail: "plaintext, every peer has the role read_only".into(),
                        ..Default::default()
                    },
                ],
                denied_by_method: HashMap::from([("AddPolicy".into(), 2)]),
                refused_handshakes: 0,
                warnings: vec!["tcp://0.0.0.0:50051 serves the API in plaintext".into()],
            }),
            ..GetStatusResponse::default()
        };
        let out = text(&status);
        assert!(
            out.starts_with("WARNING: tcp://0.0.0.0:50051 serves the API in plaintext\n\nversion:"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "api listeners:
  ADDRESS                             SECURITY  DETAIL
  unix:///run/sidewall/sidewall.sock  unix      mode 0600, group root
  tcp://0.0.0.0:50051                 insecure  plaintext, every peer has the role read_only

api refusals:
  AddPolicy  2
"
            ),
            "{out}"
        );
    }

    #[test]
    fn json_uses_proto_field_names() {
        let status = GetStatusResponse { node_name: "n1".into(), ..GetStatusResponse::default() };
        let json = render(&status, StatusFormat::Json).expect("serializes");
        assert!(json.contains("\"node_name\": \"n1\""), "{json}");
    }
}
