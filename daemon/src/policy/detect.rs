//! Detections: each event is checked against the rule that governs its container, and every
//! violation becomes a `policy_alert` naming the rule, its ATT&CK technique, the peer, and
//! what was done (or, in monitor mode, what enforce mode would do).

use std::net::IpAddr;

use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::{
    model::{Action, ContainerRule, Mode, Permission},
    parse::Policy,
};

/// Unix sockets of container runtimes: reaching one from a container means controlling them.
pub const RUNTIME_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
];
/// The kubelet API (authenticated, and read-only).
pub const KUBELET_PORTS: &[u32] = &[10250, 10255];

/// A violation, before it is dressed as an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub rule_id: &'static str,
    pub severity: &'static str,
    pub mitre: &'static str,
    pub policy: String,
    pub mode: Mode,
    pub action: Action,
    pub message: String,
}

impl Violation {
    /// What was done: `blocked`/`killed` in enforce mode, `would_*` in monitor mode.
    /// `denied_by_kernel` says whether the kernel refused the call itself.
    pub fn action_taken(&self, denied_by_kernel: bool, killable: bool) -> &'static str {
        match (self.mode, self.action) {
            (_, Action::Alert) => "alert",
            (Mode::Monitor, Action::Kill) if killable => "would_kill",
            (Mode::Monitor, _) => "would_block",
            (Mode::Enforce, Action::Kill) if killable => "killed",
            (Mode::Enforce, _) if denied_by_kernel => "blocked",
            (Mode::Enforce, _) => "alert",
        }
    }
}

/// The policy and rule that govern `p`'s container: the first policy selecting its pod with
/// a rule for its container name or role.
pub fn rule_for<'a>(policies: &'a [Policy], p: &pb::Process) -> Option<(&'a Policy, &'a ContainerRule)> {
    let pod = p.pod.as_ref().filter(|pod| !pod.name.is_empty())?;
    let c = p.container.as_ref()?;
    policies.iter().filter(|pol| selects(pol, pod)).find_map(|pol| {
        pol.spec
            .containers
            .iter()
            .find(|r| {
                r.name.as_deref() == Some(c.name.as_str())
                    || r.role.is_some_and(|role| role.as_str() == c.role)
            })
            .map(|r| (pol, r))
    })
}

fn selects(pol: &Policy, pod: &pb::Pod) -> bool {
    let ns = &pol.spec.selector.namespaces;
    let ns_ok = if ns.is_empty() {
        pol.namespace == pod.namespace
    } else {
        ns.iter().any(|n| n == "*" || *n == pod.namespace)
    };
    ns_ok && pol.spec.selector.pod_labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

fn violation(pol: &Policy, rule: &ContainerRule, id: &'static str, message: String) -> Violation {
    let (severity, mitre) = match id {
        "loopback-egress" | "loopback-unix" => ("medium", "T1021"),
        "port-squatting" => ("high", "T1557"),
        "egress" => ("medium", "T1041"),
        "namespace-transition" => ("critical", "T1611"),
        "runtime-socket" => ("critical", "T1610"),
        "loopback-routing" => ("high", "T1599"),
        "kernel-refusal" => ("medium", ""),
        _ => ("high", "T1055"),
    };
    Violation {
        rule_id: id,
        severity,
        mitre,
        policy: pol.key(),
        mode: pol.spec.mode,
        action: rule.action,
        message,
    }
}

/// The violations `ev` commits, with the process that committed them.
pub fn check(policies: &[Policy], ev: &pb::GetEventsResponse) -> Vec<Violation> {
    let Some(p) = crate::event::subject(ev) else { return Vec::new() };
    let Some((pol, rule)) = rule_for(policies, p) else { return Vec::new() };
    check_rule(pol, rule, ev)
}

/// What the kernel refused in `ev` (a connect, send, bind or sysctl write it denied), if
/// anything: an action the kernel refuses is always heard, even when no detection names it
/// (a rule changed since the kernel judged, or the two disagree).
pub fn refused(ev: &pb::GetEventsResponse) -> Option<String> {
    let remote = |s: Option<&pb::Socket>| {
        s.and_then(|s| s.remote.as_ref()).map_or_else(String::new, |r| format!(" to {}:{}", r.ip, r.port))
    };
    match &ev.event {
        Some(Event::ProcessConnect(c)) if c.result == "denied" => {
            Some(format!("connect{}", remote(c.socket.as_ref())))
        }
        Some(Event::ProcessDatagram(d)) if d.result == "denied" => {
            Some(format!("send{}", remote(d.socket.as_ref())))
        }
        Some(Event::ProcessBind(b)) if b.result == "denied" => {
            let port = b.socket.as_ref().and_then(|s| s.local.as_ref()).map_or(0, |l| l.port);
            Some(format!("bind to port {port}"))
        }
        Some(Event::ProcessSysctl(s)) if s.result == "denied" => Some(format!("write to {}", s.name)),
        _ => None,
    }
}

/// The violation for a refusal no detection named, against the rule governing the caller
/// (`None`: no rule in this daemon's policies, as when they changed since the kernel judged).
pub fn refusal(found: Option<(&Policy, &ContainerRule)>, what: String) -> Violation {
    let message = format!("the kernel refused a {what}");
    match found {
        Some((pol, rule)) => violation(pol, rule, "kernel-refusal", message),
        None => Violation {
            rule_id: "kernel-refusal",
            severity: "medium",
            mitre: "",
            policy: String::new(),
            mode: Mode::Enforce,
            action: Action::Block,
            message: format!("{message} (no rule in force names it)"),
        },
    }
}

/// The violation for a kill the kernel made but did not report one by one (its container
/// had spent its alert budget): `kill` is a `refusal::KILL_*`, judged against the rule
/// governing the container (`None`: no rule in this daemon's policies names it).
pub fn kernel_kill(found: Option<(&Policy, &ContainerRule)>, kill: u32) -> Violation {
    use sidewall_common::refusal;
    let (id, what) = match kill {
        refusal::KILL_NAMESPACE => ("namespace-transition", "changed namespaces"),
        refusal::KILL_RUNTIME_SOCKET => ("runtime-socket", "reached a container runtime's socket"),
        _ => ("process-access", "reached into another container's process or files"),
    };
    let message = format!("killed by the kernel: {what}");
    match found {
        Some((pol, rule)) => violation(pol, rule, id, message),
        None => {
            let mut v = refusal(None, what.to_string());
            v.action = Action::Kill;
            v.message = format!("{message} (no rule in force names it)");
            v
        }
    }
}

/// Where `rule_for` found the rule: (policy, container rule) indices, for a cache that spares
/// every event a walk over every rule.
pub fn rule_index(policies: &[Policy], p: &pb::Process) -> Option<(usize, usize)> {
    let (pol, rule) = rule_for(policies, p)?;
    let pi = policies.iter().position(|x| std::ptr::eq(x, pol))?;
    let ri = pol.spec.containers.iter().position(|x| std::ptr::eq(x, rule))?;
    Some((pi, ri))
}

/// The violations `ev` commits against `rule` of `pol`, the rule that governs its process.
pub fn check_rule(pol: &Policy, rule: &ContainerRule, ev: &pb::GetEventsResponse) -> Vec<Violation> {
    let Some(p) = crate::event::subject(ev) else { return Vec::new() };
    match &ev.event {
        Some(Event::ProcessConnect(c)) => {
            let mut out = destination(pol, rule, c.socket.as_ref(), c.peer.as_ref());
            out.extend(unix_channel(pol, rule, p, c));
            out
        }
        Some(Event::ProcessDatagram(d)) => destination(pol, rule, d.socket.as_ref(), d.peer.as_ref()),
        Some(Event::ProcessBind(b)) => bind(pol, rule, p, b),
        Some(Event::ProcessNamespace(n)) if rule.namespace_changes == Permission::Deny => {
            let msg = format!("{} changed namespaces ({}: {})", p.binary, n.operation, n.changed.join(","));
            vec![violation(pol, rule, "namespace-transition", msg)]
        }
        Some(Event::ProcessSysctl(s)) if rule.loopback_routing == Permission::Deny => {
            vec![violation(pol, rule, "loopback-routing", format!("wrote {} = {}", s.name, s.value))]
        }
        Some(Event::ProcessAccess(a)) if a.cross_container && rule.process_access == Permission::Deny => {
            let target =
                a.target.as_ref().and_then(|t| t.container.as_ref()).map_or("?", |c| c.name.as_str());
            let mut v = violation(
                pol,
                rule,
                "process-access",
                format!("{} used {} on container {target}", p.binary, a.access),
            );
            if a.access.starts_with("proc_") {
                v.mitre = "T1003.007";
            }
            vec![v]
        }
        _ => Vec::new(),
    }
}

/// A unix connection to a sibling container that `loopback.unix` does not allow.
fn unix_channel(
    pol: &Policy,
    rule: &ContainerRule,
    p: &pb::Process,
    c: &pb::ProcessConnect,
) -> Option<Violation> {
    let allowed = rule.loopback.as_ref()?.unix.as_ref()?;
    let name = c.socket.as_ref().filter(|s| s.protocol == "unix")?.remote.as_ref()?.path.as_str();
    let own = p.container.as_ref().map(|c| c.id.as_str());
    let peer =
        c.peer.as_ref()?.container.as_ref().filter(|pc| !pc.id.is_empty() && Some(pc.id.as_str()) != own)?;
    if allowed.iter().any(|r| r.allows(&peer.name, name)) {
        return None;
    }
    let message = format!("connected to {}:{name} over a unix socket", peer.name);
    Some(violation(pol, rule, "loopback-unix", message))
}

fn destination(
    pol: &Policy,
    rule: &ContainerRule,
    s: Option<&pb::Socket>,
    peer: Option<&pb::Process>,
) -> Vec<Violation> {
    let Some(s) = s else { return Vec::new() };
    let Some(remote) = s.remote.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    let runtime = (s.protocol == "unix" && RUNTIME_SOCKETS.contains(&remote.path.as_str()))
        || (s.protocol == "tcp" && KUBELET_PORTS.contains(&remote.port));
    if runtime && rule.runtime_sockets == Permission::Deny {
        let what = if remote.path.is_empty() {
            format!("the kubelet API on port {}", remote.port)
        } else {
            remote.path.clone()
        };
        out.push(violation(pol, rule, "runtime-socket", format!("reached {what}")));
    }
    if s.protocol == "unix" {
        return out;
    }
    let port = remote.port as u16;
    if s.loopback {
        if let Some(allowed) = rule.loopback.as_ref().and_then(|l| l.connect.as_ref()) {
            let peer_name = peer.and_then(|p| p.container.as_ref()).map(|c| c.name.as_str());
            // Nobody listening: nothing was reached, and the kernel's judgement (the port) stands.
            let ok = allowed.iter().any(|r| {
                (r.container.is_none() || peer_name.is_none() || r.container.as_deref() == peer_name)
                    && (r.ports.is_empty() || r.ports.contains(&port))
            });
            if !ok {
                let to = peer_name.map_or_else(|| format!("port {port}"), |n| format!("{n}:{port}"));
                out.push(violation(
                    pol,
                    rule,
                    "loopback-egress",
                    format!("loopback {} to {to} is not allowed", s.protocol),
                ));
            }
        }
    } else if let (Some(allowed), Ok(ip)) = (rule.egress.as_ref(), remote.ip.parse::<IpAddr>()) {
        let ok =
            allowed.iter().any(|e| e.cidr.contains(&ip) && (e.ports.is_empty() || e.ports.contains(&port)));
        if !ok {
            out.push(violation(
                pol,
                rule,
                "egress",
                format!("{} to {ip}:{port} is outside the allowed destinations", s.protocol),
            ));
        }
    }
    out
}

fn bind(pol: &Policy, rule: &ContainerRule, p: &pb::Process, b: &pb::ProcessBind) -> Vec<Violation> {
    let Some(port) = b.socket.as_ref().and_then(|s| s.local.as_ref()).map(|l| l.port as u16) else {
        return Vec::new();
    };
    let own = rule.loopback.as_ref().and_then(|l| l.bind.as_ref());
    if own.is_some_and(|ports| !ports.contains(&port)) {
        return vec![violation(
            pol,
            rule,
            "port-squatting",
            format!("bound port {port}, which it may not own"),
        )];
    }
    // A port declared for a sibling is that sibling's, whoever binds it first.
    let me = p.container.as_ref();
    let declared_by_other = pol.spec.containers.iter().any(|r| {
        !std::ptr::eq(r, rule)
            && r.loopback.as_ref().and_then(|l| l.bind.as_ref()).is_some_and(|ports| ports.contains(&port))
            && r.name.as_deref() != me.map(|c| c.name.as_str())
    });
    if declared_by_other {
        return vec![violation(
            pol,
            rule,
            "port-squatting",
            format!("bound port {port}, which belongs to another container"),
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse::parse;

    fn policies(rules: &str, mode: &str) -> Vec<Policy> {
        let doc = format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: p\nspec:\n  mode: {mode}\n  containers:\n{rules}"
        );
        vec![parse(&doc, "t").expect("valid")]
    }

    fn process(container: &str) -> pb::Process {
        pb::Process {
            pod: Some(pb::Pod { namespace: "default".into(), name: "web".into(), ..Default::default() }),
            container: Some(pb::Container {
                name: container.into(),
                role: "sidecar".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn connect(from: &str, to: Option<&str>, ip: &str, port: u32, loopback: bool) -> pb::GetEventsResponse {
        pb::GetEventsResponse {
            event: Some(Event::ProcessConnect(pb::ProcessConnect {
                process: Some(process(from)),
                peer: to.map(process),
                socket: Some(pb::Socket {
                    protocol: "tcp".into(),
                    remote: Some(pb::SocketAddress { ip: ip.into(), port, ..Default::default() }),
                    loopback,
                    ..Default::default()
                }),
                result: "success".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    const RULES: &str = "    - name: proxy\n      loopback:\n        connect:\n          - container: app\n            ports: [8080]\n      egress:\n        - cidr: 10.0.0.0/8\n      runtimeSockets: deny\n      action: block\n    - name: app\n      loopback:\n        bind: [8080]\n";

    #[test]
    fn loopback_egress_and_runtime_rules() {
        let p = policies(RULES, "monitor");
        assert!(check(&p, &connect("proxy", Some("app"), "127.0.0.1", 8080, true)).is_empty());
        let v = check(&p, &connect("proxy", Some("app"), "127.0.0.1", 9090, true));
        assert_eq!(v[0].rule_id, "loopback-egress");
        assert_eq!(v[0].action_taken(false, false), "would_block");
        assert!(check(&p, &connect("proxy", None, "10.1.2.3", 443, false)).is_empty());
        assert_eq!(check(&p, &connect("proxy", None, "192.0.2.1", 443, false))[0].rule_id, "egress");
        let kubelet = check(&p, &connect("proxy", None, "10.0.0.1", 10250, false));
        assert_eq!(kubelet[0].rule_id, "runtime-socket");
        assert!(check(&p, &connect("other", None, "192.0.2.1", 443, false)).is_empty(), "no rule: no alert");
    }

    #[test]
    fn binding_a_port_declared_for_a_sibling_is_squatting() {
        let p = policies(RULES, "enforce");
        let bind = |who: &str, port: u32| pb::GetEventsResponse {
            event: Some(Event::ProcessBind(pb::ProcessBind {
                process: Some(process(who)),
                socket: Some(pb::Socket {
                    local: Some(pb::SocketAddress { ip: "127.0.0.1".into(), port, ..Default::default() }),
                    ..Default::default()
                }),
                result: "success".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let v = check(&p, &bind("proxy", 8080));
        assert_eq!(v[0].rule_id, "port-squatting");
        assert_eq!(v[0].action_taken(false, false), "alert", "enforced, but the kernel did not refuse it");
        assert!(check(&p, &bind("app", 8080)).is_empty(), "its own port");
        assert!(check(&p, &bind("proxy", 15001)).is_empty());
    }
}
