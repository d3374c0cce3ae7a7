//! Kernel timestamps (CLOCK_BOOTTIME nanoseconds) to wall-clock time, and the RFC 3339
//! form every timestamp takes in JSON and text.

use nix::time::{clock_gettime, ClockId};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Converts CLOCK_BOOTTIME readings to wall-clock time with an offset sampled once. The
/// offset moves only when the wall clock is stepped; sampling again picks that up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - boottime, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn sample() -> Self {
        // Bracket the boottime reading with two realtime readings and take their middle,
        // so the offset's error is half the (sub-microsecond) sampling window.
        let r1 = read_ns(ClockId::CLOCK_REALTIME);
        let b = read_ns(ClockId::CLOCK_BOOTTIME);
        let r2 = read_ns(ClockId::CLOCK_REALTIME);
        Self {
            offset_ns: (r1 + r2) / 2 - b,
        }
    }

    /// A fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock time of a CLOCK_BOOTTIME reading.
    pub fn wall(&self, boot_ns: u64) -> OffsetDateTime {
        let ns = boot_ns as i128 + self.offset_ns;
        OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// CLOCK_BOOTTIME reading of a wall-clock time (0 for times before boot).
    pub fn boot_ns(&self, wall: OffsetDateTime) -> u64 {
        let ns = wall.unix_timestamp_nanos() - self.offset_ns;
        u64::try_from(ns).unwrap_or(0)
    }

    /// RFC 3339 with nanoseconds, UTC.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        rfc3339(self.wall(boot_ns))
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Nanoseconds as seconds, for metrics and reports.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Current CLOCK_BOOTTIME in nanoseconds (the probes' clock).
pub fn boot_now_ns() -> u64 {
    read_ns(ClockId::CLOCK_BOOTTIME) as u64
}

fn read_ns(clock: ClockId) -> i128 {
    // clock_gettime cannot fail for these clock ids on Linux; 0 would show as 1970.
    clock_gettime(clock)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_converts_to_wall_time_with_nanoseconds() {
        let clock = Clock::with_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(clock.boot_ns(clock.wall(123_456_789)), 123_456_789);
    }

    #[test]
    fn sampled_clock_agrees_with_now() {
        let clock = Clock::sample();
        let now = OffsetDateTime::now_utc();
        let converted = clock.wall(boot_now_ns());
        assert!((converted - now).abs() < time::Duration::milliseconds(50));
    }
}
