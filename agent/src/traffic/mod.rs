//! Traffic that still reaches a terminating pod: its addresses are watched in the kernel
//! from its deletion until it is gone (`watch`), the kernel's counts are read back and
//! summed over CPUs and addresses, the connections open at the endpoint's removal are
//! counted from the pod's socket table (`proc_net`), and the result becomes timeline
//! entries, diagnoses and metrics (`report`).

pub mod proc_net;
pub mod report;
pub mod watch;

use std::net::IpAddr;

use agent_ebpf::{Addr, TrafficCounters, WatchMarks};

pub use report::{PodTrafficReport, TRAFFIC_DIAGNOSES};
pub use watch::{PodTraffic, TrafficWatch};

/// The kernel maps the watch writes and reads (the loaded probes; a fake in tests).
pub trait TrafficMaps {
    fn watch(&mut self, addr: Addr, marks: &WatchMarks) -> Result<(), String>;
    fn unwatch(&mut self, addr: Addr) -> Result<(), String>;
    /// The counts at a watched address, summed over CPUs.
    fn read(&self, addr: &Addr) -> Option<TrafficCounters>;
}

/// A pod IP as the kernel maps key it: IPv6, IPv4 as `::ffff:a.b.c.d`. `None` for a
/// string that is not an address.
pub fn addr_of(ip: &str) -> Option<Addr> {
    match ip.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Some(v6.octets()),
    }
}

fn first(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

/// Two sets of counts as one: sums, earliest first, latest last (0 means none).
pub fn merge(a: &TrafficCounters, b: &TrafficCounters) -> TrafficCounters {
    TrafficCounters {
        conns_after_removal: a.conns_after_removal + b.conns_after_removal,
        conn_removal_first_ns: first(a.conn_removal_first_ns, b.conn_removal_first_ns),
        conn_removal_last_ns: a.conn_removal_last_ns.max(b.conn_removal_last_ns),
        conns_after_sigterm: a.conns_after_sigterm + b.conns_after_sigterm,
        conn_sigterm_first_ns: first(a.conn_sigterm_first_ns, b.conn_sigterm_first_ns),
        conn_sigterm_last_ns: a.conn_sigterm_last_ns.max(b.conn_sigterm_last_ns),
        bytes_after_removal: a.bytes_after_removal + b.bytes_after_removal,
        data_first_ns: first(a.data_first_ns, b.data_first_ns),
        data_last_ns: a.data_last_ns.max(b.data_last_ns),
        keepalive_bytes: a.keepalive_bytes + b.keepalive_bytes,
        keepalive_first_ns: first(a.keepalive_first_ns, b.keepalive_first_ns),
        keepalive_last_ns: a.keepalive_last_ns.max(b.keepalive_last_ns),
        resets_after_exit: a.resets_after_exit + b.resets_after_exit,
        reset_first_ns: first(a.reset_first_ns, b.reset_first_ns),
        reset_last_ns: a.reset_last_ns.max(b.reset_last_ns),
    }
}

/// The per-CPU values of one address as one.
pub fn sum_cpus<'a>(per_cpu: impl Iterator<Item = &'a TrafficCounters>) -> TrafficCounters {
    per_cpu.fold(TrafficCounters::default(), |acc, c| merge(&acc, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_as_ipv6() {
        let cases: [(&str, Option<[u8; 16]>); 4] = [
            (
                "10.1.2.3",
                Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]),
            ),
            (
                "fd00::7",
                Some([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
            ),
            ("", None),
            ("10.1.2", None),
        ];
        for (ip, want) in cases {
            assert_eq!(addr_of(ip), want, "{ip}");
        }
    }

    #[test]
    fn cpus_sum_with_earliest_first_and_latest_last() {
        let a = TrafficCounters {
            conns_after_removal: 2,
            conn_removal_first_ns: 50,
            conn_removal_last_ns: 90,
            bytes_after_removal: 100,
            ..Default::default()
        };
        let b = TrafficCounters {
            conns_after_removal: 1,
            conn_removal_first_ns: 40,
            conn_removal_last_ns: 60,
            resets_after_exit: 3,
            reset_first_ns: 7,
            reset_last_ns: 9,
            ..Default::default()
        };
        let idle = TrafficCounters::default();
        let s = sum_cpus([a, idle, b].iter());
        assert_eq!(s.conns_after_removal, 3);
        assert_eq!(s.conn_removal_first_ns, 40);
        assert_eq!(s.conn_removal_last_ns, 90);
        assert_eq!(s.bytes_after_removal, 100);
        assert_eq!(
            (s.resets_after_exit, s.reset_first_ns, s.reset_last_ns),
            (3, 7, 9)
        );
        assert_eq!(s.data_first_ns, 0, "none stays none");
    }
}
