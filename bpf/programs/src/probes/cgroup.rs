//! `tp_btf/cgroup_mkdir` and `tp_btf/cgroup_rmdir` on the cgroup v2 hierarchy: the daemon learns
//! a container's cgroup when the runtime creates it, before any process runs in it.

use aya_ebpf::{
    helpers::{bpf_get_current_task, generated::bpf_probe_read_kernel_str},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sidewall_common::{CGROUP_PATH_MAX, CgroupEvent, kind};

use crate::{
    kernel::{fill_current, off, read, read_ptr},
    maps::{EVENTS, count_drop, wakeup},
};

// tp_btf/cgroup_mkdir: (struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    emit(&ctx, kind::CGROUP_MKDIR)
}

// tp_btf/cgroup_rmdir: (struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    emit(&ctx, kind::CGROUP_RMDIR)
}

#[inline(always)]
fn emit(ctx: &BtfTracePointContext, record: u32) -> i32 {
    let cgrp: *const u8 = ctx.arg(0); // struct cgroup *cgrp
    let path: *const u8 = ctx.arg(1); // const char *path
    // Only the v2 (default) hierarchy, whose hierarchy id is 0; v1 controllers are not ours.
    let v2 = read_ptr(cgrp, off!(cgroup_root))
        .and_then(|root| read::<i32>(root, off!(cgroup_root_hierarchy_id)))
        .is_some_and(|id| id == 0);
    if !v2 {
        return 0;
    }
    let Some(id) = read_ptr(cgrp, off!(cgroup_kn)).and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)))
    else {
        return 0;
    };
    if record == kind::CGROUP_RMDIR {
        crate::policy::forget_cgroup(id);
    }
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        count_drop(record);
        return 0;
    };
    // SAFETY: reservation of exactly size_of::<CgroupEvent>() bytes.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: helper without pointer arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    fill_current(&mut ev.hdr, record, task);
    ev.id = id;
    ev._pad = 0;
    // SAFETY: destination is the CGROUP_PATH_MAX-byte array of the reservation.
    let n = unsafe {
        bpf_probe_read_kernel_str(ev.path.as_mut_ptr() as *mut _, CGROUP_PATH_MAX as u32, path as *const _)
    };
    ev.path_len = if n > 0 { n as u32 - 1 } else { 0 };
    entry.submit(wakeup());
    0
}
