//! Unix socket connects (strict sensor set: syscall tracepoints, which slow every syscall of
//! every process, so the default set leaves them detached; inet connects come from the cgroup
//! hooks instead). The entry sees the path as the caller spelled it; the exit sees what the
//! kernel resolved: the socket reached, the address its owner bound it to, and that owner.
//! A runtime's socket is recognised by that bound address, whatever path, symbolic link or
//! mount led there, and a rule that kills for it kills the caller before it can send a byte.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user as read_user_raw},
    },
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use sidewall_common::{UNIX_PATH_MAX, UnixConnectEvent, flags, kind, refusal, wire::AF_UNIX};

use crate::{
    kernel::{cgroup_of_pid, fd_file, fill_process_lite, off, read, read_ptr},
    maps::{record_lane, reserve, submit_flags},
    policy::kill_runtime_socket,
};

/// A unix connect between its entry and its exit, per thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    fd: u32,
    len: u32,
    /// The caller was killed at the entry (the path typed is a runtime's).
    killed: u32,
    _pad: u32,
    path: [u8; UNIX_PATH_MAX],
}

#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(4096, 0);

// syscalls/sys_enter_connect: long connect(int fd, struct sockaddr *uservaddr, int addrlen)
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let (fd_off, addr_off, len_off) = (off!(tp_connect_fd), off!(tp_connect_addr), off!(tp_connect_addrlen));
    // SAFETY: offsets come from the tracepoint's format file; read_at goes through
    // bpf_probe_read, which fails instead of faulting.
    let read = |off| unsafe { ctx.read_at::<u64>(off) };
    let (Ok(fd), Ok(addr), Ok(len)) = (read(fd_off), read(addr_off), read(len_off)) else {
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
    let mut p = Pending { fd: fd as u32, len: 0, killed: 0, _pad: 0, path: [0u8; UNIX_PATH_MAX] };
    // SAFETY: destination is the UNIX_PATH_MAX-byte array; n <= UNIX_PATH_MAX.
    let rc = unsafe { read_user_raw(p.path.as_mut_ptr() as *mut _, n as u32, (addr + 2) as *const _) };
    if rc == 0 {
        p.len = n as u32;
    }
    // The path as typed is the runtime's own: no need to wait for the exit to kill.
    if rc == 0 && kill_runtime_socket(current_cgroup(), current_tgid(), &p.path) {
        crate::maps::kill_current(refusal::KILL_RUNTIME_SOCKET);
        p.killed = 1;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = PENDING.insert(&tid, &p, 0);
    0
}

// syscalls/sys_exit_connect: long ret of connect(int fd, struct sockaddr *uservaddr, int addrlen): 0 or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a lookup in our own map; the value is copied out before it is removed.
    let Some(pending) = (unsafe { PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(&tid);
    let ret_off = off!(tp_exit_ret);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let ret = unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(-1);
    let mut peer = [0u8; UNIX_PATH_MAX];
    let mut reached = Reached::default();
    let mut killed = pending.killed != 0;
    if ret == 0 {
        reached = resolve(pending.fd, &mut peer);
        // What the caller reached, not what it typed: SIGKILL is delivered on the way back to
        // user space, before the connection can carry a byte.
        if !killed && reached.peer_len > 0 && kill_runtime_socket(current_cgroup(), current_tgid(), &peer) {
            crate::maps::kill_current(refusal::KILL_RUNTIME_SOCKET);
            killed = true;
        }
    }
    // A killed caller's record goes on the alert lane, within its container's budget.
    let Some(lane) = record_lane(current_cgroup(), killed.then_some(refusal::KILL_RUNTIME_SOCKET)) else {
        return 0;
    };
    let Some(mut entry) = reserve::<UnixConnectEvent>(lane, kind::UNIX_CONNECT) else { return 0 };
    // SAFETY: reservation of exactly size_of::<UnixConnectEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_process_lite(&mut ev.hdr, kind::UNIX_CONNECT);
    if killed {
        ev.hdr.flags |= flags::KILLED;
    }
    ev.path_len = pending.len;
    ev.path = pending.path;
    ev.ret = ret as i32;
    ev.peer_len = reached.peer_len;
    ev.peer = peer;
    ev.peer_pid = reached.peer_pid;
    ev.peer_cgroup = reached.peer_cgroup;
    entry.submit(submit_flags(lane));
    0
}

#[derive(Default)]
struct Reached {
    peer_len: u32,
    peer_pid: u32,
    peer_cgroup: u64,
}

/// For the connected unix socket behind `fd`: the address its peer was bound to (copied into
/// `peer`), and the process listening there (`sk_peer_pid`, set by the connect) with its
/// cgroup.
#[inline(always)]
fn resolve(fd: u32, peer: &mut [u8; UNIX_PATH_MAX]) -> Reached {
    let mut r = Reached::default();
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Some(sk) = fd_file(task, fd)
        .and_then(|file| read_ptr(file, off!(file_private_data)))
        .and_then(|socket| read_ptr(socket, off!(socket_sk)))
    else {
        return r;
    };
    if let Some(pid) = read_ptr(sk, off!(sock_peer_pid)) {
        // numbers[0] is the pid in the initial namespace (`struct upid` starts with `nr`).
        r.peer_pid = read::<u32>(pid, off!(pid_numbers)).unwrap_or(0);
        r.peer_cgroup = cgroup_of_pid(pid);
    }
    // unix_sock embeds its sock first: the peer's unix_sock fields are at its sock's address.
    let Some(addr) = read_ptr(sk, off!(unix_peer)).and_then(|other| read_ptr(other, off!(unix_addr))) else {
        return r;
    };
    // `len` counts the 2-byte family; a path's bound length includes its NUL.
    let len = read::<i32>(addr, off!(unix_address_len)).unwrap_or(0) as usize;
    let n = len.saturating_sub(2);
    if n == 0 || n > UNIX_PATH_MAX {
        return r;
    }
    let name = addr.wrapping_add(off!(unix_address_name) + 2);
    // SAFETY: destination is the UNIX_PATH_MAX-byte array; 0 < n <= UNIX_PATH_MAX bytes are read.
    if unsafe { bpf_probe_read_kernel(peer.as_mut_ptr() as *mut _, n as u32, name as *const _) } == 0 {
        // A path's trailing NUL is not part of the name.
        r.peer_len = if peer.get(n - 1) == Some(&0) { n as u32 - 1 } else { n as u32 };
    }
    r
}

#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: helper without pointer arguments.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}
