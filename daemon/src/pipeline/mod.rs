//! The one-way pipeline, one task, no locks:
//! ring-buffer record -> decode -> enrich -> detect -> act -> publish.
//!
//! - `kernel::decode`: bytes to a typed record (a malformed one is counted and dropped).
//! - `enrich`: the record becomes events naming process and workload, plus `Fact`s.
//! - the policy engine (`policy::engine`) takes the facts (rules into the kernel, processes
//!   armed) and judges each event: detection happens before publishing, so an alert leaves
//!   right behind its cause.
//! - `act`: violations become alerts; kills the kernel did not make are made.
//! - `publish`: dressed once, counted, handed to the hub (gRPC, file, OTLP, metrics).

pub mod act;
mod audit;
pub mod enrich;
pub mod publish;

use std::time::{Duration, Instant};

use sidewall_common::refusal;
use sidewall_proto::v1::get_events_response::Event;
use tokio::sync::{mpsc, watch};

use self::{
    enrich::{Enriched, Enricher, Fact},
    publish::Publisher,
};
use crate::{
    clock::Clock,
    event,
    kernel::{
        alerts::{self, AlertLane, Drained},
        counters::KernelCounters,
        decode,
        ringbuf::{self, RingReader},
    },
    policy::engine::{Forbidden, PolicyEngine},
    runtime,
};

pub struct Pipeline {
    enrich: Enricher,
    engine: PolicyEngine,
    publish: Publisher,
    /// The enrich stage's output, reused for every record.
    scratch: Enriched,
}

impl Pipeline {
    /// Learns the namespaces of the host and of the containers already running.
    pub fn new(mut enrich: Enricher, engine: PolicyEngine, publish: Publisher) -> Self {
        let mut scratch = Enriched::default();
        enrich.learn_namespaces(&mut scratch);
        let mut p = Self { enrich, engine, publish, scratch };
        p.drain();
        p
    }

    /// Handles one raw record from the ring buffer.
    pub fn handle(&mut self, bytes: &[u8]) {
        match decode::decode(bytes) {
            Ok(rec) => {
                self.enrich.record(rec, &mut self.scratch);
                self.drain();
            }
            Err(e) => {
                self.publish.count_malformed();
                tracing::debug!(error = %e, "malformed ring buffer record");
            }
        }
    }

    /// Once a second: kernel drops, connections that never closed, the cache's exited
    /// processes, policy names learned late, and subscribers' losses.
    pub fn tick(&mut self, now: Instant, counters: &KernelCounters) {
        if let Some(lost) = self.publish.alert_drops(counters.alert_drops.totals()) {
            self.emit(lost, Clock::boot_ns());
        }
        if let Some(lost) = self.publish.kernel_drops(counters.drops.totals()) {
            self.emit(lost, Clock::boot_ns());
        }
        self.enrich.tick(now, Clock::boot_ns(), &mut self.scratch);
        self.drain();
        let found = self.engine.tick(&mut self.enrich.identity);
        self.report_established(found);
        self.publish.tick(self.enrich.cache.len(), &counters.refusals.totals());
    }

    /// Applies what the enrich stage learned, then judges and publishes its events in order.
    fn drain(&mut self) {
        let mut out = std::mem::take(&mut self.scratch);
        let found = self.engine.refresh(&mut self.enrich.identity);
        self.report_established(found);
        for fact in out.facts.drain(..) {
            self.apply(fact);
        }
        for (ev, ktime) in out.events.drain(..) {
            self.emit(ev, ktime);
        }
        self.scratch = out;
    }

    fn apply(&mut self, fact: Fact) {
        let ids = &mut self.enrich.identity;
        match fact {
            Fact::CgroupBorn(id) => self.engine.cgroup_born(id, ids),
            Fact::CgroupGone(id) => self.engine.cgroup_gone(id),
            Fact::ContainerSeen(id) => {
                let found = self.engine.container_seen(id, ids);
                self.report_established(found);
            }
            Fact::Home { cgroup, mnt } => self.engine.set_home(cgroup, mnt),
            Fact::Arm(pid) => self.engine.arm(pid),
        }
    }

    /// detect -> publish -> act: the event, then each of its alerts.
    fn emit(&mut self, event: Event, ktime: u64) {
        let ev = self.publish.dress(event, ktime);
        let violations = self.engine.detect(&ev);
        self.publish.publish(&ev);
        for v in violations {
            let mut alert = act::alert(&ev, &v);
            act::execute(&ev, &mut alert);
            let alert = self.publish.dress(Event::PolicyAlert(alert), ktime);
            self.publish.publish(&alert);
        }
    }

    /// A request of the runtime hook, answered once the container's rule is in the kernel,
    /// or the record of a container that started without it.
    pub fn runtime(&mut self, req: runtime::Request) {
        let found = self.engine.refresh(&mut self.enrich.identity);
        self.report_established(found);
        let ids = &mut self.enrich.identity;
        match req {
            runtime::Request::Prepare { req, reply } => {
                let _ = reply.send(runtime::prepare(&mut self.engine, ids, &req));
            }
            runtime::Request::Unguarded(rec) => {
                let alert = runtime::unguarded_alert(&self.engine, ids, &rec);
                let alert = self.publish.dress(Event::PolicyAlert(alert), Clock::boot_ns());
                self.publish.publish(&alert);
            }
        }
    }

    /// The refusals the kernel counted over their containers' alert budgets: one aggregated
    /// alert per container and kind, judged like a refusal of its first sample destination
    /// (same rule, same action), with the count, first and last time and the sample.
    /// Refusals that found the aggregation map full are reported per kind, without container.
    pub fn aggregated(&mut self, drained: Drained) {
        for agg in drained.aggregates {
            let ev = self.publish.dress(self.enrich.aggregated(&agg), agg.first_ns);
            let found = if agg.kind >= refusal::KILL_NAMESPACE {
                event::subject(&ev).map(|p| self.engine.kernel_kill(p, agg.kind))
            } else {
                self.engine.detect(&ev).into_iter().next()
            };
            let mut alert = match found {
                Some(v) => act::alert(&ev, &v),
                None => act::unattributed(agg.kind),
            };
            if agg.kind >= refusal::KILL_NAMESPACE && alert.action == "killed" {
                // Counted by the kernel as it killed: nothing is left for the daemon to do.
                alert.enforced_by = "kernel".into();
            }
            act::aggregate(&mut alert, &agg, &self.publish);
            let alert = self.publish.dress(Event::PolicyAlert(alert), agg.last_ns);
            self.publish.publish(&alert);
        }
        for (kind, &count) in drained.overflow.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let now = Clock::boot_ns();
            let agg = alerts::Aggregate {
                cgroup: 0,
                kind: kind as u32,
                count,
                first_ns: now,
                last_ns: now,
                sample: Vec::new(),
            };
            let mut alert = act::unattributed(agg.kind);
            act::aggregate(&mut alert, &agg, &self.publish);
            alert.message =
                format!("{} (the kernel's aggregation map was full: container unknown)", alert.message);
            let alert = self.publish.dress(Event::PolicyAlert(alert), now);
            self.publish.publish(&alert);
        }
    }

    /// Alerts for established connections a rule forbids (cut, or that would be).
    fn report_established(&mut self, found: Vec<Forbidden>) {
        for f in found {
            let ev = self.publish.dress(self.enrich.established(&f.cut), Clock::boot_ns());
            let Some(v) = self.engine.first_violation(&ev) else { continue };
            let alert = act::established(&ev, &v, &f);
            let alert = self.publish.dress(Event::PolicyAlert(alert), Clock::boot_ns());
            self.publish.publish(&alert);
        }
    }
}

/// The kernel's two lanes and the alert lane's counts.
pub struct Readers {
    /// `ALERTS`: what the kernel refused. Always read first.
    pub alerts: RingReader,
    /// `EVENTS`: everything else.
    pub events: RingReader,
    pub lane: AlertLane,
}

/// Every record on the alert lane, each after the events the kernel recorded before it (so
/// that the process and the container it names are known), but never after more than
/// `CAUSES_MAX` of them: an alert waits for its causes, not for a telemetry flood. One cut
/// short is handled at once, its process named by its pid and cgroup, and counted.
fn read_alerts(pipeline: &mut Pipeline, alerts: &mut RingReader, events: &mut RingReader) {
    alerts.read_some(usize::MAX, |bytes| {
        let (_, cut_short) =
            events.read_until(ringbuf::ktime_of(bytes), CAUSES_MAX, |earlier| pipeline.handle(earlier));
        if cut_short {
            pipeline.publish.count_alert_ahead();
        }
        pipeline.handle(bytes);
    });
}

/// Older events handled before an alert-lane record, at most. When the daemon keeps up, fewer
/// are waiting (the events ring is read every millisecond); when a flood fills the ring, an
/// alert waits for this many, not for a whole ring of them. Small, because the alert lane
/// carries every container's budget of records a second, and each may cost this many: the
/// lane must stay far ahead of what the daemon can handle, or alerts queue behind alerts.
const CAUSES_MAX: usize = 64;

/// Events handled between two looks at the alert lane.
const EVENT_BATCH: usize = 256;

/// Reads the ring buffers until `shutdown` flips, with housekeeping once a second, and serves
/// the runtime hook's requests and publishes the store's policy changes in between. The alert
/// lane goes first: it is drained whenever it has records, and again before every batch of at
/// most `EVENT_BATCH` events; each alert record only waits for the events older than itself.
pub async fn run(
    mut pipeline: Pipeline,
    readers: Readers,
    counters: KernelCounters,
    mut requests: mpsc::Receiver<runtime::Request>,
    mut changes: mpsc::Receiver<crate::policy::audit::Change>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Readers { mut alerts, mut events, mut lane } = readers;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            r = alerts.ready() => {
                r?;
                read_alerts(&mut pipeline, &mut alerts, &mut events);
            }
            _ = tick.tick() => {
                // A record that raced the switch back to sleeping waits no longer than this.
                read_alerts(&mut pipeline, &mut alerts, &mut events);
                events.read_some(EVENT_BATCH, |bytes| pipeline.handle(bytes));
                pipeline.aggregated(lane.drain());
                pipeline.tick(Instant::now(), &counters);
            }
            Some(req) = requests.recv() => pipeline.runtime(req),
            Some(change) = changes.recv() => pipeline.policy_change(change),
            r = events.ready() => {
                r?;
                read_alerts(&mut pipeline, &mut alerts, &mut events);
                events.read_some(EVENT_BATCH, |bytes| pipeline.handle(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests;
