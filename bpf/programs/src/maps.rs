//! Maps shared by every probe.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf, ring_buf::RingBufEntry},
};
use sidewall_common::{AggCount, AggKey, AlertBudget, kind, refusal, ring_mode};

/// All events to userspace. The daemon may resize it at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records lost because the ring buffer was full, per record kind. Per-CPU so that counting a
/// drop never contends; userspace sums the CPUs.
#[map]
pub static RINGBUF_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::MAX, 0);

/// What the kernel refused or killed, per `refusal::*` kind; per-CPU, summed by the daemon.
#[map]
pub static REFUSALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(refusal::MAX, 0);

/// How the daemon reads `EVENTS` (`ring_mode::*`), set by the daemon as it switches.
#[map]
pub static RING_MODE: Array<u32> = Array::with_max_entries(1, 0);

/// The flags to submit a record with. While the daemon polls the ring on a timer, a record
/// wakes it only when the ring is a quarter full: a wakeup per record would cost the daemon
/// a context switch per event under load. While it sleeps, every record wakes it.
#[inline(always)]
pub fn wakeup() -> u64 {
    let polling = RING_MODE.get(0).is_some_and(|m| *m == ring_mode::POLLING);
    if polling && EVENTS.query(BPF_RB_AVAIL_DATA.into()) * 4 < EVENTS.query(BPF_RB_RING_SIZE.into()) {
        BPF_RB_NO_WAKEUP.into()
    } else {
        BPF_RB_FORCE_WAKEUP.into()
    }
}

#[inline(always)]
pub fn count_drop(kind: u32) {
    if let Some(slot) = RINGBUF_DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_refusal(kind: u32) {
    if let Some(slot) = REFUSALS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, as for `count_drop`.
        unsafe { *slot += 1 };
    }
}

/// SIGKILL for the current task, counted as a refusal of `kind`; delivered on its way back to
/// user space, before it runs another instruction.
#[inline(always)]
pub fn kill_current(kind: u32) {
    count_refusal(kind);
    // SAFETY: signals the current task only.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal(sidewall_common::wire::SIGKILL) };
}

/// The alert lane: records of what the kernel refused, and nothing else, so that no amount
/// of telemetry can take their room. The daemon reads it before `EVENTS` and may resize it at
/// load time (`alert_ring_buffer_kb`).
#[map]
pub static ALERTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Records lost because `ALERTS` was full, per record kind (per-CPU, summed by the daemon).
#[map]
pub static ALERT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::MAX, 0);

/// The per-container budget of the alert lane (`AlertBudget`), written by the daemon.
#[map]
pub static ALERT_BUDGET: Array<AlertBudget> = Array::with_max_entries(1, 0);

/// The aggregation epoch, advanced by the daemon once a second; it drains only epochs no
/// program writes any more, so nothing is counted between its read and its delete.
#[map]
pub static ALERT_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Refusals over budget, counted per (epoch, container, kind, destination), per CPU. Its
/// memory is entries x CPUs x 24 bytes (12 MiB on 128 CPUs): a flood spraying more
/// destinations in a second than it holds is counted per kind in `ALERT_OVERFLOW`.
#[map]
pub static ALERT_AGG: PerCpuHashMap<AggKey, AggCount> = PerCpuHashMap::with_max_entries(4096, 0);

/// Refusals over budget that found `ALERT_AGG` full, per refusal kind (per-CPU, cumulative).
#[map]
pub static ALERT_OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(refusal::MAX, 0);

/// A container's token bucket on this CPU: tokens in billionths of a record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bucket {
    tokens: u64,
    last_ns: u64,
}

/// Per CPU, per cgroup: no atomics, no contention. An evicted bucket comes back full (more
/// than 4096 containers refused on one CPU recently).
#[map]
static ALERT_BUCKETS: LruPerCpuHashMap<u64, Bucket> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// One record, in bucket units.
const TOKEN: u64 = 1_000_000_000;
/// Refill is computed over at most this long (keeps `elapsed * rate` far from overflow).
const MAX_REFILL_NS: u64 = 10 * TOKEN;

/// Whether a refusal of `kind` by `cgroup` (of `port` at `addr`) may be sent individually on
/// `ALERTS`. When its container's bucket on this CPU is empty it is counted in `ALERT_AGG`
/// instead (or in `ALERT_OVERFLOW` when that map is full), and false is returned. Called after
/// the decision, before any reservation.
#[inline(always)]
pub fn alert_admit(cgroup: u64, kind: u32, addr: &[u8; 16], port: u16) -> bool {
    let Some(budget) = ALERT_BUDGET.get(0) else { return true };
    let (rate, burst) = (budget.rate, budget.burst);
    if rate == 0 {
        return true;
    }
    // SAFETY: helper without pointer arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let cap = burst * TOKEN;
    match ALERT_BUCKETS.get_ptr_mut(&cgroup) {
        Some(b) => {
            // SAFETY: this CPU's value for the key.
            let b = unsafe { &mut *b };
            let mut elapsed = now.wrapping_sub(b.last_ns);
            if elapsed > MAX_REFILL_NS {
                elapsed = MAX_REFILL_NS;
            }
            let mut tokens = b.tokens + elapsed * rate;
            if tokens > cap {
                tokens = cap;
            }
            b.last_ns = now;
            if tokens >= TOKEN {
                b.tokens = tokens - TOKEN;
                return true;
            }
            b.tokens = tokens;
        }
        None => {
            if cap >= TOKEN {
                let _ = ALERT_BUCKETS.insert(&cgroup, &Bucket { tokens: cap - TOKEN, last_ns: now }, 0);
                return true;
            }
        }
    }
    aggregate(cgroup, kind, addr, port, now);
    false
}

#[inline(always)]
fn aggregate(cgroup: u64, kind: u32, addr: &[u8; 16], port: u16, now: u64) {
    let epoch = ALERT_EPOCH.get(0).copied().unwrap_or(0);
    let key = AggKey { cgroup, addr: *addr, epoch, kind: kind as u16, port };
    match ALERT_AGG.get_ptr_mut(&key) {
        Some(v) => {
            // SAFETY: this CPU's value for the key; another CPU's insert leaves it zeroed.
            let v = unsafe { &mut *v };
            if v.count == 0 {
                v.first_ns = now;
            }
            v.count += 1;
            v.last_ns = now;
        }
        None => {
            if ALERT_AGG.insert(&key, &AggCount { count: 1, first_ns: now, last_ns: now }, 0).is_err()
                && let Some(slot) = ALERT_OVERFLOW.get_ptr_mut(kind)
            {
                // SAFETY: per-CPU slot, as for `count_drop`.
                unsafe { *slot += 1 };
            }
        }
    }
}

/// Which ring a record goes on: telemetry, or the alert lane (records of refusals and kills,
/// already admitted by `alert_admit`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Events,
    Alerts,
}

/// The lane of the record of a process: `Events`, unless the kernel killed it for `kill`
/// (a `refusal::KILL_*`), in which case the alert lane within its container's budget, so that
/// no telemetry flood can take the room of a kill's record; None when over budget (the kill
/// is then counted in `ALERT_AGG` and reported as an aggregated alert).
#[inline(always)]
pub fn record_lane(cgroup: u64, kill: Option<u32>) -> Option<Lane> {
    match kill {
        None => Some(Lane::Events),
        Some(k) => alert_admit(cgroup, k, &[0; 16], 0).then_some(Lane::Alerts),
    }
}

/// Reserves a `T` on the ring of `lane`; a full ring counts a drop of record `kind` (in
/// `ALERT_DROPS` for the alert lane).
#[inline(always)]
pub fn reserve<T: 'static>(lane: Lane, kind: u32) -> Option<RingBufEntry<T>> {
    let ring: &RingBuf = if lane == Lane::Alerts { &ALERTS } else { &EVENTS };
    let entry = ring.reserve::<T>(0);
    if entry.is_none() {
        if lane == Lane::Alerts {
            count_alert_drop(kind);
        } else {
            count_drop(kind);
        }
    }
    entry
}

/// The flags to submit a record of `lane` with: the alert lane is never polled, each of its
/// records wakes the reader (the budget bounds them).
#[inline(always)]
pub fn submit_flags(lane: Lane) -> u64 {
    if lane == Lane::Alerts { 0 } else { wakeup() }
}

#[inline(always)]
pub fn count_alert_drop(kind: u32) {
    if let Some(slot) = ALERT_DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, as for `count_drop`.
        unsafe { *slot += 1 };
    }
}
