//! Loads the embedded eBPF object, relocates it for this kernel and attaches each sensor.
//! A sensor that cannot attach is reported (status, logs) and the others keep working.

use anyhow::Context as _;
use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::links::FdLink,
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
            "sys_exit_ptrace",
            "sys_enter_process_vm_readv",
            "sys_enter_process_vm_writev",
            "sys_enter_openat",
            "sys_enter_open",
            "sys_exit_openat",
            "sys_exit_openat2",
            "sys_exit_open",
        ],
        hook: "tracepoint/syscalls/sys_enter_{ptrace,process_vm_readv,process_vm_writev,openat,open}, sys_exit_{ptrace,openat,openat2,open}",
        attach: Attach::SyscallTracepoint,
        strict: true,
    },
    SensorSpec {
        name: "unix_connect",
        programs: &["sys_enter_connect", "sys_exit_connect"],
        hook: "tracepoint/syscalls/sys_{enter,exit}_connect",
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
    /// Size of the alert lane's ring buffer (`ALERTS`).
    pub alert_ring_buffer_bytes: u32,
    /// The cgroup v2 mount; socket sensors attach to its root. None: they are skipped.
    pub cgroup_root: Option<&'a Path>,
    /// Attach the strict set too (syscall tracepoints).
    pub strict: bool,
    /// Where enforcement survives the daemon: the policy maps and the links of the enforcing
    /// programs are pinned here (bpffs). None: nothing is pinned.
    pub pin_dir: Option<&'a Path>,
    /// Sensors not to attach, by name (`sensors_off`); never an enforcing one (see `can_be_off`).
    pub off: &'a [String],
}

/// Maps that hold the compiled policies and everything the kernel needs to decide alone that
/// a process belongs to a governed container: pinned, so a restarted daemon (and the programs
/// a stopped one left attached) share them.
const POLICY_MAPS: &[&str] = &[
    "ENFORCE",
    "CONNECT_ALLOW",
    "BIND_ALLOW",
    "EGRESS_ALLOW",
    "LOCAL_ADDRS",
    "ARMED",
    "HOME_MNT",
    "MNT_OWNER",
    "RUNTIME_SOCKETS",
];

/// Programs whose attachment is pinned: those that enforce (deny, kill) and those that arm
/// (exec into a container's home, fork of an armed process), so that a process started while
/// the daemon is down, restarting or far behind is under its rule from its first instruction.
const ENFORCING_PROGRAMS: &[&str] = &[
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "post_bind4",
    "post_bind6",
    "sched_process_exec",
    "sched_process_fork",
    "cgroup_rmdir",
    "sched_process_exit",
    "sys_enter_setns",
    "sys_enter_unshare",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_exit_ptrace",
    "sys_exit_openat",
    "sys_exit_openat2",
    "sys_exit_open",
    "sysctl_write",
];

/// The loaded object. Programs stay attached while this lives.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub sensors: Vec<SensorReport>,
    /// Attachments the daemon holds (the pinned ones live in bpffs instead).
    pub links: Vec<FdLink>,
    /// The same, for links made outside aya (see `sysctl_link`).
    pub raw_links: Vec<OwnedFd>,
    /// Every process with its kernel pid, its pid here and its cgroup (see `tasks`).
    pub tasks: Option<super::tasks::TaskIter>,
    /// The lock on the pin directory (see `lock_pin_dir`).
    _pin_lock: Option<File>,
}

pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Loaded> {
    raise_memlock();
    let offsets: Offsets = offsets::resolve(opts.btf_path)?;
    tracing::debug!(?offsets, "kernel offsets resolved");
    let btf = Btf::parse_file(opts.btf_path, aya::Endianness::default())
        .with_context(|| format!("parsing {}", opts.btf_path.display()))?;
    let pidns = super::tasks::own_pid_ns();
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .override_global("PIDNS_INUM", &pidns, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("ALERTS", opts.alert_ring_buffer_bytes);
    let pin_lock = opts.pin_dir.map(lock_pin_dir).transpose()?;
    let map_pins: Vec<(&str, PathBuf)> = match opts.pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir.join("maps"))
                .with_context(|| format!("creating {}", dir.display()))?;
            POLICY_MAPS.iter().map(|m| (*m, dir.join("maps").join(m))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &map_pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(BPF_OBJECT).context("loading the eBPF object")?;
    let cgroup = opts.cgroup_root.map(File::open).transpose().context("opening the cgroup v2 root")?;
    let mut links = Vec::new();
    let mut raw_links = Vec::new();
    let sensors = SENSORS
        .iter()
        .map(|spec| SensorReport {
            name: spec.name,
            hook: spec.hook,
            state: if opts.off.iter().any(|n| n == spec.name) {
                SensorState::Skipped("turned off by configuration (sensors_off)".into())
            } else if spec.strict && !opts.strict {
                SensorState::Skipped(
                    "strict sensor set only (sensor_set = \"strict\"): a syscall tracepoint slows every syscall".into(),
                )
            } else {
                let held = (&mut links, &mut raw_links);
                match attach(&mut ebpf, spec, &btf, cgroup.as_ref(), opts.pin_dir, held) {
                    Ok(()) => SensorState::Attached,
                    Err(e) => {
                        tracing::warn!(sensor = spec.name, hook = spec.hook, error = %format!("{e:#}"), "sensor not attached");
                        SensorState::Failed(format!("{e:#}"))
                    }
                }
            },
        })
        .collect();
    let tasks = super::tasks::TaskIter::load(&mut ebpf, &btf)
        .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "no task iterator: processes are seeded from /proc alone"))
        .ok();
    Ok(Loaded { ebpf, sensors, links, raw_links, tasks, _pin_lock: pin_lock })
}

/// Takes the pin directory for this daemon alone (an exclusive flock on it, held while the
/// daemon runs): a second daemon pinning the same names would replace, and so detach, the
/// first one's programs.
fn lock_pin_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            anyhow::bail!(
                "bpf_pin_dir {} is in use by another running sidewalld: give each daemon on a host its own (e.g. bpf_pin_dir = \"/sys/fs/bpf/sidewall/{{node}}\")",
                dir.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", dir.display()));
    }
    Ok(f)
}

/// Whether a sensor may be turned off: one whose programs enforce or arm may not, or a
/// container would run unguarded with its rule in the maps.
pub fn can_be_off(name: &str) -> Result<(), String> {
    let spec = SENSORS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SENSORS.iter().map(|s| s.name).collect();
        format!("{name:?} is not a sensor; sensors are {}", names.join(", "))
    })?;
    match spec.programs.iter().find(|p| ENFORCING_PROGRAMS.contains(p)) {
        Some(p) => Err(format!("{name:?} cannot be turned off: its program {p} enforces policies")),
        None => Ok(()),
    }
}

fn attach(
    ebpf: &mut Ebpf,
    spec: &SensorSpec,
    btf: &Btf,
    cgroup: Option<&File>,
    pin_dir: Option<&Path>,
    (links, raw_links): (&mut Vec<FdLink>, &mut Vec<OwnedFd>),
) -> anyhow::Result<()> {
    for name in spec.programs {
        let pin = pin_dir.filter(|_| ENFORCING_PROGRAMS.contains(name));
        if spec.attach == Attach::CgroupSysctl {
            let link = sysctl_link(ebpf, name, cgroup)?;
            match pin {
                Some(dir) => pin_with(dir, name, |path| bpf_obj_pin(&link, path))?,
                None => raw_links.push(link),
            }
            continue;
        }
        let link = attach_program(ebpf, spec.attach, name, btf, cgroup)?;
        match pin {
            Some(dir) => pin_with(dir, name, |path| Ok(link.pin(path).map(drop)?))?,
            // Held by the daemon: the program detaches when the daemon goes.
            None => links.push(link),
        }
    }
    Ok(())
}

/// Loads a cgroup/sysctl program and links it to the cgroup root with BPF_LINK_CREATE
/// directly: this aya version keeps such links to itself, so they could not be pinned, and
/// the refusal of `route_localnet` writes would lapse while the daemon restarts.
fn sysctl_link(ebpf: &mut Ebpf, name: &str, cgroup: Option<&File>) -> anyhow::Result<OwnedFd> {
    let prog = ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
    let p: &mut CgroupSysctl = prog.try_into()?;
    p.load().with_context(|| format!("loading cgroup/sysctl {name}"))?;
    let cgroup = cgroup.context("no cgroup v2 filesystem to attach to")?;
    let prog_fd = p.fd()?.as_fd().as_raw_fd();
    bpf_link_create(prog_fd, cgroup.as_raw_fd(), BPF_CGROUP_SYSCTL)
        .with_context(|| format!("attaching cgroup/sysctl {name}"))
}

/// `bpf(BPF_LINK_CREATE)`: prog_fd, target_fd, attach_type, flags; the rest zero.
pub(super) fn bpf_link_create(
    prog_fd: RawFd,
    target_fd: RawFd,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    let mut attr = [0u32; 16];
    (attr[0], attr[1], attr[2]) = (prog_fd as u32, target_fd as u32, attach_type);
    // SAFETY: a zeroed bpf_attr of the size passed, filled for BPF_LINK_CREATE.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh link descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(BPF_OBJ_PIN)`: pathname, bpf_fd; the rest zero.
fn bpf_obj_pin(fd: &OwnedFd, path: &Path) -> anyhow::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 4];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    // SAFETY: a zeroed bpf_attr of the size passed, filled for BPF_OBJ_PIN; the path outlives it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), size_of_val(&attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning {}", path.display()));
    }
    Ok(())
}

/// bpf(2) commands and the attach type used above (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_CGROUP_SYSCTL: u32 = 18;

/// Loads and attaches one program; the link is the caller's to keep (or pin).
fn attach_program(
    ebpf: &mut Ebpf,
    how: Attach,
    name: &str,
    btf: &Btf,
    cgroup: Option<&File>,
) -> anyhow::Result<FdLink> {
    let prog = ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
    let root = || cgroup.context("no cgroup v2 filesystem to attach to");
    let mode = CgroupAttachMode::Single;
    let link = match how {
        Attach::BtfTracepoint => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(name, btf).with_context(|| format!("loading tp_btf/{name}"))?;
            let id = p.attach().with_context(|| format!("attaching tp_btf/{name}"))?;
            FdLink::from(p.take_link(id)?)
        }
        Attach::CgroupSockAddr => {
            let p: &mut CgroupSockAddr = prog.try_into()?;
            p.load().with_context(|| format!("loading cgroup/{name}"))?;
            let id = p.attach(root()?, mode).with_context(|| format!("attaching cgroup/{name}"))?;
            FdLink::try_from(p.take_link(id)?)?
        }
        Attach::CgroupSock => {
            let p: &mut CgroupSock = prog.try_into()?;
            p.load().with_context(|| format!("loading cgroup/{name}"))?;
            let id = p.attach(root()?, mode).with_context(|| format!("attaching cgroup/{name}"))?;
            FdLink::try_from(p.take_link(id)?)?
        }
        Attach::SockOps => {
            let p: &mut SockOps = prog.try_into()?;
            p.load().with_context(|| format!("loading sockops {name}"))?;
            let id = p.attach(root()?, mode).with_context(|| format!("attaching sockops {name}"))?;
            FdLink::try_from(p.take_link(id)?)?
        }
        Attach::CgroupSysctl => anyhow::bail!("cgroup/sysctl {name} is linked by sysctl_link"),
        Attach::SyscallTracepoint => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().with_context(|| format!("loading syscalls/{name}"))?;
            let id = p.attach("syscalls", name).with_context(|| format!("attaching syscalls/{name}"))?;
            FdLink::try_from(p.take_link(id)?)?
        }
    };
    Ok(link)
}

/// Pins `link` at `dir/links/name` (bpffs refuses names with a dot), replacing (and so detaching) the one a previous daemon
/// left there: the new program is attached before the old one goes, so enforcement never
/// lapses across a restart.
fn pin_with(dir: &Path, name: &str, pin: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let links = dir.join("links");
    std::fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
    let (final_path, fresh) = (links.join(name), links.join(format!("{name}-new")));
    let _ = std::fs::remove_file(&fresh);
    pin(&fresh).with_context(|| format!("pinning {}", fresh.display()))?;
    let _ = std::fs::remove_file(&final_path);
    std::fs::rename(&fresh, &final_path).with_context(|| format!("pinning {}", final_path.display()))?;
    Ok(())
}

/// Removes everything a daemon pinned under `dir`: the enforcing programs detach and the
/// policy maps are freed (once no daemon holds them).
pub fn cleanup(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large ring buffers load.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
