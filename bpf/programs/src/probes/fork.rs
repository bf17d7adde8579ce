//! `tp_btf/sched_process_fork`: a new process (not a thread), for the process tree.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sidewall_common::{ForkEvent, kind};

use crate::{
    kernel::{fill_current, off, read, read_namespaces},
    maps::{EVENTS, count_drop, wakeup},
};

// tp_btf/sched_process_fork: (struct task_struct *parent, struct task_struct *child); parent is current
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1); // struct task_struct *child
    let (Some(child_pid), Some(child_tgid)) =
        (read::<u32>(child, off!(task_pid)), read::<u32>(child, off!(task_tgid)))
    else {
        return 0;
    };
    // A new thread joins an existing process: nothing new in the process tree.
    if child_pid != child_tgid {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count_drop(kind::FORK);
        return 0;
    };
    // SAFETY: reservation of exactly size_of::<ForkEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let parent = unsafe { bpf_get_current_task() } as *const u8;
    // Start from the parent (current), then describe the child.
    fill_current(&mut ev.hdr, kind::FORK, parent);
    ev.hdr.ppid = ev.hdr.pid;
    ev.hdr.pid = child_tgid;
    ev.hdr.tid = child_pid;
    // SAFETY: helper without pointer arguments.
    ev.hdr.ktime = unsafe { bpf_ktime_get_boot_ns() };
    // clone(CLONE_NEW*) gives the child namespaces of its own.
    crate::policy::inherit_armed(ev.hdr.ppid, child_tgid);
    ev.parent_ns = ev.hdr.ns;
    read_namespaces(child, &mut ev.hdr.ns);
    if ev.parent_ns != ev.hdr.ns {
        // clone(CLONE_NEW*): the caller (current) is the one a policy may kill.
        super::namespace::kill_if_denied();
    }
    entry.submit(wakeup());
    0
}
