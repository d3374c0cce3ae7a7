//! Every metric Gracewatch exports, with its help text, in one place. Prefix
//! `gracewatch_`; labels are bounded sets (no pod IPs, PIDs or command lines).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets for signal→exit and termination durations: 10 ms to 10 minutes.
pub const DURATION_BUCKETS: [f64; 21] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0,
    90.0, 120.0, 180.0, 300.0, 600.0,
];

/// Who a container metric is about. Standalone mode: namespace and workload are empty
/// and `container` is the 12-character container id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct ContainerLabels {
    pub namespace: String,
    pub workload: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub namespace: String,
    pub workload: String,
    pub container: String,
    pub signal: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub namespace: String,
    pub workload: String,
    pub container: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub namespace: String,
    pub workload: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    mode: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Share of the grace period used: 0.05 … 1.5 (above 1: the pod outlived its grace).
fn ratio_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.1, 1.5])
}

pub struct Metrics {
    registry: Registry,
    pub signals: Family<SignalLabels, Counter>,
    pub container_terminations: Family<OutcomeLabels, Counter>,
    pub forced_kills: Family<ContainerLabels, Counter>,
    pub sigterm_ignored: Family<ContainerLabels, Counter>,
    pub sigterm_to_exit: Family<ContainerLabels, Histogram, fn() -> Histogram>,
    pub termination_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub bpf_events: Family<KindLabels, Counter>,
    pub bpf_events_lost: Family<KindLabels, Counter>,
    pub unattributed_events: Family<ReasonLabels, Counter>,
    pub bpf_probe_errors: Family<KindLabels, Counter>,
    pub bpf_program_runs: Family<ProgramLabels, Gauge>,
    pub bpf_program_run_ns: Family<ProgramLabels, Gauge>,
    pub decode_errors: Family<ReasonLabels, Counter>,
    pub grace_period_used_ratio: Family<WorkloadLabels, Histogram, fn() -> Histogram>,
    pub prestop_duration: Family<ContainerLabels, Histogram, fn() -> Histogram>,
    pub endpoint_removal_lag: Family<WorkloadLabels, Histogram, fn() -> Histogram>,
    pub sigterm_before_endpoint_removal: Family<WorkloadLabels, Counter>,
    pub terminating_pods: Family<NamespaceLabels, Gauge>,
    pub stuck_terminating_pods: Family<NamespaceLabels, Gauge>,
    pub kube_watch_errors: Family<ResourceLabels, Counter>,
}

impl Metrics {
    pub fn new(mode: &'static str) -> Self {
        let mut registry = Registry::with_prefix("gracewatch");
        let m = Self {
            signals: Family::default(),
            container_terminations: Family::default(),
            forced_kills: Family::default(),
            sigterm_ignored: Family::default(),
            sigterm_to_exit: Family::new_with_constructor(duration_histogram),
            termination_duration: Family::new_with_constructor(duration_histogram),
            bpf_events: Family::default(),
            bpf_events_lost: Family::default(),
            unattributed_events: Family::default(),
            bpf_probe_errors: Family::default(),
            bpf_program_runs: Family::default(),
            bpf_program_run_ns: Family::default(),
            decode_errors: Family::default(),
            grace_period_used_ratio: Family::new_with_constructor(ratio_histogram),
            prestop_duration: Family::new_with_constructor(duration_histogram),
            endpoint_removal_lag: Family::new_with_constructor(duration_histogram),
            sigterm_before_endpoint_removal: Family::default(),
            terminating_pods: Family::default(),
            stuck_terminating_pods: Family::default(),
            kube_watch_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "signals",
            "Signals generated for container processes, by signal and by what the kernel did with them (delivered, ignored, already_pending, overflow, lose_info)",
            m.signals.clone(),
        );
        registry.register(
            "container_terminations",
            "Containers that ended, by outcome: graceful, forced_kill, killed_without_sigterm, self_exit, crashed, oom_killed, unknown",
            m.container_terminations.clone(),
        );
        registry.register(
            "forced_kills",
            "Containers SIGKILLed from outside after SIGTERM because they did not exit within the grace period",
            m.forced_kills.clone(),
        );
        registry.register(
            "sigterm_ignored",
            "SIGTERMs to a container's PID 1 that the kernel dropped because PID 1 has no handler",
            m.sigterm_ignored.clone(),
        );
        registry.register(
            "sigterm_to_exit_seconds",
            "Time from the first SIGTERM to a container's PID 1 exiting",
            m.sigterm_to_exit.clone(),
        );
        registry.register(
            "termination_duration_seconds",
            "Time from the start of a termination (deletion in Kubernetes mode, first SIGTERM in standalone mode) to the last exit",
            m.termination_duration.clone(),
        );
        registry.register(
            "bpf_events",
            "Kernel events received from the ring buffer, by kind",
            m.bpf_events.clone(),
        );
        registry.register(
            "bpf_events_lost",
            "Kernel events dropped because the ring buffer was full, by kind (raise --ring-buffer-bytes)",
            m.bpf_events_lost.clone(),
        );
        registry.register(
            "unattributed_events",
            "Kernel events not attributed to a container, by reason: not_container (a cgroup of no known container shape) or unknown_cgroup (a cgroup not found, e.g. already removed)",
            m.unattributed_events.clone(),
        );
        registry.register(
            "bpf_probe_errors",
            "Kernel events a probe could not build (a kernel read failed), by kind",
            m.bpf_probe_errors.clone(),
        );
        registry.register(
            "bpf_program_runs",
            "Times each kernel program ran, as the kernel counts them (only while sysctl kernel.bpf_stats_enabled=1)",
            m.bpf_program_runs.clone(),
        );
        registry.register(
            "bpf_program_run_nanoseconds",
            "Total run time of each kernel program in nanoseconds (only while sysctl kernel.bpf_stats_enabled=1)",
            m.bpf_program_run_ns.clone(),
        );
        registry.register(
            "decode_errors",
            "Ring buffer records that failed validation, by reason",
            m.decode_errors.clone(),
        );
        registry.register(
            "grace_period_used_ratio",
            "Deletion to last container exit, as a share of the pod's effective grace period",
            m.grace_period_used_ratio.clone(),
        );
        registry.register(
            "prestop_duration_seconds",
            "Time a container's preStop hook took: kubelet's Killing event (or the deletion) to SIGTERM",
            m.prestop_duration.clone(),
        );
        registry.register(
            "endpoint_removal_lag_seconds",
            "Deletion to the pod's endpoint leaving its Services (not ready, terminating or removed), as observed",
            m.endpoint_removal_lag.clone(),
        );
        registry.register(
            "sigterm_before_endpoint_removal",
            "Terminations where SIGTERM reached the pod before its endpoint left its Services: traffic may still arrive while it shuts down",
            m.sigterm_before_endpoint_removal.clone(),
        );
        registry.register(
            "terminating_pods",
            "Pods of this node that are being deleted and are still in the API",
            m.terminating_pods.clone(),
        );
        registry.register(
            "stuck_terminating_pods",
            "Pods of this node still present past deletion + grace period + --stuck-margin",
            m.stuck_terminating_pods.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Errors from the Kubernetes API watches, by resource (the watch retries with backoff)",
            m.kube_watch_errors.clone(),
        );
        // Always exported, at zero until something happens, so "no loss" is visible.
        for kind in agent_ebpf::EventKind::ALL {
            let labels = KindLabels { kind: kind.name() };
            let _ = m.bpf_events_lost.get_or_create(&labels);
            let _ = m.bpf_probe_errors.get_or_create(&labels);
            let _ = m.bpf_events.get_or_create(&labels);
        }
        for reason in ["not_container", "unknown_cgroup"] {
            let _ = m
                .unattributed_events
                .get_or_create(&ReasonLabels { reason });
        }
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                mode,
            })
            .set(1);
        registry.register("build_info", "Gracewatch version and mode", build_info);
        Self { registry, ..m }
    }

    pub fn kube_watch_error(&self, resource: &'static str) {
        self.kube_watch_errors
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_help_and_labels() {
        let m = Metrics::new("standalone");
        let labels = ContainerLabels {
            container: "0123456789ab".into(),
            ..Default::default()
        };
        m.forced_kills.get_or_create(&labels).inc();
        m.sigterm_to_exit.get_or_create(&labels).observe(0.3);
        m.unattributed_events
            .get_or_create(&ReasonLabels {
                reason: "not_container",
            })
            .inc_by(2);
        let text = m.encode().expect("encode");
        assert!(text.contains(
            "gracewatch_forced_kills_total{namespace=\"\",workload=\"\",container=\"0123456789ab\"} 1"
        ), "{text}");
        assert!(text.contains("gracewatch_sigterm_to_exit_seconds_bucket{le=\"0.5\",namespace=\"\",workload=\"\",container=\"0123456789ab\"} 1"), "{text}");
        assert!(text.contains("gracewatch_unattributed_events_total{reason=\"not_container\"} 2"));
        assert!(text.contains("gracewatch_unattributed_events_total{reason=\"unknown_cgroup\"} 0"));
        assert!(text.contains("gracewatch_bpf_probe_errors_total{kind=\"exit\"} 0"));
        assert!(text.contains("gracewatch_build_info{version=\"0.1.0\",mode=\"standalone\"} 1"));
        assert!(
            text.contains("# HELP gracewatch_bpf_events_lost Kernel events dropped"),
            "{text}"
        );
        assert!(text.contains("gracewatch_bpf_events_lost_total{kind=\"signal_generate\"} 0"));
        assert!(text.contains("gracewatch_bpf_events_total{kind=\"exit\"} 0"));
    }
}
