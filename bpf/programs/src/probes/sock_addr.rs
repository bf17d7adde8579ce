//! `cgroup/connect4|6` and `cgroup/sendmsg4|6`, attached at the cgroup v2 root: every inet
//! connect and every datagram sent to an explicit address, in the caller's context, before
//! the kernel acts on it (which is where enforcement will deny).

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use sidewall_common::{
    refusal, sock_op, verdict,
    wire::{AF_INET, AF_INET6, IPPROTO_UDP},
};

use super::{
    ALLOW, DENY,
    sock::{self, Caller, Lane, put_v4, put_v6},
};
use crate::policy;

/// Repeated datagrams from one socket to one destination are reported at most this often.
const DATAGRAM_REPORT_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DatagramKey {
    cookie: u64,
    addr: [u8; 16],
    port: u16,
    _pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DatagramSeen {
    last_ns: u64,
    folded: u32,
    _pad: u32,
}

#[map]
static DATAGRAMS: LruHashMap<DatagramKey, DatagramSeen> = LruHashMap::with_max_entries(16384, 0);

// cgroup/connect4 (tcp_v4_pre_connect, udp_pre_connect): struct bpf_sock_addr { user_ip4, user_port (network order) }
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET)
}

// cgroup/connect6 (tcp_v6_pre_connect, udpv6_pre_connect): struct bpf_sock_addr { user_ip6[4], user_port (network order) }
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, AF_INET6)
}

// cgroup/sendmsg4 (udp_sendmsg, unconnected): struct bpf_sock_addr { user_ip4, user_port (network order), protocol }
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    datagram(&ctx, AF_INET)
}

// cgroup/sendmsg6 (udpv6_sendmsg, unconnected): struct bpf_sock_addr { user_ip6[4], user_port (network order), protocol }
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    datagram(&ctx, AF_INET6)
}

/// Policy verdict for the destination of `ctx`; the caller gets EPERM when denied.
#[inline(always)]
fn verdict_for(ctx: &SockAddrContext, family: u16) -> u8 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    let (addr, port) = destination(sa, family);
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    if policy::deny_destination(cgroup, &addr, family == AF_INET, port) {
        verdict::DENIED
    } else {
        verdict::ALLOWED
    }
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u16) -> i32 {
    let v = verdict_for(ctx, family);
    if v == verdict::DENIED {
        crate::maps::count_refusal(refusal::CONNECT);
        refused(ctx, sock_op::CONNECT, family, refusal::CONNECT);
        return DENY;
    }
    emit(ctx, sock_op::CONNECT, family, 1, v);
    ALLOW
}

/// The destination of `ctx` as (address bytes, host-order port).
#[inline(always)]
fn destination(sa: &bpf_sock_addr, family: u16) -> ([u8; 16], u16) {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        put_v4(&mut addr, sa.user_ip4);
    } else {
        put_v6(&mut addr, &sa.user_ip6);
    }
    // user_port holds the port in network byte order in its low 16 bits.
    (addr, u16::from_be(sa.user_port as u16))
}

/// Folds repeats: returns how many datagrams this report stands for, or None to stay quiet.
#[inline(always)]
fn datagram_report(cookie: u64, addr: [u8; 16], port: u16, now: u64) -> Option<u32> {
    let key = DatagramKey { cookie, addr, port, _pad: [0; 6] };
    match DATAGRAMS.get_ptr_mut(&key) {
        Some(seen) => {
            // SAFETY: a valid map value pointer for this key.
            let seen = unsafe { &mut *seen };
            if now.saturating_sub(seen.last_ns) < DATAGRAM_REPORT_NS {
                seen.folded += 1;
                return None;
            }
            let n = seen.folded + 1;
            seen.folded = 0;
            seen.last_ns = now;
            Some(n)
        }
        None => {
            let _ = DATAGRAMS.insert(&key, &DatagramSeen { last_ns: now, folded: 0, _pad: 0 }, 0);
            Some(1)
        }
    }
}

#[inline(always)]
fn datagram(ctx: &SockAddrContext, family: u16) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.protocol != u32::from(IPPROTO_UDP) {
        return ALLOW;
    }
    let v = verdict_for(ctx, family);
    if v == verdict::DENIED {
        // Denied sends are always reported (individually, or counted within the
        // container's budget): they are what a policy is for.
        crate::maps::count_refusal(refusal::SEND);
        refused(ctx, sock_op::SENDMSG, family, refusal::SEND);
        return DENY;
    }
    // SAFETY: helpers take the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (addr, port) = destination(sa, family);
    // SAFETY: helper without pointer arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    if let Some(count) = datagram_report(cookie, addr, port, now) {
        emit(ctx, sock_op::SENDMSG, family, count, verdict::ALLOWED);
    }
    ALLOW
}

/// A refusal (already decided): on the alert lane if its container's budget allows, else
/// counted in the aggregation map.
#[inline(always)]
fn refused(ctx: &SockAddrContext, op: u32, family: u16, kind: u32) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    let (addr, port) = destination(sa, family);
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    if crate::maps::alert_admit(cgroup, kind, &addr, port) {
        emit_on(ctx, Lane::Alerts, op, family, 1, verdict::DENIED);
    }
}

#[inline(always)]
fn emit(ctx: &SockAddrContext, op: u32, family: u16, count: u32, v: u8) {
    emit_on(ctx, Lane::Events, op, family, count, v)
}

#[inline(always)]
fn emit_on(ctx: &SockAddrContext, lane: Lane, op: u32, family: u16, count: u32, v: u8) {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    sock::emit_on(ctx, lane, Caller::Task, op, |ev| {
        let (addr, port) = destination(sa, family);
        ev.family = family;
        ev.protocol = sa.protocol as u8;
        ev.verdict = v;
        ev.remote_addr = addr;
        ev.remote_port = port;
        ev.count = count;
    });
}
