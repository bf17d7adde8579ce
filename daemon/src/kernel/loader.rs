//! Loads the embedded eBPF object, relocates it for this kernel and attaches each sensor.
//! A sensor that cannot attach is reported (status, logs) and the others keep working.

use std::path::Path;

use anyhow::Context as _;
use aya::{Btf, Ebpf, EbpfLoader, programs::BtfTracePoint};
use sidewall_common::Offsets;

use super::offsets;

/// The eBPF object built by `build.rs` from `bpf/programs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sidewall.bpf.o"));

/// One kernel hook and what it is for.
pub struct SensorSpec {
    pub name: &'static str,
    pub program: &'static str,
    pub hook: &'static str,
}

/// The process lifecycle sensors: BTF tracepoints, which cost nothing on unrelated syscalls
/// (unlike `syscalls/sys_enter_*` tracepoints, which slow every syscall of every process).
pub const PROCESS_SENSORS: &[SensorSpec] = &[
    SensorSpec {
        name: "process_exec",
        program: "sched_process_exec",
        hook: "tp_btf/sched_process_exec",
    },
    SensorSpec {
        name: "process_exit",
        program: "sched_process_exit",
        hook: "tp_btf/sched_process_exit",
    },
    SensorSpec {
        name: "process_fork",
        program: "sched_process_fork",
        hook: "tp_btf/sched_process_fork",
    },
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SensorState {
    Attached,
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
}

/// The loaded object. Programs stay attached while this lives.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub sensors: Vec<SensorReport>,
}

pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Loaded> {
    raise_memlock();
    let offsets: Offsets = offsets::resolve(opts.btf_path)?;
    let btf = Btf::parse_file(opts.btf_path, aya::Endianness::default())
        .with_context(|| format!("parsing {}", opts.btf_path.display()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &offsets, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .load(BPF_OBJECT)
        .context("loading the eBPF object")?;
    let sensors = PROCESS_SENSORS
        .iter()
        .map(|spec| SensorReport {
            name: spec.name,
            hook: spec.hook,
            state: match attach_btf_tracepoint(&mut ebpf, spec, &btf) {
                Ok(()) => SensorState::Attached,
                Err(e) => {
                    tracing::warn!(sensor = spec.name, hook = spec.hook, error = %format!("{e:#}"), "sensor not attached");
                    SensorState::Failed(format!("{e:#}"))
                }
            },
        })
        .collect();
    Ok(Loaded { ebpf, sensors })
}

fn attach_btf_tracepoint(ebpf: &mut Ebpf, spec: &SensorSpec, btf: &Btf) -> anyhow::Result<()> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(spec.program)
        .with_context(|| format!("program {} missing from the object", spec.program))?
        .try_into()?;
    let tracepoint = spec.hook.trim_start_matches("tp_btf/");
    prog.load(tracepoint, btf)
        .with_context(|| format!("loading {}", spec.hook))?;
    prog.attach()
        .with_context(|| format!("attaching {}", spec.hook))?;
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large ring buffers load.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
