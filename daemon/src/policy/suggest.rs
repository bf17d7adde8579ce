//! Policy suggestion: what the containers of each workload were seen doing (loopback ports
//! reached and owned, unix channels, destinations outside the pod, namespace changes,
//! process access, runtime sockets, sysctl writes), and from it a `SidecarPolicy` per
//! workload that allows exactly that, in monitor mode, with a comment per rule saying what
//! justified it. The daemon feeds an `Observer` from its event stream (the `SuggestPolicy`
//! RPC); `sidewall policy suggest --events` feeds one from a JSON-lines export. Both print
//! with `render`.
//!
//! What the built-in policy forbids (a sidecar changing namespaces, say) is never turned
//! into an allowance: it stays denied in the suggestion and is listed as flagged.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
};

use ipnet::IpNet;
use regex::Regex;
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::{
    detect::{self, KUBELET_PORTS, RUNTIME_SOCKETS},
    parse::{API_VERSION, KIND, Policy, parse},
    store::BUILTIN_YAML,
};

/// Bound on the distinct facts kept (destinations, ports, ...); past it new ones are counted
/// as dropped and the suggestion says it may be incomplete.
pub const MAX_FACTS: usize = 200_000;
/// Addresses of one /24 (IPv4) or /64 (IPv6) seen this many times or more are merged into
/// that range; fewer stay single addresses.
const MERGE_AT: usize = 4;
/// An egress range reached on more ports than this allows any port.
const MAX_PORTS: usize = 16;
/// Labels that differ between the pods of one workload (Deployments, StatefulSets,
/// DaemonSets add them): not part of a workload's identity.
const VOLATILE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// How often a fact was seen, and when first and last (seconds since the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    n: u64,
    first: i64,
    last: i64,
}

impl Count {
    fn add(&mut self, at: i64) {
        if self.n == 0 || at < self.first {
            self.first = at;
        }
        self.last = self.last.max(at);
        self.n += 1;
    }
}

/// A workload: the pods of one namespace with the same stable labels (or, without labels,
/// the same name once the controller's suffixes are taken off).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WorkloadKey {
    namespace: String,
    labels: BTreeMap<String, String>,
    /// Only for pods without labels.
    base: String,
}

#[derive(Default, Debug)]
struct Workload {
    pods: BTreeMap<String, Count>,
    containers: BTreeMap<String, Seen>,
}

/// What one container (by name) of a workload was seen doing.
#[derive(Default, Debug)]
struct Seen {
    role: String,
    /// (peer container or none, port) -> protocol -> count.
    loopback: BTreeMap<(Option<String>, u16), BTreeMap<String, Count>>,
    binds: BTreeMap<u16, Count>,
    /// (listening sibling, socket address).
    unix: BTreeMap<(String, String), Count>,
    /// (address, port) -> protocol -> count.
    egress: BTreeMap<(IpAddr, u16), BTreeMap<String, Count>>,
    namespaces: BTreeMap<String, Count>,
    access: BTreeMap<String, Count>,
    runtime: BTreeMap<String, Count>,
    sysctl: BTreeMap<String, Count>,
    /// What the built-in policy forbids: rule id -> message -> count.
    flagged: BTreeMap<(&'static str, String), Count>,
}

/// Which workloads to suggest for, and since when.
#[derive(Default, Clone, Debug)]
pub struct Filter {
    pub namespace: Option<String>,
    /// Anchored; a workload is kept when one of its pods matches.
    pub pod: Option<Regex>,
    pub selector: BTreeMap<String, String>,
    /// Seconds since the epoch; facts last seen before are left out.
    pub since: i64,
}

impl Filter {
    /// From the RPC's request; a bad regular expression is named.
    pub fn from_request(req: &pb::SuggestPolicyRequest) -> Result<Self, String> {
        let pod = if req.pod_regex.is_empty() {
            None
        } else {
            Some(
                Regex::new(&format!("^(?:{})$", req.pod_regex))
                    .map_err(|e| format!("pod_regex: invalid regular expression {:?}: {e}", req.pod_regex))?,
            )
        };
        Ok(Self {
            namespace: Some(req.namespace.clone()).filter(|n| !n.is_empty()),
            pod,
            selector: req.selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            since: req.since.as_ref().map_or(0, |t| t.seconds),
        })
    }
}

/// One suggested policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub namespace: String,
    pub name: String,
    pub pods: Vec<String>,
    pub flagged: Vec<String>,
    /// The YAML document, with comments.
    pub document: String,
}

impl Suggestion {
    pub fn to_proto(&self) -> pb::SuggestedPolicy {
        pb::SuggestedPolicy {
            name: format!("{}/{}", self.namespace, self.name),
            document: self.document.clone(),
            pods: self.pods.clone(),
            flagged: self.flagged.clone(),
        }
    }
}

/// An observer fed by its own subscription to the hub (as any consumer, it loses events
/// rather than slow the pipeline; losses are counted as the subscriber queue's).
pub fn start(hub: &crate::export::hub::Hub, queue: usize) -> Arc<Mutex<Observer>> {
    let observer = Arc::new(Mutex::new(Observer::new()));
    let filter = crate::export::filter::EventFilter::default();
    let (_sub, mut rx) = hub.subscribe("policy_suggest", crate::stats::Stage::SubscriberQueue, filter, queue);
    let o = observer.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            o.lock().unwrap_or_else(|e| e.into_inner()).observe(&ev);
        }
    });
    observer
}

pub struct Observer {
    builtin: Vec<Policy>,
    workloads: BTreeMap<WorkloadKey, Workload>,
    facts: usize,
    dropped: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer {
    pub fn new() -> Self {
        // The built-in policy is part of the binary and covered by tests; it always parses.
        let builtin = parse(BUILTIN_YAML, "builtin").into_iter().collect();
        Self { builtin, workloads: BTreeMap::new(), facts: 0, dropped: 0 }
    }

    /// Takes in one event; events that are not about a named container of a pod, and the
    /// daemon's own reports (alerts, losses, policy changes), teach nothing.
    pub fn observe(&mut self, ev: &pb::GetEventsResponse) {
        if matches!(ev.event, Some(Event::PolicyAlert(_)) | Some(Event::LostEvents(_)) | None) {
            return;
        }
        let Some(p) = crate::event::subject(ev) else { return };
        let Some(pod) = p.pod.as_ref().filter(|pod| !pod.name.is_empty()) else { return };
        let Some(c) = p.container.as_ref().filter(|c| !c.name.is_empty()) else { return };
        // The runtime's setup, and the pod's infra (pause) container, which only holds the
        // namespaces, are not the workload's behaviour.
        if runtime_setup(p) || c.role == "infra" {
            return;
        }
        let at = ev.time.as_ref().map_or(0, |t| t.seconds);
        let flagged = detect::check(&self.builtin, ev);
        let (key, pod_name) = (workload_key(pod), pod.name.clone());
        let mut budget = Budget { facts: &mut self.facts, dropped: &mut self.dropped };
        let w = self.workloads.entry(key).or_default();
        budget.count(&mut w.pods, pod_name, at);
        let seen = w.containers.entry(c.name.clone()).or_default();
        seen.role.clone_from(&c.role);
        for v in flagged {
            budget.count(&mut seen.flagged, (v.rule_id, v.message), at);
        }
        seen.take(ev, c, at, &mut budget);
    }

    /// A suggestion per workload the filter keeps, ordered by namespace and name.
    pub fn suggest(&self, f: &Filter) -> Vec<Suggestion> {
        let mut out: Vec<Suggestion> =
            self.workloads.iter().filter_map(|(k, w)| suggest_one(k, w, f, self.dropped)).collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // Two workloads that would get the same name: the later ones get a suffix.
        let mut used: BTreeSet<(String, String)> = BTreeSet::new();
        for s in &mut out {
            let base = s.name.clone();
            let mut i = 2;
            while !used.insert((s.namespace.clone(), s.name.clone())) {
                s.name = format!("{base}-{i}");
                i += 1;
            }
            if s.name != base {
                s.document =
                    s.document.replace(&format!("  name: {base}\n"), &format!("  name: {}\n", s.name));
            }
        }
        out
    }
}

/// Counts facts into maps, within `MAX_FACTS`.
struct Budget<'a> {
    facts: &'a mut usize,
    dropped: &'a mut u64,
}

impl Budget<'_> {
    fn count<K: Ord>(&mut self, map: &mut BTreeMap<K, Count>, key: K, at: i64) {
        if let Some(c) = map.get_mut(&key) {
            c.add(at);
        } else if *self.facts < MAX_FACTS {
            *self.facts += 1;
            map.entry(key).or_default().add(at);
        } else {
            *self.dropped += 1;
        }
    }
}

impl Seen {
    fn take(&mut self, ev: &pb::GetEventsResponse, c: &pb::Container, at: i64, b: &mut Budget<'_>) {
        match &ev.event {
            Some(Event::ProcessConnect(x)) if x.result != "denied" => {
                self.destination(x.socket.as_ref(), x.peer.as_ref(), c, at, b)
            }
            Some(Event::ProcessDatagram(x)) if x.result != "denied" => {
                self.destination(x.socket.as_ref(), x.peer.as_ref(), c, at, b)
            }
            Some(Event::ProcessBind(x)) if x.result != "denied" => {
                let port = x.socket.as_ref().and_then(|s| s.local.as_ref()).map_or(0, |l| l.port);
                if let Ok(port @ 1..) = u16::try_from(port) {
                    b.count(&mut self.binds, port, at);
                }
            }
            Some(Event::ProcessNamespace(x)) => {
                b.count(&mut self.namespaces, format!("{} ({})", x.operation, x.changed.join(",")), at)
            }
            Some(Event::ProcessAccess(x)) if x.cross_container => {
                let target = x.target.as_ref().and_then(|t| t.container.as_ref()).map_or("?", |c| &c.name);
                b.count(&mut self.access, format!("{} on {target}", x.access), at)
            }
            Some(Event::ProcessSysctl(x)) if x.result != "denied" => {
                b.count(&mut self.sysctl, x.name.clone(), at)
            }
            _ => {}
        }
    }

    fn destination(
        &mut self,
        s: Option<&pb::Socket>,
        peer: Option<&pb::Process>,
        me: &pb::Container,
        at: i64,
        b: &mut Budget<'_>,
    ) {
        let Some(s) = s else { return };
        let Some(remote) = s.remote.as_ref() else { return };
        let peer = peer.and_then(|p| p.container.as_ref()).filter(|c| !c.name.is_empty());
        if s.protocol == "unix" {
            if RUNTIME_SOCKETS.contains(&remote.path.as_str()) {
                b.count(&mut self.runtime, remote.path.clone(), at);
            } else if let Some(peer) = peer.filter(|p| !p.id.is_empty() && p.id != me.id) {
                b.count(&mut self.unix, (peer.name.clone(), remote.path.clone()), at);
            }
            return;
        }
        let Ok(port) = u16::try_from(remote.port) else { return };
        if s.protocol == "tcp" && KUBELET_PORTS.contains(&remote.port) && !s.loopback {
            b.count(&mut self.runtime, format!("the kubelet API on port {port}"), at);
        }
        let proto = s.protocol.clone();
        if s.loopback {
            let by_proto = self.loopback.entry((peer.map(|p| p.name.clone()), port)).or_default();
            b.count(by_proto, proto, at);
        } else if let Ok(ip) = remote.ip.parse::<IpAddr>() {
            let by_proto = self.egress.entry((ip.to_canonical(), port)).or_default();
            b.count(by_proto, proto, at);
        }
    }
}

/// The container runtime setting a container up (`runc init` joining the pod's namespaces
/// before the container's first exec): the runtime's doing, not the workload's.
fn runtime_setup(p: &pb::Process) -> bool {
    (p.binary.starts_with("/dev/fd/") || p.binary == "/proc/self/exe" || p.binary.ends_with("/runc"))
        && p.arguments.first().is_some_and(|a| a == "init")
}

fn workload_key(pod: &pb::Pod) -> WorkloadKey {
    let labels: BTreeMap<String, String> = pod
        .labels
        .iter()
        .filter(|(k, _)| !VOLATILE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let base = if labels.is_empty() { base_name(&pod.name) } else { String::new() };
    WorkloadKey { namespace: pod.namespace.clone(), labels, base }
}

/// A pod's name without the suffixes its controller added: `web-6d5f9c7b8-x2k4q` (a
/// Deployment's), `web-x2k4q` (a DaemonSet's), `db-0` (a StatefulSet's).
fn base_name(pod: &str) -> String {
    static SUFFIX: LazyLock<Regex> = LazyLock::new(|| {
        // Kubernetes makes these suffixes from an alphabet without vowels (so `nginx-proxy`
        // keeps its name).
        Regex::new(r"^(.+?)(?:-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}|-[bcdfghjklmnpqrstvwxz2456789]{5}|-[0-9]+)$")
            .expect("valid regex")
    });
    SUFFIX.captures(pod).and_then(|c| c.get(1)).map_or_else(|| pod.to_string(), |m| m.as_str().to_string())
}

/// The policy's name: the workload's name label, else its base name; lowercase letters,
/// digits, '-' and '.', as policy names must be.
fn policy_name(k: &WorkloadKey, pods: &[String]) -> String {
    let raw = ["app.kubernetes.io/name", "app", "k8s-app", "name"]
        .iter()
        .find_map(|l| k.labels.get(*l).cloned())
        .or_else(|| (!k.base.is_empty()).then(|| k.base.clone()))
        .or_else(|| pods.first().map(|p| base_name(p)))
        .unwrap_or_else(|| "workload".into());
    let name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' { c } else { '-' })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.');
    if name.is_empty() { "workload".into() } else { name.chars().take(63).collect() }
}

fn suggest_one(k: &WorkloadKey, w: &Workload, f: &Filter, dropped: u64) -> Option<Suggestion> {
    if f.namespace.as_ref().is_some_and(|n| *n != k.namespace)
        || f.selector.iter().any(|(l, v)| k.labels.get(l) != Some(v))
    {
        return None;
    }
    let pods: Vec<String> =
        w.pods.iter().filter(|(_, c)| c.last >= f.since).map(|(p, _)| p.clone()).collect();
    if pods.is_empty() || f.pod.as_ref().is_some_and(|re| !pods.iter().any(|p| re.is_match(p))) {
        return None;
    }
    let name = policy_name(k, &pods);
    let mut flagged = Vec::new();
    let mut rules = String::new();
    for (container, seen) in &w.containers {
        let recent = |c: &Count| c.last >= f.since;
        for ((rule, message), c) in seen.flagged.iter().filter(|(_, c)| recent(c)) {
            flagged.push(format!("{container}: {rule}: {message} ({})", times(c.n)));
        }
        rules.push_str(&render_rule(container, seen, f.since));
    }
    let mut doc = String::new();
    let _ = writeln!(doc, "# Suggested by sidewall from what {} did:", plural(pods.len(), "pod"));
    let _ = writeln!(doc, "#   {}", pods.join(", "));
    let _ =
        writeln!(doc, "# The least that allows it, in monitor mode: watch it, then switch it to enforce.");
    if dropped > 0 {
        let _ =
            writeln!(doc, "# INCOMPLETE: {dropped} observations were over the daemon's bound and left out.");
    }
    for line in &flagged {
        let _ = writeln!(doc, "# FLAGGED, left denied (the built-in policy forbids it): {line}");
    }
    let _ = writeln!(doc, "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {name}");
    let _ = writeln!(doc, "  namespace: {}\nspec:\n  mode: monitor", k.namespace);
    if !k.labels.is_empty() {
        let _ = writeln!(doc, "  selector:\n    podLabels:");
        for (l, v) in &k.labels {
            let _ = writeln!(doc, "      {}: {}", quote(l), quote(v));
        }
    }
    doc.push_str("  containers:\n");
    doc.push_str(&rules);
    Some(Suggestion { namespace: k.namespace.clone(), name, pods, flagged, document: doc })
}

/// A rule for one container: every list present (what was not seen is not allowed), every
/// permission denied unless it was seen and the built-in policy allows it.
fn render_rule(container: &str, s: &Seen, since: i64) -> String {
    let recent = |c: &Count| c.last >= since;
    let mut r = String::new();
    let role = if s.role.is_empty() { String::new() } else { format!(" ({})", s.role) };
    let _ = writeln!(r, "    # {container}{role}");
    let _ = writeln!(r, "    - name: {}", quote(container));
    r.push_str("      loopback:\n");
    // Loopback connects: one entry per sibling, its ports in order.
    let mut by_peer: BTreeMap<Option<&String>, BTreeMap<u16, Vec<String>>> = BTreeMap::new();
    for ((peer, port), protos) in &s.loopback {
        let why: Vec<String> =
            protos.iter().filter(|(_, c)| recent(c)).map(|(p, c)| format!("{p} {}", times(c.n))).collect();
        if !why.is_empty() {
            by_peer.entry(peer.as_ref()).or_default().insert(*port, why);
        }
    }
    if by_peer.is_empty() {
        r.push_str("        connect: []         # no loopback connect seen\n");
    } else {
        r.push_str("        connect:\n");
        for (peer, ports) in &by_peer {
            let who = peer.map_or("a port no container owned".to_string(), |p| p.to_string());
            let seen: Vec<String> =
                ports.iter().map(|(p, why)| format!("{p} ({})", why.join(", "))).collect();
            let _ = writeln!(r, "          # to {who}: {}", seen.join("; "));
            match peer {
                Some(p) => {
                    let _ = writeln!(r, "          - container: {}", quote(p));
                    let _ = writeln!(r, "            ports: {}", port_list(ports.keys()));
                }
                None => {
                    let _ = writeln!(r, "          - ports: {}", port_list(ports.keys()));
                }
            }
        }
    }
    let binds: Vec<(&u16, &Count)> = s.binds.iter().filter(|(_, c)| recent(c)).collect();
    if binds.is_empty() {
        r.push_str("        bind: []            # no bind seen\n");
    } else {
        let why: Vec<String> = binds.iter().map(|(p, c)| format!("{p} {}", times(c.n))).collect();
        let _ = writeln!(r, "        # bound: {}", why.join(", "));
        let _ = writeln!(r, "        bind: {}", port_list(binds.iter().map(|(p, _)| *p)));
    }
    let mut unix: BTreeMap<&String, Vec<(&String, u64)>> = BTreeMap::new();
    for ((peer, name), c) in s.unix.iter().filter(|(_, c)| recent(c)) {
        unix.entry(peer).or_default().push((name, c.n));
    }
    if unix.is_empty() {
        r.push_str("        unix: []            # no unix connect to a sibling seen\n");
    } else {
        r.push_str("        unix:\n");
        for (peer, names) in &unix {
            let why: Vec<String> = names.iter().map(|(n, c)| format!("{n} {}", times(*c))).collect();
            let _ = writeln!(r, "          # to {peer}: {}", why.join(", "));
            let _ = writeln!(r, "          - container: {}", quote(peer));
            let list: Vec<String> = names.iter().map(|(n, _)| quote(n)).collect();
            let _ = writeln!(r, "            names: [{}]", list.join(", "));
        }
    }
    r.push_str(&render_egress(s, since));
    let flagged = |id: &str| s.flagged.iter().any(|((rule, _), c)| *rule == id && recent(c));
    permission(&mut r, "namespaceChanges", &s.namespaces, flagged("namespace-transition"), since);
    permission(&mut r, "processAccess", &s.access, flagged("process-access"), since);
    permission(&mut r, "runtimeSockets", &s.runtime, flagged("runtime-socket"), since);
    permission(&mut r, "loopbackRouting", &s.sysctl, flagged("loopback-routing"), since);
    // Sidecars get what the built-in policy gives them; other containers are blocked, not
    // killed, for what was not seen.
    let action = if s.role == "sidecar" { "kill" } else { "block" };
    let _ = writeln!(r, "      action: {action}");
    r
}

fn permission(r: &mut String, field: &str, seen: &BTreeMap<String, Count>, flagged: bool, since: i64) {
    let what: Vec<String> =
        seen.iter().filter(|(_, c)| c.last >= since).map(|(w, c)| format!("{w} {}", times(c.n))).collect();
    if what.is_empty() {
        let _ = writeln!(r, "      {field}: deny");
    } else if flagged {
        let _ = writeln!(r, "      # FLAGGED: seen, and the built-in policy forbids it: {}", what.join(", "));
        let _ = writeln!(r, "      {field}: deny");
    } else {
        let _ = writeln!(r, "      # seen: {}", what.join(", "));
        let _ = writeln!(r, "      {field}: allow");
    }
}

/// Egress: single addresses, a /24 (/64) where several of its addresses were reached, then
/// adjacent ranges with the same ports merged.
fn render_egress(s: &Seen, since: i64) -> String {
    // range -> (ports, why)
    let mut single: BTreeMap<IpAddr, (BTreeSet<u16>, Vec<String>)> = BTreeMap::new();
    for ((ip, port), protos) in &s.egress {
        for (proto, c) in protos.iter().filter(|(_, c)| c.last >= since) {
            let e = single.entry(*ip).or_default();
            e.0.insert(*port);
            e.1.push(format!("{proto} {}:{port} {}", ip_port_host(ip), times(c.n)));
        }
    }
    if single.is_empty() {
        return "      egress: []            # nothing outside the pod seen\n".into();
    }
    let mut groups: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for ip in single.keys() {
        let wide = match ip {
            IpAddr::V4(_) => 24,
            IpAddr::V6(_) => 64,
        };
        if let Ok(net) = IpNet::new(*ip, wide) {
            groups.entry(net.trunc()).or_default().push(*ip);
        }
    }
    let mut ranges: BTreeMap<IpNet, (BTreeSet<u16>, Vec<String>)> = BTreeMap::new();
    for (net, ips) in groups {
        let merge = ips.len() >= MERGE_AT;
        for ip in ips {
            let Some((ports, why)) = single.get(&ip) else { continue };
            let key = if merge { net } else { IpNet::from(ip) };
            let e = ranges.entry(key).or_default();
            e.0.extend(ports);
            e.1.extend(why.iter().cloned());
        }
    }
    // Adjacent ranges reached on the same ports become one.
    let mut by_ports: BTreeMap<BTreeSet<u16>, (Vec<IpNet>, Vec<String>)> = BTreeMap::new();
    for (net, (ports, why)) in ranges {
        let ports = if ports.len() > MAX_PORTS || ports.contains(&0) { BTreeSet::new() } else { ports };
        let e = by_ports.entry(ports).or_default();
        e.0.push(net);
        e.1.extend(why);
    }
    let mut rules: Vec<(IpNet, BTreeSet<u16>, Vec<String>)> = Vec::new();
    for (ports, (nets, why)) in by_ports {
        for net in IpNet::aggregate(&nets) {
            let mine: Vec<String> = why
                .iter()
                .filter(|w| w.split(' ').nth(1).and_then(host_of).is_some_and(|ip| net.contains(&ip)))
                .cloned()
                .collect();
            rules.push((net, ports.clone(), mine));
        }
    }
    rules.sort_by_key(|a| a.0);
    let mut r = String::from("      egress:\n");
    for (net, ports, why) in rules {
        let _ = writeln!(r, "        # {}", why.join(", "));
        let _ = writeln!(r, "        - cidr: {net}");
        if !ports.is_empty() {
            let _ = writeln!(r, "          ports: {}", port_list(ports.iter()));
        }
    }
    r
}

/// `ip:port` as written in the comments: IPv6 in brackets.
fn ip_port_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The address of a comment's `ip:port`.
fn host_of(s: &str) -> Option<IpAddr> {
    let (host, _) = s.rsplit_once(':')?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn port_list<'a>(ports: impl Iterator<Item = &'a u16>) -> String {
    let v: Vec<String> = ports.map(u16::to_string).collect();
    format!("[{}]", v.join(", "))
}

fn times(n: u64) -> String {
    if n == 1 { "once".into() } else { format!("{n} times") }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A YAML scalar: plain when it is safe, else a JSON string (valid YAML).
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(s, "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n");
    if plain { s.to_string() } else { serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")) }
}

#[cfg(test)]
mod tests;
