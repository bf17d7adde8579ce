//! `cgroup/post_bind4|6` and `cgroup/sock_release`: which socket bound which port (the
//! port actually bound, ephemeral ones included), and when a bound socket goes away.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, map},
    maps::LruHashMap,
    programs::SockContext,
};
use sidewall_common::{refusal, sock_op, verdict};

use super::{
    ALLOW, DENY,
    sock::{self, Caller, Lane, put_v4, put_v6},
};
use crate::policy;

/// Cookies of sockets we reported a bind for: only their release is of interest, so the
/// (very frequent) release of every other socket stays in the kernel.
#[map]
static BOUND: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// The kernel lets post_bind4 read only the IPv4 source fields and post_bind6 only the IPv6
/// ones, and sock_release neither, so the address reader is chosen at compile time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    V4,
    V6,
    None,
}

// cgroup/post_bind4 (__inet_bind, port bound): struct bpf_sock { family, protocol, src_ip4, src_port (host order) }
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    bind(&ctx, Source::V4)
}

// cgroup/post_bind6 (__inet6_bind, port bound): struct bpf_sock { family, protocol, src_ip6[4], src_port (host order) }
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    bind(&ctx, Source::V6)
}

// cgroup/sock_release (inet_release): struct bpf_sock { family, protocol }; no address may be read
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup in our own map.
    if unsafe { BOUND.get(&cookie) }.is_some() {
        let _ = BOUND.remove(&cookie);
        emit(&ctx, sock_op::RELEASE, Source::None, verdict::ALLOWED);
    }
    ALLOW
}

#[inline(always)]
fn bind(ctx: &SockContext, source: Source) -> i32 {
    // SAFETY: helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the context pointer is valid for the program's run; helper without pointers.
    let (port, cgroup) =
        unsafe { ((*ctx.sock).src_port as u16, aya_ebpf::helpers::bpf_get_current_cgroup_id()) };
    if policy::deny_bind(cgroup, port) {
        crate::maps::count_refusal(refusal::BIND);
        // On the alert lane within the container's budget, else counted by port.
        if crate::maps::alert_admit(cgroup, refusal::BIND, &[0; 16], port) {
            emit_on(ctx, Lane::Alerts, sock_op::BIND, source, verdict::DENIED);
        }
        return DENY;
    }
    let _ = BOUND.insert(&cookie, &1, 0);
    emit(ctx, sock_op::BIND, source, verdict::ALLOWED);
    ALLOW
}

/// A record of `op` on the socket of `ctx`, with the address `source` says the hook may read.
#[inline(always)]
fn emit(ctx: &SockContext, op: u32, source: Source, v: u8) {
    emit_on(ctx, Lane::Events, op, source, v)
}

#[inline(always)]
fn emit_on(ctx: &SockContext, lane: Lane, op: u32, source: Source, v: u8) {
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { &*ctx.sock };
    let caller = if source == Source::None { Caller::Lite } else { Caller::Task };
    sock::emit_on(ctx, lane, caller, op, |ev| {
        ev.family = sk.family as u16;
        ev.protocol = sk.protocol as u8;
        ev.verdict = v;
        match source {
            Source::V4 => put_v4(&mut ev.local_addr, sk.src_ip4),
            Source::V6 => put_v6(&mut ev.local_addr, &sk.src_ip6),
            Source::None => {}
        }
        if source != Source::None {
            // src_port is in host byte order here.
            ev.local_port = sk.src_port as u16;
        }
    });
}
