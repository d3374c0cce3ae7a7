//! Metrics of the kernel side (records received, lost in a full ring, given up on by a
//! probe, rejected by the decoder, program run statistics) and of attribution (events no
//! container could be found for). The hot-path counters are resolved once, so counting a
//! record is one atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

use agent_ebpf::EventKind;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

const KINDS: usize = EventKind::ALL.len();

/// Position of a kind in [`EventKind::ALL`] (kinds start at 1 in the ABI).
fn slot(kind: EventKind) -> usize {
    kind as usize - 1
}

/// A kernel-side running total exported as a counter: only the growth since the last
/// reading is added.
struct KernelTotal {
    family: Family<KindLabels, Counter>,
    seen: [AtomicU64; KINDS],
}

impl KernelTotal {
    fn new() -> Self {
        let family = Family::<KindLabels, Counter>::default();
        // Always exported, at zero until something happens, so "no loss" is visible.
        for kind in EventKind::ALL {
            let _ = family.get_or_create(&KindLabels { kind: kind.name() });
        }
        Self {
            family,
            seen: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn update(&self, totals: &[(EventKind, u64)]) {
        for &(kind, total) in totals {
            let before = self.seen[slot(kind)].fetch_max(total, Ordering::Relaxed);
            if total > before {
                self.family
                    .get_or_create(&KindLabels { kind: kind.name() })
                    .inc_by(total - before);
            }
        }
    }
}

pub struct KernelMetrics {
    received: [Counter; KINDS],
    lost: KernelTotal,
    probe_errors: KernelTotal,
    decode_errors: Family<ReasonLabels, Counter>,
    program_runs: Family<ProgramLabels, Gauge>,
    program_run_seconds: Family<ProgramLabels, Gauge<f64, AtomicU64>>,
}

impl KernelMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let events = Family::<KindLabels, Counter>::default();
        let received = EventKind::ALL.map(|kind| {
            events
                .get_or_create(&KindLabels { kind: kind.name() })
                .clone()
        });
        let m = Self {
            received,
            lost: KernelTotal::new(),
            probe_errors: KernelTotal::new(),
            decode_errors: Family::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
        };
        registry.register(
            "bpf_events",
            "Kernel events received from the ring buffer, by kind",
            events,
        );
        registry.register(
            "bpf_events_lost",
            "Kernel events dropped because the ring buffer was full, by kind (raise --ring-buffer-bytes)",
            m.lost.family.clone(),
        );
        registry.register(
            "bpf_probe_errors",
            "Kernel events a probe could not build (a kernel read failed), by kind",
            m.probe_errors.family.clone(),
        );
        registry.register(
            "decode_errors",
            "Ring buffer records that failed validation, by reason",
            m.decode_errors.clone(),
        );
        registry.register(
            "bpf_program_runs",
            "Times each kernel program ran, as the kernel counts them (only while sysctl kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        registry.register(
            "bpf_program_run_seconds",
            "Total run time of each kernel program (only while sysctl kernel.bpf_stats_enabled=1)",
            m.program_run_seconds.clone(),
        );
        m
    }

    /// A record of `kind` was read from the ring and decoded.
    pub fn received(&self, kind: EventKind) {
        self.received[slot(kind)].inc();
    }

    /// A record failed validation (`reason` is the decoder's bounded label).
    pub fn decode_failed(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The kernel's running totals of records lost to a full ring and of events the
    /// probes gave up on, per kind.
    pub fn kernel_totals(&self, lost: &[(EventKind, u64)], probe_errors: &[(EventKind, u64)]) {
        self.lost.update(lost);
        self.probe_errors.update(probe_errors);
    }

    /// One program's kernel run statistics (cumulative, as the kernel keeps them).
    pub fn program_stats(&self, program: &str, runs: u64, run_ns: u64) {
        let labels = ProgramLabels {
            program: program.to_string(),
        };
        self.program_runs
            .get_or_create(&labels)
            .set(i64::try_from(runs).unwrap_or(i64::MAX));
        self.program_run_seconds
            .get_or_create(&labels)
            .set(run_ns as f64 / 1e9);
    }
}

pub struct AttributionMetrics {
    not_container: Counter,
    unknown_cgroup: Counter,
}

impl AttributionMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let family = Family::<ReasonLabels, Counter>::default();
        // One statement each: get_or_create's read guard lives to the end of its
        // statement, and a second call for a new key in the same one would deadlock.
        let counter = |reason| family.get_or_create(&ReasonLabels { reason }).clone();
        let not_container = counter("not_container");
        let unknown_cgroup = counter("unknown_cgroup");
        let m = Self {
            not_container,
            unknown_cgroup,
        };
        registry.register(
            "unattributed_events",
            "Kernel events not attributed to a container, by reason: not_container (a cgroup of no known container shape) or unknown_cgroup (a cgroup not found, e.g. already removed)",
            family,
        );
        m
    }

    /// An event from a cgroup that is not a container's.
    pub fn not_container(&self) {
        self.not_container.inc();
    }

    /// An event from a cgroup that could not be found.
    pub fn unknown_cgroup(&self) {
        self.unknown_cgroup.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_totals_count_only_growth() {
        let mut registry = Registry::default();
        let m = KernelMetrics::register(&mut registry);
        m.kernel_totals(&[(EventKind::Exit, 5)], &[]);
        m.kernel_totals(&[(EventKind::Exit, 5)], &[]);
        m.kernel_totals(&[(EventKind::Exit, 8), (EventKind::Exec, 1)], &[]);
        let get = |k: EventKind| {
            m.lost
                .family
                .get_or_create(&KindLabels { kind: k.name() })
                .get()
        };
        assert_eq!(get(EventKind::Exit), 8);
        assert_eq!(get(EventKind::Exec), 1);
        assert_eq!(get(EventKind::SignalGenerate), 0);
    }
}
