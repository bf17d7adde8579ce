//! Loads the embedded eBPF object, relocates it for this kernel and attaches each sensor.
//! A sensor that cannot attach is reported (status, logs) and the others keep working.

use std::path::Path;

use anyhow::Context as _;
use std::fs::File;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, CgroupSysctl, SockOps, TracePoint,
    },
};
use sidewall_common::Offsets;

use super::offsets;

/// The eBPF object built by `build.rs` from `bpf/programs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sidewall.bpf.o"));

/// How a sensor's programs attach. Cgroup programs attach as bpf_links (which never
/// replace other programs on the cgroup) at the cgroup v2 root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `tp_btf/<name>`: typed tracepoints, no cost on unrelated syscalls.
    BtfTracepoint,
    /// cgroup socket-address hooks at the cgroup v2 root (connect, sendmsg).
    CgroupSockAddr,
    /// cgroup socket hooks at the cgroup v2 root (post_bind, sock_release).
    CgroupSock,
    /// TCP sock_ops at the cgroup v2 root.
    SockOps,
    /// `syscalls/<name>`: slows every syscall of every process; strict set only.
    SyscallTracepoint,
    /// cgroup sysctl hook at the cgroup v2 root.
    CgroupSysctl,
}

/// One sensor: the programs that make it, and how they attach.
pub struct SensorSpec {
    pub name: &'static str,
    pub programs: &'static [&'static str],
    pub hook: &'static str,
    pub attach: Attach,
    /// Part of the strict set only.
    pub strict: bool,
}

const fn spec(
    name: &'static str,
    programs: &'static [&'static str],
    hook: &'static str,
    attach: Attach,
) -> SensorSpec {
    SensorSpec { name, programs, hook, attach, strict: false }
}

/// The sensors. The default set costs nothing on unrelated syscalls: BTF tracepoints and
/// cgroup hooks only. The strict set adds syscall tracepoints (see docs/sensors.md).
pub const SENSORS: &[SensorSpec] = &[
    spec("process_exec", &["sched_process_exec"], "tp_btf/sched_process_exec", Attach::BtfTracepoint),
    spec("process_exit", &["sched_process_exit"], "tp_btf/sched_process_exit", Attach::BtfTracepoint),
    spec("process_fork", &["sched_process_fork"], "tp_btf/sched_process_fork", Attach::BtfTracepoint),
    // Container cgroups as the runtime creates and removes them.
    spec("cgroup_mkdir", &["cgroup_mkdir"], "tp_btf/cgroup_mkdir", Attach::BtfTracepoint),
    spec("cgroup_rmdir", &["cgroup_rmdir"], "tp_btf/cgroup_rmdir", Attach::BtfTracepoint),
    spec("inet_connect", &["connect4", "connect6"], "cgroup/connect4,connect6", Attach::CgroupSockAddr),
    spec("datagram_send", &["sendmsg4", "sendmsg6"], "cgroup/sendmsg4,sendmsg6", Attach::CgroupSockAddr),
    spec("inet_bind", &["post_bind4", "post_bind6"], "cgroup/post_bind4,post_bind6", Attach::CgroupSock),
    spec("socket_release", &["sock_release"], "cgroup/sock_release", Attach::CgroupSock),
    spec("tcp_lifecycle", &["tcp_lifecycle"], "sockops", Attach::SockOps),
    spec("loopback_routing", &["sysctl_write"], "cgroup/sysctl", Attach::CgroupSysctl),
    SensorSpec {
        name: "namespace_syscalls",
        programs: &["sys_enter_setns", "sys_exit_setns", "sys_enter_unshare", "sys_exit_unshare"],
        hook: "tracepoint/syscalls/sys_{enter,exit}_{setns,unshare}",
        attach: Attach::SyscallTracepoint,
        strict: true,
    },
    SensorSpec {
        name: "process_access",
        programs: &[
            "sys_enter_ptrace",
            "sys_enter_process_vm_readv",
            "sys_enter_process_vm_writev",
            "sys_enter_openat",
            "sys_enter_open",
        ],
        hook: "tracepoint/syscalls/sys_enter_{ptrace,process_vm_readv,process_vm_writev,openat,open}",
        attach: Attach::SyscallTracepoint,
        strict: true,
    },
    SensorSpec {
        name: "unix_connect",
        programs: &["sys_enter_connect"],
        hook: "tracepoint/syscalls/sys_enter_connect",
        attach: Attach::SyscallTracepoint,
        strict: true,
    },
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SensorState {
    Attached,
    /// Not asked for (e.g. a strict-set sensor in the default set), with why.
    Skipped(String),
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct SensorReport {
    pub name: &'static str,
    pub hook: &'static str,
    pub state: SensorState,
}

pub struct LoadOptions<'a> {
    pub btf_path: &'a Path,
    pub ring_buffer_bytes: u32,
    /// The cgroup v2 mount; socket sensors attach to its root. None: they are skipped.
    pub cgroup_root: Option<&'a Path>,
    /// Attach the strict set too (syscall tracepoints).
    pub strict: bool,
}

/// The loaded object. Programs stay attached while this lives.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub sensors: Vec<SensorReport>,
}

pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Loaded> {
    raise_memlock();
    let offsets: Offsets = offsets::resolve(opts.btf_path)?;
    tracing::debug!(?offsets, "kernel offsets resolved");
    let btf = Btf::parse_file(opts.btf_path, aya::Endianness::default())
        .with_context(|| format!("parsing {}", opts.btf_path.display()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .load(BPF_OBJECT)
        .context("loading the eBPF object")?;
    let cgroup = opts.cgroup_root.map(File::open).transpose().context("opening the cgroup v2 root")?;
    let sensors = SENSORS
        .iter()
        .map(|spec| SensorReport {
            name: spec.name,
            hook: spec.hook,
            state: if spec.strict && !opts.strict {
                SensorState::Skipped(
                    "strict sensor set only (sensor_set = \"strict\"): a syscall tracepoint slows every syscall".into(),
                )
            } else {
                match attach(&mut ebpf, spec, &btf, cgroup.as_ref()) {
                    Ok(()) => SensorState::Attached,
                    Err(e) => {
                        tracing::warn!(sensor = spec.name, hook = spec.hook, error = %format!("{e:#}"), "sensor not attached");
                        SensorState::Failed(format!("{e:#}"))
                    }
                }
            },
        })
        .collect();
    Ok(Loaded { ebpf, sensors })
}

fn attach(ebpf: &mut Ebpf, spec: &SensorSpec, btf: &Btf, cgroup: Option<&File>) -> anyhow::Result<()> {
    for name in spec.programs {
        let prog =
            ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
        let root = || cgroup.context("no cgroup v2 filesystem to attach to");
        match spec.attach {
            Attach::BtfTracepoint => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                p.load(name, btf).with_context(|| format!("loading tp_btf/{name}"))?;
                p.attach().with_context(|| format!("attaching tp_btf/{name}"))?;
            }
            Attach::CgroupSockAddr => {
                let p: &mut CgroupSockAddr = prog.try_into()?;
                p.load().with_context(|| format!("loading cgroup/{name}"))?;
                p.attach(root()?, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching cgroup/{name}"))?;
            }
            Attach::CgroupSock => {
                let p: &mut CgroupSock = prog.try_into()?;
                p.load().with_context(|| format!("loading cgroup/{name}"))?;
                p.attach(root()?, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching cgroup/{name}"))?;
            }
            Attach::SockOps => {
                let p: &mut SockOps = prog.try_into()?;
                p.load().with_context(|| format!("loading sockops {name}"))?;
                p.attach(root()?, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching sockops {name}"))?;
            }
            Attach::CgroupSysctl => {
                let p: &mut CgroupSysctl = prog.try_into()?;
                p.load().with_context(|| format!("loading cgroup/sysctl {name}"))?;
                p.attach(root()?, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching cgroup/sysctl {name}"))?;
            }
            Attach::SyscallTracepoint => {
                let p: &mut TracePoint = prog.try_into()?;
                p.load().with_context(|| format!("loading syscalls/{name}"))?;
                p.attach("syscalls", name).with_context(|| format!("attaching syscalls/{name}"))?;
            }
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large ring buffers load.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
