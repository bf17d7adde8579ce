//! Kernel struct field offsets resolved from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the daemon does the relocation itself: it reads
//! `/sys/kernel/btf/vmlinux`, finds each field (descending into anonymous structs and unions)
//! and hands the byte offsets to the programs as the `OFFSETS` global.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use sidewall_common::Offsets;

/// Offset for a field this kernel does not have. Reads at `base + UNRESOLVED` fail, so the
/// programs report zero (unknown) for it instead of reading some other field.
pub const UNRESOLVED: u32 = 0x4000_0000;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF at {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: `{strukt}.{member}` is a bitfield")]
    Bitfield { strukt: String, member: String },
}

/// Loads BTF from `path` (normally `/sys/kernel/btf/vmlinux`) and resolves every offset.
pub fn resolve(path: &Path) -> Result<Offsets, OffsetError> {
    let btf = Btf::from_file(path)
        .map_err(|source| OffsetError::Read { path: path.display().to_string(), source })?;
    let mut o = Resolver { btf: &btf }.offsets()?;
    let tp = |event: &str, field: &str| syscall_tracepoint_field(event, field).unwrap_or(UNRESOLVED);
    o.tp_connect_fd = tp("sys_enter_connect", "fd");
    o.tp_connect_addr = tp("sys_enter_connect", "uservaddr");
    o.tp_connect_addrlen = tp("sys_enter_connect", "addrlen");
    o.tp_setns_flags = tp("sys_enter_setns", "flags");
    o.tp_unshare_flags = tp("sys_enter_unshare", "unshare_flags");
    o.tp_exit_ret = tp("sys_exit_setns", "ret");
    o.tp_ptrace_request = tp("sys_enter_ptrace", "request");
    o.tp_ptrace_pid = tp("sys_enter_ptrace", "pid");
    o.tp_vm_pid = tp("sys_enter_process_vm_readv", "pid");
    o.tp_openat_filename = tp("sys_enter_openat", "filename");
    o.tp_open_filename = tp("sys_enter_open", "filename");
    Ok(o)
}

/// Offset of `field` in a syscalls/<event> tracepoint record, from its format file. Used by
/// the strict sensors only; their load fails cleanly when the file is missing.
fn syscall_tracepoint_field(event: &str, field: &str) -> Option<u32> {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| std::fs::read_to_string(format!("{t}/events/syscalls/{event}/format")).ok())?;
    format_field_offset(&format, field)
}

/// "\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;" -> 32 for "addrlen".
pub fn format_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let decl = parts.next()?.trim().strip_prefix("field:")?;
        if decl.rsplit([' ', '*']).next()? != field {
            return None;
        }
        parts.find_map(|p| p.trim().strip_prefix("offset:")?.parse().ok())
    })
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    fn offsets(&self) -> Result<Offsets, OffsetError> {
        let f = |s: &str, m: &str| self.field(s, m);
        let inum = |s: &str| -> Result<u32, OffsetError> { Ok(f(s, "ns")? + f("ns_common", "inum")?) };
        Ok(Offsets {
            task_tgid: f("task_struct", "tgid")?,
            task_pid: f("task_struct", "pid")?,
            task_real_parent: f("task_struct", "real_parent")?,
            task_nsproxy: f("task_struct", "nsproxy")?,
            task_cred: f("task_struct", "cred")?,
            task_fs: f("task_struct", "fs")?,
            task_mm: f("task_struct", "mm")?,
            task_exit_code: f("task_struct", "exit_code")?,
            task_signal: f("task_struct", "signal")?,
            task_thread_pid: f("task_struct", "thread_pid")?,
            signal_live: f("signal_struct", "live")?,
            nsproxy_uts: f("nsproxy", "uts_ns")?,
            nsproxy_ipc: f("nsproxy", "ipc_ns")?,
            nsproxy_mnt: f("nsproxy", "mnt_ns")?,
            nsproxy_pid_for_children: f("nsproxy", "pid_ns_for_children")?,
            nsproxy_net: f("nsproxy", "net_ns")?,
            // Time namespaces exist since 5.6; older kernels report zero for them.
            nsproxy_time: self.optional("nsproxy", "time_ns"),
            nsproxy_time_for_children: self.optional("nsproxy", "time_ns_for_children"),
            nsproxy_cgroup: f("nsproxy", "cgroup_ns")?,
            cred_user_ns: f("cred", "user_ns")?,
            uts_inum: inum("uts_namespace")?,
            ipc_inum: inum("ipc_namespace")?,
            mnt_inum: inum("mnt_namespace")?,
            pid_inum: inum("pid_namespace")?,
            net_inum: inum("net")?,
            time_inum: inum("time_namespace").unwrap_or(UNRESOLVED),
            cgroup_inum: inum("cgroup_namespace")?,
            user_inum: inum("user_namespace")?,
            pid_level: f("pid", "level")?,
            pid_numbers: f("pid", "numbers")?,
            upid_size: self.struct_size("upid")?,
            upid_ns: f("upid", "ns")?,
            upid_nr: f("upid", "nr")?,
            mm_arg_start: f("mm_struct", "arg_start")?,
            mm_arg_end: f("mm_struct", "arg_end")?,
            bprm_filename: f("linux_binprm", "filename")?,
            fs_pwd: f("fs_struct", "pwd")?,
            fs_root: f("fs_struct", "root")?,
            path_mnt: f("path", "mnt")?,
            path_dentry: f("path", "dentry")?,
            dentry_parent: f("dentry", "d_parent")?,
            dentry_name_ptr: f("dentry", "d_name")? + f("qstr", "name")?,
            mount_mnt: f("mount", "mnt")?,
            mount_parent: f("mount", "mnt_parent")?,
            mount_mountpoint: f("mount", "mnt_mountpoint")?,
            mount_ns: self.optional("mount", "mnt_ns"),
            vfsmount_root: f("vfsmount", "mnt_root")?,
            cgroup_kn: f("cgroup", "kn")?,
            cgroup_root: f("cgroup", "root")?,
            cgroup_root_hierarchy_id: f("cgroup_root", "hierarchy_id")?,
            kernfs_node_id: f("kernfs_node", "id")?,
            // Resolved /proc opens only (strict set): without them the path-based check remains.
            task_files: self.optional("task_struct", "files"),
            files_fdt: self.optional("files_struct", "fdt"),
            fdtable_max_fds: self.optional("fdtable", "max_fds"),
            fdtable_fd: self.optional("fdtable", "fd"),
            file_inode: self.optional("file", "f_inode"),
            file_path: self.optional("file", "f_path"),
            inode_sb: self.optional("inode", "i_sb"),
            sb_magic: self.optional("super_block", "s_magic"),
            proc_inode_pid: self.optional("proc_inode", "pid"),
            proc_inode_vfs_inode: self.optional("proc_inode", "vfs_inode"),
            pid_tasks: self.optional("pid", "tasks"),
            task_pid_links: self.optional("task_struct", "pid_links"),
            task_cgroups: self.optional("task_struct", "cgroups"),
            css_set_dfl_cgrp: self.optional("css_set", "dfl_cgrp"),
            task_ptraced: self.optional("task_struct", "ptraced"),
            task_ptrace_entry: self.optional("task_struct", "ptrace_entry"),
            // Unix connects resolved at their exit (strict set): without them, the path typed.
            file_private_data: self.optional("file", "private_data"),
            socket_sk: self.optional("socket", "sk"),
            sock_peer_pid: self.optional("sock", "sk_peer_pid"),
            unix_peer: self.optional("unix_sock", "peer"),
            unix_addr: self.optional("unix_sock", "addr"),
            unix_address_len: self.optional("unix_address", "len"),
            unix_address_name: self.optional("unix_address", "name"),
            // Only refines TCP byte counts: a kernel without them gets the state-based guess.
            // `sk_flags` is a macro for `__sk_common.skc_flags`.
            sock_flags: f("sock", "__sk_common")
                .and_then(|base| Ok(base + f("sock_common", "skc_flags")?))
                .unwrap_or(UNRESOLVED),
            sock_done_bit: self.enum_value("sock_flags", "SOCK_DONE").unwrap_or(UNRESOLVED),
            // Filled from the tracepoint format files by resolve().
            tp_connect_fd: UNRESOLVED,
            tp_connect_addr: UNRESOLVED,
            tp_connect_addrlen: UNRESOLVED,
            tp_setns_flags: UNRESOLVED,
            tp_unshare_flags: UNRESOLVED,
            tp_exit_ret: UNRESOLVED,
            tp_ptrace_request: UNRESOLVED,
            tp_ptrace_pid: UNRESOLVED,
            tp_vm_pid: UNRESOLVED,
            tp_openat_filename: UNRESOLVED,
            tp_open_filename: UNRESOLVED,
        })
    }

    fn optional(&self, strukt: &str, member: &str) -> u32 {
        self.field(strukt, member).unwrap_or(UNRESOLVED)
    }

    /// The value of `name` in `enum enum_name`.
    fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Enum(e) => {
                e.members.iter().find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name)).map(|m| m.val())
            }
            _ => None,
        })
    }

    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types =
            self.btf.resolve_types_by_name(name).map_err(|_| OffsetError::NoStruct(name.to_string()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.to_string()))
    }

    fn struct_size(&self, name: &str) -> Result<u32, OffsetError> {
        Ok(self.find_struct(name)?.size() as u32)
    }

    /// Byte offset of `member` in `struct strukt`.
    fn field(&self, strukt: &str, member: &str) -> Result<u32, OffsetError> {
        let s = self.find_struct(strukt)?;
        match self.member_bits(&s, member, 0) {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(OffsetError::Bitfield { strukt: strukt.into(), member: member.into() }),
            None => Err(OffsetError::NoMember { strukt: strukt.into(), member: member.into() }),
        }
    }

    /// Bit offset of `name` in `s`, searching anonymous struct/union members depth first.
    fn member_bits(&self, s: &btf_rs::Struct, name: &str, base: u32) -> Option<u32> {
        for m in &s.members {
            let m_name = self.btf.resolve_name(m).unwrap_or_default();
            if m_name == name {
                return Some(base + m.bit_offset());
            }
            if m_name.is_empty()
                && let Some(inner) = self.aggregate(m)
                && let Some(bits) = self.member_bits(&inner, name, base + m.bit_offset())
            {
                return Some(bits);
            }
        }
        None
    }

    /// The struct or union a member's type resolves to, through typedefs and qualifiers.
    fn aggregate(&self, m: &dyn BtfType) -> Option<btf_rs::Struct> {
        let mut t = self.btf.resolve_chained_type(m).ok()?;
        for _ in 0..8 {
            t = match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(&x).ok()?
                }
                _ => return None,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    /// Checks resolved offsets against facts that hold on every kernel this runs on.
    #[test]
    fn resolves_running_kernel() {
        if !crate::testing::can_run(crate::testing::file(VMLINUX)) {
            return;
        }
        let o = resolve(Path::new(VMLINUX)).expect("all offsets resolve");
        // pid and tgid are adjacent pid_t fields in task_struct.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        // path is { vfsmount *mnt; dentry *dentry; }.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        // qstr's name pointer follows the 8-byte hash_len union.
        assert!(o.dentry_name_ptr > 0);
        // struct upid is { int nr; struct pid_namespace *ns; }.
        assert_eq!((o.upid_size, o.upid_nr, o.upid_ns), (16, 0, 8));
        // mm->arg_end follows arg_start (both unsigned long) inside an anonymous struct.
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        assert_ne!(o.nsproxy_time, UNRESOLVED);
        // proc_inode starts with its pid pointer; the fd array follows max_fds.
        assert_eq!((o.proc_inode_pid, o.fdtable_max_fds, o.fdtable_fd), (0, 0, 8));
        assert!(o.proc_inode_vfs_inode > 0 && o.sb_magic > 0 && o.file_inode != UNRESOLVED);
        // enum sock_flags { SOCK_DEAD, SOCK_DONE, ... } has kept this order since 2.6.
        assert_eq!(o.sock_done_bit, 1);
        assert_ne!(o.sock_flags, UNRESOLVED);
    }

    #[test]
    fn tracepoint_format_offsets() {
        let format = "name: sys_enter_connect\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
                      \tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;\n\
                      \tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(format_field_offset(format, "uservaddr"), Some(24));
        assert_eq!(format_field_offset(format, "addrlen"), Some(32));
        assert_eq!(format_field_offset(format, "fd"), Some(16));
        assert_eq!(format_field_offset(format, "nope"), None);
    }

    #[test]
    fn missing_member_is_named() {
        if !crate::testing::can_run(crate::testing::file(VMLINUX)) {
            return;
        }
        let btf = Btf::from_file(VMLINUX).expect("btf");
        let err = Resolver { btf: &btf }.field("task_struct", "no_such_field").unwrap_err();
        assert_eq!(err.to_string(), "kernel BTF: struct `task_struct` has no member `no_such_field`");
    }
}
