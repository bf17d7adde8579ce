//! The ring buffer reader and the kernel's drop counters.

use std::io;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use sidewall_common::kind;
use tokio::io::unix::AsyncFd;

/// Owns the ring buffer; yields each record to a callback without copying it first.
pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map("EVENTS").context("map EVENTS missing")?;
        let ring = RingBuf::try_from(map).context("EVENTS is not a ring buffer")?;
        // SAFETY: the RingBuf owns its map fd and always returns that same open fd; the
        // AsyncFd owns the RingBuf, so the fd outlives the registration.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with tokio")?;
        Ok(Self { fd })
    }

    /// Waits until records are ready, then hands every available record to `f`.
    /// Returns the number of records read.
    pub async fn read_batch(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        guard.clear_ready();
        Ok(n)
    }
}

/// The per-kind, per-CPU counters of records the kernel could not reserve space for.
pub struct KernelDrops {
    map: PerCpuArray<MapData, u64>,
}

impl KernelDrops {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map("RINGBUF_DROPS").context("map RINGBUF_DROPS missing")?;
        Ok(Self { map: PerCpuArray::try_from(map).context("RINGBUF_DROPS is not a per-CPU array")? })
    }

    /// Totals since load, indexed by record kind.
    pub fn totals(&self) -> [u64; kind::MAX as usize] {
        let mut out = [0u64; kind::MAX as usize];
        for (k, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(k as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}
