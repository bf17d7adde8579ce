//! Maps shared by every probe.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use sidewall_common::kind;

/// All events to userspace. The daemon may resize it at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records lost because the ring buffer was full, per record kind. Per-CPU so that counting a
/// drop never contends; userspace sums the CPUs.
#[map]
pub static RINGBUF_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::MAX, 0);

#[inline(always)]
pub fn count_drop(kind: u32) {
    if let Some(slot) = RINGBUF_DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}
