//! `tp_btf/sched_process_fork`: a new process (not a thread), for the process tree.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sidewall_common::{ForkEvent, Namespaces, flags, kind};

use crate::{
    kernel::{fill_process_lite, off, read, read_namespaces},
    maps::{Lane, reserve, submit_flags},
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
    // SAFETY: helpers without pointer arguments.
    let (parent, parent_tgid) =
        unsafe { (bpf_get_current_task() as *const u8, (bpf_get_current_pid_tgid() >> 32) as u32) };
    // Enforcement first: it must never depend on room in the ring buffer, which a flood (or a
    // daemon that is down) can fill. A child of an armed process is armed; clone(CLONE_NEW*)
    // gives the child namespaces of its own, and the caller (current) is the one a policy kills.
    crate::policy::inherit_armed(parent_tgid, child_tgid);
    let (mut parent_ns, mut child_ns) = (Namespaces::default(), Namespaces::default());
    let parent_known = read_namespaces(parent, &mut parent_ns);
    read_namespaces(child, &mut child_ns);
    let killed = parent_ns != child_ns && super::namespace::kill_if_denied();
    // A killed caller's record goes on the alert lane. Not through the budget: the process
    // cache needs every child, and each such record costs the attacker a process.
    let lane = if killed { Lane::Alerts } else { Lane::Events };
    let Some(mut entry) = reserve::<ForkEvent>(lane, kind::FORK) else { return 0 };
    // SAFETY: reservation of exactly size_of::<ForkEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // Start from the parent (current), then describe the child.
    fill_process_lite(&mut ev.hdr, kind::FORK);
    ev.hdr.flags = if parent_known { 0 } else { flags::NS_UNKNOWN };
    if killed {
        ev.hdr.flags |= flags::KILLED;
    }
    ev.hdr.ppid = ev.hdr.pid;
    ev.hdr.pid = child_tgid;
    ev.hdr.tid = child_pid;
    // SAFETY: helper without pointer arguments.
    ev.hdr.ktime = unsafe { bpf_ktime_get_boot_ns() };
    ev.parent_ns = parent_ns;
    ev.hdr.ns = child_ns;
    entry.submit(submit_flags(lane));
    0
}
