//! One file per kernel hook (or per family of hooks that share one record).
mod access;
mod cgroup;
mod exec;
mod exit;
mod fork;
pub mod namespace;
mod proc_open;
mod proc_opened;
mod process_vm;
mod ptrace;
mod sock;
mod sock_addr;
mod sock_bind;
mod sock_ops;
mod sysctl;
mod unix_connect;

/// What a cgroup hook returns to let the operation proceed.
const ALLOW: i32 = 1;
/// What a cgroup hook returns to refuse it: the caller gets EPERM (from post_bind, the bind
/// is undone).
const DENY: i32 = 0;
