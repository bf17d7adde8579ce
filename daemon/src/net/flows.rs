//! The loopback flow graph: per pod (network namespace), container -> container:port edges
//! (and container -> container:name over unix sockets)
//! with connection counts and bytes. Updated per connection (not per packet); read by the
//! GetFlows RPC, so it sits behind a mutex that the pipeline takes briefly.

use std::collections::HashMap;

use sidewall_proto::{Timestamp, v1 as pb};

/// Bounds, so a port scan cannot grow the graph without limit.
const MAX_PODS: usize = 4096;
const MAX_EDGES_PER_POD: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EdgeKey {
    protocol: &'static str,
    source: String,
    destination: String,
    port: u16,
    name: String,
}

#[derive(Default)]
struct PodGraph {
    pod: Option<pb::Pod>,
    /// The namespace's inode, as /proc and events show it (inodes are reused; cookies not).
    inode: u32,
    last_seen: u64,
    edges: HashMap<EdgeKey, pb::FlowEdge>,
}

/// One side of an edge.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub pod: Option<&'a pb::Pod>,
    pub container: Option<&'a pb::Container>,
}

/// A connection (or datagrams) from `source` to `destination:port` in a network namespace,
/// known by its kernel cookie (never reused, unlike its inode number).
pub struct Flow<'a> {
    pub netns_cookie: u64,
    pub netns: u32,
    pub protocol: &'static str,
    pub source: Endpoint<'a>,
    pub destination: Endpoint<'a>,
    pub port: u16,
    /// Unix sockets: the address reached (empty for TCP and UDP).
    pub name: &'a str,
}

#[derive(Default)]
pub struct FlowGraph {
    pods: HashMap<u64, PodGraph>,
    /// Orders evictions: the pod seen least recently goes first.
    clock: u64,
}

/// What identifies a side: the container id, else its role ("host"), else "unknown".
fn side_key(c: Option<&pb::Container>) -> String {
    match c {
        Some(c) if !c.id.is_empty() => c.id.clone(),
        Some(c) if !c.role.is_empty() => c.role.clone(),
        _ => "unknown".into(),
    }
}

impl FlowGraph {
    /// Counts `connections` more, and adds bytes (over connections that closed).
    pub fn record(&mut self, f: &Flow<'_>, connections: u64, bytes: (u64, u64), now: Timestamp) {
        if !self.pods.contains_key(&f.netns_cookie) && self.pods.len() >= MAX_PODS {
            let oldest = self.pods.iter().min_by_key(|(_, g)| g.last_seen).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.pods.remove(&k);
            }
        }
        self.clock += 1;
        let graph = self.pods.entry(f.netns_cookie).or_default();
        graph.last_seen = self.clock;
        graph.inode = f.netns;
        if graph.pod.is_none() {
            graph.pod = f.source.pod.or(f.destination.pod).cloned();
        }
        let key = EdgeKey {
            protocol: f.protocol,
            source: side_key(f.source.container),
            destination: side_key(f.destination.container),
            port: f.port,
            name: f.name.to_string(),
        };
        if !graph.edges.contains_key(&key) && graph.edges.len() >= MAX_EDGES_PER_POD {
            return;
        }
        let edge = graph.edges.entry(key).or_insert_with(|| pb::FlowEdge {
            protocol: f.protocol.into(),
            source: f.source.container.cloned(),
            destination: f.destination.container.cloned(),
            port: f.port.into(),
            name: f.name.to_string(),
            ..Default::default()
        });
        edge.connections += connections;
        edge.bytes_sent += bytes.0;
        edge.bytes_received += bytes.1;
        edge.last_seen = Some(now);
    }

    /// Pods whose namespace and name pass `keep`, edges sorted for stable output.
    pub fn snapshot(&self, keep: impl Fn(Option<&pb::Pod>) -> bool) -> Vec<pb::PodFlows> {
        let mut pods: Vec<pb::PodFlows> = self
            .pods
            .iter()
            .filter(|(_, g)| keep(g.pod.as_ref()))
            .map(|(_, g)| {
                let mut edges: Vec<pb::FlowEdge> = g.edges.values().cloned().collect();
                edges.sort_by(|a, b| (a.port, &a.name, &a.protocol).cmp(&(b.port, &b.name, &b.protocol)));
                pb::PodFlows { pod: g.pod.clone(), netns: g.inode, edges }
            })
            .collect();
        pods.sort_by_key(|p| p.netns);
        pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, name: &str) -> pb::Container {
        pb::Container { id: id.into(), name: name.into(), ..Default::default() }
    }

    #[test]
    fn edges_accumulate_per_source_destination_and_port() {
        let pod = pb::Pod { name: "web".into(), namespace: "default".into(), ..Default::default() };
        let (app, proxy) = (container("a1", "app"), container("p1", "proxy"));
        let side = |c| Endpoint { pod: Some(&pod), container: Some(c) };
        let flow = |port| Flow {
            netns_cookie: 70,
            netns: 7,
            protocol: "tcp",
            source: side(&proxy),
            destination: side(&app),
            port,
            name: "",
        };
        let mut g = FlowGraph::default();
        let t = Timestamp { seconds: 1, nanos: 0 };
        g.record(&flow(8080), 1, (0, 0), t);
        g.record(&flow(8080), 1, (0, 0), t);
        g.record(&flow(8080), 0, (100, 20), t);
        g.record(&flow(9090), 1, (0, 0), t);
        let snap = g.snapshot(|_| true);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].pod.as_ref().map(|p| p.name.as_str()), Some("web"));
        let e = &snap[0].edges[0];
        assert_eq!((e.port, e.connections, e.bytes_sent, e.bytes_received), (8080, 2, 100, 20));
        assert_eq!(e.source.as_ref().map(|c| c.name.as_str()), Some("proxy"));
        assert_eq!(snap[0].edges[1].port, 9090);
        assert!(g.snapshot(|p| p.is_some_and(|p| p.name == "other")).is_empty());
    }
}
