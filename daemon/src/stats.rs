//! Counters every stage updates and `GetStatus` (and later /metrics) reads. Lock-free.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use sidewall_proto::v1::EventType;

use crate::{
    event::kind_name,
    kernel::{counters::REFUSALS, decode::refusal_name},
};

/// Where in the pipeline an event can be lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The kernel could not reserve ring buffer space.
    KernelRingbuf,
    /// A malformed record.
    Decode,
    /// A gRPC client's queue was full.
    SubscriberQueue,
    /// The JSON-lines exporter's queue was full, or writing failed.
    ExportFile,
    /// The OTLP exporter's queue was full, or the collector refused a batch.
    Otlp,
    /// A policy change could not be queued for its `policy_change` event.
    PolicyAudit,
    /// The kernel's alert ring buffer (`ALERTS`) was full.
    KernelAlertRingbuf,
    /// A consumer's alert queue (policy alerts and loss reports) was full.
    AlertQueue,
    /// An Alertmanager output's queue was full, or Alertmanager refused a batch after retries.
    Alertmanager,
    /// The syslog output's queue was full, or the server refused a batch after retries.
    Syslog,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::KernelRingbuf,
        Stage::Decode,
        Stage::SubscriberQueue,
        Stage::ExportFile,
        Stage::Otlp,
        Stage::PolicyAudit,
        Stage::KernelAlertRingbuf,
        Stage::AlertQueue,
        Stage::Alertmanager,
        Stage::Syslog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::KernelRingbuf => "kernel_ringbuf",
            Stage::Decode => "decode",
            Stage::SubscriberQueue => "subscriber_queue",
            Stage::ExportFile => "export_file",
            Stage::Otlp => "otlp",
            Stage::PolicyAudit => "policy_audit",
            Stage::KernelAlertRingbuf => "kernel_alert_ringbuf",
            Stage::AlertQueue => "alert_queue",
            Stage::Alertmanager => "alertmanager",
            Stage::Syslog => "syslog",
        }
    }
}

const KINDS: usize = EventType::PolicyChange as usize + 1;

pub struct Stats {
    pub started: Instant,
    events: [AtomicU64; KINDS],
    lost: [AtomicU64; Stage::ALL.len()],
    pub process_cache_size: AtomicU64,
    /// Alert-lane records handled before all the events the kernel recorded ahead of them.
    pub alerts_ahead_of_causes: AtomicU64,
    /// What the kernel refused or killed, by `refusal` kind, as of the last tick.
    kernel_refusals: [AtomicU64; REFUSALS],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            lost: std::array::from_fn(|_| AtomicU64::new(0)),
            process_cache_size: AtomicU64::new(0),
            alerts_ahead_of_causes: AtomicU64::new(0),
            kernel_refusals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    pub fn count_event(&self, k: EventType) {
        if let Some(c) = self.events.get(k as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn set_kernel_refusals(&self, totals: &[u64; REFUSALS]) {
        for (slot, n) in self.kernel_refusals.iter().zip(totals) {
            slot.store(*n, Relaxed);
        }
    }

    /// What the kernel refused or killed since the programs were loaded, by kind.
    pub fn kernel_refusals(&self) -> Vec<(&'static str, u64)> {
        self.kernel_refusals
            .iter()
            .enumerate()
            .map(|(k, n)| (refusal_name(k as u32), n.load(Relaxed)))
            .collect()
    }

    pub fn count_lost(&self, stage: Stage, n: u64) {
        self.lost[stage as usize].fetch_add(n, Relaxed);
    }

    pub fn lost(&self, stage: Stage) -> u64 {
        self.lost[stage as usize].load(Relaxed)
    }

    /// (kind name, count) for every kind seen at least once.
    pub fn events_by_kind(&self) -> Vec<(&'static str, u64)> {
        (0..KINDS as i32)
            .filter_map(|i| {
                let k = EventType::try_from(i).ok()?;
                let n = self.events[i as usize].load(Relaxed);
                (n > 0).then(|| (kind_name(k), n))
            })
            .collect()
    }

    pub fn lost_by_stage(&self) -> Vec<(&'static str, u64)> {
        Stage::ALL.iter().map(|s| (s.name(), self.lost(*s))).collect()
    }
}
