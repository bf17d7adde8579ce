//! Two versions of a policy compared in the policy's own terms: ports a container may now
//! reach or own, egress widened or narrowed, a deny dropped, an action or mode changed. Each
//! change says whether it widens (`+`: allows more), narrows (`-`) or only changes (`~`).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{
    model::{Action, ContainerRule, EgressRule, Permission, PortRule, UnixRule},
    parse::Policy,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// Allows more than before.
    Widens,
    /// Allows less.
    Narrows,
    /// Neither (a rename, a mode).
    Changes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub sign: Sign,
    /// Where: `spec.mode`, `containers[name=app].loopback.connect`, ...
    pub place: String,
    pub what: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = match self.sign {
            Sign::Widens => '+',
            Sign::Narrows => '-',
            Sign::Changes => '~',
        };
        write!(f, "{sign} {}: {}", self.place, self.what)
    }
}

/// What changes from `a` to `b`.
pub fn diff(a: &Policy, b: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |sign, place: &str, what: String| out.push(Change { sign, place: place.into(), what });
    if a.key() != b.key() {
        push(Sign::Changes, "metadata", format!("{} -> {}", a.key(), b.key()));
    }
    if a.spec.mode != b.spec.mode {
        let sign = if b.spec.mode == super::model::Mode::Enforce { Sign::Narrows } else { Sign::Widens };
        push(sign, "spec.mode", format!("{:?} -> {:?}", a.spec.mode, b.spec.mode).to_lowercase());
    }
    if a.spec.selector != b.spec.selector {
        push(
            Sign::Changes,
            "spec.selector",
            format!("{} -> {}", selector(&a.spec.selector), selector(&b.spec.selector)),
        );
    }
    for rb in &b.spec.containers {
        match a.spec.containers.iter().find(|ra| same_target(ra, rb)) {
            Some(ra) => rule(ra, rb, &mut out),
            None => out.push(Change { sign: Sign::Changes, place: target(rb), what: "rule added".into() }),
        }
    }
    for ra in &a.spec.containers {
        if !b.spec.containers.iter().any(|rb| same_target(ra, rb)) {
            out.push(Change { sign: Sign::Changes, place: target(ra), what: "rule removed".into() });
        }
    }
    out
}

fn selector(s: &super::model::PodSelector) -> String {
    let labels: Vec<String> = s.pod_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("namespaces [{}] labels [{}]", s.namespaces.join(","), labels.join(","))
}

fn same_target(a: &ContainerRule, b: &ContainerRule) -> bool {
    a.name == b.name && a.role == b.role
}

fn target(r: &ContainerRule) -> String {
    match (&r.name, r.role) {
        (Some(n), _) => format!("containers[name={n}]"),
        (None, Some(role)) => format!("containers[role={}]", role.as_str()),
        (None, None) => "containers[?]".into(),
    }
}

fn rule(a: &ContainerRule, b: &ContainerRule, out: &mut Vec<Change>) {
    let t = target(a);
    let la = a.loopback.clone().unwrap_or_default();
    let lb = b.loopback.clone().unwrap_or_default();
    let la_connect = a.loopback.as_ref().and_then(|l| l.connect.clone());
    let lb_connect = b.loopback.as_ref().and_then(|l| l.connect.clone());
    list(out, &format!("{t}.loopback.connect"), la_connect, lb_connect, connect_items, "any sibling port");
    list(
        out,
        &format!("{t}.loopback.bind"),
        la.bind,
        lb.bind,
        |v| v.iter().map(|p| p.to_string()).collect(),
        "any port",
    );
    list(out, &format!("{t}.loopback.unix"), la.unix, lb.unix, unix_items, "any sibling socket");
    egress(out, &format!("{t}.egress"), a.egress.as_ref(), b.egress.as_ref());
    let perms = [
        ("namespaceChanges", a.namespace_changes, b.namespace_changes),
        ("processAccess", a.process_access, b.process_access),
        ("runtimeSockets", a.runtime_sockets, b.runtime_sockets),
        ("loopbackRouting", a.loopback_routing, b.loopback_routing),
    ];
    for (field, pa, pb) in perms {
        match (pa, pb) {
            (Permission::Deny, Permission::Allow) => out.push(Change {
                sign: Sign::Widens,
                place: format!("{t}.{field}"),
                what: "deny -> allow (a deny dropped)".into(),
            }),
            (Permission::Allow, Permission::Deny) => out.push(Change {
                sign: Sign::Narrows,
                place: format!("{t}.{field}"),
                what: "allow -> deny".into(),
            }),
            _ => {}
        }
    }
    if a.action != b.action {
        let rank = |x: Action| match x {
            Action::Alert => 0,
            Action::Block => 1,
            Action::Kill => 2,
        };
        let sign = if rank(b.action) > rank(a.action) { Sign::Narrows } else { Sign::Widens };
        out.push(Change {
            sign,
            place: format!("{t}.action"),
            what: format!("{:?} -> {:?}", a.action, b.action).to_lowercase(),
        });
    }
}

/// A list where absent means "anything": items added widen, items removed narrow; going to
/// or from absent is the widest change.
fn list<T>(
    out: &mut Vec<Change>,
    place: &str,
    a: Option<Vec<T>>,
    b: Option<Vec<T>>,
    items: fn(&[T]) -> BTreeSet<String>,
    any: &str,
) {
    match (a, b) {
        (None, None) => {}
        (Some(_), None) => {
            out.push(Change { sign: Sign::Widens, place: place.into(), what: format!("list dropped: {any}") })
        }
        (None, Some(b)) => out.push(Change {
            sign: Sign::Narrows,
            place: place.into(),
            what: format!("limited to [{}]", items(&b).into_iter().collect::<Vec<_>>().join(", ")),
        }),
        (Some(a), Some(b)) => {
            let (ia, ib) = (items(&a), items(&b));
            for added in ib.difference(&ia) {
                out.push(Change { sign: Sign::Widens, place: place.into(), what: format!("added {added}") });
            }
            for removed in ia.difference(&ib) {
                out.push(Change {
                    sign: Sign::Narrows,
                    place: place.into(),
                    what: format!("removed {removed}"),
                });
            }
        }
    }
}

/// Each port of each entry, as `container:port` (`*:port` for whichever owns it; `:*` for
/// every port of the container).
fn connect_items(v: &[PortRule]) -> BTreeSet<String> {
    v.iter()
        .flat_map(|r| {
            let c = r.container.clone().unwrap_or_else(|| "*".into());
            if r.ports.is_empty() {
                vec![format!("{c}:*")]
            } else {
                r.ports.iter().map(|p| format!("{c}:{p}")).collect()
            }
        })
        .collect()
}

fn unix_items(v: &[UnixRule]) -> BTreeSet<String> {
    v.iter()
        .flat_map(|r| {
            let c = r.container.clone().unwrap_or_else(|| "*".into());
            if r.names.is_empty() {
                vec![format!("{c}:*")]
            } else {
                r.names.iter().map(|n| format!("{c}:{n}")).collect()
            }
        })
        .collect()
}

/// Egress compared by what it reaches: a range of `b` that some range of `a` (with its
/// ports) does not contain widens; one of `a` that `b` does not contain narrows.
fn egress(out: &mut Vec<Change>, place: &str, a: Option<&Vec<EgressRule>>, b: Option<&Vec<EgressRule>>) {
    match (a, b) {
        (None, None) => {}
        (Some(_), None) => out.push(Change {
            sign: Sign::Widens,
            place: place.into(),
            what: "list dropped: anywhere".into(),
        }),
        (None, Some(b)) => {
            let v: Vec<String> = b.iter().map(describe).collect();
            out.push(Change {
                sign: Sign::Narrows,
                place: place.into(),
                what: format!("limited to [{}]", v.join(", ")),
            })
        }
        (Some(a), Some(b)) => {
            for e in b.iter().filter(|e| !covered(e, a)) {
                out.push(Change {
                    sign: Sign::Widens,
                    place: place.into(),
                    what: format!("widened to {}", describe(e)),
                });
            }
            for e in a.iter().filter(|e| !covered(e, b)) {
                out.push(Change {
                    sign: Sign::Narrows,
                    place: place.into(),
                    what: format!("no longer {}", describe(e)),
                });
            }
        }
    }
}

/// Whether some rule of `by` allows everything `e` allows.
fn covered(e: &EgressRule, by: &[EgressRule]) -> bool {
    by.iter().any(|o| {
        contains(&o.cidr, &e.cidr)
            && (o.ports.is_empty() || (!e.ports.is_empty() && e.ports.iter().all(|p| o.ports.contains(p))))
    })
}

fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

fn describe(e: &EgressRule) -> String {
    if e.ports.is_empty() {
        format!("{} (any port)", e.cidr)
    } else {
        let p: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        format!("{} ports [{}]", e.cidr, p.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse::parse;

    fn policy(rules: &str, mode: &str) -> Policy {
        let doc = format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: p\nspec:\n  mode: {mode}\n  containers:\n{rules}"
        );
        parse(&doc, "t").expect("valid")
    }

    const A: &str = "    - name: proxy\n      loopback:\n        connect:\n          - container: app\n            ports: [8080]\n        bind: [15001]\n      egress:\n        - cidr: 10.0.0.0/24\n          ports: [443]\n      namespaceChanges: deny\n      action: kill\n";

    #[test]
    fn same_policy_no_change() {
        assert!(diff(&policy(A, "monitor"), &policy(A, "monitor")).is_empty());
    }

    #[test]
    fn ports_added_egress_widened_deny_dropped() {
        let b = A
            .replace("ports: [8080]", "ports: [8080, 9090]")
            .replace("10.0.0.0/24", "10.0.0.0/8")
            .replace("namespaceChanges: deny", "namespaceChanges: allow")
            .replace("bind: [15001]", "bind: []");
        let lines: Vec<String> =
            diff(&policy(A, "monitor"), &policy(&b, "enforce")).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "- spec.mode: monitor -> enforce",
                "+ containers[name=proxy].loopback.connect: added app:9090",
                "- containers[name=proxy].loopback.bind: removed 15001",
                "+ containers[name=proxy].egress: widened to 10.0.0.0/8 ports [443]",
                "+ containers[name=proxy].namespaceChanges: deny -> allow (a deny dropped)",
            ]
        );
    }

    #[test]
    fn narrower_egress_is_not_widening_and_lists_dropped_are() {
        let b = A.replace("10.0.0.0/24", "10.0.0.7/32");
        let changes = diff(&policy(A, "monitor"), &policy(&b, "monitor"));
        assert!(changes.iter().all(|c| c.sign == Sign::Narrows), "{changes:?}");
        let open = "    - name: proxy\n      namespaceChanges: deny\n      action: kill\n";
        let changes = diff(&policy(A, "monitor"), &policy(open, "monitor"));
        assert!(changes.iter().all(|c| c.sign == Sign::Widens), "{changes:?}");
        assert_eq!(changes.len(), 3, "connect, bind and egress lists dropped: {changes:?}");
        let extra = format!("{A}    - name: app\n");
        let changes = diff(&policy(A, "monitor"), &policy(&extra, "monitor"));
        assert_eq!(changes[0].to_string(), "~ containers[name=app]: rule added");
    }
}
