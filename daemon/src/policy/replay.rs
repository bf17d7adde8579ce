//! Replay: recorded events (a JSON-lines export) judged offline against policies, through
//! the daemon's own engine (`PolicyEngine::detect`), the kernel's own decision on a
//! destination (`Compiled::denies`), and the act stage's own alert (`act::alert`). What the
//! kernel would refuse under the replayed rule is marked refused before the event is judged,
//! so that the alert says `blocked` exactly where the daemon's would.

use std::{collections::BTreeMap, io::BufRead, net::IpAddr, sync::Arc};

use sidewall_common::enforce as bits;
use sidewall_proto::v1::{self as pb, get_events_response::Event};
use thiserror::Error;

use super::{
    detect,
    enforce::{self, v6_bytes},
    engine::PolicyEngine,
    model::Mode,
    parse::Policy,
    store::PolicyStore,
};
use crate::{event, pipeline::act};

/// Examples kept per (container, rule, action).
const EXAMPLES: usize = 3;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("{origin}: line {line}: not an event: {reason}")]
    Event { origin: String, line: usize, reason: String },
    #[error("{origin}: {source}")]
    Read { origin: String, source: std::io::Error },
}

/// What fired, per container, policy, rule and action.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Events read (alerts and loss reports of the recording included, and skipped).
    pub events: u64,
    pub fired: BTreeMap<Key, Fired>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// `namespace/pod:container`.
    pub container: String,
    pub policy: String,
    pub rule: String,
    /// As the alert would say: `alert`, `blocked`, `killed`, `would_block`, `would_kill`.
    pub action: String,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fired {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Report {
    /// Whether anything would be alerted, blocked or killed.
    pub fn fires(&self) -> bool {
        !self.fired.is_empty()
    }

    /// One line per (container, policy, rule, action) with its count, and its examples below.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, f) in &self.fired {
            out.push_str(&format!(
                "{}  rule={} action={} policy={} count={}\n",
                k.container, k.rule, k.action, k.policy, f.count
            ));
            for e in &f.examples {
                out.push_str(&format!("    {e}\n"));
            }
        }
        let total: u64 = self.fired.values().map(|f| f.count).sum();
        out.push_str(&format!("{} events replayed, {total} would fire\n", self.events));
        out
    }
}

/// The judge: the engine over a store holding `policies` and the built-in policy, as the
/// daemon holds them. `enforce` judges every given policy as if in enforce mode.
pub struct Replay {
    engine: PolicyEngine,
    snapshot: Vec<Policy>,
    report: Report,
}

impl Replay {
    pub fn new(mut policies: Vec<Policy>, enforce: bool) -> Self {
        if enforce {
            for p in &mut policies {
                p.spec.mode = Mode::Enforce;
            }
        }
        let store = PolicyStore::with_builtin();
        store.replace_source("replay", policies, &|_| pb::PolicyActor::default());
        let snapshot = store.snapshot();
        let mut engine = PolicyEngine::new(Arc::clone(&store), None);
        engine.sync();
        Self { engine, snapshot, report: Report::default() }
    }

    /// Judges one recorded event.
    pub fn judge(&mut self, ev: &pb::GetEventsResponse) {
        self.report.events += 1;
        let ev = self.as_kernel_would(ev);
        self.engine.sync();
        for v in self.engine.detect(&ev) {
            let alert = act::alert(&ev, &v);
            let key = Key {
                container: container_of(alert.process.as_ref()),
                policy: alert.policy.clone(),
                rule: alert.rule_id.clone(),
                action: alert.action.clone(),
            };
            let f = self.report.fired.entry(key).or_default();
            f.count += 1;
            if f.examples.len() < EXAMPLES {
                let pid = alert.process.as_ref().map_or(0, |p| p.pid);
                f.examples.push(format!("{} (pid {pid})", alert.message));
            }
        }
    }

    /// Reads a JSON-lines export, judging each line; a line that is not an event is an error
    /// naming it.
    pub fn judge_lines(&mut self, input: impl BufRead, origin: &str) -> Result<(), ReplayError> {
        for (i, line) in input.lines().enumerate() {
            let line = line.map_err(|source| ReplayError::Read { origin: origin.into(), source })?;
            if line.trim().is_empty() {
                continue;
            }
            let ev = parse_event(&line).map_err(|reason| ReplayError::Event {
                origin: origin.into(),
                line: i + 1,
                reason,
            })?;
            self.judge(&ev);
        }
        Ok(())
    }

    pub fn report(self) -> Report {
        self.report
    }

    /// `ev` with its result as the kernel would give it under the rule replayed: a connect,
    /// send, bind or sysctl write the compiled rule refuses is `denied`, any other
    /// `success` (what the recording's own rules did no longer matters).
    fn as_kernel_would(&self, ev: &pb::GetEventsResponse) -> pb::GetEventsResponse {
        let mut ev = ev.clone();
        let Some(p) = event::subject(&ev) else { return ev };
        let compiled = detect::rule_for(&self.snapshot, p)
            .map(|(pol, rule)| enforce::compile(pol.spec.mode, rule))
            .unwrap_or_default();
        let result = |denied: bool| if denied { "denied" } else { "success" }.to_string();
        match &mut ev.event {
            Some(Event::ProcessConnect(c)) if is_inet(c.socket.as_ref()) => {
                c.result = result(denies(&compiled, c.socket.as_ref()));
            }
            Some(Event::ProcessDatagram(d)) if is_inet(d.socket.as_ref()) => {
                d.result = result(denies(&compiled, d.socket.as_ref()));
            }
            Some(Event::ProcessBind(b)) => {
                let port = b.socket.as_ref().and_then(|s| s.local.as_ref()).map_or(0, |l| l.port);
                let denied = compiled.flags & bits::BIND != 0
                    && u16::try_from(port).is_ok_and(|p| !compiled.bind.contains(&p));
                b.result = result(denied);
            }
            Some(Event::ProcessSysctl(s)) => s.result = result(compiled.flags & bits::SYSCTL != 0),
            _ => {}
        }
        ev
    }
}

fn is_inet(s: Option<&pb::Socket>) -> bool {
    s.is_some_and(|s| s.protocol == "tcp" || s.protocol == "udp")
}

/// The kernel's decision on a connect's or send's destination. A destination the recording
/// saw as the pod's own (loopback) is one of the pod's addresses to the kernel too.
fn denies(c: &enforce::Compiled, s: Option<&pb::Socket>) -> bool {
    let Some(s) = s else { return false };
    let Some(remote) = s.remote.as_ref() else { return false };
    let (Ok(ip), Ok(port)) = (remote.ip.parse::<IpAddr>(), u16::try_from(remote.port)) else { return false };
    let mut c = c.clone();
    if s.loopback {
        c.local.push(v6_bytes(ip));
    }
    c.denies(ip, port)
}

fn container_of(p: Option<&pb::Process>) -> String {
    let Some(p) = p else { return "?".into() };
    let pod = p.pod.as_ref().map_or_else(String::new, |pod| format!("{}/{}", pod.namespace, pod.name));
    let c = p.container.as_ref().map_or("", |c| c.name.as_str());
    format!("{pod}:{c}")
}

/// One line of a JSON-lines export.
pub fn parse_event(line: &str) -> Result<pb::GetEventsResponse, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
