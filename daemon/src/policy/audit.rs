//! The audit trail of policy changes: who changed which policy, how, from which version to
//! which, and when. The store describes every change it applies, in the order it applies
//! them, into a bounded queue (`AuditSink`); the pipeline drains it and publishes each as a
//! `policy_change` event. A full queue loses the change's event, counted at the stage
//! `policy_audit`; the change itself is applied all the same.

use std::sync::Arc;

use sidewall_proto::v1::{self as pb, policy_actor::Actor};
use tokio::sync::mpsc;

use super::{parse::Policy, store::mode_name};
use crate::{
    clock::Clock,
    stats::{Stage, Stats},
};

/// Changes waiting for the pipeline. A relist or a policy directory of this many policies
/// at once still fits.
pub const QUEUE: usize = 4096;

/// One applied change and when (boot-time ns) it was applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub event: pb::PolicyChange,
    pub boot_ns: u64,
}

/// Where the store sends its changes.
pub struct AuditSink {
    tx: mpsc::Sender<Change>,
    stats: Arc<Stats>,
}

impl AuditSink {
    pub fn channel(capacity: usize, stats: Arc<Stats>) -> (Self, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, stats }, rx)
    }

    /// Queues the change without waiting; a full (or closed) queue counts a loss.
    pub fn record(&self, event: pb::PolicyChange) {
        let change = Change { event, boot_ns: Clock::boot_ns() };
        if let Err(e) = self.tx.try_send(change) {
            self.stats.count_lost(Stage::PolicyAudit, 1);
            let c = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            tracing::error!(
                policy = %c.event.policy, change = %c.event.change, source = %c.event.source,
                "policy change applied, but its policy_change event was lost (queue full)"
            );
        }
    }
}

/// A version of a policy: the hash of its normalized document, and its mode.
pub fn version(p: &Policy) -> pb::PolicyVersion {
    pb::PolicyVersion { hash: hash(&p.to_document()), mode: mode_name(p.spec.mode).into() }
}

/// "sha256:<hex>".
pub fn hash(document: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, document.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The change of the policy `key` from `before` to `after` made by `actor`; `None` when the
/// policy is the same (a file rewritten with the same content, a relist).
pub fn diff(
    key: &str,
    before: Option<(&Policy, &pb::PolicyVersion)>,
    after: Option<(&Policy, &pb::PolicyVersion)>,
    actor: &pb::PolicyActor,
) -> Option<pb::PolicyChange> {
    let change = match (before, after) {
        (None, None) => return None,
        (None, Some(_)) => "added",
        (Some(_), None) => "deleted",
        (Some((_, b)), Some((_, a))) if a.hash == b.hash => return None,
        (Some((b, _)), Some((a, _))) if only_mode_differs(b, a) => "mode_changed",
        (Some(_), Some(_)) => "replaced",
    };
    Some(pb::PolicyChange {
        policy: key.into(),
        change: change.into(),
        source: source(actor).into(),
        actor: Some(actor.clone()),
        before: before.map(|(_, v)| v.clone()),
        after: after.map(|(_, v)| v.clone()),
    })
}

fn only_mode_differs(before: &Policy, after: &Policy) -> bool {
    let mut b = before.clone();
    b.spec.mode = after.spec.mode;
    b == *after
}

/// The source of a change, by its actor: "api", "file", "crd" or "builtin".
pub fn source(actor: &pb::PolicyActor) -> &'static str {
    match actor.actor {
        Some(Actor::Unix(_) | Actor::Tls(_) | Actor::InsecureTcp(_)) => "api",
        Some(Actor::File(_)) => "file",
        Some(Actor::Kubernetes(_)) => "crd",
        Some(Actor::Builtin(_)) => "builtin",
        None => "unknown",
    }
}

/// The actor in a log line: "unix uid 0 gid 0 pid 42 /usr/bin/sidewall (admin)".
pub fn describe(actor: &pb::PolicyActor) -> String {
    match &actor.actor {
        Some(Actor::Unix(u)) => {
            format!("unix uid {} gid {} pid {} {} ({})", u.uid, u.gid, u.pid, u.binary, u.role)
        }
        Some(Actor::Tls(t)) => format!("tls \"{}\" as {} from {} ({})", t.subject, t.name, t.address, t.role),
        Some(Actor::InsecureTcp(t)) => format!("plaintext tcp {} ({})", t.address, t.role),
        Some(Actor::File(f)) => format!("file {f}"),
        Some(Actor::Kubernetes(k)) => {
            format!("sidecarpolicies/{}/{} resourceVersion {}", k.namespace, k.name, k.resource_version)
        }
        Some(Actor::Builtin(_)) => "builtin".into(),
        None => "unknown".into(),
    }
}

pub fn file(path: &std::path::Path) -> pb::PolicyActor {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    pb::PolicyActor { actor: Some(Actor::File(path.display().to_string())) }
}

pub fn builtin() -> pb::PolicyActor {
    pb::PolicyActor { actor: Some(Actor::Builtin(true)) }
}

pub fn kubernetes(namespace: &str, name: &str, uid: &str, resource_version: &str) -> pb::PolicyActor {
    pb::PolicyActor {
        actor: Some(Actor::Kubernetes(pb::KubernetesObject {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: resource_version.into(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{model::Mode, parse::parse};

    fn policy(port: u16, mode: &str) -> Policy {
        let doc = format!(
            "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: p\nspec:\n  mode: {mode}\n  containers:\n    - name: proxy\n      loopback:\n        bind: [{port}]\n"
        );
        parse(&doc, "test").expect("valid")
    }

    fn change(before: Option<&Policy>, after: Option<&Policy>) -> Option<pb::PolicyChange> {
        let (vb, va) = (before.map(version), after.map(version));
        diff("default/p", before.zip(vb.as_ref()), after.zip(va.as_ref()), &builtin())
    }

    #[test]
    fn kinds_of_change() {
        let (a, b, a_enforced) = (policy(1, "monitor"), policy(2, "monitor"), policy(1, "enforce"));
        let added = change(None, Some(&a)).expect("added");
        assert_eq!((added.change.as_str(), added.source.as_str()), ("added", "builtin"));
        assert!(added.before.is_none() && added.after.as_ref().is_some_and(|v| v.mode == "monitor"));
        assert_eq!(change(Some(&a), None).expect("deleted").change, "deleted");
        assert_eq!(change(Some(&a), Some(&b)).expect("replaced").change, "replaced");
        let switched = change(Some(&a_enforced), Some(&a)).expect("switched");
        assert_eq!(switched.change, "mode_changed");
        assert_eq!(switched.before.map(|v| v.mode), Some("enforce".into()));
        assert_eq!(switched.after.map(|v| v.mode), Some("monitor".into()));
        assert_eq!(change(Some(&a), Some(&a.clone())), None, "the same policy is no change");
        assert_eq!(a_enforced.spec.mode, Mode::Enforce);
    }

    #[test]
    fn hashes_name_the_document() {
        let v = version(&policy(1, "monitor"));
        assert!(v.hash.starts_with("sha256:") && v.hash.len() == 7 + 64, "{}", v.hash);
        assert_ne!(v.hash, version(&policy(1, "enforce")).hash, "the mode is part of the document");
        assert_eq!(hash(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn a_full_queue_counts_the_loss() {
        let stats = Arc::new(Stats::default());
        let (sink, mut rx) = AuditSink::channel(1, stats.clone());
        let ev = change(None, Some(&policy(1, "monitor"))).expect("added");
        sink.record(ev.clone());
        sink.record(ev.clone());
        assert_eq!(stats.lost(Stage::PolicyAudit), 1);
        assert_eq!(rx.try_recv().map(|c| c.event), Ok(ev));
    }
}
