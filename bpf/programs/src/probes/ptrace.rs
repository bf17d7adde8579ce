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
    access_op,
    wire::{PTRACE_ATTACH, PTRACE_SEIZE},
};

use super::access::emit;
use crate::kernel::{cgroup_of_task, off, read_ptr};

/// Threads between the entry and the exit of a ptrace attach or seize.
#[map]
static ATTACHING: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

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
    let _ = ATTACHING.insert(&(bpf_get_current_pid_tgid() as u32), &1, 0);
    // SAFETY: as above.
    let pid = unsafe { ctx.read_at::<u64>(pid_off) }.unwrap_or(0) as u32;
    emit(op, pid, 0, None);
    0
}

// syscalls/sys_exit_ptrace: long ret of ptrace(long request, long pid, unsigned long addr, unsigned long data): 0 or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_ptrace")]
pub fn sys_exit_ptrace(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a lookup in our own map.
    if unsafe { ATTACHING.get(&tid) }.is_none() {
        return 0;
    }
    let _ = ATTACHING.remove(&tid);
    let ret_off = off!(tp_exit_ret);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    if unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(-1) != 0 {
        return 0;
    }
    // SAFETY: helper without pointer arguments.
    let tracer = unsafe { bpf_get_current_task() } as *const u8;
    // list_add() puts the new tracee first: ptraced.next is its ptrace_entry.
    let Some(entry) = read_ptr(tracer, off!(task_ptraced)) else { return 0 };
    // An empty list points at itself (the tracee left already).
    if entry == tracer.wrapping_add(off!(task_ptraced)) {
        return 0;
    }
    let tracee_cgroup = cgroup_of_task(entry.wrapping_sub(off!(task_ptrace_entry)));
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if crate::policy::kill_access(cgroup, (pid_tgid >> 32) as u32, tracee_cgroup) {
        crate::maps::kill_current(sidewall_common::refusal::KILL_ACCESS);
    }
    0
}
