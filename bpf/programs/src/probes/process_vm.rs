//! process_vm_readv and process_vm_writev at the syscall (strict set): a process reading or
//! writing another's memory.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use sidewall_common::access_op;

use super::access::emit;
use crate::kernel::off;

// syscalls/sys_enter_process_vm_readv: long process_vm_readv(pid_t pid, const struct iovec *lvec, unsigned long liovcnt, const struct iovec *rvec, unsigned long riovcnt, unsigned long flags)
#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_readv")]
pub fn sys_enter_process_vm_readv(ctx: TracePointContext) -> u32 {
    vm(&ctx, access_op::VM_READV)
}

// syscalls/sys_enter_process_vm_writev: long process_vm_writev(pid_t pid, const struct iovec *lvec, unsigned long liovcnt, const struct iovec *rvec, unsigned long riovcnt, unsigned long flags)
#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    vm(&ctx, access_op::VM_WRITEV)
}

#[inline(always)]
fn vm(ctx: &TracePointContext, op: u32) -> u32 {
    let pid_off = off!(tp_vm_pid);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let pid = unsafe { ctx.read_at::<u64>(pid_off) }.unwrap_or(0) as u32;
    emit(op, pid, 0, None);
    0
}
