//! `sidewall flows`: the loopback flow graph, per pod.

use std::fmt::Write as _;

use clap::ValueEnum;
use sidewall_proto::v1::{Container, GetFlowsResponse, PodFlows};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum FlowFormat {
    #[default]
    Text,
    Json,
}

pub fn render(flows: &GetFlowsResponse, format: FlowFormat) -> anyhow::Result<String> {
    match format {
        FlowFormat::Json => Ok(serde_json::to_string_pretty(flows)?),
        FlowFormat::Text if flows.pods.is_empty() => Ok("no loopback flows seen yet".into()),
        FlowFormat::Text => Ok(flows.pods.iter().map(pod_text).collect::<Vec<_>>().join("\n")),
    }
}

fn pod_text(p: &PodFlows) -> String {
    let title = match &p.pod {
        Some(pod) if !pod.name.is_empty() => format!("{}/{}", pod.namespace, pod.name),
        _ => "host".to_string(),
    };
    let mut out = format!("{title} (netns {})\n", p.netns);
    for e in &p.edges {
        let _ = writeln!(
            out,
            "  {} -> {}:{}/{}  connections={} sent={} received={}",
            side(e.source.as_ref()),
            side(e.destination.as_ref()),
            if e.name.is_empty() { e.port.to_string() } else { e.name.clone() },
            e.protocol,
            e.connections,
            e.bytes_sent,
            e.bytes_received
        );
    }
    out
}

/// A container's name, else its short id, else its role ("host").
fn side(c: Option<&Container>) -> String {
    match c {
        Some(c) if !c.name.is_empty() => c.name.clone(),
        Some(c) if !c.id.is_empty() => c.id.chars().take(12).collect(),
        Some(c) if !c.role.is_empty() => c.role.clone(),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidewall_proto::v1::{FlowEdge, Pod};

    #[test]
    fn text_lists_edges_per_pod() {
        let c = |name: &str| Some(Container { name: name.into(), ..Default::default() });
        let flows = GetFlowsResponse {
            pods: vec![PodFlows {
                pod: Some(Pod { namespace: "default".into(), name: "web".into(), ..Default::default() }),
                netns: 42,
                edges: vec![FlowEdge {
                    protocol: "tcp".into(),
                    source: c("proxy"),
                    destination: c("app"),
                    port: 8080,
                    connections: 3,
                    bytes_sent: 60,
                    bytes_received: 120,
                    ..Default::default()
                }],
            }],
        };
        let text = render(&flows, FlowFormat::Text).expect("renders");
        assert_eq!(
            text,
            "default/web (netns 42)\n  proxy -> app:8080/tcp  connections=3 sent=60 received=120\n"
        );
    }
}
