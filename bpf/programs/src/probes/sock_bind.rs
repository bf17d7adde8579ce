//! `cgroup/post_bind4|6` and `cgroup/sock_release`: which socket bound which port (the
//! port actually bound, ephemeral ones included), and when a bound socket goes away.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock, map},
    maps::LruHashMap,
    programs::SockContext,
};
use sidewall_common::{SockEvent, kind, sock_op, verdict};

use crate::{
    kernel::{fill_current, fill_process_lite},
    maps::{EVENTS, count_drop, wakeup},
    policy,
};

const ALLOW: i32 = 1;

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

/// Returning this from post_bind undoes the bind: the caller gets EPERM.
const DENY: i32 = 0;

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    bind(&ctx, Source::V4)
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    bind(&ctx, Source::V6)
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup in our own map.
    if unsafe { BOUND.get(&cookie) }.is_some() {
        let _ = BOUND.remove(&cookie);
        emit(&ctx, sock_op::RELEASE, cookie, Source::None, verdict::ALLOWED);
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
        emit(ctx, sock_op::BIND, cookie, source, verdict::DENIED);
        return DENY;
    }
    let _ = BOUND.insert(&cookie, &1, 0);
    emit(ctx, sock_op::BIND, cookie, source, verdict::ALLOWED);
    ALLOW
}

#[inline(always)]
fn emit(ctx: &SockContext, op: u32, cookie: u64, source: Source, v: u8) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        count_drop(kind::SOCK);
        return;
    };
    // SAFETY: reservation of exactly size_of::<SockEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    if source == Source::None {
        fill_process_lite(&mut ev.hdr, kind::SOCK);
    } else {
        // SAFETY: helper without pointer arguments.
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
        fill_current(&mut ev.hdr, kind::SOCK, task);
    }
    // SAFETY: the context pointer is valid for the program's run.
    let sk = unsafe { &*ctx.sock };
    ev.op = op;
    ev.family = sk.family as u16;
    ev.protocol = sk.protocol as u8;
    ev.verdict = v;
    ev.cookie = cookie;
    // SAFETY: helper takes the program context.
    ev.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ev.local_addr = [0; 16];
    ev.local_port = 0;
    match source {
        Source::V4 => ev.local_addr[..4].copy_from_slice(&sk.src_ip4.to_ne_bytes()),
        Source::V6 => {
            for i in 0..4 {
                ev.local_addr[i * 4..i * 4 + 4].copy_from_slice(&sk.src_ip6[i].to_ne_bytes());
            }
        }
        Source::None => {}
    }
    if source != Source::None {
        // src_port is in host byte order here.
        ev.local_port = sk.src_port as u16;
    }
    ev.remote_addr = [0; 16];
    ev.remote_port = 0;
    ev.old_state = 0;
    ev.new_state = 0;
    ev.fin = 0;
    ev._pad = 0;
    ev.bytes_received = 0;
    ev.bytes_acked = 0;
    ev.count = 1;
    ev._pad2 = 0;
    entry.submit(wakeup());
}
