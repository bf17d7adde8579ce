//! Fan-out of events to subscribers (gRPC streams, exporters). Each subscriber has its own
//! bounded queue and filter. Publishing never waits: when a queue is full the event is
//! counted as lost for that subscriber, and a `lost_events` record is queued ahead of the next
//! event it can take. A slow subscriber therefore never stalls the reader or anyone else.
//!
//! The alert lane: every subscriber has a second bounded queue, for policy alerts and loss
//! reports only, which its `Receiver` drains first. No amount of telemetry can fill it; a
//! full alert queue is counted at its own stage (`alert_queue`) and reported on that queue.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use sidewall_proto::v1::{self as pb, get_events_response::Event};
use tokio::sync::mpsc::{
    self,
    error::{TryRecvError, TrySendError},
};

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
    /// The alert lane: policy alerts and lost_events records.
    alerts: mpsc::Sender<Shared>,
    /// Lost since the last lost_events record this subscriber received.
    pending_lost: AtomicU64,
    /// Alerts lost (alert queue full) since the last report of them.
    pending_alerts_lost: AtomicU64,
    pub delivered: AtomicU64,
    pub lost: AtomicU64,
}

pub struct Hub {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    stats: Arc<Stats>,
    node_name: String,
    clock: Clock,
    /// Capacity of each subscriber's alert queue.
    alert_capacity: usize,
    /// Everything published, in publish order (subscribers see alerts first): lets the
    /// pipeline's tests check the order the pipeline publishes in.
    #[cfg(test)]
    pub published: Mutex<Vec<Shared>>,
}

/// Default capacity of each subscriber's alert queue.
pub const ALERT_QUEUE: usize = 4096;

/// Whether `ev` travels on the alert lane.
pub fn is_alert(ev: &pb::GetEventsResponse) -> bool {
    matches!(ev.event, Some(Event::PolicyAlert(_)) | Some(Event::LostEvents(_)))
}

/// A subscriber's two queues; alerts come out first.
pub struct Receiver {
    alerts: mpsc::Receiver<Shared>,
    events: mpsc::Receiver<Shared>,
}

impl Receiver {
    /// The next alert if any, else the next event; None once the hub dropped the subscriber
    /// and both queues are empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Shared>> {
        if let Poll::Ready(Some(ev)) = self.alerts.poll_recv(cx) {
            return Poll::Ready(Some(ev));
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(None) => Poll::Ready(self.alerts.try_recv().ok()),
            other => other,
        }
    }

    pub async fn recv(&mut self) -> Option<Shared> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn try_recv(&mut self) -> Result<Shared, TryRecvError> {
        self.alerts.try_recv().or_else(|_| self.events.try_recv())
    }
}

impl tokio_stream::Stream for Receiver {
    type Item = Shared;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Shared>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Hub {
    pub fn new(stats: Arc<Stats>, node_name: String, clock: Clock) -> Self {
        Self {
            subscribers: Mutex::new(Vec::new()),
            stats,
            node_name,
            clock,
            alert_capacity: ALERT_QUEUE,
            #[cfg(test)]
            published: Mutex::new(Vec::new()),
        }
    }

    /// Sets the capacity of each subscriber's alert queue (`alert_queue`).
    pub fn with_alert_queue(mut self, capacity: usize) -> Self {
        self.alert_capacity = capacity.max(1);
        self
    }

    /// Registers a subscriber; it is removed when its receiver is dropped.
    pub fn subscribe(
        &self,
        name: impl Into<String>,
        stage: Stage,
        filter: EventFilter,
        capacity: usize,
    ) -> (Arc<Subscriber>, Receiver) {
        let (tx, events) = mpsc::channel(capacity.max(1));
        let (alerts_tx, alerts) = mpsc::channel(self.alert_capacity);
        let sub = Arc::new(Subscriber {
            name: name.into(),
            stage,
            filter,
            tx,
            alerts: alerts_tx,
            pending_lost: AtomicU64::new(0),
            pending_alerts_lost: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        self.lock().push(sub.clone());
        (sub, Receiver { alerts, events })
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
    }

    /// Hands `ev` to every subscriber whose filter matches it.
    pub fn publish(&self, ev: &Shared) {
        #[cfg(test)]
        self.published.lock().unwrap_or_else(|e| e.into_inner()).push(ev.clone());
        let mut subs = self.lock();
        subs.retain(|s| self.offer(s, ev));
    }

    /// Tells subscribers that have room again how many events they lost, without waiting for
    /// their next event (there may be none for a long time). Called periodically.
    pub fn report_losses(&self) {
        let mut subs = self.lock();
        subs.retain(|s| self.send_pending(s).is_ok() || !s.tx.is_closed());
    }

    /// Queues the pending loss counts, if any, on the alert lane: alerts lost, then events
    /// lost once the event queue has room again (a report per lost event would only flood
    /// the alert lane). Err when the alert queue is still full or closed.
    fn send_pending(&self, s: &Subscriber) -> Result<(), TrySendError<Shared>> {
        let events_room = s.tx.capacity() > 0;
        for (pending, stage, now) in
            [(&s.pending_alerts_lost, Stage::AlertQueue, true), (&s.pending_lost, s.stage, events_room)]
        {
            let n = pending.load(Relaxed);
            if n == 0 || !now {
                continue;
            }
            s.alerts.try_send(self.lost_record(stage, n))?;
            pending.fetch_sub(n, Relaxed);
        }
        Ok(())
    }

    /// Returns false when the subscriber has gone away.
    fn offer(&self, s: &Subscriber, ev: &Shared) -> bool {
        if !s.filter.matches(ev) {
            return !s.tx.is_closed();
        }
        if is_alert(ev) {
            return self.offer_alert(s, ev);
        }
        match s.tx.try_send(ev.clone()) {
            Ok(()) => {
                s.delivered.fetch_add(1, Relaxed);
                // Room again: what was lost before is reported now (on the alert lane).
                !matches!(self.send_pending(s), Err(TrySendError::Closed(_)))
            }
            Err(TrySendError::Full(_)) => self.drop_one(s),
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// An alert goes on the alert queue, behind any loss reports still pending.
    fn offer_alert(&self, s: &Subscriber, ev: &Shared) -> bool {
        let sent = match self.send_pending(s) {
            Ok(()) => s.alerts.try_send(ev.clone()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                s.delivered.fetch_add(1, Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                s.pending_alerts_lost.fetch_add(1, Relaxed);
                s.lost.fetch_add(1, Relaxed);
                self.stats.count_lost(Stage::AlertQueue, 1);
                true
            }
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

    fn alert(rule: &str) -> Shared {
        Arc::new(pb::GetEventsResponse {
            event: Some(Event::PolicyAlert(pb::PolicyAlert { rule_id: rule.into(), ..Default::default() })),
            ..Default::default()
        })
    }

    fn rule_of(e: &Shared) -> Option<&str> {
        match &e.event {
            Some(Event::PolicyAlert(a)) => Some(a.rule_id.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_flood_of_events_cannot_push_out_an_alert_and_alerts_come_out_first() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(stats.clone(), "n1".into(), Clock::new()).with_alert_queue(4);
        let (_s, mut rx) = hub.subscribe("slow", Stage::SubscriberQueue, EventFilter::default(), 8);
        for pid in 1..=1000 {
            hub.publish(&ev(pid));
        }
        hub.publish(&alert("port-squatting"));
        assert_eq!(stats.lost(Stage::SubscriberQueue), 992);
        assert_eq!(stats.lost(Stage::AlertQueue), 0);
        // The alert first, although it came last.
        assert_eq!(rule_of(&rx.try_recv().expect("alert")), Some("port-squatting"));
        assert_eq!(pid_of(&rx.try_recv().expect("1")), Some(1));
    }

    #[test]
    fn a_full_alert_queue_is_counted_at_its_own_stage_and_reported() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(stats.clone(), "n1".into(), Clock::new()).with_alert_queue(2);
        let (_s, mut rx) = hub.subscribe("s", Stage::SubscriberQueue, EventFilter::default(), 8);
        for _ in 0..5 {
            hub.publish(&alert("egress"));
        }
        assert_eq!(stats.lost(Stage::AlertQueue), 3);
        assert_eq!(stats.lost(Stage::SubscriberQueue), 0);
        assert_eq!(rule_of(&rx.try_recv().expect("1")), Some("egress"));
        assert_eq!(rule_of(&rx.try_recv().expect("2")), Some("egress"));
        hub.report_losses();
        match &rx.try_recv().expect("lost record").event {
            Some(Event::LostEvents(l)) => assert_eq!((l.stage.as_str(), l.count), ("alert_queue", 3)),
            other => panic!("expected lost_events, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn recv_waits_on_both_queues_and_ends_when_the_hub_drops_the_subscriber() {
        let hub = Hub::new(Arc::new(Stats::default()), "n1".into(), Clock::new());
        let (_s, mut rx) = hub.subscribe("s", Stage::SubscriberQueue, EventFilter::default(), 8);
        hub.publish(&ev(1));
        hub.publish(&alert("egress"));
        assert_eq!(rule_of(&rx.recv().await.expect("alert")), Some("egress"));
        assert_eq!(pid_of(&rx.recv().await.expect("event")), Some(1));
        drop(_s);
        hub.lock().clear();
        assert!(rx.recv().await.is_none());
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
