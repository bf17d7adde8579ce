//! The one filler of `SockEvent` records, shared by the cgroup socket hooks (`sock_addr.rs`,
//! `sock_bind.rs`) and sock_ops (`sock_ops.rs`). Every field is written in place in the
//! ring-buffer reservation: first the common part (header, op, cookies, and zero or the
//! neutral value for the rest), then what the hook knows.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
};
use sidewall_common::{SockEvent, fin, kind, verdict};

use crate::{
    kernel::{fill_current, fill_no_process, fill_process_lite},
    maps::{reserve, submit_flags},
};

/// Who the record's header describes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The current task, with its parent and namespaces (a hook in the caller's context
    /// that may read the task).
    Task,
    /// The current task's ids only (no kernel memory reads).
    Lite,
    /// No process: softirq and timers (`flags::NO_PROCESS`).
    None,
}

pub use crate::maps::Lane;

/// Reserves a `SockEvent`, fills the fields every hook fills alike, lets `fill` set the
/// hook's own, and submits it. A full ring buffer counts a drop of `kind::SOCK`.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, caller: Caller, op: u32, fill: impl FnOnce(&mut SockEvent)) {
    emit_on(ctx, Lane::Events, caller, op, fill)
}

/// `emit` on the ring of `lane`; a full alert ring counts in `ALERT_DROPS`.
#[inline(always)]
pub fn emit_on<C: EbpfContext>(
    ctx: &C,
    lane: Lane,
    caller: Caller,
    op: u32,
    fill: impl FnOnce(&mut SockEvent),
) {
    let Some(mut entry) = reserve::<SockEvent>(lane, kind::SOCK) else { return };
    // SAFETY: reservation of exactly size_of::<SockEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    match caller {
        Caller::Task => {
            // SAFETY: helper without pointer arguments.
            let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
            fill_current(&mut ev.hdr, kind::SOCK, task);
        }
        Caller::Lite => fill_process_lite(&mut ev.hdr, kind::SOCK),
        Caller::None => fill_no_process(&mut ev.hdr, kind::SOCK),
    }
    ev.op = op;
    ev.family = 0;
    ev.protocol = 0;
    ev.verdict = verdict::ALLOWED;
    // SAFETY: helpers take the program context.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    ev.local_port = 0;
    ev.remote_port = 0;
    ev.old_state = 0;
    ev.new_state = 0;
    ev.fin = fin::UNKNOWN;
    ev._pad = 0;
    ev.bytes_received = 0;
    ev.bytes_acked = 0;
    ev.count = 1;
    ev._pad2 = 0;
    fill(ev);
    entry.submit(submit_flags(lane));
}

/// An IPv4 address as the context gives it (network byte order in a `u32`) into the first
/// four bytes of a record address.
#[inline(always)]
pub fn put_v4(dst: &mut [u8; 16], ip4: u32) {
    dst[..4].copy_from_slice(&ip4.to_ne_bytes());
}

/// An IPv6 address as the context gives it (four network-order `u32` words).
#[inline(always)]
pub fn put_v6(dst: &mut [u8; 16], ip6: &[u32; 4]) {
    for (i, w) in ip6.iter().enumerate() {
        dst[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
}
