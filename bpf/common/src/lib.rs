//! The ABI between sidewall's eBPF programs and its daemon.
//!
//! Every type here is `#[repr(C)]`, has explicit padding and is read by userspace with
//! `read_unaligned` from ring-buffer records. Changing a layout means changing both sides
//! in one commit; the daemon checks record sizes and rejects records that do not fit.
#![no_std]

pub mod destination;

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

/// Numbers the kernel defines and both sides compare records against: socket families,
/// protocols and TCP states as `SockEvent` and sock_diag carry them, ptrace requests, the
/// procfs magic, signals. Defined here once; the programs and the daemon both use these.
pub mod wire {
    /// Socket families (`sa_family_t`, include/linux/socket.h), as `SockEvent::family`.
    pub const AF_UNIX: u16 = 1;
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;

    /// IP protocols (include/uapi/linux/in.h), as `SockEvent::protocol`.
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;

    /// TCP states (include/net/tcp_states.h), as sock_ops reports them in `SockEvent`'s
    /// `old_state` and `new_state` (`BPF_TCP_*` has the same values) and sock_diag lists them.
    pub const TCP_ESTABLISHED: u8 = 1;
    pub const TCP_SYN_SENT: u8 = 2;
    pub const TCP_SYN_RECV: u8 = 3;
    pub const TCP_FIN_WAIT1: u8 = 4;
    pub const TCP_FIN_WAIT2: u8 = 5;
    pub const TCP_TIME_WAIT: u8 = 6;
    pub const TCP_CLOSE: u8 = 7;
    pub const TCP_CLOSE_WAIT: u8 = 8;
    pub const TCP_LAST_ACK: u8 = 9;
    pub const TCP_LISTEN: u8 = 10;
    pub const TCP_CLOSING: u8 = 11;

    /// ptrace(2) requests that attach to a process (include/uapi/linux/ptrace.h), as the
    /// `request` argument of syscalls/sys_enter_ptrace (a `long`).
    pub const PTRACE_ATTACH: u64 = 16;
    pub const PTRACE_SEIZE: u64 = 0x4206;

    /// `super_block.s_magic` of procfs (include/uapi/linux/magic.h).
    pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;

    /// The inode of the initial pid namespace (`PROC_PID_INIT_INO`, include/linux/proc_ns.h).
    pub const PROC_PID_INIT_INO: u32 = 0xEFFF_FFFC;

    /// The signal the programs send with `bpf_send_signal`.
    pub const SIGKILL: u32 = 9;
}

/// Record kinds, the first `u32` of every ring-buffer record.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const FORK: u32 = 3;
    pub const CGROUP_MKDIR: u32 = 4;
    pub const CGROUP_RMDIR: u32 = 5;
    /// A socket action (`SockEvent`, see `sock_op`).
    pub const SOCK: u32 = 6;
    pub const UNIX_CONNECT: u32 = 7;
    /// setns / unshare, at the syscall (strict set).
    pub const NAMESPACE: u32 = 8;
    /// ptrace attach, process_vm_readv/writev, /proc/<pid>/... opens (strict set).
    pub const ACCESS: u32 = 9;
    /// A write to a loopback-routing sysctl (route_localnet, accept_local).
    pub const SYSCTL: u32 = 10;
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
    /// The record was made outside the acting process's context (softirq, timers): the
    /// header's process fields are not meaningful; the daemon joins by socket cookie.
    pub const NO_PROCESS: u32 = 1 << 5;
    /// The kernel killed the acting process for what the record reports (such records travel
    /// on the alert lane): the daemon reports it whatever else it knows of the process.
    pub const KILLED: u32 = 1 << 6;
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
    /// The parent's namespaces: clone(CLONE_NEW*) shows as a difference with the child's.
    pub parent_ns: Namespaces,
}

/// Namespace syscalls of a `NamespaceEvent`.
pub mod ns_op {
    pub const SETNS: u32 = 1;
    pub const UNSHARE: u32 = 2;
}

/// A setns or unshare, seen at syscall exit. The header's namespaces are the ones after.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NamespaceEvent {
    pub hdr: Header,
    pub before: Namespaces,
    pub op: u32,
    /// setns's nstype, or unshare's flags.
    pub flags: u32,
    /// The syscall's return value: 0, or -errno.
    pub ret: i64,
}

/// What an `AccessEvent` reports.
pub mod access_op {
    pub const PTRACE_ATTACH: u32 = 1;
    pub const PTRACE_SEIZE: u32 = 2;
    pub const VM_READV: u32 = 3;
    pub const VM_WRITEV: u32 = 4;
    pub const PROC_OPEN: u32 = 5;
    /// An open that resolved to another process's /proc file, seen on the opened file (any
    /// path: relative, through a directory descriptor, openat2); `target_pid` is the host's.
    pub const PROC_FILE: u32 = 6;
    /// An open that returned a file of another mount namespace's tree, reached through
    /// /proc/<pid>/{root,cwd,fd/N,map_files/..,exe} of a process there; `target_cgroup` is the
    /// container whose home that mount namespace is.
    pub const FOREIGN_FILE: u32 = 7;
}

/// What the kernel refused or killed, counted per kind (`REFUSALS`), so that every refusal
/// can be checked against the alerts that reported it.
pub mod refusal {
    /// A connect to a destination the rule denies (EPERM).
    pub const CONNECT: u32 = 0;
    /// A datagram to a destination the rule denies (EPERM).
    pub const SEND: u32 = 1;
    /// A bind of a port the rule denies (EPERM).
    pub const BIND: u32 = 2;
    /// A write to a loopback-routing sysctl (EPERM).
    pub const SYSCTL: u32 = 3;
    /// SIGKILL for a namespace change.
    pub const KILL_NAMESPACE: u32 = 4;
    /// SIGKILL for reaching into another container's processes or files.
    pub const KILL_ACCESS: u32 = 5;
    /// SIGKILL for reaching a container runtime's socket.
    pub const KILL_RUNTIME_SOCKET: u32 = 6;
    pub const MAX: u32 = 7;
}

/// Bytes of a /proc path kept in an `AccessEvent`.
pub const ACCESS_PATH_MAX: usize = 64;

/// One process reaching into another: ptrace, process_vm_*, or a /proc/<pid>/ file.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AccessEvent {
    pub hdr: Header,
    pub op: u32,
    pub target_pid: u32,
    pub path_len: u32,
    pub _pad: u32,
    /// The target's cgroup when the kernel resolved it (0: unknown).
    pub target_cgroup: u64,
    pub path: [u8; ACCESS_PATH_MAX],
}

/// Bytes of a cgroup path (relative to the cgroup2 mount) in a cgroup record.
pub const CGROUP_PATH_MAX: usize = 256;

/// `cgroup_mkdir` / `cgroup_rmdir` on the cgroup v2 hierarchy: lets the daemon know a
/// container's cgroup before the container runs its first instruction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    pub hdr: Header,
    /// The id of the created or removed cgroup (not the creating task's).
    pub id: u64,
    pub path_len: u32,
    pub _pad: u32,
    pub path: [u8; CGROUP_PATH_MAX],
}

/// What a `SockEvent` reports.
pub mod sock_op {
    /// connect() on an inet socket, before the handshake (process context).
    pub const CONNECT: u32 = 1;
    /// A completed bind(), with the port actually bound (process context).
    pub const BIND: u32 = 2;
    /// Our connect's handshake completed.
    pub const ESTABLISHED_ACTIVE: u32 = 3;
    /// A connection to one of our listeners completed its handshake.
    pub const ESTABLISHED_PASSIVE: u32 = 4;
    /// A TCP socket reached CLOSE; `old_state` says from where (SYN_SENT: refused or failed).
    pub const CLOSE: u32 = 5;
    /// A datagram sent to an explicit destination (sendto/sendmsg with an address).
    pub const SENDMSG: u32 = 6;
    /// A bound socket was released.
    pub const RELEASE: u32 = 7;
}

/// How the daemon reads the ring buffer (the `RING_MODE` map).
pub mod ring_mode {
    /// It sleeps until a record wakes it.
    pub const WAKE: u32 = 0;
    /// It reads on a short timer; records wake it only when the ring fills up.
    pub const POLLING: u32 = 1;
}

/// `SockEvent::fin` on CLOSE.
pub mod fin {
    /// The kernel's socket flags could not be read; infer from `old_state`.
    pub const UNKNOWN: u8 = 0;
    pub const NOT_RECEIVED: u8 = 1;
    pub const RECEIVED: u8 = 2;
}

/// What enforcement applies to a cgroup (bits of the `ENFORCE` map's value).
pub mod enforce {
    /// Loopback connects and sends only to ports in `CONNECT_ALLOW`.
    pub const LOOPBACK: u32 = 1 << 0;
    /// Binds only to ports in `BIND_ALLOW`.
    pub const BIND: u32 = 1 << 1;
    /// Non-loopback connects and sends only to ranges in `EGRESS_ALLOW`.
    pub const EGRESS: u32 = 1 << 2;
    /// setns, unshare and clone into new namespaces kill the caller.
    pub const KILL_NAMESPACE: u32 = 1 << 3;
    /// Writes to loopback-routing sysctls fail with EPERM.
    pub const SYSCTL: u32 = 1 << 4;
    /// A connect to a container runtime's unix socket kills the caller (strict set).
    pub const KILL_RUNTIME_SOCKET: u32 = 1 << 5;
    /// Opening another container's process's environ, mem or maps kills the caller (strict set).
    pub const KILL_ACCESS: u32 = 1 << 6;
}

/// Key of `CONNECT_ALLOW` and `BIND_ALLOW`: a cgroup and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub cgroup_id: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Data of an `EGRESS_ALLOW` LPM key: a cgroup (always matched whole, 64 bits of prefix) and
/// an IPv6 address (IPv4 as ::ffff:a.b.c.d).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupAddr {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

/// Verdicts of the cgroup socket hooks.
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    pub const DENIED: u8 = 1;
}

/// A socket action. Addresses are in network byte order (IPv4 in the first 4 bytes); ports
/// are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockEvent {
    pub hdr: Header,
    pub op: u32,
    /// `wire::AF_INET` or `wire::AF_INET6`.
    pub family: u16,
    /// `wire::IPPROTO_TCP` or `wire::IPPROTO_UDP`.
    pub protocol: u8,
    pub verdict: u8,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// On CLOSE: TCP states (`wire::TCP_*`) before and after.
    pub old_state: u8,
    pub new_state: u8,
    /// On CLOSE: whether the peer's FIN was received (`fin::*`), which the state alone
    /// cannot tell for a socket closed in FIN_WAIT2.
    pub fin: u8,
    pub _pad: u8,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// Datagrams this record stands for (repeats to one destination are folded in the kernel).
    pub count: u32,
    pub _pad2: u32,
}

/// Bytes of `sun_path` (`struct sockaddr_un`).
pub const UNIX_PATH_MAX: usize = 108;

/// connect() on a unix socket (strict sensor set: syscall tracepoints), seen at its exit: the
/// path as the caller spelled it, and what it reached, as the kernel resolved it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnixConnectEvent {
    pub hdr: Header,
    /// Bytes of `path` given by the caller (abstract names start with a NUL byte).
    pub path_len: u32,
    /// connect's return value: 0, or -errno.
    pub ret: i32,
    /// Bytes of `peer`.
    pub peer_len: u32,
    /// The host pid of the process that listens on the socket reached (0: unknown).
    pub peer_pid: u32,
    /// That process's cgroup (its container; 0: unknown).
    pub peer_cgroup: u64,
    pub path: [u8; UNIX_PATH_MAX],
    /// The address the socket reached was bound to, as its owner bound it (the runtime's own
    /// path for its socket), whatever path, link or mount the caller went through.
    pub peer: [u8; UNIX_PATH_MAX],
}

/// Bytes of a sysctl path ("net/ipv4/conf/all/route_localnet") and of a written value.
pub const SYSCTL_NAME_MAX: usize = 64;
pub const SYSCTL_VALUE_MAX: usize = 16;

/// A write to a loopback-routing sysctl, from `cgroup/sysctl`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysctlEvent {
    pub hdr: Header,
    pub verdict: u8,
    pub _pad: [u8; 7],
    pub name: [u8; SYSCTL_NAME_MAX],
    pub value: [u8; SYSCTL_VALUE_MAX],
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
    pub upid_nr: u32,

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
    /// `mount.mnt_ns`: the mount namespace a mount belongs to.
    pub mount_ns: u32,
    pub vfsmount_root: u32,

    pub cgroup_kn: u32,
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
    pub kernfs_node_id: u32,

    /// The opened file of an fd: `task->files->fdt->fd[n]`, its inode and filesystem, and the
    /// task a procfs inode belongs to (`proc_inode.pid`, before the embedded `vfs_inode`).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_path: u32,
    pub inode_sb: u32,
    pub sb_magic: u32,
    pub proc_inode_pid: u32,
    pub proc_inode_vfs_inode: u32,
    /// A pid's first task (`pid.tasks[PIDTYPE_PID]`, linked through `task.pid_links[0]`) and
    /// a task's cgroup v2 cgroup (`task->cgroups->dfl_cgrp`).
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    /// The tasks a tracer traces (`task.ptraced`, newest first, linked by `task.ptrace_entry`).
    pub task_ptraced: u32,
    pub task_ptrace_entry: u32,

    /// A socket file's `struct socket` (`file.private_data`), its `sock`, the process that
    /// listens at the other end (`sock.sk_peer_pid`), and a unix socket's peer and the
    /// address that peer was bound to (`unix_sock.peer`, `unix_sock.addr`, `unix_address.len`
    /// and `.name`).
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_peer_pid: u32,
    pub unix_peer: u32,
    pub unix_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `sock.sk_flags` and the bit of `SOCK_DONE` in it (set when the peer's FIN arrives).
    pub sock_flags: u32,
    pub sock_done_bit: u32,

    /// Offset of the `uservaddr` and `addrlen` arguments in the syscalls/sys_enter_connect
    /// tracepoint record, from its format file.
    pub tp_connect_fd: u32,
    pub tp_connect_addr: u32,
    pub tp_connect_addrlen: u32,
    /// Syscall tracepoint argument offsets (strict set), from their format files.
    pub tp_setns_flags: u32,
    pub tp_unshare_flags: u32,
    pub tp_exit_ret: u32,
    pub tp_ptrace_request: u32,
    pub tp_ptrace_pid: u32,
    pub tp_vm_pid: u32,
    pub tp_openat_filename: u32,
    pub tp_open_filename: u32,
}

/// The alert lane's budget, written by the daemon into `ALERT_BUDGET` (one entry): each
/// container may put `burst` records on the `ALERTS` ring at once, refilled at `rate` per
/// second, **per CPU** (each CPU keeps its own bucket, so the node-wide bound for one container
/// is `ncpu * rate`). `rate == 0` means no budget (every refusal is sent individually).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct AlertBudget {
    pub rate: u64,
    pub burst: u64,
}

/// A refusal the kernel did not send individually (over its container's budget), counted in
/// `ALERT_AGG` under this key: the epoch (`ALERT_EPOCH`, flipped by the daemon once a
/// second), the container's cgroup, the `refusal` kind and the destination (address and
/// port of a connect or send, the port of a bind; zero for other kinds).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub cgroup: u64,
    pub addr: [u8; 16],
    pub epoch: u32,
    pub kind: u16,
    pub port: u16,
}

/// Per CPU: how many refusals under an `AggKey`, the first and last (boot-time ns).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct AggCount {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// One record of the `task_pids` iterator: a process (thread-group leader) as the kernel
/// numbers it (initial pid namespace), as the daemon's pid namespace numbers it (0: not
/// visible there), and its cgroup v2 id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskPids {
    pub kernel_pid: u32,
    pub ns_pid: u32,
    pub cgroup_id: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and byte arrays, and
    // have explicit padding, so any bit pattern is valid.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Header {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::CgroupAddr {}
    unsafe impl aya::Pod for super::AlertBudget {}
    unsafe impl aya::Pod for super::AggKey {}
    unsafe impl aya::Pod for super::AggCount {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    // The kernel side reserves these exact sizes; a silent change would misalign every record.
    #[test]
    fn record_sizes_are_stable() {
        // The alert lane's map keys and values: no implicit padding (hash keys compare bytes).
        assert_eq!(size_of::<AlertBudget>(), 16);
        assert_eq!(size_of::<AggKey>(), 32);
        assert_eq!(size_of::<AggCount>(), 24);
        assert_eq!(size_of::<Namespaces>(), 40);
        assert_eq!(size_of::<Header>(), 88);
        assert_eq!(size_of::<ExitEvent>(), 96);
        assert_eq!(size_of::<ForkEvent>(), 128);
        assert_eq!(size_of::<NamespaceEvent>(), 88 + 40 + 16);
        assert_eq!(size_of::<AccessEvent>(), 88 + 24 + ACCESS_PATH_MAX);
        assert_eq!(size_of::<SysctlEvent>(), 88 + 8 + SYSCTL_NAME_MAX + SYSCTL_VALUE_MAX);
        assert_eq!(size_of::<CgroupEvent>(), 88 + 16 + CGROUP_PATH_MAX);
        assert_eq!(size_of::<SockEvent>(), 88 + 8 + 16 + 32 + 8 + 16 + 8);
        assert_eq!(size_of::<UnixConnectEvent>(), 88 + 24 + 2 * UNIX_PATH_MAX);
        assert_eq!(size_of::<ExecEvent>(), 88 + 16 + FILENAME_MAX + ARGS_MAX + CWD_BUF);
    }
}
