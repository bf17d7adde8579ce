//! The act stage: a violation becomes a `policy_alert` saying what was done about it, and a
//! process that its rule kills, and that the kernel could not kill first, is killed here.

use sidewall_proto::v1::{self as pb, get_events_response::Event};

use super::publish::Publisher;
use crate::{
    event,
    kernel::{
        alerts::{self, Aggregate},
        tasks::local_pid,
    },
    policy::{detect::Violation, engine::Forbidden, store},
};

/// The alert for `v`, a violation of `ev`.
pub fn alert(ev: &pb::GetEventsResponse, v: &Violation) -> pb::PolicyAlert {
    let (denied, killable, peer, socket) = match &ev.event {
        // A unix connect cannot be refused, but its caller can be killed (runtime sockets).
        Some(Event::ProcessConnect(c)) => {
            let unix = c.socket.as_ref().is_some_and(|s| s.protocol == "unix");
            (c.result == "denied", unix, c.peer.clone(), c.socket.clone())
        }
        Some(Event::ProcessDatagram(d)) => (d.result == "denied", false, d.peer.clone(), d.socket.clone()),
        Some(Event::ProcessBind(b)) => (b.result == "denied", false, None, b.socket.clone()),
        Some(Event::ProcessSysctl(s)) => (s.result == "denied", false, None, None),
        Some(Event::ProcessNamespace(n)) => (false, true, n.target.clone(), None),
        Some(Event::ProcessAccess(a)) => (false, true, a.target.clone(), None),
        _ => (false, false, None, None),
    };
    let action = v.action_taken(denied, killable);
    pb::PolicyAlert {
        rule_id: v.rule_id.into(),
        severity: v.severity.into(),
        mitre_technique: v.mitre.into(),
        policy: v.policy.clone(),
        action: action.into(),
        enforced_by: enforced_by(ev, v.rule_id, action).into(),
        message: v.message.clone(),
        process: event::subject(ev).cloned(),
        peer,
        socket,
        mode: store::mode_name(v.mode).into(),
        trigger: event::kind(ev) as i32,
        ..Default::default()
    }
}

/// An alert for refusals of `kind` (`refusal::*`) whose container's rule is unknown here
/// (the aggregation map was full, or the container's identity is gone).
pub fn unattributed(kind: u32) -> pb::PolicyAlert {
    pb::PolicyAlert {
        rule_id: "kernel-refusal".into(),
        severity: "medium".into(),
        action: if kind >= sidewall_common::refusal::KILL_NAMESPACE { "killed" } else { "blocked" }.into(),
        message: format!("the kernel refused: {}", crate::kernel::decode::refusal_name(kind)),
        ..Default::default()
    }
}

/// Makes `alert` the aggregated alert of `agg`: its count, first and last time, sample.
pub fn aggregate(alert: &mut pb::PolicyAlert, agg: &Aggregate, publish: &Publisher) {
    alert.count = agg.count;
    alert.first_time = Some(publish.timestamp(agg.first_ns));
    alert.last_time = Some(publish.timestamp(agg.last_ns));
    alert.sample = agg.sample.iter().map(alerts::sample_name).collect();
    alert.message = format!("{} ({} times over the container's alert budget)", alert.message, agg.count);
    tracing::info!(rule = %alert.rule_id, count = agg.count, cgroup = agg.cgroup, "aggregated alert");
}

/// The alert for an established connection a rule forbids: `ev` is the connect that opened it.
pub fn established(ev: &pb::GetEventsResponse, v: &Violation, f: &Forbidden) -> pb::PolicyAlert {
    let mut alert = alert(ev, v);
    alert.message = if f.enforced {
        format!("{} (established connection cut)", v.message)
    } else {
        format!("{} (established connection; enforce mode would cut it)", v.message)
    };
    alert.action = f.action().into();
    alert.enforced_by = if f.enforced { "daemon" } else { "" }.into();
    let remote = f.cut.socket.remote;
    tracing::info!(rule = v.rule_id, policy = %v.policy, %remote, action = f.action(), "established connection");
    alert
}

/// Who carries out `action`: "kernel" for a call the cgroup hooks refused, and for kills the
/// kernel's kill rules make before the call can be used (namespace changes at clone, setns
/// and unshare; runtime-socket connects; opening another container's process files or files
/// through its mounts; ptrace attach), given that the rule was in the kernel before the call
/// (see `sidewall status`: a container whose rule came late was unguarded until then);
/// "daemon" for kills only the daemon makes (drift, process_vm, unix channels). Empty when
/// nothing is done.
fn enforced_by(ev: &pb::GetEventsResponse, rule: &str, action: &str) -> &'static str {
    match action {
        "blocked" => "kernel",
        "killed" => {
            let by_kernel = match &ev.event {
                Some(Event::ProcessNamespace(n)) => {
                    matches!(n.operation.as_str(), "clone" | "setns" | "unshare")
                }
                Some(Event::ProcessAccess(a)) => {
                    a.access.starts_with("proc_") || a.access.starts_with("ptrace_")
                }
                Some(Event::ProcessConnect(_)) => rule == "runtime-socket",
                _ => false,
            };
            if by_kernel { "kernel" } else { "daemon" }
        }
        "cut" => "daemon",
        _ => "",
    }
}

/// Carries out what the alert says the daemon does: a kill the kernel did not make. A
/// tracer killed as its PTRACE_ATTACH returned leaves its tracee with the attach's SIGSTOP:
/// the tracee is resumed, so the attack costs the app nothing.
pub fn execute(ev: &pb::GetEventsResponse, alert: &mut pb::PolicyAlert) {
    tracing::info!(rule = %alert.rule_id, action = %alert.action, policy = %alert.policy, "{}", alert.message);
    if alert.action != "killed" {
        return;
    }
    if let Some(p) = alert.process.as_ref() {
        // By the pid the kernel reported, as this daemon's pid namespace numbers it.
        let local = local_pid(p.pid);
        // SAFETY: kill(2) of the offending process.
        let missed = local.is_none_or(|pid| unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0);
        // A kill after the fact that found the process gone did not happen: say so.
        if missed && alert.enforced_by == "daemon" {
            alert.message.push_str(" (the process had exited before the daemon's kill)");
        }
    }
    if let Some(Event::ProcessAccess(a)) = &ev.event
        && a.access == "ptrace_attach"
        && let Some(t) = a.target.as_ref()
        && let Some(pid) = local_pid(t.pid)
    {
        // SAFETY: kill(2) of the traced process, by the pid the kernel resolved.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    }
}
