//! ptrace attach and seize at the syscall (strict set): a process taking control of another.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sidewall_common::{
    access_op,
    wire::{PTRACE_ATTACH, PTRACE_SEIZE},
};

use super::access::emit;
use crate::kernel::off;

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
    emit(op, pid, 0, None);
    0
}
