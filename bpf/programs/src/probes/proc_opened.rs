//! The file an open returned, whatever path led to it (relative to a working directory or a
//! directory descriptor under /proc, openat2): another process's /proc/<pid>/{environ,mem,maps}
//! (strict set). Followed from the fd through `task->files->fdt` with BTF offsets; a policy
//! that kills for it does so before the file can be read.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_probe_read_kernel_str, bpf_send_signal},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sidewall_common::{
    ACCESS_PATH_MAX, access_op,
    wire::{PROC_SUPER_MAGIC, SIGKILL},
};

use super::access::{OPEN_REPORTED, emit};
use crate::kernel::{off, read, read_ptr};

// syscalls/sys_exit_openat: long ret of openat(int dfd, const char *filename, int flags, umode_t mode): fd or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    opened(&ctx)
}

// syscalls/sys_exit_openat2: long ret of openat2(int dfd, const char *filename, struct open_how *how, size_t usize): fd or -errno
#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    opened(&ctx)
}

// syscalls/sys_exit_open: long ret of open(const char *filename, int flags, umode_t mode): fd or -errno
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
    let ret_off = off!(tp_exit_ret);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let fd = unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(-1);
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
