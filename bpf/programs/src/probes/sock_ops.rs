//! `sockops` at the cgroup v2 root: TCP handshakes that complete (ours or our listeners'),
//! and closes with byte counts. Runs in softirq as often as not, so it records no process:
//! the daemon joins these records to the connect or bind that came before, by socket cookie.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use sidewall_common::{
    SockEvent, fin, kind, sock_op, verdict,
    wire::{AF_INET, IPPROTO_TCP, TCP_CLOSE},
};

use crate::{
    kernel::{fill_no_process, off, read},
    maps::{EVENTS, count_drop, wakeup},
};

#[sock_ops]
pub fn tcp_lifecycle(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch_state(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            watch_state(&ctx);
            emit(&ctx, sock_op::ESTABLISHED_ACTIVE, 0, 0, fin::UNKNOWN);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            watch_state(&ctx);
            emit(&ctx, sock_op::ESTABLISHED_PASSIVE, 0, 0, fin::UNKNOWN);
        }
        BPF_SOCK_OPS_STATE_CB => {
            let (old, new) = (ctx.arg(0), ctx.arg(1));
            if new == u32::from(TCP_CLOSE) {
                emit(&ctx, sock_op::CLOSE, old as u8, new as u8, fin_received(&ctx));
            }
        }
        _ => {}
    }
    1
}

/// Asks for STATE_CB on this socket, to see its close (or a refused connect).
#[inline(always)]
fn watch_state(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// Whether the peer's FIN arrived: `SOCK_DONE` in `sk->sk_flags`. A socket closed in
/// FIN_WAIT2 may or may not have it, and its received byte count includes the FIN if so.
#[inline(always)]
fn fin_received(ctx: &SockOpsContext) -> u8 {
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return fin::UNKNOWN;
    }
    // The verifier forbids arithmetic on socket pointers; reading the pointer back from the
    // stack yields a plain address that the probe reads below may offset.
    let slot = sk as *const u8;
    // SAFETY: reads our own stack slot.
    let Ok(sk) = (unsafe { bpf_probe_read_kernel(&slot as *const *const u8) }) else {
        return fin::UNKNOWN;
    };
    let bit = off!(sock_done_bit);
    match read::<u64>(sk, off!(sock_flags)) {
        Some(flags) if bit < 64 => {
            if flags & (1 << bit) != 0 {
                fin::RECEIVED
            } else {
                fin::NOT_RECEIVED
            }
        }
        _ => fin::UNKNOWN,
    }
}

#[inline(always)]
fn emit(ctx: &SockOpsContext, op: u32, old_state: u8, new_state: u8, fin: u8) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_drop(kind::SOCK);
        return;
    };
    // SAFETY: reservation of exactly size_of::<SockEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_no_process(&mut ev.hdr, kind::SOCK);
    // SAFETY: the context pointer is valid for the program's run.
    let ops = unsafe { &*ctx.ops };
    ev.op = op;
    ev.family = ops.family as u16;
    ev.protocol = IPPROTO_TCP;
    ev.verdict = verdict::ALLOWED;
    // SAFETY: helpers take the program context.
    ev.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ev.local_addr = [0; 16];
    ev.remote_addr = [0; 16];
    if ops.family == u32::from(AF_INET) {
        ev.local_addr[..4].copy_from_slice(&ops.local_ip4.to_ne_bytes());
        ev.remote_addr[..4].copy_from_slice(&ops.remote_ip4.to_ne_bytes());
    } else {
        for i in 0..4 {
            ev.local_addr[i * 4..i * 4 + 4].copy_from_slice(&ops.local_ip6[i].to_ne_bytes());
            ev.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&ops.remote_ip6[i].to_ne_bytes());
        }
    }
    // local_port is in host order; remote_port holds the network-order port in its upper half.
    ev.local_port = ops.local_port as u16;
    ev.remote_port = u16::from_be((ops.remote_port >> 16) as u16);
    ev.old_state = old_state;
    ev.new_state = new_state;
    ev.fin = fin;
    ev._pad = 0;
    ev.bytes_received = ops.bytes_received;
    ev.bytes_acked = ops.bytes_acked;
    ev.count = 1;
    ev._pad2 = 0;
    entry.submit(wakeup());
}
