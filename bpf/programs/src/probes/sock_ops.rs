//! `sockops` at the cgroup v2 root: TCP handshakes that complete (ours or our listeners'),
//! and closes with byte counts. Runs in softirq as often as not, so it records no process:
//! the daemon joins these records to the connect or bind that came before, by socket cookie.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::bpf_probe_read_kernel,
    macros::sock_ops,
    programs::SockOpsContext,
};
use sidewall_common::{
    fin, sock_op,
    wire::{AF_INET, IPPROTO_TCP, TCP_CLOSE},
};

use super::sock::{self, Caller, put_v4, put_v6};
use crate::kernel::{off, read};

// sockops (tcp_connect, tcp_init_transfer, tcp_set_state): struct bpf_sock_ops { op, args[2], family, ips, ports, bytes_*, sk }
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
            // STATE_CB from tcp_set_state: args[0] is the old TCP state, args[1] the new one.
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
    // SAFETY: the context pointer is valid for the program's run.
    let ops = unsafe { &*ctx.ops };
    sock::emit(ctx, Caller::None, op, |ev| {
        ev.family = ops.family as u16;
        ev.protocol = IPPROTO_TCP;
        if ops.family == u32::from(AF_INET) {
            put_v4(&mut ev.local_addr, ops.local_ip4);
            put_v4(&mut ev.remote_addr, ops.remote_ip4);
        } else {
            put_v6(&mut ev.local_addr, &ops.local_ip6);
            put_v6(&mut ev.remote_addr, &ops.remote_ip6);
        }
        // local_port is in host order; remote_port holds the network-order port in its upper half.
        ev.local_port = ops.local_port as u16;
        ev.remote_port = u16::from_be((ops.remote_port >> 16) as u16);
        ev.old_state = old_state;
        ev.new_state = new_state;
        ev.fin = fin;
        ev.bytes_received = ops.bytes_received;
        ev.bytes_acked = ops.bytes_acked;
    });
}
