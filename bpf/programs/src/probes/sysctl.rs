//! `cgroup/sysctl` at the cgroup v2 root: writes to the sysctls that route traffic into the
//! loopback (`route_localnet`, `accept_local`), the trick that turns a pod's loopback into a
//! reachable address. Other sysctls never leave the kernel; a policy can refuse the write.

use aya_ebpf::{
    bindings::BPF_F_SYSCTL_BASE_NAME,
    helpers::generated::{bpf_sysctl_get_name, bpf_sysctl_get_new_value},
    macros::cgroup_sysctl,
    programs::SysctlContext,
};
use sidewall_common::{SYSCTL_NAME_MAX, SysctlEvent, enforce, kind, verdict};

use super::{ALLOW, DENY};
use crate::{
    kernel::fill_process_lite,
    maps::{ALERTS, EVENTS, alert_admit, count_alert_drop, count_drop, wakeup},
    policy,
};

// cgroup/sysctl (proc_sys_call_handler): struct bpf_sysctl { write }; name and new value through bpf_sysctl_get_*
#[cgroup_sysctl]
pub fn sysctl_write(ctx: SysctlContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return ALLOW;
    }
    let mut base = [0u8; 16];
    // SAFETY: a 16-byte stack buffer; the helper NUL-terminates.
    let n = unsafe {
        bpf_sysctl_get_name(ctx.sysctl, base.as_mut_ptr() as *mut _, 16, BPF_F_SYSCTL_BASE_NAME as u64)
    };
    if n <= 0 || !(base.starts_with(b"route_localnet") || base.starts_with(b"accept_local")) {
        return ALLOW;
    }
    // SAFETY: helper without pointer arguments.
    let cgroup = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    let deny = policy::flags(cgroup) & enforce::SYSCTL != 0;
    if deny {
        crate::maps::count_refusal(sidewall_common::refusal::SYSCTL);
        // A refusal goes on the alert lane, within its container's budget.
        if alert_admit(cgroup, sidewall_common::refusal::SYSCTL, &[0; 16], 0) {
            if let Some(mut entry) = ALERTS.reserve::<SysctlEvent>(0) {
                // SAFETY: reservation of exactly size_of::<SysctlEvent>() bytes.
                let ev = unsafe { &mut *entry.as_mut_ptr() };
                fill_process_lite(&mut ev.hdr, kind::SYSCTL);
                ev.verdict = verdict::DENIED;
                ev._pad = [0; 7];
                ev.name = [0; SYSCTL_NAME_MAX];
                ev.value = [0; 16];
                // SAFETY: destinations are the arrays of the reservation, with their sizes.
                unsafe {
                    bpf_sysctl_get_name(
                        ctx.sysctl,
                        ev.name.as_mut_ptr() as *mut _,
                        SYSCTL_NAME_MAX as u64,
                        0,
                    );
                    bpf_sysctl_get_new_value(ctx.sysctl, ev.value.as_mut_ptr() as *mut _, 16);
                }
                entry.submit(0);
            } else {
                count_alert_drop(kind::SYSCTL);
            }
        }
        return DENY;
    }
    if let Some(mut entry) = EVENTS.reserve::<SysctlEvent>(0) {
        // SAFETY: reservation of exactly size_of::<SysctlEvent>() bytes.
        let ev = unsafe { &mut *entry.as_mut_ptr() };
        fill_process_lite(&mut ev.hdr, kind::SYSCTL);
        ev.verdict = verdict::ALLOWED;
        ev._pad = [0; 7];
        ev.name = [0; SYSCTL_NAME_MAX];
        ev.value = [0; 16];
        // SAFETY: destinations are the arrays of the reservation, with their sizes.
        unsafe {
            bpf_sysctl_get_name(ctx.sysctl, ev.name.as_mut_ptr() as *mut _, SYSCTL_NAME_MAX as u64, 0);
            bpf_sysctl_get_new_value(ctx.sysctl, ev.value.as_mut_ptr() as *mut _, 16);
        }
        entry.submit(wakeup());
    } else {
        count_drop(kind::SYSCTL);
    }
    ALLOW
}
