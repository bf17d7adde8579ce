//! `tp_btf/sched_process_exec`: a task replaced its image. Cheap: no syscall tracepoint.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sidewall_common::{ARGS_MAX, ExecEvent, FILENAME_MAX, flags, kind};

use crate::{
    cwd::read_cwd,
    kernel::{fill_current, mnt_ns_inum, off, parent_mnt_ns_inum, read, read_ptr},
    maps::{EVENTS, count_drop, wakeup},
};

// tp_btf/sched_process_exec: (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let bprm: *const u8 = ctx.arg(2); // struct linux_binprm *bprm
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // Arming first: it must never depend on room in the ring buffer, which a flood (or a
    // daemon that is down) can fill.
    // SAFETY: helpers without pointer arguments.
    let (cgroup, tgid) = unsafe { (bpf_get_current_cgroup_id(), (bpf_get_current_pid_tgid() >> 32) as u32) };
    crate::policy::arm_at_home(cgroup, tgid, mnt_ns_inum(task), parent_mnt_ns_inum(task));
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(kind::EXEC);
        return 0;
    };
    // SAFETY: reservation of exactly size_of::<ExecEvent>() bytes; it is too large for the
    // 512-byte BPF stack, so every field is written in place.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_current(&mut ev.hdr, kind::EXEC, task);
    ev._pad = 0;

    ev.filename_len = 0;
    if let Some(filename) = read_ptr(bprm, off!(bprm_filename)) {
        // SAFETY: destination is the FILENAME_MAX-byte array of the reservation.
        let n = unsafe {
            bpf_probe_read_kernel_str(
                ev.filename.as_mut_ptr() as *mut _,
                FILENAME_MAX as u32,
                filename as *const _,
            )
        };
        if n > 0 {
            ev.filename_len = (n - 1) as u32;
            if n as usize >= FILENAME_MAX {
                ev.hdr.flags |= flags::FILENAME_TRUNCATED;
            }
        }
    }

    ev.args_len = 0;
    if let Some(mm) = read_ptr(task, off!(task_mm)) {
        let start = read::<u64>(mm, off!(mm_arg_start)).unwrap_or(0);
        let end = read::<u64>(mm, off!(mm_arg_end)).unwrap_or(0);
        let mut len = end.saturating_sub(start) as usize;
        if len > ARGS_MAX {
            len = ARGS_MAX;
            ev.hdr.flags |= flags::ARGS_TRUNCATED;
        }
        // SAFETY: destination is the ARGS_MAX-byte array; len <= ARGS_MAX.
        let rc =
            unsafe { bpf_probe_read_user(ev.args.as_mut_ptr() as *mut _, len as u32, start as *const _) };
        if rc == 0 {
            ev.args_len = len as u32;
        }
    }

    read_cwd(task, ev);
    entry.submit(wakeup());
    0
}
