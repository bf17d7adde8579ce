//! Reads of kernel memory at BTF-resolved offsets, and the record header every probe fills.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    bpf_probe_read_kernel,
};
use sidewall_common::{Header, Namespaces, Offsets, flags};

/// Filled in by the daemon before load (`EbpfLoader::override_global`). All zero means the
/// daemon did not resolve them, and every read below then fails cleanly.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// One offset, read through a volatile load so the compiler cannot fold the zero default.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&crate::kernel::offsets().$field) } as usize
    };
}
pub(crate) use off;

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    &OFFSETS
}

/// Reads a `T` at `base + off`. `None` on a null base or a failed read.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, off: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address; it fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const T).ok() }
}

#[inline(always)]
pub fn read_ptr(base: *const u8, off: usize) -> Option<*const u8> {
    read::<*const u8>(base, off).filter(|p| !p.is_null())
}

/// `ns->ns.inum` of the namespace pointer at `owner + ptr_off`.
#[inline(always)]
fn ns_inum(owner: *const u8, ptr_off: usize, inum_off: usize) -> u32 {
    read_ptr(owner, ptr_off).and_then(|ns| read::<u32>(ns, inum_off)).unwrap_or(0)
}

/// The pid namespace the task lives in (not the one its children get):
/// `task->thread_pid->numbers[level].ns`.
#[inline(always)]
fn active_pid_ns_inum(task: *const u8) -> u32 {
    let Some(pid) = read_ptr(task, off!(task_thread_pid)) else {
        return 0;
    };
    let level = read::<u32>(pid, off!(pid_level)).unwrap_or(0) as usize;
    let upid = off!(pid_numbers) + level * off!(upid_size);
    ns_inum(pid, upid + off!(upid_ns), off!(pid_inum))
}

/// The inode of `task`'s mount namespace (0 when unreadable).
#[inline(always)]
pub fn mnt_ns_inum(task: *const u8) -> u32 {
    read_ptr(task, off!(task_nsproxy))
        .map_or(0, |nsproxy| ns_inum(nsproxy, off!(nsproxy_mnt), off!(mnt_inum)))
}

/// The inode of the mount namespace of `task`'s real parent (0 when unreadable).
#[inline(always)]
pub fn parent_mnt_ns_inum(task: *const u8) -> u32 {
    read_ptr(task, off!(task_real_parent)).map_or(0, mnt_ns_inum)
}

/// All namespace inodes of `task`. Returns false when the task has no nsproxy (exiting).
#[inline(always)]
pub fn read_namespaces(task: *const u8, ns: &mut Namespaces) -> bool {
    let Some(nsproxy) = read_ptr(task, off!(task_nsproxy)) else {
        return false;
    };
    ns.uts = ns_inum(nsproxy, off!(nsproxy_uts), off!(uts_inum));
    ns.ipc = ns_inum(nsproxy, off!(nsproxy_ipc), off!(ipc_inum));
    ns.mnt = ns_inum(nsproxy, off!(nsproxy_mnt), off!(mnt_inum));
    ns.pid_for_children = ns_inum(nsproxy, off!(nsproxy_pid_for_children), off!(pid_inum));
    ns.net = ns_inum(nsproxy, off!(nsproxy_net), off!(net_inum));
    ns.time = ns_inum(nsproxy, off!(nsproxy_time), off!(time_inum));
    ns.time_for_children = ns_inum(nsproxy, off!(nsproxy_time_for_children), off!(time_inum));
    ns.cgroup = ns_inum(nsproxy, off!(nsproxy_cgroup), off!(cgroup_inum));
    ns.pid = active_pid_ns_inum(task);
    if let Some(cred) = read_ptr(task, off!(task_cred)) {
        ns.user = ns_inum(cred, off!(cred_user_ns), off!(user_inum));
    }
    true
}

/// Thread-group id of `task`'s real parent.
#[inline(always)]
pub fn parent_tgid(task: *const u8) -> u32 {
    read_ptr(task, off!(task_real_parent))
        .and_then(|parent| read::<u32>(parent, off!(task_tgid)))
        .unwrap_or(0)
}

/// Fills the header fields that need no kernel memory reads (socket hooks may not read the
/// task): the process is resolved in userspace from its pid.
#[inline(always)]
pub fn fill_process_lite(hdr: &mut Header, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    *hdr = Header::default();
    hdr.kind = kind;
    // SAFETY: helpers without pointer arguments.
    hdr.ktime = unsafe { bpf_ktime_get_boot_ns() };
    hdr.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hdr.pid = (pid_tgid >> 32) as u32;
    hdr.tid = pid_tgid as u32;
    hdr.uid = uid_gid as u32;
    hdr.gid = (uid_gid >> 32) as u32;
    hdr.flags = flags::NS_UNKNOWN;
}

/// A header for records made outside any process's context (softirq).
#[inline(always)]
pub fn fill_no_process(hdr: &mut Header, kind: u32) {
    *hdr = Header::default();
    hdr.kind = kind;
    // SAFETY: helper without pointer arguments.
    hdr.ktime = unsafe { bpf_ktime_get_boot_ns() };
    hdr.flags = flags::NO_PROCESS | flags::NS_UNKNOWN;
}

/// Fills a header for the current task, whose `task_struct` is `task`: the lite fields, and
/// the parent and namespaces read from the task.
#[inline(always)]
pub fn fill_current(hdr: &mut Header, kind: u32, task: *const u8) {
    fill_process_lite(hdr, kind);
    hdr.flags = 0;
    hdr.ppid = parent_tgid(task);
    if !read_namespaces(task, &mut hdr.ns) {
        hdr.flags |= flags::NS_UNKNOWN;
    }
}

/// The file behind fd `fd` of `task` (`task->files->fdt->fd[fd]`).
#[inline(always)]
pub fn fd_file(task: *const u8, fd: u32) -> Option<*const u8> {
    let fdt = read_ptr(read_ptr(task, off!(task_files))?, off!(files_fdt))?;
    if fd >= read::<u32>(fdt, off!(fdtable_max_fds))? {
        return None;
    }
    read_ptr(read_ptr(fdt, off!(fdtable_fd))?, fd as usize * 8)
}

/// The cgroup v2 id of the first task of `pid`, 0 if it cannot be read.
#[inline(always)]
pub fn cgroup_of_pid(pid: *const u8) -> u64 {
    let Some(link) = read_ptr(pid, off!(pid_tasks)) else { return 0 };
    cgroup_of_task(link.wrapping_sub(off!(task_pid_links)))
}

/// The cgroup v2 id of `task` (`task->cgroups->dfl_cgrp->kn->id`), 0 if it cannot be read.
#[inline(always)]
pub fn cgroup_of_task(task: *const u8) -> u64 {
    read_ptr(task, off!(task_cgroups))
        .and_then(|cset| read_ptr(cset, off!(css_set_dfl_cgrp)))
        .and_then(|cgrp| read_ptr(cgrp, off!(cgroup_kn)))
        .and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)))
        .unwrap_or(0)
}
