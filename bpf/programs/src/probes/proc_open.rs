//! Opens of /proc/<pid>/{mem,maps,environ,root,cwd,ns}... of another process, from the path
//! given to open/openat (strict set), kept as typed for the open's exit to report, failed
//! attempts included. The path
//! is filtered in the kernel: other opens never leave it. Threads' copies under task/ are left
//! to the open's exit, which judges the file itself (a thread's stat is what `ps -T` reads).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user_str},
    macros::tracepoint,
    programs::TracePointContext,
};
use sidewall_common::ACCESS_PATH_MAX;

use super::access::{TYPED_OPENS, TypedOpen};
use crate::kernel::off;

// syscalls/sys_enter_openat: long openat(int dfd, const char *filename, int flags, umode_t mode)
#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    proc_open(&ctx, off!(tp_openat_filename))
}

// syscalls/sys_enter_open: long open(const char *filename, int flags, umode_t mode)
#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    proc_open(&ctx, off!(tp_open_filename))
}

/// The pid in "/proc/<pid>/<sensitive>...", if `p` is such a path of another process.
#[inline(always)]
fn proc_target(p: &[u8; ACCESS_PATH_MAX]) -> Option<u32> {
    if p[0] != b'/' || p[1] != b'p' || p[2] != b'r' || p[3] != b'o' || p[4] != b'c' || p[5] != b'/' {
        return None;
    }
    let mut pid: u32 = 0;
    let mut i = 6;
    while i < 17 {
        let c = p[i];
        if c.is_ascii_digit() {
            pid = pid.wrapping_mul(10).wrapping_add((c - b'0') as u32);
            i += 1;
        } else {
            break;
        }
    }
    if i == 6 || i >= 17 || p[i] != b'/' {
        return None;
    }
    // mem, maps, environ, root, cwd, ns/.
    let (a, b) = (p[i + 1], p[i + 2]);
    let sensitive = matches!(
        (a, b),
        (b'm', b'e') | (b'm', b'a') | (b'e', b'n') | (b'r', b'o') | (b'c', b'w') | (b'n', b's')
    );
    sensitive.then_some(pid)
}

#[inline(always)]
fn proc_open(ctx: &TracePointContext, name_off: usize) -> u32 {
    // SAFETY: read_at goes through bpf_probe_read; offset from the format file.
    let Ok(name) = (unsafe { ctx.read_at::<u64>(name_off) }) else {
        return 0;
    };
    let mut path = [0u8; ACCESS_PATH_MAX];
    // SAFETY: destination is a stack array of ACCESS_PATH_MAX bytes.
    let n = unsafe {
        bpf_probe_read_user_str(path.as_mut_ptr() as *mut _, ACCESS_PATH_MAX as u32, name as *const _)
    };
    if n <= 0 {
        return 0;
    }
    let Some(pid) = proc_target(&path) else { return 0 };
    // Reported by the exit, which knows whether the open was killed (alert lane) or not.
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = TYPED_OPENS.insert(&tid, &TypedOpen { pid, len: n as u32 - 1, path }, 0);
    0
}
