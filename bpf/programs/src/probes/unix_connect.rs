//! `tracepoint/syscalls/sys_enter_connect` (strict sensor set): connects on unix sockets,
//! with the path or abstract name. A syscall tracepoint slows every syscall of every process,
//! so the default set leaves it detached; inet connects come from the cgroup hooks instead.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_probe_read_user as read_user_raw, bpf_send_signal},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sidewall_common::{
    UNIX_PATH_MAX, UnixConnectEvent, kind,
    wire::{AF_UNIX, SIGKILL},
};

use crate::{
    kernel::{fill_process_lite, off},
    maps::{EVENTS, count_drop, wakeup},
    policy::kill_runtime_socket,
};

// syscalls/sys_enter_connect: long connect(int fd, struct sockaddr *uservaddr, int addrlen)
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let (addr_off, len_off) = (off!(tp_connect_addr), off!(tp_connect_addrlen));
    // SAFETY: offsets come from the tracepoint's format file; read_at goes through
    // bpf_probe_read, which fails instead of faulting.
    let Ok(addr) = (unsafe { ctx.read_at::<u64>(addr_off) }) else {
        return 0;
    };
    let Ok(len) = (unsafe { ctx.read_at::<u64>(len_off) }) else {
        return 0;
    };
    // SAFETY: bpf_probe_read_user tolerates any user address.
    let Ok(family) = (unsafe { bpf_probe_read_user(addr as *const u16) }) else {
        return 0;
    };
    if family != AF_UNIX {
        return 0;
    }
    // sun_path follows the 2-byte family; the caller's length bounds it.
    let mut n = (len as usize).saturating_sub(2);
    if n > UNIX_PATH_MAX {
        n = UNIX_PATH_MAX;
    }
    let mut path = [0u8; UNIX_PATH_MAX];
    // SAFETY: destination is the UNIX_PATH_MAX-byte array; n <= UNIX_PATH_MAX.
    let rc = unsafe { read_user_raw(path.as_mut_ptr() as *mut _, n as u32, (addr + 2) as *const _) };
    // No hook can refuse a unix connect here, but the caller can die before it uses the
    // connection: SIGKILL is delivered on the way back to user space.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if rc == 0 && kill_runtime_socket(cgroup, tgid, &path) {
        // SAFETY: signals the current task only.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let Some(mut entry) = EVENTS.reserve::<UnixConnectEvent>(0) else {
        count_drop(kind::UNIX_CONNECT);
        return 0;
    };
    // SAFETY: reservation of exactly size_of::<UnixConnectEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_process_lite(&mut ev.hdr, kind::UNIX_CONNECT);
    ev.path = path;
    ev.path_len = if rc == 0 { n as u32 } else { 0 };
    ev._pad = 0;
    ev._pad2 = [0; 4];
    entry.submit(wakeup());
    0
}
