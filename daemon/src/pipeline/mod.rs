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

use sidewall_proto::v1::get_events_response::Event;
use tokio::sync::{mpsc, watch};

use self::{
    enrich::{Enriched, Enricher, Fact},
    publish::Publisher,
};
use crate::{
    clock::Clock,
    kernel::{counters::KernelCounters, decode, ringbuf::RingReader},
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
            let alert = act::alert(&ev, &v);
            act::execute(&ev, &alert);
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

/// Reads the ring buffer until `shutdown` flips, with housekeeping once a second; serves the
/// runtime hook's requests and publishes the policy changes queued by the store in between.
pub async fn run(
    mut pipeline: Pipeline,
    mut reader: RingReader,
    counters: KernelCounters,
    mut requests: mpsc::Receiver<runtime::Request>,
    mut changes: mpsc::Receiver<crate::policy::audit::Change>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = reader.read_batch(|bytes| pipeline.handle(bytes)) => { r?; }
            Some(req) = requests.recv() => pipeline.runtime(req),
            _ = tick.tick() => {
                // A record that raced the switch back to sleeping waits no longer than this.
                reader.read_now(|bytes| pipeline.handle(bytes));
                pipeline.tick(Instant::now(), &counters);
            }
            Some(change) = changes.recv() => pipeline.policy_change(change),
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
