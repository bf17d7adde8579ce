//! `tp_btf/sched_process_exit`: the end of a process (its last thread).

use aya_ebpf::{helpers::bpf_get_current_task, macros::btf_tracepoint, programs::BtfTracePointContext};
use sidewall_common::{ExitEvent, kind};

use crate::{
    kernel::{fill_current, off, read, read_ptr},
    maps::{EVENTS, count_drop, wakeup},
};

// tp_btf/sched_process_exit: (struct task_struct *p, bool group_dead); p is current, read as such
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    // SAFETY: the helper returns the current task_struct; we only read it through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // Threads exit one by one; only the last one ends the process. do_exit() has already
    // decremented signal->live when this tracepoint fires.
    let live = read_ptr(task, off!(task_signal)).and_then(|sig| read::<i32>(sig, off!(signal_live)));
    if live != Some(0) {
        return 0;
    }
    crate::policy::disarm((aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32);
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(kind::EXIT);
        return 0;
    };
    // SAFETY: `entry` is a reservation of exactly size_of::<ExitEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::EXIT, task);
    ev.exit_code = read::<u32>(task, off!(task_exit_code)).unwrap_or(0);
    ev._pad = 0;
    entry.submit(wakeup());
    0
}
