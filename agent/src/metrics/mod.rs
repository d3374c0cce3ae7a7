//! Every metric Gracewatch exports, defined in one place, with its help text, and grouped
//! by the subsystem that records it: [`KernelMetrics`] (ring buffer, probes, decoding),
//! [`AttributionMetrics`] (events no container could be found for),
//! [`TerminationMetrics`] (signals, container and pod ends, terminating pods),
//! [`KubeMetrics`] (API watches), [`TrafficMetrics`] (traffic that still reached
//! terminating pods) and [`HttpMetrics`] (the agent's own HTTP server).
//! Each group registers itself and offers intent-level methods; no caller builds a label
//! set. Prefix `gracewatch_`; labels are bounded sets (never pod IPs, PIDs or command
//! lines).
//!
//! Like `clock` and `report`, this is a leaf that every stage may write to; `export`
//! serves what it holds.

mod http;
mod kernel;
mod kube;
mod termination;
mod traffic;

pub use http::{HttpMetrics, HttpTimeout};
pub use kernel::{AttributionMetrics, KernelMetrics};
pub use kube::KubeMetrics;
pub use termination::{ContainerEnd, PodEnd, Subject, TerminationMetrics, Workload, SERIES_TTL_NS};
pub use traffic::{PodTrafficEnd, TrafficMetrics};

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets for signal→exit and termination durations: 10 ms to 10 minutes.
pub const DURATION_BUCKETS: [f64; 21] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0,
    90.0, 120.0, 180.0, 300.0, 600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    mode: &'static str,
}

/// Every group, each shareable on its own so a stage holds only the one it writes.
pub struct Metrics {
    registry: Registry,
    pub kernel: Arc<KernelMetrics>,
    pub attribution: Arc<AttributionMetrics>,
    pub termination: Arc<TerminationMetrics>,
    pub kube: Arc<KubeMetrics>,
    pub traffic: Arc<TrafficMetrics>,
    pub http: Arc<HttpMetrics>,
}

impl Metrics {
    /// Every family, registered; `mode` ("standalone", "kubernetes") goes into build_info.
    pub fn new(mode: &'static str) -> Self {
        let mut registry = Registry::with_prefix("gracewatch");
        let kernel = KernelMetrics::register(&mut registry);
        let attribution = AttributionMetrics::register(&mut registry);
        let termination = TerminationMetrics::register(&mut registry);
        let kube = KubeMetrics::register(&mut registry);
        let traffic = TrafficMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                mode,
            })
            .set(1);
        registry.register("build_info", "Gracewatch version and mode", build_info);
        let start_time = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        registry.register(
            "agent_start_time_seconds",
            "When this agent process started, in seconds since the Unix epoch: what happened before it is not seen (a restart leaves a gap)",
            start_time,
        );
        Self {
            registry,
            kernel: Arc::new(kernel),
            attribution: Arc::new(attribution),
            termination: Arc::new(termination),
            kube: Arc::new(kube),
            traffic: Arc::new(traffic),
            http: Arc::new(http),
        }
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
        let who = Subject::standalone("0123456789ab");
        m.termination.container_ended(
            &who,
            &ContainerEnd {
                outcome: "forced_kill",
                forced: true,
                sigterm_to_exit_seconds: Some(0.3),
                prestop_seconds: None,
            },
            0,
        );
        m.attribution.not_container();
        m.attribution.not_container();
        let text = m.encode().expect("encode");
        assert!(text.contains(
            "gracewatch_forced_kills_total{namespace=\"\",workload=\"\",container=\"0123456789ab\"} 1"
        ), "{text}");
        assert!(text.contains("gracewatch_sigterm_to_exit_seconds_bucket{le=\"0.5\",namespace=\"\",workload=\"\",container=\"0123456789ab\"} 1"), "{text}");
        assert!(text.contains("gracewatch_container_terminations_total{namespace=\"\",workload=\"\",container=\"0123456789ab\",outcome=\"forced_kill\"} 1"), "{text}");
        assert!(text.contains("gracewatch_unattributed_events_total{reason=\"not_container\"} 2"));
        assert!(text.contains("gracewatch_unattributed_events_total{reason=\"unknown_cgroup\"} 0"));
        assert!(text.contains("gracewatch_bpf_probe_errors_total{kind=\"exit\"} 0"));
        assert!(text.contains("gracewatch_build_info{version=\"0.1.0\",mode=\"standalone\"} 1"));
        assert!(
            text.contains("# TYPE gracewatch_agent_start_time_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains("# HELP gracewatch_bpf_events_lost Kernel events dropped"),
            "{text}"
        );
        assert!(text.contains("gracewatch_bpf_events_lost_total{kind=\"signal_generate\"} 0"));
        assert!(text.contains("gracewatch_bpf_events_total{kind=\"exit\"} 0"));
        assert!(
            !text.contains("kind=\"invalid\""),
            "no series for a kind that does not exist: {text}"
        );
    }
}
