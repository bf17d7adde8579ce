//! Turns raw ring-buffer records into typed Rust values. Every length and size read from a
//! record is checked: a malformed record is an error (counted), never a panic.

use std::{mem::size_of, ptr};

use sidewall_common::{
    ACCESS_PATH_MAX, ARGS_MAX, AccessEvent, CGROUP_PATH_MAX, CWD_BUF, CWD_MAX_DEPTH, CWD_SLOT, CgroupEvent,
    ExecEvent, ExitEvent, FILENAME_MAX, ForkEvent, Header, NamespaceEvent, Namespaces, SockEvent,
    SysctlEvent, UNIX_PATH_MAX, UnixConnectEvent, flags, kind, refusal,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte {what}")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

#[derive(Debug, Clone)]
pub struct Exec {
    pub hdr: Header,
    pub filename: String,
    /// argv, argv[0] included.
    pub argv: Vec<String>,
    pub cwd: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub hdr: Header,
    pub exit_code: u32,
}

#[derive(Debug)]
pub enum Record {
    Exec(Exec),
    Exit(Exit),
    /// A new process; `parent_ns` are the namespaces of the process that forked it.
    Fork {
        hdr: Header,
        parent_ns: Namespaces,
    },
    /// A setns or unshare at the syscall (strict set).
    Namespace(NamespaceEvent),
    /// A write to a loopback-routing sysctl.
    Sysctl {
        hdr: Header,
        name: String,
        value: String,
        denied: bool,
    },
    /// One process reaching into another (strict set).
    Access {
        hdr: Header,
        op: u32,
        target_pid: u32,
        /// The target's cgroup as the kernel resolved it (0: unknown).
        target_cgroup: u64,
        path: String,
    },
    /// A cgroup v2 directory was created: its id and path relative to the mount.
    CgroupMkdir {
        hdr: Header,
        id: u64,
        path: String,
    },
    CgroupRmdir {
        hdr: Header,
        id: u64,
    },
    Sock(SockEvent),
    /// connect() on a unix socket: the path, or "@name" for an abstract name.
    /// A unix connect, at its exit: the path as typed, and what it reached.
    UnixConnect {
        hdr: Header,
        path: String,
        /// connect's return value (0 or -errno).
        ret: i32,
        /// The address the reached socket was bound to; empty when not resolved.
        peer: String,
        /// The listening process (host pid) and its cgroup; 0 when unknown.
        peer_pid: u32,
        peer_cgroup: u64,
    },
}

impl Record {
    pub fn header(&self) -> &Header {
        match self {
            Record::Exec(e) => &e.hdr,
            Record::Exit(e) => &e.hdr,
            Record::Fork { hdr, .. } => hdr,
            Record::Namespace(e) => &e.hdr,
            Record::Access { hdr, .. } => hdr,
            Record::Sysctl { hdr, .. } => hdr,
            Record::CgroupMkdir { hdr, .. } | Record::CgroupRmdir { hdr, .. } => hdr,
            Record::Sock(e) => &e.hdr,
            Record::UnixConnect { hdr, .. } => hdr,
        }
    }
}

/// Reads a `T` from the front of `bytes` if it is long enough.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { what, len: bytes.len(), need });
    }
    // SAFETY: the length is checked above; T is a #[repr(C)] type of integers and byte
    // arrays, valid for any bit pattern; read_unaligned copes with any alignment.
    Ok(unsafe { ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// The kind of a record, before decoding it whole (for per-kind counters).
pub fn record_kind(bytes: &[u8]) -> Option<u32> {
    read::<u32>(bytes, "kind").ok()
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let hdr: Header = read(bytes, "header")?;
    match hdr.kind {
        kind::EXEC => decode_exec(bytes).map(Record::Exec),
        kind::EXIT => {
            let e: ExitEvent = read(bytes, "exit record")?;
            Ok(Record::Exit(Exit { hdr: e.hdr, exit_code: e.exit_code }))
        }
        kind::FORK => {
            let e: ForkEvent = read(bytes, "fork record")?;
            Ok(Record::Fork { hdr: e.hdr, parent_ns: e.parent_ns })
        }
        kind::NAMESPACE => Ok(Record::Namespace(read(bytes, "namespace record")?)),
        kind::SYSCTL => {
            let e: SysctlEvent = read(bytes, "sysctl record")?;
            let text = |b: &[u8]| lossy(b.split(|&c| c == 0).next().unwrap_or_default()).trim().to_string();
            Ok(Record::Sysctl {
                hdr: e.hdr,
                name: text(&e.name),
                value: text(&e.value),
                denied: e.verdict != 0,
            })
        }
        kind::ACCESS => {
            let e: AccessEvent = read(bytes, "access record")?;
            let path = lossy(&e.path[..(e.path_len as usize).min(ACCESS_PATH_MAX)]);
            Ok(Record::Access {
                hdr: e.hdr,
                op: e.op,
                target_pid: e.target_pid,
                target_cgroup: e.target_cgroup,
                path,
            })
        }
        kind::CGROUP_MKDIR => {
            let e: CgroupEvent = read(bytes, "cgroup record")?;
            let path = lossy(&e.path[..(e.path_len as usize).min(CGROUP_PATH_MAX)]);
            Ok(Record::CgroupMkdir { hdr: e.hdr, id: e.id, path })
        }
        kind::CGROUP_RMDIR => {
            let e: CgroupEvent = read(bytes, "cgroup record")?;
            Ok(Record::CgroupRmdir { hdr: e.hdr, id: e.id })
        }
        kind::SOCK => Ok(Record::Sock(read(bytes, "socket record")?)),
        kind::UNIX_CONNECT => {
            let e: UnixConnectEvent = read(bytes, "unix connect record")?;
            let path = unix_path(&e.path[..(e.path_len as usize).min(UNIX_PATH_MAX)]);
            let peer = unix_path(&e.peer[..(e.peer_len as usize).min(UNIX_PATH_MAX)]);
            Ok(Record::UnixConnect {
                hdr: e.hdr,
                path,
                ret: e.ret,
                peer,
                peer_pid: e.peer_pid,
                peer_cgroup: e.peer_cgroup,
            })
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

fn decode_exec(bytes: &[u8]) -> Result<Exec, DecodeError> {
    let ev: ExecEvent = read(bytes, "exec record")?;
    let filename = lossy(&ev.filename[..(ev.filename_len as usize).min(FILENAME_MAX)]);
    let argv = split_nul(&ev.args[..(ev.args_len as usize).min(ARGS_MAX)]);
    let cwd = if ev.hdr.flags & flags::CWD_UNKNOWN != 0 {
        String::new()
    } else {
        join_cwd(&ev.cwd, ev.cwd_slots as usize)
    };
    Ok(Exec { hdr: ev.hdr, filename, argv, cwd })
}

/// A `sun_path`: up to the first NUL, or "@name" for an abstract name (leading NUL).
pub fn unix_path(b: &[u8]) -> String {
    match b.split_first() {
        Some((0, rest)) => {
            let name = rest.iter().rposition(|&c| c != 0).map_or(&rest[..0], |i| &rest[..=i]);
            format!("@{}", String::from_utf8_lossy(name))
        }
        _ => lossy(b.split(|&c| c == 0).next().unwrap_or_default()),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// argv as the kernel lays it out: NUL-terminated strings back to back. A cut final string
/// (no NUL) is kept.
pub fn split_nul(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0).map(lossy).collect()
}

/// The cwd slots hold components leaf first, each NUL-terminated, empty where the walk
/// crossed a mount point; the path is root first.
pub fn join_cwd(buf: &[u8; CWD_BUF], slots: usize) -> String {
    let parts: Vec<&[u8]> = buf
        .chunks(CWD_SLOT)
        .take(slots.min(CWD_MAX_DEPTH))
        .map(|slot| slot.split(|&c| c == 0).next().unwrap_or_default())
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return "/".to_string();
    }
    let mut path = String::with_capacity(CWD_SLOT * parts.len());
    for p in parts.iter().rev() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(p));
    }
    path
}

/// The binary as an absolute path: relative execve paths are resolved against cwd, and "."
/// components dropped (".." is kept: it may cross a symlink).
pub fn absolute_binary(filename: &str, cwd: &str) -> String {
    if filename.starts_with('/') || cwd.is_empty() {
        return filename.to_string();
    }
    let mut out = cwd.trim_end_matches('/').to_string();
    for part in filename.split('/').filter(|p| !p.is_empty() && *p != ".") {
        out.push('/');
        out.push_str(part);
    }
    out
}

/// The name of a refusal kind (`sidewall_common::refusal`), as status and metrics show it.
pub fn refusal_name(k: u32) -> &'static str {
    match k {
        refusal::CONNECT => "connect",
        refusal::SEND => "send",
        refusal::BIND => "bind",
        refusal::SYSCTL => "sysctl",
        refusal::KILL_NAMESPACE => "kill_namespace",
        refusal::KILL_ACCESS => "kill_access",
        refusal::KILL_RUNTIME_SOCKET => "kill_runtime_socket",
        _ => "other",
    }
}

/// The name of a record kind, as lost_events reports kernel drops by kind.
pub fn record_kind_name(k: u32) -> &'static str {
    match k {
        kind::EXEC => "process_exec",
        kind::EXIT => "process_exit",
        kind::FORK => "process_fork",
        kind::NAMESPACE => "process_namespace",
        kind::ACCESS => "process_access",
        kind::SYSCTL => "process_sysctl",
        kind::CGROUP_MKDIR => "cgroup_mkdir",
        kind::CGROUP_RMDIR => "cgroup_rmdir",
        kind::SOCK => "socket",
        kind::UNIX_CONNECT => "unix_connect",
        _ => "other",
    }
}

/// (exit status, signal name, core dumped) from a wait(2)-style status word.
pub fn wait_status(code: u32) -> (u32, &'static str, bool) {
    let sig = code & 0x7f;
    if sig == 0 { ((code >> 8) & 0xff, "", false) } else { (0, signal_name(sig), code & 0x80 != 0) }
}

pub fn signal_name(sig: u32) -> &'static str {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(sig as usize).copied().filter(|n| !n.is_empty()).unwrap_or("SIGRT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_split() {
        assert_eq!(split_nul(b"ls\0-l\0/tmp\0"), ["ls", "-l", "/tmp"]);
        assert_eq!(split_nul(b"ls\0\0x\0"), ["ls", "", "x"]);
        assert_eq!(split_nul(b"cut-mid"), ["cut-mid"]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn cwd_is_reversed_and_skips_mount_steps() {
        let mut buf = [0xffu8; CWD_BUF];
        for (i, name) in [&b"c\0"[..], b"\0", b"b\0", b"a\0"].iter().enumerate() {
            buf[i * CWD_SLOT..i * CWD_SLOT + name.len()].copy_from_slice(name);
        }
        assert_eq!(join_cwd(&buf, 4), "/a/b/c");
        assert_eq!(join_cwd(&buf, 1), "/c");
        assert_eq!(join_cwd(&buf, 0), "/");
    }

    #[test]
    fn relative_binaries_resolve_against_cwd() {
        assert_eq!(absolute_binary("./run.sh", "/srv/app"), "/srv/app/run.sh");
        assert_eq!(absolute_binary("bin/x", "/"), "/bin/x");
        assert_eq!(absolute_binary("/usr/bin/id", "/tmp"), "/usr/bin/id");
        assert_eq!(absolute_binary("x", ""), "x");
    }

    #[test]
    fn unix_paths() {
        assert_eq!(unix_path(b"/run/containerd/containerd.sock\0\0\0"), "/run/containerd/containerd.sock");
        assert_eq!(unix_path(b"\0sidewall-test\0\0"), "@sidewall-test");
        assert_eq!(unix_path(b""), "");
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let mut hdr = [0u8; size_of::<Header>()];
        hdr[0] = 1; // exec, but only a header's worth of bytes
        assert!(matches!(decode(&hdr), Err(DecodeError::Short { what: "exec record", .. })));
        hdr[0] = 99;
        assert_eq!(decode(&hdr).unwrap_err(), DecodeError::UnknownKind(99));
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(wait_status(3 << 8), (3, "", false));
        assert_eq!(wait_status(9), (0, "SIGKILL", false));
        assert_eq!(wait_status(11 | 0x80), (0, "SIGSEGV", true));
        assert_eq!(signal_name(40), "SIGRT");
    }
}
