//! Fan-out of events to subscribers (gRPC streams, exporters). Each subscriber has its own
//! bounded queue and filter. Publishing never waits: when a queue is full the event is
//! counted as lost for that subscriber, and a `lost_events` record is queued ahead of the next
//! event it can take. A slow subscriber therefore never stalls the reader or anyone else.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use sidewall_proto::v1::{self as pb, get_events_response::Event};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::filter::EventFilter;
use crate::{
    clock::Clock,
    event::Shared,
    stats::{Stage, Stats},
};

pub struct Subscriber {
    pub name: String,
    stage: Stage,
    filter: EventFilter,
    tx: mpsc::Sender<Shared>,
    /// Lost since the last lost_events record this subscriber received.
    pending_lost: AtomicU64,
    pub delivered: AtomicU64,
    pub lost: AtomicU64,
}

pub struct Hub {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    stats: Arc<Stats>,
    node_name: String,
    clock: Clock,
}

impl Hub {
    pub fn new(stats: Arc<Stats>, node_name: String, clock: Clock) -> Self {
        Self { subscribers: Mutex::new(Vec::new()), stats, node_name, clock }
    }

    /// Registers a subscriber; it is removed when its receiver is dropped.
    pub fn subscribe(
        &self,
        name: impl Into<String>,
        stage: Stage,
        filter: EventFilter,
        capacity: usize,
    ) -> (Arc<Subscriber>, mpsc::Receiver<Shared>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sub = Arc::new(Subscriber {
            name: name.into(),
            stage,
            filter,
            tx,
            pending_lost: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        self.lock().push(sub.clone());
        (sub, rx)
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }

    /// Hands `ev` to every subscriber whose filter matches it.
    pub fn publish(&self, ev: &Shared) {
        let mut subs = self.lock();
        subs.retain(|s| self.offer(s, ev));
    }

    /// Tells subscribers that have room again how many events they lost, without waiting for
    /// their next event (there may be none for a long time). Called periodically.
    pub fn report_losses(&self) {
        let mut subs = self.lock();
        subs.retain(|s| self.send_pending(s).is_ok() || !s.tx.is_closed());
    }

    /// Queues the pending loss count, if any. Err when the queue is still full or closed.
    fn send_pending(&self, s: &Subscriber) -> Result<(), TrySendError<Shared>> {
        let pending = s.pending_lost.load(Relaxed);
        if pending == 0 {
            return Ok(());
        }
        s.tx.try_send(self.lost_record(s.stage, pending))?;
        s.pending_lost.store(0, Relaxed);
        Ok(())
    }

    /// Returns false when the subscriber has gone away.
    fn offer(&self, s: &Subscriber, ev: &Shared) -> bool {
        if !s.filter.matches(ev) {
            return !s.tx.is_closed();
        }
        match self.send_pending(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return self.drop_one(s),
            Err(TrySendError::Closed(_)) => return false,
        }
        match s.tx.try_send(ev.clone()) {
            Ok(()) => {
                s.delivered.fetch_add(1, Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => self.drop_one(s),
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn drop_one(&self, s: &Subscriber) -> bool {
        s.pending_lost.fetch_add(1, Relaxed);
        s.lost.fetch_add(1, Relaxed);
        self.stats.count_lost(s.stage, 1);
        true
    }

    fn lost_record(&self, stage: Stage, count: u64) -> Shared {
        Arc::new(pb::GetEventsResponse {
            event: Some(Event::LostEvents(pb::LostEvents {
                stage: stage.name().into(),
                count,
                ..Default::default()
            })),
            node_name: self.node_name.clone(),
            time: Some(self.clock.timestamp(Clock::boot_ns())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Subscriber>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep serving.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pid: u32) -> Shared {
        Arc::new(pb::GetEventsResponse {
            event: Some(Event::ProcessExec(pb::ProcessExec {
                process: Some(pb::Process { pid, ..Default::default() }),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    fn pid_of(e: &Shared) -> Option<u32> {
        crate::event::subject(e).map(|p| p.pid)
    }

    #[test]
    fn full_queue_counts_losses_and_reports_them_in_band() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(stats.clone(), "n1".into(), Clock::new());
        let (slow, mut slow_rx) = hub.subscribe("slow", Stage::SubscriberQueue, EventFilter::default(), 2);
        let (_fast, mut fast_rx) = hub.subscribe("fast", Stage::SubscriberQueue, EventFilter::default(), 100);
        for pid in 1..=5 {
            hub.publish(&ev(pid));
        }
        // The fast subscriber got everything despite the slow one.
        let fast: Vec<_> = std::iter::from_fn(|| fast_rx.try_recv().ok()).map(|e| pid_of(&e)).collect();
        assert_eq!(fast, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
        assert_eq!(slow.lost.load(Relaxed), 3);
        assert_eq!(stats.lost(Stage::SubscriberQueue), 3);
        assert_eq!(pid_of(&slow_rx.try_recv().expect("1")), Some(1));
        assert_eq!(pid_of(&slow_rx.try_recv().expect("2")), Some(2));
        // Room again: the next event is preceded by the count of what was lost.
        hub.publish(&ev(6));
        let lost = slow_rx.try_recv().expect("lost record");
        match &lost.event {
            Some(Event::LostEvents(l)) => assert_eq!((l.stage.as_str(), l.count), ("subscriber_queue", 3)),
            other => panic!("expected lost_events, got {other:?}"),
        }
        assert_eq!(pid_of(&slow_rx.try_recv().expect("6")), Some(6));
    }

    #[test]
    fn losses_are_reported_when_room_returns_even_without_new_events() {
        let hub = Hub::new(Arc::new(Stats::default()), "n1".into(), Clock::new());
        let (_s, mut rx) = hub.subscribe("slow", Stage::SubscriberQueue, EventFilter::default(), 1);
        hub.publish(&ev(1));
        hub.publish(&ev(2));
        hub.report_losses(); // still full: nothing to do
        assert_eq!(pid_of(&rx.try_recv().expect("1")), Some(1));
        hub.report_losses();
        match &rx.try_recv().expect("lost record").event {
            Some(Event::LostEvents(l)) => assert_eq!(l.count, 1),
            other => panic!("expected lost_events, got {other:?}"),
        }
    }

    #[test]
    fn dropped_receivers_are_removed() {
        let hub = Hub::new(Arc::new(Stats::default()), "n1".into(), Clock::new());
        let (_s, rx) = hub.subscribe("gone", Stage::SubscriberQueue, EventFilter::default(), 4);
        drop(rx);
        hub.publish(&ev(1));
        assert_eq!(hub.subscriber_count(), 0);
    }
}
