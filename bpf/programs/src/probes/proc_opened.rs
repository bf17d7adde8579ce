//! The file an open returned, whatever path led to it (relative to a working directory or a
//! directory descriptor under /proc, openat2): another process's /proc/<pid>/{environ,mem,maps}
//! (strict set). Followed from the fd through `task->files->fdt` with BTF offsets; a policy
//! that kills for it does so before the file can be read.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::bpf_probe_read_kernel_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sidewall_common::{ACCESS_PATH_MAX, access_op, refusal, wire::PROC_SUPER_MAGIC};

use super::access::{TYPED_OPENS, emit_on};
use crate::{
    kernel::{cgroup_of_pid, fd_file, mnt_ns_inum, off, read, read_ptr},
    maps::record_lane,
};

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
    // SAFETY: a copy out of our own map, before the entry is removed.
    let typed = unsafe { TYPED_OPENS.get(&tid) }.copied();
    if typed.is_some() {
        let _ = TYPED_OPENS.remove(&tid);
    }
    let ret_off = off!(tp_exit_ret);
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let fd = unsafe { ctx.read_at::<i64>(ret_off) }.unwrap_or(-1);
    let mut name = [0u8; ACCESS_PATH_MAX];
    let judged = if fd >= 0 { judge(fd as u32, &mut name) } else { None };
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let mut killed = false;
    if let Some(j) = &judged
        && crate::policy::kill_access(cgroup, (pid_tgid >> 32) as u32, j.target_cgroup)
    {
        // The file is open but never read: SIGKILL lands on the way back to user space.
        crate::maps::kill_current(refusal::KILL_ACCESS);
        killed = true;
    }
    // A killed caller's record goes on the alert lane, within its container's budget.
    let Some(lane) = record_lane(cgroup, killed.then_some(refusal::KILL_ACCESS)) else { return 0 };
    let target_cgroup = judged.as_ref().map_or(0, |j| j.target_cgroup);
    // The path as typed names the target best; the file itself when the path did not.
    if let Some(t) = &typed {
        emit_on(lane, access_op::PROC_OPEN, t.pid, target_cgroup, Some((&t.path, t.len)));
    } else if let Some(j) = judged {
        emit_on(lane, j.op, j.pid, j.target_cgroup, Some((&name, j.len)));
    }
    0
}

/// An opened file that reaches into another process or container.
struct Judged {
    op: u32,
    pid: u32,
    target_cgroup: u64,
    len: u32,
}

/// What the file behind the current task's `fd` reaches into, if anything (its name in `name`).
#[inline(always)]
fn judge(fd: u32, name: &mut [u8; ACCESS_PATH_MAX]) -> Option<Judged> {
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let file = fd_file(task, fd)?;
    if let Some((pid, len, target_cgroup)) = proc_file(file, name) {
        return Some(Judged { op: access_op::PROC_FILE, pid, target_cgroup, len });
    }
    let (target_cgroup, len) = foreign_file(task, file, name)?;
    Some(Judged { op: access_op::FOREIGN_FILE, pid: 0, target_cgroup, len })
}

/// For a file of another mount namespace's tree than the caller's (reached through
/// /proc/<pid>/root, cwd, fd/N, map_files/.., exe of a process there, whatever the path
/// spelled): the container whose home that namespace is, with the file's name in `name`.
#[inline(always)]
fn foreign_file(task: *const u8, file: *const u8, name: &mut [u8; ACCESS_PATH_MAX]) -> Option<(u64, u32)> {
    let vfsmount = read_ptr(file, off!(file_path) + off!(path_mnt))?;
    // container_of(vfsmount, struct mount, mnt)->mnt_ns->ns.inum
    let ns = read_ptr(vfsmount.wrapping_sub(off!(mount_mnt)), off!(mount_ns))?;
    let mnt = read::<u32>(ns, off!(mnt_inum))?;
    if mnt == 0 || mnt == mnt_ns_inum(task) {
        return None;
    }
    let owner = crate::policy::mnt_owner(mnt);
    if owner == 0 {
        return None;
    }
    let len = dentry_name(file, name)?;
    Some((owner, len))
}

/// The name of the file's dentry, copied into `name` (at most 32 bytes); its length.
#[inline(always)]
fn dentry_name(file: *const u8, name: &mut [u8; ACCESS_PATH_MAX]) -> Option<u32> {
    let dentry = read_ptr(file, off!(file_path) + off!(path_dentry))?;
    let text = read_ptr(dentry, off!(dentry_name_ptr))?;
    // SAFETY: destination is the ACCESS_PATH_MAX-byte array; at most 32 bytes are read.
    let n = unsafe { bpf_probe_read_kernel_str(name.as_mut_ptr() as *mut _, 32, text as *const _) };
    (n > 0).then(|| n as u32 - 1)
}

/// For a per-process procfs file that reaches into the process (its memory, environment,
/// mappings, descriptors, mounts, namespaces): the host pid it belongs to and that process's
/// cgroup (0 if unknown), with the file name copied into `name`. The harmless ones (stat,
/// status, cmdline: what ps and top read) are left out.
#[inline(always)]
fn proc_file(file: *const u8, name: &mut [u8; ACCESS_PATH_MAX]) -> Option<(u32, u32, u64)> {
    let inode = read_ptr(file, off!(file_inode))?;
    if read::<u64>(read_ptr(inode, off!(inode_sb))?, off!(sb_magic))? != PROC_SUPER_MAGIC {
        return None;
    }
    // container_of(inode, struct proc_inode, vfs_inode)->pid: null for /proc's own files.
    let pid = read_ptr(inode.wrapping_sub(off!(proc_inode_vfs_inode)), off!(proc_inode_pid))?;
    // numbers[0] is the pid in the initial namespace (`struct upid` starts with `nr`).
    let nr = read::<u32>(pid, off!(pid_numbers))?;
    let len = dentry_name(file, name)?;
    reaches_into(name, len).then(|| (nr, len, cgroup_of_pid(pid)))
}

/// Whether the /proc/<pid>/ entry `name` reaches into the process: environ, mem, maps,
/// map_files, smaps, smaps_rollup, numa_maps, pagemap, auxv, stack, syscall, fd, fdinfo,
/// root, cwd, exe, ns, mountinfo, mounts.
#[inline(always)]
fn reaches_into(name: &[u8; ACCESS_PATH_MAX], len: u32) -> bool {
    let is = |word: &[u8]| len as usize == word.len() && name[..word.len()] == *word;
    // By first letter, so that each name costs the verifier a few comparisons.
    match name[0] {
        b'e' => is(b"environ") || is(b"exe"),
        b'm' => is(b"mem") || is(b"maps") || is(b"map_files") || is(b"mountinfo") || is(b"mounts"),
        b's' => is(b"smaps") || is(b"smaps_rollup") || is(b"stack") || is(b"syscall"),
        b'n' => is(b"numa_maps") || is(b"ns"),
        b'p' => is(b"pagemap"),
        b'a' => is(b"auxv"),
        b'f' => is(b"fd") || is(b"fdinfo"),
        b'r' => is(b"root"),
        b'c' => is(b"cwd"),
        _ => false,
    }
}
