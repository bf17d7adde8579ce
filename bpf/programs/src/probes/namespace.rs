//! `syscalls/sys_{enter,exit}_{setns,unshare}` (strict set): namespace transitions at the
//! syscall, with the namespaces before (kept per thread at entry) and after (read at exit).

use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use sidewall_common::{NamespaceEvent, Namespaces, flags, kind, ns_op, refusal};

use crate::{
    kernel::{fill_current, off, read_namespaces},
    maps::{record_lane, reserve, submit_flags},
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    before: Namespaces,
    op: u32,
    flags: u32,
    /// The caller was killed at the entry: its record goes on the alert lane.
    killed: u32,
    _pad: u32,
}

/// Calls in flight, by thread id.
#[map]
static PENDING_NS: HashMap<u32, Pending> = HashMap::with_max_entries(8192, 0);

// syscalls/sys_enter_setns: long setns(int fd, int flags)
#[tracepoint(category = "syscalls", name = "sys_enter_setns")]
pub fn sys_enter_setns(ctx: TracePointContext) -> u32 {
    enter(&ctx, ns_op::SETNS, off!(tp_setns_flags))
}

// syscalls/sys_enter_unshare: long unshare(unsigned long unshare_flags)
#[tracepoint(category = "syscalls", name = "sys_enter_unshare")]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    enter(&ctx, ns_op::UNSHARE, off!(tp_unshare_flags))
}

// syscalls/sys_exit_setns: long ret of setns(int fd, int flags): 0 or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_setns")]
pub fn sys_exit_setns(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}

// syscalls/sys_exit_unshare: long ret of unshare(unsigned long unshare_flags): 0 or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_unshare")]
pub fn sys_exit_unshare(ctx: TracePointContext) -> u32 {
    exit(&ctx)
}

#[inline(always)]
fn enter(ctx: &TracePointContext, op: u32, flags_off: usize) -> u32 {
    let killed = kill_if_denied() as u32;
    // SAFETY: read_at goes through bpf_probe_read; the offset is from the format file.
    let flags = unsafe { ctx.read_at::<u64>(flags_off) }.unwrap_or(0) as u32;
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut p = Pending { before: Namespaces::default(), op, flags, killed, _pad: 0 };
    read_namespaces(task, &mut p.before);
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let _ = PENDING_NS.insert(&tid, &p, 0);
    0
}

/// A policy that kills on namespace changes: SIGKILL before the call can be used. Whether
/// it killed.
#[inline(always)]
pub fn kill_if_denied() -> bool {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let kill = crate::policy::kill_namespace_change(current_cgroup(), tgid);
    if kill {
        crate::maps::kill_current(refusal::KILL_NAMESPACE);
    }
    kill
}

#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: helper without pointer arguments.
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn exit(ctx: &TracePointContext) -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // SAFETY: a copy out of our own map.
    let Some(p) = (unsafe { PENDING_NS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING_NS.remove(&tid);
    let ret_off = off!(tp_exit_ret);
    // SAFETY: as in enter().
    let ret = unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(0);
    // A killed caller's record goes on the alert lane, within its container's budget.
    let kill = (p.killed != 0).then_some(refusal::KILL_NAMESPACE);
    let Some(lane) = record_lane(current_cgroup(), kill) else { return 0 };
    let Some(mut entry) = reserve::<NamespaceEvent>(lane, kind::NAMESPACE) else { return 0 };
    // SAFETY: reservation of exactly size_of::<NamespaceEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    fill_current(&mut ev.hdr, kind::NAMESPACE, task);
    if p.killed != 0 {
        ev.hdr.flags |= flags::KILLED;
    }
    ev.before = p.before;
    ev.op = p.op;
    ev.flags = p.flags;
    ev.ret = ret;
    entry.submit(submit_flags(lane));
    0
}
