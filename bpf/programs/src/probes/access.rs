//! What the cross-process access probes share (strict set: `ptrace.rs`, `process_vm.rs`,
//! `proc_open.rs`, `proc_opened.rs`): the `AccessEvent` writer, and the map in which the
//! entry of an open keeps the path typed for the exit, which reports it.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::map,
    maps::LruHashMap,
};
use sidewall_common::{ACCESS_PATH_MAX, AccessEvent, flags, kind};

use crate::{
    kernel::fill_current,
    maps::{Lane, reserve, submit_flags},
};

/// An open of another process's /proc entry as the caller typed it: the target pid, the path
/// and its length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TypedOpen {
    pub pid: u32,
    pub len: u32,
    pub path: [u8; ACCESS_PATH_MAX],
}

/// Opens whose path named another process's /proc entry, per thread, from the entry to the
/// exit: the exit reports them once it knows the file opened and whether it killed.
#[map]
pub static TYPED_OPENS: LruHashMap<u32, TypedOpen> = LruHashMap::with_max_entries(4096, 0);

/// Reports the current process reaching into process `target` (a pid; 0 when only its
/// container `target_cgroup` is known), with the /proc path and its length if there is one.
#[inline(always)]
pub fn emit(op: u32, target: u32, target_cgroup: u64, path: Option<(&[u8; ACCESS_PATH_MAX], u32)>) {
    emit_on(Lane::Events, op, target, target_cgroup, path)
}

/// `emit` on the ring of `lane` (the alert lane for a process the kernel killed for it).
#[inline(always)]
pub fn emit_on(
    lane: Lane,
    op: u32,
    target: u32,
    target_cgroup: u64,
    path: Option<(&[u8; ACCESS_PATH_MAX], u32)>,
) {
    // A process reading its own /proc entries is not an access to another.
    if (target == 0 && target_cgroup == 0) || target == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return;
    }
    let Some(mut entry) = reserve::<AccessEvent>(lane, kind::ACCESS) else { return };
    // SAFETY: reservation of exactly size_of::<AccessEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    fill_current(&mut ev.hdr, kind::ACCESS, task);
    // Only a kill puts an access record on the alert lane.
    if lane == Lane::Alerts {
        ev.hdr.flags |= flags::KILLED;
    }
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
    entry.submit(submit_flags(lane));
}
