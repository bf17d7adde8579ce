//! One file per kernel hook (or per family of hooks that share one record).
mod access;
mod cgroup;
mod exec;
mod exit;
mod fork;
pub mod namespace;
mod sock_addr;
mod sock_bind;
mod sock_ops;
mod sysctl;
mod unix_connect;
