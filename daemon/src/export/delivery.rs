//! Delivery to an output that takes batches over the network (Alertmanager, syslog): its own
//! subscription on the hub (bounded queues: what does not fit is counted as lost at the
//! output's stage), batches of what is queued, retries with exponential backoff, and a batch
//! still refused after the last retry counted as lost. One output that is down only fills its
//! own queue: the pipeline never waits for it, nor does any other consumer.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use sidewall_proto::v1 as pb;

use super::{
    filter::EventFilter,
    hub::{Hub, Receiver, Subscriber},
};
use crate::stats::{Stage, Stats};

/// Most events handed to an output in one call.
pub const BATCH: usize = 256;
/// One send (connect included) that takes longer has failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries of a batch: `attempts` after the first, waiting `first`, then twice as long each
/// time up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Retry {
    pub fn new(attempts: u32) -> Self {
        Self { attempts, first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }

    /// The wait before retry number `n` (0-based).
    fn backoff(&self, n: u32) -> Duration {
        self.first.saturating_mul(1u32 << n.min(16)).min(self.max)
    }
}

/// An output's health, as status and /metrics show it.
pub struct Health {
    pub sent: AtomicU64,
    /// Events of batches refused after the last retry.
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Its hub subscription: events its full queue lost.
    subscriber: Arc<Subscriber>,
}

impl Health {
    /// Everything this output lost: its queue overflowed, or its destination refused.
    pub fn lost(&self) -> u64 {
        self.subscriber.lost.load(Relaxed) + self.failed.load(Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// Where events go: which of them, in what form, and how a batch is sent.
pub trait Output: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    /// The event in this output's form; None when it does not carry this event.
    fn item(&self, ev: &pb::GetEventsResponse) -> Option<Self::Item>;
    /// Sends a batch; Err says why it was refused.
    fn send(&mut self, batch: &[Self::Item]) -> impl Future<Output = Result<(), String>> + Send;
}

/// What an output takes from the hub, and how hard it tries.
pub struct Plan<'a> {
    pub name: &'a str,
    /// Where its losses are counted.
    pub stage: Stage,
    pub filter: EventFilter,
    /// Events queued for it at most.
    pub queue: usize,
    pub retry: Retry,
}

/// Subscribes `output` to the hub as `plan` says and delivers until the hub goes away.
pub fn start<O: Output>(hub: &Hub, plan: Plan<'_>, stats: Arc<Stats>, output: O) -> Arc<Health> {
    let Plan { name, stage, filter, queue, retry } = plan;
    let (subscriber, rx) = hub.subscribe(name, stage, filter, queue);
    let health = Arc::new(Health {
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        last_error: Mutex::new(None),
        subscriber,
    });
    let ctx = Ctx { name: name.to_string(), stage, retry, stats, health: health.clone() };
    tokio::spawn(run(rx, output, ctx));
    health
}

struct Ctx {
    name: String,
    stage: Stage,
    retry: Retry,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

async fn run<O: Output>(mut rx: Receiver, mut output: O, ctx: Ctx) {
    let mut batch = Vec::with_capacity(BATCH);
    // Wait for one event, then take what is already queued behind it: no timer delays an
    // alert, and a burst still goes out in few requests.
    while let Some(ev) = rx.recv().await {
        batch.extend(output.item(&ev));
        while batch.len() < BATCH {
            let Ok(ev) = rx.try_recv() else { break };
            batch.extend(output.item(&ev));
        }
        if !batch.is_empty() {
            deliver(&mut output, &batch, &ctx).await;
            batch.clear();
        }
    }
}

/// Sends `batch`, retrying with backoff; counts it as sent or lost.
async fn deliver<O: Output>(output: &mut O, batch: &[O::Item], ctx: &Ctx) {
    let n = batch.len() as u64;
    let mut attempt = 0;
    loop {
        let result = match tokio::time::timeout(SEND_TIMEOUT, output.send(batch)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer in {SEND_TIMEOUT:?}")),
        };
        match result {
            Ok(()) => {
                ctx.health.sent.fetch_add(n, Relaxed);
                ctx.health.set_error(None);
                return;
            }
            Err(e) if attempt < ctx.retry.attempts => {
                tracing::debug!(output = %ctx.name, error = %e, attempt, "delivery failed; retrying");
                ctx.health.set_error(Some(e));
                ctx.health.retries.fetch_add(1, Relaxed);
                tokio::time::sleep(ctx.retry.backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(output = %ctx.name, error = %e, events = n, "delivery failed after retries; events lost");
                ctx.health.set_error(Some(e));
                ctx.health.failed.fetch_add(n, Relaxed);
                ctx.stats.count_lost(ctx.stage, n);
                return;
            }
        }
    }
}

/// Status of an output: "ok" or "failing" with the last error, sent and lost.
pub fn status(name: &str, target: &str, h: &Health) -> pb::ExporterStatus {
    let last_error = h.last_error();
    pb::ExporterStatus {
        name: name.into(),
        state: if last_error.is_some() { "failing" } else { "ok" }.into(),
        detail: last_error.map_or_else(|| target.to_string(), |e| format!("{target}: {e}")),
        events: h.sent.load(Relaxed),
        lost: h.lost(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = Retry::new(5);
        let waits: Vec<_> = (0..8).map(|n| r.backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    /// Refuses the first `refuse` sends, then takes everything.
    struct Flaky {
        refuse: u32,
        got: Arc<Mutex<Vec<u32>>>,
    }

    impl Output for Flaky {
        type Item = u32;
        fn item(&self, ev: &pb::GetEventsResponse) -> Option<u32> {
            Some(ev.node_name.len() as u32)
        }
        async fn send(&mut self, batch: &[u32]) -> Result<(), String> {
            if self.refuse > 0 {
                self.refuse -= 1;
                return Err("refused".into());
            }
            self.got.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(batch);
            Ok(())
        }
    }

    fn ev(node: &str) -> crate::event::Shared {
        Arc::new(pb::GetEventsResponse { node_name: node.into(), ..Default::default() })
    }

    async fn settle(h: &Health, done: impl Fn(&Health) -> bool) {
        while !done(h) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_refused_batch_is_retried_then_counted_lost() {
        let stats = Arc::new(Stats::default());
        let hub = Hub::new(stats.clone(), "n".into(), Clock::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let retry = Retry { attempts: 2, first: Duration::from_millis(1), max: Duration::from_millis(1) };
        // Three refusals: the first batch is lost after two retries, the next one goes through.
        let out = Flaky { refuse: 3, got: got.clone() };
        let plan =
            Plan { name: "t", stage: Stage::Alertmanager, filter: EventFilter::default(), queue: 8, retry };
        let h = start(&hub, plan, stats.clone(), out);
        hub.publish(&ev("a"));
        settle(&h, |h| h.failed.load(Relaxed) == 1).await;
        assert_eq!((h.retries.load(Relaxed), stats.lost(Stage::Alertmanager)), (2, 1));
        assert!(h.last_error().is_some());
        hub.publish(&ev("bbb"));
        settle(&h, |h| h.sent.load(Relaxed) == 1).await;
        assert_eq!(*got.lock().unwrap_or_else(|e| e.into_inner()), [3]);
        assert_eq!((h.last_error(), h.lost()), (None, 1));
    }
}
