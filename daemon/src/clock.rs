//! Kernel boot-time nanoseconds to wall-clock timestamps.

use sidewall_proto::Timestamp;

/// Converts `bpf_ktime_get_boot_ns` values to wall time with an offset taken once at start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock nanoseconds at boot.
    boot_wall_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and a pointer to an initialised timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let wall = now_ns(libc::CLOCK_REALTIME);
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        Self { boot_wall_ns: wall - boot }
    }

    /// Boot-time nanoseconds now (the kernel's `bpf_ktime_get_boot_ns`).
    pub fn boot_ns() -> u64 {
        now_ns(libc::CLOCK_BOOTTIME) as u64
    }

    pub fn timestamp(&self, boot_ns: u64) -> Timestamp {
        let wall = self.boot_wall_ns + boot_ns as i128;
        Timestamp {
            seconds: (wall.div_euclid(1_000_000_000)) as i64,
            nanos: (wall.rem_euclid(1_000_000_000)) as i32,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_now_maps_to_wall_now() {
        let c = Clock::new();
        let ts = c.timestamp(Clock::boot_ns());
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
                as i64;
        assert!((ts.seconds - wall).abs() <= 1, "{} vs {wall}", ts.seconds);
        assert!((0..1_000_000_000).contains(&ts.nanos));
    }
}
