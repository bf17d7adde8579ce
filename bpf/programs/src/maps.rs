//! Maps shared by every probe.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use sidewall_common::{kind, refusal, ring_mode};

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
