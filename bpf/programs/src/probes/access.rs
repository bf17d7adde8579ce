//! What the cross-process access probes share (strict set: `ptrace.rs`, `process_vm.rs`,
//! `proc_open.rs`, `proc_opened.rs`): the `AccessEvent` writer, and the map that tells the
//! exit of an open that its entry already reported it.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::map,
    maps::LruHashMap,
};
use sidewall_common::{ACCESS_PATH_MAX, AccessEvent, kind};

use crate::{
    kernel::fill_current,
    maps::{EVENTS, count_drop, wakeup},
};

/// Threads whose open the entry hook already reported from its path; the exit hook, which
/// looks at the opened file itself, then stays silent for that open.
#[map]
pub static OPEN_REPORTED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// Reports the current process reaching into process `target` (a pid; 0 when only its
/// container `target_cgroup` is known), with the /proc path and its length if there is one.
#[inline(always)]
pub fn emit(op: u32, target: u32, target_cgroup: u64, path: Option<(&[u8; ACCESS_PATH_MAX], u32)>) {
    // A process reading its own /proc entries is not an access to another.
    if (target == 0 && target_cgroup == 0) || target == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<AccessEvent>(0) else {
        count_drop(kind::ACCESS);
        return;
    };
    // SAFETY: reservation of exactly size_of::<AccessEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    fill_current(&mut ev.hdr, kind::ACCESS, task);
    ev.op = op;
    ev.target_pid = target;
    ev.target_cgroup = target_cgroup;
    ev._pad = 0;
    match path {
        Some((p, len)) => {
            ev.path = *p;
            ev.path_len = len;
        }
        None => {
            ev.path = [0; ACCESS_PATH_MAX];
            ev.path_len = 0;
        }
    }
    entry.submit(wakeup());
}
