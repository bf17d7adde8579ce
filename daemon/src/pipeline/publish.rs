//! The publish stage: an event is dressed once (node, time), counted, observed by the
//! metrics, and handed to the hub, which fans it out to the gRPC streams and the exporters.

use std::sync::Arc;

use sidewall_common::kind;
use sidewall_proto::v1::{self as pb, get_events_response::Event};

use crate::{
    clock::Clock,
    event::{self, Shared},
    export::{hub::Hub, metrics::Metrics},
    kernel::{counters::REFUSALS, decode::record_kind_name},
    stats::{Stage, Stats},
};

pub struct Publisher {
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    metrics: Option<Arc<Metrics>>,
    clock: Clock,
    node_name: String,
    kernel_drops_reported: [u64; kind::MAX as usize],
    alert_drops_reported: [u64; kind::MAX as usize],
}

impl Publisher {
    pub fn new(
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        metrics: Option<Arc<Metrics>>,
        clock: Clock,
        node_name: String,
    ) -> Self {
        Self {
            hub,
            stats,
            metrics,
            clock,
            node_name,
            kernel_drops_reported: [0; kind::MAX as usize],
            alert_drops_reported: [0; kind::MAX as usize],
        }
    }

    /// The event as every consumer sees it. `ktime`: boot-time ns when the kernel saw it,
    /// which becomes its `time`.
    pub fn dress(&self, event: Event, ktime: u64) -> Shared {
        Arc::new(pb::GetEventsResponse {
            event: Some(event),
            node_name: self.node_name.clone(),
            time: Some(self.clock.timestamp(ktime)),
        })
    }

    /// Wall time of a boot-time ns.
    pub fn timestamp(&self, ktime: u64) -> sidewall_proto::Timestamp {
        self.clock.timestamp(ktime)
    }

    pub fn publish(&self, ev: &Shared) {
        self.stats.count_event(event::kind(ev));
        if let Some(m) = &self.metrics {
            m.observe(ev);
        }
        self.hub.publish(ev);
    }

    /// An alert handled before all the events recorded ahead of it (a flood filled `EVENTS`).
    pub fn count_alert_ahead(&self) {
        self.stats.alerts_ahead_of_causes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count_malformed(&self) {
        self.stats.count_lost(Stage::Decode, 1);
    }

    /// A lost_events event when the kernel counted new ring-buffer drops.
    pub fn kernel_drops(&mut self, totals: [u64; kind::MAX as usize]) -> Option<Event> {
        let lost = drops(Stage::KernelRingbuf, &totals, &mut self.kernel_drops_reported)?;
        self.stats.count_lost(Stage::KernelRingbuf, lost.count);
        tracing::warn!(count = lost.count, "kernel ring buffer full: events lost");
        Some(Event::LostEvents(lost))
    }

    /// The same for the alert lane's ring buffer (`ALERTS`).
    pub fn alert_drops(&mut self, totals: [u64; kind::MAX as usize]) -> Option<Event> {
        let lost = drops(Stage::KernelAlertRingbuf, &totals, &mut self.alert_drops_reported)?;
        self.stats.count_lost(Stage::KernelAlertRingbuf, lost.count);
        tracing::warn!(count = lost.count, "kernel alert ring buffer full: alerts lost");
        Some(Event::LostEvents(lost))
    }

    /// Once a second: subscribers that lost events hear of it; the cache size and the kernel's
    /// refusals are reported.
    pub fn tick(&self, process_cache_size: usize, refusals: &[u64; REFUSALS]) {
        self.hub.report_losses();
        self.stats.set_kernel_refusals(refusals);
        self.stats.process_cache_size.store(process_cache_size as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// New drops since `reported` (updated), by record kind, as a lost_events record of `stage`.
fn drops(
    stage: Stage,
    totals: &[u64; kind::MAX as usize],
    reported: &mut [u64; kind::MAX as usize],
) -> Option<pb::LostEvents> {
    let mut by_kind = std::collections::HashMap::new();
    let mut count = 0;
    for (k, (&now, seen)) in totals.iter().zip(reported.iter_mut()).enumerate() {
        let delta = now.saturating_sub(*seen);
        *seen = now;
        if delta > 0 {
            count += delta;
            by_kind.insert(record_kind_name(k as u32).to_string(), delta);
        }
    }
    (count > 0).then(|| pb::LostEvents { stage: stage.name().into(), count, by_kind })
}
