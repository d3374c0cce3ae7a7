//! Which addresses the kernel watches, and the moments it compares traffic with. A pod's
//! addresses are watched from its deletion until it leaves the API (its IPs may go to
//! another pod then); its removal, first SIGTERM and last exit are written beside them
//! as they are observed. The counts read back are kept per pod until its record takes
//! them. Kernel map writes are queued here and applied by the caller that owns the maps.

use std::collections::{HashMap, VecDeque};

use agent_ebpf::{Addr, TrafficCounters, WatchMarks, MAX_WATCHED_PORTS};

use super::{addr_of, merge, proc_net::SocketTable, TrafficMaps};

/// Pods whose counts wait for their record (a record that never completes must not
/// keep them forever).
const KEPT: usize = 1024;

/// What is known of one terminating pod's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    /// Addresses watched (empty for a hostNetwork pod).
    pub addrs: Vec<Addr>,
    pub marks: WatchMarks,
    /// Summed over its addresses, as last read.
    pub counters: TrafficCounters,
    /// Inbound connections established when the endpoint was removed (`None`: the
    /// socket table could not be read).
    pub established_at_removal: Option<u64>,
    /// The pod shares the node's network: not measured.
    pub host_network: bool,
    /// Still watched in the kernel.
    pub(super) watched: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Watch(Addr, WatchMarks),
    Unwatch(Addr),
}

#[derive(Default)]
pub struct TrafficWatch {
    pods: HashMap<String, PodTraffic>,
    order: VecDeque<String>,
    ops: Vec<Op>,
    /// Pods still watched (so the hot path asks in O(1)).
    watched: usize,
}

impl TrafficWatch {
    pub fn is_watched(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.watched)
    }

    pub fn get(&self, uid: &str) -> Option<&PodTraffic> {
        self.pods.get(uid)
    }

    /// A pod's deletion was seen: watch `ips` (those still its own). `table`: its socket
    /// table, for the ports it listens on.
    pub fn deleting(
        &mut self,
        uid: &str,
        ips: &[String],
        host_network: bool,
        table: Option<&SocketTable>,
    ) {
        if self.pods.contains_key(uid) {
            return;
        }
        let mut p = PodTraffic {
            host_network,
            watched: !host_network,
            ..PodTraffic::default()
        };
        if !host_network {
            p.addrs = ips.iter().filter_map(|ip| addr_of(ip)).collect();
            p.addrs.dedup();
            if let Some(t) = table {
                for (slot, port) in p.marks.ports.iter_mut().zip(
                    t.listening_ports(&p.addrs)
                        .into_iter()
                        .take(MAX_WATCHED_PORTS),
                ) {
                    *slot = port;
                }
            }
            self.ops
                .extend(p.addrs.iter().map(|a| Op::Watch(*a, p.marks)));
            self.watched += 1;
        }
        self.pods.insert(uid.to_string(), p);
        self.order.push_back(uid.to_string());
        while self.order.len() > KEPT {
            if let Some(old) = self.order.pop_front() {
                self.forget(&old);
            }
        }
    }

    fn update(&mut self, uid: &str, set: impl FnOnce(&mut PodTraffic) -> bool) {
        let Some(p) = self.pods.get_mut(uid).filter(|p| p.watched) else {
            return;
        };
        if set(p) {
            let marks = p.marks;
            self.ops
                .extend(p.addrs.iter().map(|a| Op::Watch(*a, marks)));
        }
    }

    /// The endpoint left its Services at `at_ns`; `table`: the socket table then.
    pub fn removal(&mut self, uid: &str, at_ns: u64, table: Option<&SocketTable>) {
        self.update(uid, |p| {
            if p.marks.removal_ns != 0 {
                return false;
            }
            p.marks.removal_ns = at_ns.max(1);
            p.established_at_removal = table.map(|t| t.inbound_established(&p.addrs));
            true
        });
    }

    /// A stop signal reached one of its containers at `at_ns` (the first one counts).
    pub fn sigterm(&mut self, uid: &str, at_ns: u64) {
        self.update(uid, |p| {
            if p.marks.sigterm_ns != 0 && p.marks.sigterm_ns <= at_ns {
                return false;
            }
            p.marks.sigterm_ns = at_ns.max(1);
            true
        });
    }

    /// Its last container exited at `at_ns`.
    pub fn exit(&mut self, uid: &str, at_ns: u64) {
        self.update(uid, |p| {
            if p.marks.exit_ns >= at_ns {
                return false;
            }
            p.marks.exit_ns = at_ns;
            true
        });
    }

    /// The pod left the API: stop watching (its counts stay for its record).
    pub fn gone(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid).filter(|p| p.watched) {
            p.watched = false;
            self.watched -= 1;
            self.ops.extend(p.addrs.iter().map(|a| Op::Unwatch(*a)));
        }
    }

    /// The pod's counts, for its record; forgotten here (and unwatched if still watched).
    pub fn take(&mut self, uid: &str) -> Option<PodTraffic> {
        self.gone(uid);
        self.order.retain(|u| u != uid);
        self.pods.remove(uid)
    }

    fn forget(&mut self, uid: &str) {
        self.gone(uid);
        self.pods.remove(uid);
    }

    /// Kernel map writes are waiting.
    pub fn has_ops(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Any pod is being watched (its counts are worth reading).
    pub fn watching(&self) -> bool {
        self.watched > 0
    }

    /// Applies the queued writes to the kernel maps.
    pub fn apply(&mut self, maps: &mut impl TrafficMaps) {
        for op in self.ops.drain(..) {
            let r = match op {
                Op::Watch(a, m) => maps.watch(a, &m),
                Op::Unwatch(a) => maps.unwatch(a),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot update the traffic watch");
            }
        }
    }

    /// Reads the counts of every watched pod from the kernel.
    pub fn refresh(&mut self, maps: &impl TrafficMaps) {
        for p in self.pods.values_mut().filter(|p| p.watched) {
            p.counters = p
                .addrs
                .iter()
                .filter_map(|a| maps.read(a))
                .fold(TrafficCounters::default(), |acc, c| merge(&acc, &c));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use super::*;
    use crate::traffic::proc_net::parse;

    #[derive(Default)]
    struct FakeMaps {
        watched: Map<Addr, WatchMarks>,
        counts: Map<Addr, TrafficCounters>,
    }

    impl TrafficMaps for FakeMaps {
        fn watch(&mut self, addr: Addr, marks: &WatchMarks) -> Result<(), String> {
            self.watched.insert(addr, *marks);
            self.counts.entry(addr).or_default();
            Ok(())
        }
        fn unwatch(&mut self, addr: Addr) -> Result<(), String> {
            self.watched.remove(&addr);
            self.counts.remove(&addr);
            Ok(())
        }
        fn read(&self, addr: &Addr) -> Option<TrafficCounters> {
            self.counts.get(addr).copied()
        }
    }

    const TABLE: &str = "header
   0: 00000000:0050 00000000:0000 0A 0
   1: 0700010A:0050 0100010A:D431 01 0
";

    #[test]
    fn a_pod_is_watched_from_deletion_to_gone_with_its_moments() {
        let table = SocketTable { rows: parse(TABLE) };
        let mut w = TrafficWatch::default();
        let mut maps = FakeMaps::default();
        let v4 = addr_of("10.1.0.7").unwrap();
        let v6 = addr_of("fd00::7").unwrap();
        w.deleting(
            "u1",
            &["10.1.0.7".into(), "fd00::7".into()],
            false,
            Some(&table),
        );
        w.apply(&mut maps);
        assert!(w.watching() && w.is_watched("u1"));
        assert_eq!(maps.watched.len(), 2);
        assert_eq!(maps.watched[&v4].ports[..2], [80, 0]);
        w.removal("u1", 1_000, Some(&table));
        w.removal("u1", 2_000, None); // only the first counts
        w.sigterm("u1", 5_000);
        w.sigterm("u1", 4_000); // an earlier one seen later wins
        w.exit("u1", 9_000);
        w.apply(&mut maps);
        let m = maps.watched[&v6];
        assert_eq!(
            (m.removal_ns, m.sigterm_ns, m.exit_ns),
            (1_000, 4_000, 9_000)
        );
        assert_eq!(w.get("u1").unwrap().established_at_removal, Some(1));
        maps.counts.get_mut(&v4).unwrap().conns_after_removal = 2;
        maps.counts.get_mut(&v6).unwrap().conns_after_removal = 1;
        w.refresh(&maps);
        w.gone("u1");
        w.apply(&mut maps);
        assert!(maps.watched.is_empty(), "unwatched when the pod is gone");
        assert!(!w.watching());
        let p = w.take("u1").expect("counts kept for the record");
        assert_eq!(p.counters.conns_after_removal, 3);
        assert!(w.take("u1").is_none());
        assert!(!w.has_ops());
    }

    #[test]
    fn a_host_network_pod_is_not_watched() {
        let mut w = TrafficWatch::default();
        let mut maps = FakeMaps::default();
        w.deleting("h", &["192.168.1.10".into()], true, None);
        assert!(!w.watching());
        w.removal("h", 1, None);
        w.apply(&mut maps);
        assert!(maps.watched.is_empty());
        let p = w.take("h").unwrap();
        assert!(p.host_network && p.addrs.is_empty());
    }
}
