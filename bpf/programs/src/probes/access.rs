//! Cross-process access at the syscall (strict set): ptrace attach/seize, process_vm_readv and
//! process_vm_writev, and opens of /proc/<pid>/{mem,environ,root,cwd,maps,ns,task}... of
//! another process. Opens are filtered in the kernel: other paths never leave it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str, bpf_send_signal},
    },
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use sidewall_common::{
    ACCESS_PATH_MAX, AccessEvent, access_op, kind,
    wire::{PROC_SUPER_MAGIC, PTRACE_ATTACH, PTRACE_SEIZE, SIGKILL},
};

use crate::{
    kernel::{fill_current, off, read, read_ptr},
    maps::{EVENTS, count_drop, wakeup},
};

/// Threads whose open the entry hook already reported from its path; the exit hook, which
/// looks at the opened file itself, then stays silent for that open.
#[map]
static OPEN_REPORTED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

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
    emit(op, pid, None);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_readv")]
pub fn sys_enter_process_vm_readv(ctx: TracePointContext) -> u32 {
    vm(&ctx, access_op::VM_READV)
}

#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    vm(&ctx, access_op::VM_WRITEV)
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    proc_open(&ctx, off!(tp_openat_filename))
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    proc_open(&ctx, off!(tp_open_filename))
}

// The opened file, whatever path led to it (relative to a working directory or a directory
// descriptor under /proc, openat2): /proc/<pid>/{environ,mem,maps} of another process.
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    opened(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    opened(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    opened(&ctx)
}

#[inline(always)]
fn opened(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a lookup in our own map.
    let reported = unsafe { OPEN_REPORTED.get(&tid) }.is_some();
    if reported {
        let _ = OPEN_REPORTED.remove(&tid);
    }
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let fd = unsafe { ctx.read_at::<i64>(off!(tp_exit_ret)) }.unwrap_or(-1);
    if fd < 0 {
        return 0;
    }
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut name = [0u8; ACCESS_PATH_MAX];
    let Some((pid, len, target_cgroup)) = proc_file(task, fd as u32, &mut name) else { return 0 };
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if crate::policy::kill_access(cgroup, (pid_tgid >> 32) as u32, target_cgroup) {
        // The file is open but never read: SIGKILL lands on the way back to user space.
        // SAFETY: signals the current task only.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    if !reported {
        emit(access_op::PROC_FILE, pid, Some((&name, len)));
    }
    0
}

/// For fd `fd` of `task` open on a per-process procfs file named environ, mem or maps: the
/// host pid it belongs to and that process's cgroup (0 if unknown), with the file name copied
/// into `name`.
#[inline(always)]
fn proc_file(task: *const u8, fd: u32, name: &mut [u8; ACCESS_PATH_MAX]) -> Option<(u32, u32, u64)> {
    let fdt = read_ptr(read_ptr(task, off!(task_files))?, off!(files_fdt))?;
    if fd >= read::<u32>(fdt, off!(fdtable_max_fds))? {
        return None;
    }
    let file = read_ptr(read_ptr(fdt, off!(fdtable_fd))?, fd as usize * 8)?;
    let inode = read_ptr(file, off!(file_inode))?;
    if read::<u64>(read_ptr(inode, off!(inode_sb))?, off!(sb_magic))? != PROC_SUPER_MAGIC {
        return None;
    }
    // container_of(inode, struct proc_inode, vfs_inode)->pid: null for /proc's own files.
    let pid = read_ptr(inode.wrapping_sub(off!(proc_inode_vfs_inode)), off!(proc_inode_pid))?;
    // numbers[0] is the pid in the initial namespace (`struct upid` starts with `nr`).
    let nr = read::<u32>(pid, off!(pid_numbers))?;
    let dentry = read_ptr(file, off!(file_path) + off!(path_dentry))?;
    let text = read_ptr(dentry, off!(dentry_name_ptr))?;
    // SAFETY: destination is the ACCESS_PATH_MAX-byte array; at most 16 bytes are read.
    let n = unsafe { bpf_probe_read_kernel_str(name.as_mut_ptr() as *mut _, 16, text as *const _) };
    if n <= 0 {
        return None;
    }
    let secret =
        matches!((name[0], name[1], name[2]), (b'e', b'n', b'v') | (b'm', b'e', b'm') | (b'm', b'a', b'p'));
    secret.then(|| (nr, n as u32 - 1, cgroup_of_pid(pid)))
}

/// The cgroup v2 id of the first task of `pid`, 0 if it cannot be read.
#[inline(always)]
fn cgroup_of_pid(pid: *const u8) -> u64 {
    let Some(link) = read_ptr(pid, off!(pid_tasks)) else { return 0 };
    let target = link.wrapping_sub(off!(task_pid_links));
    read_ptr(target, off!(task_cgroups))
        .and_then(|cset| read_ptr(cset, off!(css_set_dfl_cgrp)))
        .and_then(|cgrp| read_ptr(cgrp, off!(cgroup_kn)))
        .and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)))
        .unwrap_or(0)
}

#[inline(always)]
fn vm(ctx: &TracePointContext, op: u32) -> u32 {
    let pid_off = off!(tp_vm_pid);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let pid = unsafe { ctx.read_at::<u64>(pid_off) }.unwrap_or(0) as u32;
    emit(op, pid, None);
    0
}

/// The pid in "/proc/<pid>/<sensitive>...", if `p` is such a path of another process.
#[inline(always)]
fn proc_target(p: &[u8; ACCESS_PATH_MAX]) -> Option<u32> {
    if p[0] != b'/' || p[1] != b'p' || p[2] != b'r' || p[3] != b'o' || p[4] != b'c' || p[5] != b'/' {
        return None;
    }
    let mut pid: u32 = 0;
    let mut i = 6;
    while i < 17 {
        let c = p[i];
        if c.is_ascii_digit() {
            pid = pid.wrapping_mul(10).wrapping_add((c - b'0') as u32);
            i += 1;
        } else {
            break;
        }
    }
    if i == 6 || i >= 17 || p[i] != b'/' {
        return None;
    }
    // mem, maps, environ, root, cwd, ns/, task/ (threads' copies of the same files).
    let (a, b) = (p[i + 1], p[i + 2]);
    let sensitive = matches!(
        (a, b),
        (b'm', b'e')
            | (b'm', b'a')
            | (b'e', b'n')
            | (b'r', b'o')
            | (b'c', b'w')
            | (b'n', b's')
            | (b't', b'a')
    );
    sensitive.then_some(pid)
}

#[inline(always)]
fn proc_open(ctx: &TracePointContext, name_off: usize) -> u32 {
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let Ok(name) = (unsafe { ctx.read_at::<u64>(name_off) }) else {
        return 0;
    };
    let mut path = [0u8; ACCESS_PATH_MAX];
    // SAFETY: destination is a stack array of ACCESS_PATH_MAX bytes.
    let n = unsafe {
        bpf_probe_read_user_str(path.as_mut_ptr() as *mut _, ACCESS_PATH_MAX as u32, name as *const _)
    };
    if n <= 0 {
        return 0;
    }
    let Some(pid) = proc_target(&path) else { return 0 };
    emit(access_op::PROC_OPEN, pid, Some((&path, n as u32 - 1)));
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OPEN_REPORTED.insert(&tid, &1, 0);
    0
}

#[inline(always)]
fn emit(op: u32, target: u32, path: Option<(&[u8; ACCESS_PATH_MAX], u32)>) {
    // A process reading its own /proc entries is not an access to another.
    if target == 0 || target == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<AccessEvent>(0) else {
        count_drop(kind::ACCESS);
        return;
    };
    // SAFETY: reservation of exactly size_of::<AccessEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    fill_current(&mut ev.hdr, kind::ACCESS, task);
    ev.op = op;
    ev.target_pid = target;
    ev._pad = 0;
    match path {
        Some((p, len)) => {
            ev.path = *p;
            ev.path_len = len;
        }
        None => {
            ev.path = [0; ACCESS_PATH_MAX];
            ev.path_len = 0;
        }
    }
    entry.submit(wakeup());
}
