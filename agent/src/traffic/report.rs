//! A pod's traffic counts as a user reads them: timeline entries (first and last of each
//! kind, with counts; never one per packet), diagnoses and the figures its metrics take.

use super::watch::PodTraffic;
use crate::{
    clock::{secs, Clock},
    metrics::PodTrafficEnd,
    report::{plural, DiagnosisEntry, TimelineEntry},
};

/// Codes this module may add to a record.
pub const TRAFFIC_DIAGNOSES: [&str; 3] = [
    "TRAFFIC_AFTER_REMOVAL",
    "KEEPALIVE_AFTER_REMOVAL",
    "RESETS_AFTER_EXIT",
];

/// What a pod's record and metrics get from its traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodTrafficReport {
    pub timeline: Vec<TimelineEntry>,
    pub diagnoses: Vec<DiagnosisEntry>,
    /// For the metrics; `None` when not measured (hostNetwork).
    pub figures: Option<PodTrafficEnd>,
}

/// The report of `p`; `deletion_ns`: when the pod's deletion was seen (the preStop hook
/// starts then).
pub fn report(p: &PodTraffic, deletion_ns: Option<u64>, clock: &Clock) -> PodTrafficReport {
    let mut out = PodTrafficReport::default();
    let entry = |at_ns: u64, what: &str, detail: String| TimelineEntry {
        at: clock.rfc3339(at_ns),
        what: what.to_string(),
        container: None,
        detail,
        at_ns,
    };
    if p.host_network {
        if let Some(d) = deletion_ns {
            out.timeline.push(entry(
                d,
                "traffic_not_measured",
                "hostNetwork pod: it shares the node's addresses, so traffic to it cannot be told apart from the node's; traffic after removal was not measured".into(),
            ));
        }
        return out;
    }
    let c = &p.counters;
    let m = &p.marks;
    let mut pair = |n: u64, (first, last): (u64, u64), what: &str, noun: String| {
        if n == 0 || first == 0 {
            return;
        }
        if last <= first {
            out.timeline.push(entry(first, what, noun));
            return;
        }
        out.timeline
            .push(entry(first, what, format!("first of {noun}")));
        out.timeline
            .push(entry(last, what, format!("last of {noun}")));
    };
    pair(
        c.conns_after_removal,
        (c.conn_removal_first_ns, c.conn_removal_last_ns),
        "connection_after_removal",
        format!(
            "{} accepted after the endpoint left its Services",
            plural(
                c.conns_after_removal,
                "inbound connection",
                "inbound connections"
            )
        ),
    );
    pair(
        c.bytes_after_removal,
        (c.data_first_ns, c.data_last_ns),
        "data_after_removal",
        format!(
            "{} received after the endpoint's removal ({} over connections opened before it)",
            plural(c.bytes_after_removal, "payload byte", "payload bytes"),
            c.keepalive_bytes
        ),
    );
    pair(
        c.conns_after_sigterm,
        (c.conn_sigterm_first_ns, c.conn_sigterm_last_ns),
        "connection_after_sigterm",
        format!(
            "{} accepted after SIGTERM",
            plural(
                c.conns_after_sigterm,
                "inbound connection",
                "inbound connections"
            )
        ),
    );
    pair(
        c.resets_after_exit,
        (c.reset_first_ns, c.reset_last_ns),
        "reset_after_exit",
        format!(
            "{} sent from the pod's address after its last container exited (refused connections)",
            plural(c.resets_after_exit, "TCP reset", "TCP resets")
        ),
    );

    let last_traffic = c.conn_removal_last_ns.max(c.data_last_ns);
    let window =
        (m.removal_ns != 0 && last_traffic != 0).then(|| last_traffic.saturating_sub(m.removal_ns));
    if let Some(w) = window {
        let cover = deletion_ns.map(|d| {
            // The preStop sleep that keeps the app serving until the last traffic: from
            // the deletion (when the hook starts) to it, in whole seconds.
            last_traffic.saturating_sub(d).div_ceil(1_000_000_000)
        });
        let sigterm = if m.sigterm_ns == 0 {
            String::new()
        } else if m.sigterm_ns <= last_traffic {
            format!(
                "; SIGTERM came {:.3}s before the last of it",
                secs(last_traffic - m.sigterm_ns)
            )
        } else {
            "; it all came before SIGTERM".to_string()
        };
        let advice = match cover {
            Some(s) => format!(
                ": a preStop sleep of {s}s (deletion → last inbound traffic) would have kept the app serving through it"
            ),
            None => String::new(),
        };
        out.diagnoses.push(DiagnosisEntry {
            code: TRAFFIC_DIAGNOSES[0].into(),
            container: None,
            message: format!(
                "{} and {} reached the pod after its endpoint was removed, for {:.3}s after the removal{sigterm}{advice}",
                plural(c.conns_after_removal, "new inbound connection", "new inbound connections"),
                plural(c.bytes_after_removal, "payload byte", "payload bytes"),
                secs(w)
            ),
        });
    }
    if c.keepalive_bytes > 0 {
        let open = match p.established_at_removal {
            Some(n) => format!(
                " ({} open at the removal)",
                plural(n, "connection was", "connections were")
            ),
            None => String::new(),
        };
        out.diagnoses.push(DiagnosisEntry {
            code: TRAFFIC_DIAGNOSES[1].into(),
            container: None,
            message: format!(
                "{} came over connections opened before the endpoint's removal{open}, the last {:.3}s after it: keep-alive clients keep using a pod that left its Service; close idle keep-alive connections on SIGTERM and answer with `Connection: close` while draining",
                plural(c.keepalive_bytes, "payload byte", "payload bytes"),
                secs(c.keepalive_last_ns.saturating_sub(m.removal_ns))
            ),
        });
    }
    if c.resets_after_exit > 0 {
        out.diagnoses.push(DiagnosisEntry {
            code: TRAFFIC_DIAGNOSES[2].into(),
            container: None,
            message: format!(
                "{} refused with a TCP reset after the pod's last container exited (the last {:.3}s after the exit): clients were still sent here, so the endpoint left too late or the app exited too early; keep serving (a preStop sleep) until the endpoint removal has reached every client",
                plural(c.resets_after_exit, "connection attempt was", "connection attempts were"),
                secs(c.reset_last_ns.saturating_sub(m.exit_ns))
            ),
        });
    }
    out.figures = Some(PodTrafficEnd {
        connections_after_removal: c.conns_after_removal,
        connections_after_sigterm: c.conns_after_sigterm,
        bytes_after_removal: c.bytes_after_removal,
        resets_after_exit: c.resets_after_exit,
        keepalive_connections_at_removal: p.established_at_removal,
        traffic_after_removal_seconds: window.map(secs),
    });
    out
}

#[cfg(test)]
mod tests {
    use agent_ebpf::{TrafficCounters, WatchMarks};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn pod(c: TrafficCounters) -> PodTraffic {
        PodTraffic {
            marks: WatchMarks {
                removal_ns: 10 * S,
                sigterm_ns: 12 * S,
                exit_ns: 15 * S,
                ..WatchMarks::default()
            },
            counters: c,
            established_at_removal: Some(2),
            ..PodTraffic::default()
        }
    }

    #[test]
    fn counts_become_first_and_last_entries_and_diagnoses() {
        let none = TrafficCounters::default();
        let one_conn = TrafficCounters {
            conns_after_removal: 1,
            conn_removal_first_ns: 11 * S,
            conn_removal_last_ns: 11 * S,
            ..none
        };
        let busy = TrafficCounters {
            conns_after_removal: 4,
            conn_removal_first_ns: 11 * S,
            conn_removal_last_ns: 13 * S,
            conns_after_sigterm: 2,
            conn_sigterm_first_ns: 12 * S + 1,
            conn_sigterm_last_ns: 13 * S,
            bytes_after_removal: 500,
            data_first_ns: 11 * S,
            data_last_ns: 13 * S + 500_000_000,
            keepalive_bytes: 100,
            keepalive_first_ns: 11 * S,
            keepalive_last_ns: 11 * S,
            resets_after_exit: 3,
            reset_first_ns: 16 * S,
            reset_last_ns: 17 * S,
        };
        // (counts, timeline kinds, diagnosis codes, traffic window)
        type Case = (
            TrafficCounters,
            Vec<&'static str>,
            Vec<&'static str>,
            Option<f64>,
        );
        let cases: [Case; 3] = [
            (none, vec![], vec![], None),
            (
                one_conn,
                vec!["connection_after_removal"],
                vec!["TRAFFIC_AFTER_REMOVAL"],
                Some(1.0),
            ),
            (
                busy,
                vec![
                    "connection_after_removal",
                    "connection_after_removal",
                    "data_after_removal",
                    "data_after_removal",
                    "connection_after_sigterm",
                    "connection_after_sigterm",
                    "reset_after_exit",
                    "reset_after_exit",
                ],
                vec![
                    "TRAFFIC_AFTER_REMOVAL",
                    "KEEPALIVE_AFTER_REMOVAL",
                    "RESETS_AFTER_EXIT",
                ],
                Some(3.5),
            ),
        ];
        for (i, (c, whats, codes, window)) in cases.into_iter().enumerate() {
            let r = report(&pod(c), Some(9 * S), &Clock::with_offset_ns(0));
            let got: Vec<&str> = r.timeline.iter().map(|e| e.what.as_str()).collect();
            assert_eq!(got, whats, "case {i}");
            let got: Vec<&str> = r.diagnoses.iter().map(|d| d.code.as_str()).collect();
            assert_eq!(got, codes, "case {i}");
            let f = r.figures.expect("measured");
            assert_eq!(f.traffic_after_removal_seconds, window, "case {i}");
            assert_eq!(f.connections_after_removal, c.conns_after_removal);
            assert_eq!(f.keepalive_connections_at_removal, Some(2));
        }
    }

    #[test]
    fn the_prestop_advice_covers_deletion_to_the_last_traffic() {
        let c = TrafficCounters {
            conns_after_removal: 2,
            conn_removal_first_ns: 11 * S,
            conn_removal_last_ns: 13 * S + 200_000_000,
            ..TrafficCounters::default()
        };
        let r = report(&pod(c), Some(9 * S), &Clock::with_offset_ns(0));
        let m = &r.diagnoses[0].message;
        assert!(
            m.starts_with("2 new inbound connections and 0 payload bytes"),
            "{m}"
        );
        // Deletion at 9 s, last connection at 13.2 s: 4.2 s, so 5 s.
        assert!(m.contains("a preStop sleep of 5s"), "{m}");
        assert!(m.contains("for 3.200s after the removal"), "{m}");
        assert!(
            m.contains("SIGTERM came 1.200s before the last of it"),
            "{m}"
        );
    }

    #[test]
    fn a_host_network_pod_says_it_was_not_measured() {
        let p = PodTraffic {
            host_network: true,
            ..PodTraffic::default()
        };
        let r = report(&p, Some(S), &Clock::with_offset_ns(0));
        assert_eq!(r.timeline.len(), 1);
        assert_eq!(r.timeline[0].what, "traffic_not_measured");
        assert!(r.timeline[0].detail.contains("hostNetwork"));
        assert!(r.diagnoses.is_empty() && r.figures.is_none());
    }
}
