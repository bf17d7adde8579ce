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
    mode: Array<MapData, u32>,
    poll: Option<Interval>,
    idle_polls: u32,
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
        let map = ebpf.take_map("RING_MODE").context("map RING_MODE missing")?;
        let mut mode = Array::try_from(map).context("RING_MODE is not an array")?;
        // A previous daemon may have left it polling.
        mode.set(0, ring_mode::WAKE, 0).context("setting RING_MODE")?;
        Ok(Self { fd, mode, poll: None, idle_polls: 0 })
    }

    /// Waits until records are ready (woken, or the poll timer), then hands every available
    /// record to `f`. Returns the number of records read.
    pub async fn read_batch(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let n = match self.poll.as_mut() {
            None => {
                let mut guard = self.fd.readable_mut().await?;
                guard.clear_ready();
                Self::drain(guard.get_inner_mut(), &mut f)
            }
            Some(poll) => tokio::select! {
                guard = self.fd.readable_mut() => {
                    let mut guard = guard?;
                    guard.clear_ready();
                    Self::drain(guard.get_inner_mut(), &mut f)
                }
                _ = poll.tick() => Self::drain(self.fd.get_mut(), &mut f),
            },
        };
        self.next_mode(n, &mut f);
        Ok(n)
    }

    /// Reads what is there now, without waiting.
    pub fn read_now(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        Self::drain(self.fd.get_mut(), &mut f)
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
        if read > 0 {
            self.idle_polls = 0;
            if self.poll.is_none() && self.mode.set(0, ring_mode::POLLING, 0).is_ok() {
                let mut poll = tokio::time::interval(POLL);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                self.poll = Some(poll);
            }
            return;
        }
        if self.poll.is_some() {
            self.idle_polls += 1;
            if self.idle_polls >= IDLE_POLLS && self.mode.set(0, ring_mode::WAKE, 0).is_ok() {
                self.poll = None;
                // Records submitted before the kernel saw the switch did not wake anyone.
                Self::drain(self.fd.get_mut(), f);
            }
        }
    }
}
