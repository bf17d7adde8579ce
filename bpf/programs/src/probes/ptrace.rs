//! ptrace attach and seize (strict set): a process taking control of another. The entry
//! reports the request; the exit, once the kernel attached, looks at the tracee it attached
//! (the newest on the tracer's `ptraced` list): another container's, under a rule that kills
//! for process access, and the tracer dies before it runs another instruction.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use sidewall_common::{
    access_op, refusal,
    wire::{PTRACE_ATTACH, PTRACE_SEIZE},
};

use super::access::emit_on;
use crate::{
    kernel::{cgroup_of_task, off, read_ptr},
    maps::{Lane, record_lane},
};

/// A ptrace attach or seize between its entry and its exit: the request and the target pid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Attaching {
    op: u32,
    pid: u32,
}

/// Threads between the entry and the exit of a ptrace attach or seize.
#[map]
static ATTACHING: LruHashMap<u32, Attaching> = LruHashMap::with_max_entries(4096, 0);

// syscalls/sys_enter_ptrace: long ptrace(long request, long pid, unsigned long addr, unsigned long data)
#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let (req_off, pid_off) = (off!(tp_ptrace_request), off!(tp_ptrace_pid));
    // SAFETY: read_at goes through bpf_probe_read; offsets from the format file.
    let request = unsafe { ctx.read_at::<u64>(req_off) }.unwrap_or(0);
    let op = match request {
        PTRACE_ATTACH => access_op::PTRACE_ATTACH,
        PTRACE_SEIZE => access_op::PTRACE_SEIZE,
        _ => return 0,
    };
    // SAFETY: as above.
    let pid = unsafe { ctx.read_at::<u64>(pid_off) }.unwrap_or(0) as u32;
    // Reported by the exit, which knows whether the tracer was killed (alert lane) or not.
    let _ = ATTACHING.insert(&(bpf_get_current_pid_tgid() as u32), &Attaching { op, pid }, 0);
    0
}

// syscalls/sys_exit_ptrace: long ret of ptrace(long request, long pid, unsigned long addr, unsigned long data): 0 or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_ptrace")]
pub fn sys_exit_ptrace(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a copy out of our own map, before the entry is removed.
    let Some(a) = (unsafe { ATTACHING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ATTACHING.remove(&tid);
    let ret_off = off!(tp_exit_ret);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    if unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(-1) != 0 {
        // A failed attempt is reported too.
        emit_on(Lane::Events, a.op, a.pid, 0, None);
        return 0;
    }
    // SAFETY: helper without pointer arguments.
    let tracer = unsafe { bpf_get_current_task() } as *const u8;
    // list_add() puts the new tracee first: ptraced.next is its ptrace_entry.
    let list = tracer.wrapping_add(off!(task_ptraced));
    let entry = read_ptr(tracer, off!(task_ptraced)).unwrap_or(list);
    // An empty list points at itself (the tracee left already).
    let tracee_cgroup =
        if entry == list { 0 } else { cgroup_of_task(entry.wrapping_sub(off!(task_ptrace_entry))) };
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let killed = crate::policy::kill_access(cgroup, (pid_tgid >> 32) as u32, tracee_cgroup);
    if killed {
        crate::maps::kill_current(refusal::KILL_ACCESS);
    }
    // A killed tracer's record goes on the alert lane, within its container's budget.
    if let Some(lane) = record_lane(cgroup, killed.then_some(refusal::KILL_ACCESS)) {
        emit_on(lane, a.op, a.pid, tracee_cgroup, None);
    }
    0
}
