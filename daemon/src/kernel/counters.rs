//! Counters the programs keep per CPU, summed here: records lost because the ring buffer was
//! full (per record kind), and what the kernel refused or killed (per `refusal` kind).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use sidewall_common::{kind, refusal};

/// One per-CPU array of counters, `N` of them.
pub struct PerCpuTotals<const N: usize> {
    map: PerCpuArray<MapData, u64>,
}

impl<const N: usize> PerCpuTotals<N> {
    pub fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Self> {
        let map = ebpf.take_map(name).with_context(|| format!("map {name} missing"))?;
        Ok(Self {
            map: PerCpuArray::try_from(map).with_context(|| format!("{name} is not a per-CPU array"))?,
        })
    }

    /// Totals since load, by index.
    pub fn totals(&self) -> [u64; N] {
        let mut out = [0u64; N];
        for (k, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(k as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

pub const KINDS: usize = kind::MAX as usize;
pub const REFUSALS: usize = refusal::MAX as usize;

/// The kernel's counters the pipeline reports once a second.
pub struct KernelCounters {
    /// Records the ring buffer had no room for, by record kind.
    pub drops: PerCpuTotals<KINDS>,
    /// What the kernel refused or killed, by `refusal` kind.
    pub refusals: PerCpuTotals<REFUSALS>,
    /// Records the alert lane's ring buffer (`ALERTS`) had no room for, by record kind.
    pub alert_drops: PerCpuTotals<KINDS>,
}

impl KernelCounters {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            drops: PerCpuTotals::take(ebpf, "RINGBUF_DROPS")?,
            refusals: PerCpuTotals::take(ebpf, "REFUSALS")?,
            alert_drops: PerCpuTotals::take(ebpf, "ALERT_DROPS")?,
        })
    }
}
