//! `iter/task`: the daemon reads every process once, when it seeds its cache and when it
//! must turn a kernel pid into one of its own pid namespace (a kind node, a pod without
//! hostPID): one `TaskPids` record per thread-group leader. The cgroup comes from the kernel,
//! not from /proc/<pid>/cgroup, whose paths a private cgroup namespace makes relative.

use aya_ebpf::helpers::generated::bpf_seq_write;
use sidewall_common::TaskPids;

use crate::kernel::{cgroup_of_task, off, read, read_ptr};

/// Filled in by the daemon before load: the inode of its own pid namespace.
#[unsafe(no_mangle)]
static PIDNS_INUM: u32 = 0;

/// Pid namespaces nest at most 32 deep (MAX_PID_NS_LEVEL); kind in a pod is a handful.
const MAX_LEVEL: usize = 8;

// iter/task: bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; };
// meta->seq (its first member) is the seq_file the record is written to; task is NULL at the end.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn task_pids(ctx: *const *const u8) -> i32 {
    // SAFETY: ctx is the iterator's context, two pointers the verifier knows by BTF.
    let (meta, task) = unsafe { (*ctx, *ctx.add(1)) };
    if meta.is_null() || task.is_null() {
        return 0;
    }
    let (Some(tgid), Some(pid)) = (read::<u32>(task, off!(task_tgid)), read::<u32>(task, off!(task_pid)))
    else {
        return 0;
    };
    if tgid != pid {
        return 0;
    }
    let mut rec = TaskPids { kernel_pid: tgid, ns_pid: ns_pid(task), cgroup_id: cgroup_of_task(task) };
    // SAFETY: meta is a valid bpf_iter_meta; its seq_file goes to the helper as the verifier expects.
    unsafe {
        let seq = *(meta as *const *mut aya_ebpf::bindings::seq_file);
        bpf_seq_write(seq, &raw mut rec as *const _, size_of::<TaskPids>() as u32);
    }
    0
}

/// The task's pid in the daemon's pid namespace: `thread_pid->numbers[i].nr` at the level
/// `i` whose namespace is the daemon's; 0 when none is (the task is not visible there). The
/// level is found here: the daemon cannot learn its own, as NSpid counts from its /proc's
/// namespace down.
#[inline(always)]
fn ns_pid(task: *const u8) -> u32 {
    // SAFETY: a global the loader set; read volatile so the zero default is not folded.
    let want = unsafe { core::ptr::read_volatile(&PIDNS_INUM) };
    let Some(pid) = read_ptr(task, off!(task_thread_pid)) else { return 0 };
    let level = read::<u32>(pid, off!(pid_level)).unwrap_or(0) as usize;
    for i in 0..MAX_LEVEL {
        if i > level {
            return 0;
        }
        let upid = off!(pid_numbers) + i * off!(upid_size);
        let ns_inum = read_ptr(pid, upid + off!(upid_ns)).and_then(|ns| read::<u32>(ns, off!(pid_inum)));
        if ns_inum == Some(want) {
            return read::<u32>(pid, upid + off!(upid_nr)).unwrap_or(0);
        }
    }
    0
}
