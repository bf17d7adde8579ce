//! One file per kernel hook (or per family of hooks that share one record); `sock.rs` fills
//! the `SockEvent` records of the socket hooks, `access.rs` holds what the access probes share.
//! Above each hook, one line names the tracepoint (with its prototype) or the kernel function
//! that runs it, and the arguments or context fields it relies on. Numbers the kernel defines
//! come from `sidewall_common::wire`.
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
mod task_iter;
mod unix_connect;

/// What a cgroup hook returns to let the operation proceed.
const ALLOW: i32 = 1;
/// What a cgroup hook returns to refuse it: the caller gets EPERM (from post_bind, the bind
/// is undone).
const DENY: i32 = 0;
