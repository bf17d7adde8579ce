//! The ABI between sidewall's eBPF programs and its daemon.
//!
//! Every type here is `#[repr(C)]`, has explicit padding and is read by userspace with
//! `read_unaligned` from ring-buffer records. Changing a layout means changing both sides
//! in one commit; the daemon checks record sizes and rejects records that do not fit.
#![no_std]

/// Bytes of `argv` copied per exec; longer argument lists are cut and flagged.
pub const ARGS_MAX: usize = 1024;
/// Bytes of the path given to execve.
pub const FILENAME_MAX: usize = 256;
/// Bytes of one cwd slot: a NUL-terminated path component (longer names are cut).
pub const CWD_SLOT: usize = 128;
/// Steps of the cwd walk, leaf first; a step either fills its slot with a component or
/// leaves it empty (it crossed a mount point). Deeper paths are cut and flagged.
/// Fixed slots, rather than packing, keep the verifier's state per step independent of the
/// names seen, so the walk verifies in linear time.
pub const CWD_MAX_DEPTH: usize = 24;
pub const CWD_BUF: usize = CWD_SLOT * CWD_MAX_DEPTH;

/// Record kinds, the first `u32` of every ring-buffer record.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const FORK: u32 = 3;
    /// Number of slots in the per-kind drop counter map.
    pub const MAX: u32 = 16;
}

/// Bits of [`Header::flags`].
pub mod flags {
    pub const ARGS_TRUNCATED: u32 = 1 << 0;
    pub const FILENAME_TRUNCATED: u32 = 1 << 1;
    pub const CWD_TRUNCATED: u32 = 1 << 2;
    /// The cwd walk failed (no fs_struct, unreadable dentry): cwd is unknown, not "/".
    pub const CWD_UNKNOWN: u32 = 1 << 3;
    /// A kernel read of the task's namespaces failed; the inodes are zero.
    pub const NS_UNKNOWN: u32 = 1 << 4;
}

/// Namespace inode numbers of a task (the numbers `ls -l /proc/PID/ns` shows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub uts: u32,
    pub ipc: u32,
    pub mnt: u32,
    pub pid: u32,
    pub pid_for_children: u32,
    pub net: u32,
    pub time: u32,
    pub time_for_children: u32,
    pub cgroup: u32,
    pub user: u32,
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns` when the event happened.
    pub ktime: u64,
    /// Thread-group id (what userspace calls the pid).
    pub pid: u32,
    pub tid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// cgroup v2 id of the task: the inode of its cgroup directory.
    pub cgroup_id: u64,
    pub ns: Namespaces,
}

/// `sched_process_exec`: a task replaced its image.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: Header,
    /// Bytes used in `args` (NUL-separated argv).
    pub args_len: u32,
    /// Bytes used in `filename`, without the NUL.
    pub filename_len: u32,
    /// Slots of `cwd` the walk used, leaf first.
    pub cwd_slots: u32,
    pub _pad: u32,
    pub filename: [u8; FILENAME_MAX],
    pub args: [u8; ARGS_MAX],
    pub cwd: [u8; CWD_BUF],
}

/// `sched_process_exit` of the last thread of a thread group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub hdr: Header,
    /// `task->exit_code`: `status << 8 | signal`, as wait(2) reports it.
    pub exit_code: u32,
    pub _pad: u32,
}

/// `sched_process_fork` creating a new thread group. The header describes the child.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub hdr: Header,
}

/// Byte offsets of the kernel struct fields the programs read, resolved by the daemon from
/// the running kernel's BTF and written into the programs' read-only data before load.
/// A zero offset for a pointer chain means "not resolved": the programs then skip the read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_real_parent: u32,
    pub task_nsproxy: u32,
    pub task_cred: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_thread_pid: u32,

    pub signal_live: u32,

    pub nsproxy_uts: u32,
    pub nsproxy_ipc: u32,
    pub nsproxy_mnt: u32,
    pub nsproxy_pid_for_children: u32,
    pub nsproxy_net: u32,
    pub nsproxy_time: u32,
    pub nsproxy_time_for_children: u32,
    pub nsproxy_cgroup: u32,
    pub cred_user_ns: u32,

    /// Offset of `ns.inum` inside each namespace struct.
    pub uts_inum: u32,
    pub ipc_inum: u32,
    pub mnt_inum: u32,
    pub pid_inum: u32,
    pub net_inum: u32,
    pub time_inum: u32,
    pub cgroup_inum: u32,
    pub user_inum: u32,

    /// `struct pid`: `level`, `numbers[]`; `struct upid`: size and `ns`.
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_ns: u32,

    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_filename: u32,

    pub fs_pwd: u32,
    pub fs_root: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name_ptr: u32,
    /// `container_of(vfsmount, struct mount, mnt)`: offset of `mnt` in `struct mount`.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and byte arrays, and
    // have explicit padding, so any bit pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Header {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    // The kernel side reserves these exact sizes; a silent change would misalign every record.
    #[test]
    fn record_sizes_are_stable() {
        assert_eq!(size_of::<Namespaces>(), 40);
        assert_eq!(size_of::<Header>(), 88);
        assert_eq!(size_of::<ExitEvent>(), 96);
        assert_eq!(size_of::<ForkEvent>(), 88);
        assert_eq!(
            size_of::<ExecEvent>(),
            88 + 16 + FILENAME_MAX + ARGS_MAX + CWD_BUF
        );
    }
}
