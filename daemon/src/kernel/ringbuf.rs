//! The ring buffer reader and the kernel's drop counters.

use std::{io, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use sidewall_common::ring_mode;
use tokio::{io::unix::AsyncFd, time::Interval};

/// How often the ring is read while events flow (the added latency, at most).
const POLL: Duration = Duration::from_millis(1);
/// Empty polls in a row before going back to sleeping until woken.
const IDLE_POLLS: u32 = 50;

/// Owns the ring buffer; yields each record to a callback without copying it first.
///
/// Two modes, told to the kernel through `RING_MODE`: asleep, every record wakes the reader;
/// once woken, it reads on a 1 ms timer and records do not wake it (unless the ring is a
/// quarter full), until the ring stays empty for 50 ms. Under load this turns a context
/// switch per event into one per millisecond.
pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// None for the alert lane, which always wakes its reader.
    mode: Option<Array<MapData, u32>>,
    poll: Option<Interval>,
    idle_polls: u32,
    /// The last read stopped at its limit: more records are waiting.
    pending: bool,
    /// A record read ahead by `read_until` (newer than asked for), handed out next.
    stash: Option<Vec<u8>>,
}

/// The kernel time of a record (`Header::ktime`, bytes 8..16); 0 for a record too short to
/// have one (the decoder reports it as malformed).
pub fn ktime_of(record: &[u8]) -> u64 {
    record.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

impl RingReader {
    /// The reader of `EVENTS`, switching modes through `RING_MODE`.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let fd = Self::register(ebpf, "EVENTS")?;
        let map = ebpf.take_map("RING_MODE").context("map RING_MODE missing")?;
        let mut mode = Array::try_from(map).context("RING_MODE is not an array")?;
        // A previous daemon may have left it polling.
        mode.set(0, ring_mode::WAKE, 0).context("setting RING_MODE")?;
        Ok(Self { fd, mode: Some(mode), poll: None, idle_polls: 0, pending: false, stash: None })
    }

    /// The reader of the alert lane (`ALERTS`): every record wakes it (the kernel's
    /// per-container budget bounds how many there are).
    pub fn take_alerts(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let fd = Self::register(ebpf, "ALERTS")?;
        Ok(Self { fd, mode: None, poll: None, idle_polls: 0, pending: false, stash: None })
    }

    fn register(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
        let map = ebpf.take_map(name).with_context(|| format!("map {name} missing"))?;
        let ring = RingBuf::try_from(map).with_context(|| format!("{name} is not a ring buffer"))?;
        // SAFETY: the RingBuf owns its map fd and always returns that same open fd; the
        // AsyncFd owns the RingBuf, so the fd outlives the registration.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with tokio")?;
        Ok(fd)
    }

    /// Waits until records may be ready: woken, the poll timer, or a previous `read_some`
    /// that stopped at its limit.
    pub async fn ready(&mut self) -> io::Result<()> {
        if self.pending || self.stash.is_some() {
            return Ok(());
        }
        match self.poll.as_mut() {
            None => self.fd.readable_mut().await?.clear_ready(),
            Some(poll) => tokio::select! {
                guard = self.fd.readable_mut() => guard?.clear_ready(),
                _ = poll.tick() => {}
            },
        }
        Ok(())
    }

    /// Hands up to `max` available records to `f`, without waiting. Returns how many.
    pub fn read_some(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        if max > 0
            && let Some(record) = self.stash.take()
        {
            f(&record);
            n += 1;
        }
        let ring = self.fd.get_mut();
        while n < max {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        self.pending = n == max;
        self.next_mode(n, &mut f);
        n
    }

    /// Hands `f` the records recorded at or before `ktime`, in order, without waiting, at
    /// most `max` of them: the causes of an alert (its process's exec, its container's
    /// cgroup) before the alert. The first newer record is kept for the next read. Returns
    /// how many were handed, and whether older records are still waiting (`max` was reached
    /// first).
    pub fn read_until(&mut self, ktime: u64, max: usize, mut f: impl FnMut(&[u8])) -> (usize, bool) {
        let mut n = 0;
        if let Some(record) = self.stash.take() {
            if ktime_of(&record) > ktime {
                self.stash = Some(record);
                return (0, false);
            }
            if max == 0 {
                self.stash = Some(record);
                return (0, true);
            }
            f(&record);
            n += 1;
        }
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            let newer = ktime_of(&item) > ktime;
            if newer || n == max {
                self.stash = Some(item.to_vec());
                return (n, !newer);
            }
            f(&item);
            n += 1;
        }
        (n, false)
    }

    fn drain(ring: &mut RingBuf<MapData>, f: &mut impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Starts polling once records flow; goes back to sleep once they stop.
    fn next_mode(&mut self, read: usize, f: &mut impl FnMut(&[u8])) {
        let Some(mode) = self.mode.as_mut() else { return };
        if read > 0 {
            self.idle_polls = 0;
            if self.poll.is_none() && mode.set(0, ring_mode::POLLING, 0).is_ok() {
                let mut poll = tokio::time::interval(POLL);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                self.poll = Some(poll);
            }
            return;
        }
        if self.poll.is_some() {
            self.idle_polls += 1;
            if self.idle_polls >= IDLE_POLLS && mode.set(0, ring_mode::WAKE, 0).is_ok() {
                self.poll = None;
                // Records submitted before the kernel saw the switch did not wake anyone.
                Self::drain(self.fd.get_mut(), f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sidewall_common::Header;

    use super::*;

    #[test]
    fn the_kernel_time_is_read_where_the_header_keeps_it() {
        let h = Header { kind: 3, ktime: 0x1122_3344_5566_7788, pid: 9, ..Default::default() };
        // SAFETY: a #[repr(C)] header of integers, read as the ring buffer holds it.
        let bytes = unsafe {
            std::slice::from_raw_parts((&h as *const Header).cast::<u8>(), std::mem::size_of::<Header>())
        };
        assert_eq!(ktime_of(bytes), h.ktime);
        assert_eq!(ktime_of(&bytes[..12]), 0, "too short: handled at once, and counted as malformed");
    }
}
