//! The current working directory of a task, walked dentry by dentry (there is no bpf_d_path
//! for tracepoints). Step i writes slot i: a component, or nothing when it crossed a mount
//! point. The walk stops at the task's root (so a container sees its own paths), crosses mount
//! points, and gives up after CWD_MAX_DEPTH steps (the path is then flagged as cut).
//!
//! Verifier budget: nothing but the dentry and mount pointers is carried from one step to the
//! next (results go straight to ring-buffer memory), so both branches of a step reach the next
//! one in the same abstract state and are pruned together.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use sidewall_common::{CWD_MAX_DEPTH, CWD_SLOT, ExecEvent, flags};

use crate::kernel::{off, read_ptr};

/// Fills `ev.cwd`, `ev.cwd_slots` and the cwd flags of `ev.hdr.flags`.
#[inline(always)]
pub fn read_cwd(task: *const u8, ev: &mut ExecEvent) {
    ev.cwd_slots = 0;
    let Some(fs) = read_ptr(task, off!(task_fs)) else {
        ev.hdr.flags |= flags::CWD_UNKNOWN;
        return;
    };
    let pwd = off!(fs_pwd);
    let root = off!(fs_root);
    let (Some(root_mnt), Some(root_dentry), Some(mut vfsmnt), Some(mut dentry)) = (
        read_ptr(fs, root + off!(path_mnt)),
        read_ptr(fs, root + off!(path_dentry)),
        read_ptr(fs, pwd + off!(path_mnt)),
        read_ptr(fs, pwd + off!(path_dentry)),
    ) else {
        ev.hdr.flags |= flags::CWD_UNKNOWN;
        return;
    };
    // Cleared when the walk reaches a root.
    ev.hdr.flags |= flags::CWD_TRUNCATED;
    for i in 0..CWD_MAX_DEPTH {
        if dentry == root_dentry && vfsmnt == root_mnt {
            ev.hdr.flags &= !flags::CWD_TRUNCATED;
            return;
        }
        let mount = vfsmnt.wrapping_sub(off!(mount_mnt));
        let Some(mnt_root) = read_ptr(vfsmnt, off!(vfsmount_root)) else {
            return;
        };
        let slot = ev.cwd[i * CWD_SLOT..].as_mut_ptr();
        ev.cwd_slots = i as u32 + 1;
        if dentry == mnt_root {
            // Top of this mount: continue from where it is mounted in the parent mount.
            // SAFETY: slot points into the CWD_BUF-byte array.
            unsafe { *slot = 0 };
            let Some(parent) = read_ptr(mount, off!(mount_parent)) else {
                return;
            };
            let Some(mountpoint) = read_ptr(mount, off!(mount_mountpoint)).filter(|_| parent != mount) else {
                // The mount is its own parent: the namespace's root mount.
                ev.hdr.flags &= !flags::CWD_TRUNCATED;
                return;
            };
            dentry = mountpoint;
            vfsmnt = parent.wrapping_add(off!(mount_mnt));
            continue;
        }
        let (Some(parent), Some(name)) =
            (read_ptr(dentry, off!(dentry_parent)), read_ptr(dentry, off!(dentry_name_ptr)))
        else {
            return;
        };
        if parent == dentry {
            // SAFETY: slot points into the CWD_BUF-byte array.
            unsafe { *slot = 0 };
            ev.hdr.flags &= !flags::CWD_TRUNCATED;
            return;
        }
        // SAFETY: slot..slot+CWD_SLOT lies inside the CWD_BUF-byte array; the helper always
        // NUL-terminates, and on failure the slot is left empty.
        if unsafe { bpf_probe_read_kernel_str(slot as *mut _, CWD_SLOT as u32, name as *const _) } <= 0 {
            unsafe { *slot = 0 };
        }
        dentry = parent;
    }
}
