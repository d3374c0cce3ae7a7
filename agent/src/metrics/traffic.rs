//! Metrics of the traffic that still reached terminating pods, per workload: new
//! connections after the endpoint's removal and after SIGTERM, payload bytes after the
//! removal, resets after the exit, keep-alive connections open at the removal and how
//! long traffic kept coming. Recorded once per pod, when its termination record
//! completes.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::{duration_histogram, termination::WorkloadLabels, Workload};

type HistogramFamily = Family<WorkloadLabels, Histogram, fn() -> Histogram>;

/// Buckets for connections open at a removal.
const CONNECTION_BUCKETS: [f64; 11] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
];

fn connection_histogram() -> Histogram {
    Histogram::new(CONNECTION_BUCKETS)
}

/// One pod's traffic figures (see `traffic::report`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodTrafficEnd {
    pub connections_after_removal: u64,
    pub connections_after_sigterm: u64,
    pub bytes_after_removal: u64,
    pub resets_after_exit: u64,
    pub keepalive_connections_at_removal: Option<u64>,
    pub traffic_after_removal_seconds: Option<f64>,
}

pub struct TrafficMetrics {
    connections_after_removal: Family<WorkloadLabels, Counter>,
    connections_after_sigterm: Family<WorkloadLabels, Counter>,
    bytes_after_removal: Family<WorkloadLabels, Counter>,
    resets_after_exit: Family<WorkloadLabels, Counter>,
    keepalive_at_removal: HistogramFamily,
    traffic_after_removal: HistogramFamily,
}

impl TrafficMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connections_after_removal: Family::default(),
            connections_after_sigterm: Family::default(),
            bytes_after_removal: Family::default(),
            resets_after_exit: Family::default(),
            keepalive_at_removal: Family::new_with_constructor(connection_histogram),
            traffic_after_removal: Family::new_with_constructor(duration_histogram),
        };
        registry.register(
            "connections_after_removal",
            "Inbound TCP connections a terminating pod accepted after its endpoint left its Services",
            m.connections_after_removal.clone(),
        );
        registry.register(
            "connections_after_sigterm",
            "Inbound TCP connections a terminating pod accepted after its first SIGTERM (or stop signal)",
            m.connections_after_sigterm.clone(),
        );
        registry.register(
            "bytes_after_removal",
            "Payload bytes a terminating pod received on inbound connections after its endpoint's removal, over new and already open (keep-alive) connections",
            m.bytes_after_removal.clone(),
        );
        registry.register(
            "resets_after_exit",
            "TCP resets sent from a pod's addresses after its last container exited: refused connection attempts",
            m.resets_after_exit.clone(),
        );
        registry.register(
            "keepalive_connections_at_removal",
            "Inbound connections established to a pod when its endpoint was removed",
            m.keepalive_at_removal.clone(),
        );
        registry.register(
            "traffic_after_removal_seconds",
            "From a pod's endpoint removal to the last inbound connection or payload it received, for pods that got traffic after the removal",
            m.traffic_after_removal.clone(),
        );
        m
    }

    /// A terminating pod's traffic, once its record is complete. Every counter gets a
    /// series (0 included) so rates and ratios work for workloads that had none.
    pub fn pod_traffic(&self, who: &Workload, t: &PodTrafficEnd) {
        let l = who.labels();
        self.connections_after_removal
            .get_or_create(l)
            .inc_by(t.connections_after_removal);
        self.connections_after_sigterm
            .get_or_create(l)
            .inc_by(t.connections_after_sigterm);
        self.bytes_after_removal
            .get_or_create(l)
            .inc_by(t.bytes_after_removal);
        self.resets_after_exit
            .get_or_create(l)
            .inc_by(t.resets_after_exit);
        if let Some(n) = t.keepalive_connections_at_removal {
            self.keepalive_at_removal.get_or_create(l).observe(n as f64);
        }
        if let Some(s) = t.traffic_after_removal_seconds {
            self.traffic_after_removal.get_or_create(l).observe(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_pods_traffic_is_counted_by_workload() {
        let m = Metrics::new("kubernetes");
        let who = Workload::new("shop", "deployment/web");
        let t = PodTrafficEnd {
            connections_after_removal: 4,
            connections_after_sigterm: 2,
            bytes_after_removal: 900,
            resets_after_exit: 3,
            keepalive_connections_at_removal: Some(1),
            traffic_after_removal_seconds: Some(1.2),
        };
        m.traffic.pod_traffic(&who, &t);
        m.traffic.pod_traffic(&who, &PodTrafficEnd::default());
        let text = m.encode().expect("encode");
        let l = "{namespace=\"shop\",workload=\"deployment/web\"}";
        for line in [
            format!("gracewatch_connections_after_removal_total{l} 4"),
            format!("gracewatch_connections_after_sigterm_total{l} 2"),
            format!("gracewatch_bytes_after_removal_total{l} 900"),
            format!("gracewatch_resets_after_exit_total{l} 3"),
            format!("gracewatch_traffic_after_removal_seconds_count{l} 1"),
            format!("gracewatch_keepalive_connections_at_removal_count{l} 1"),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains("gracewatch_keepalive_connections_at_removal_bucket{le=\"1.0\",namespace=\"shop\",workload=\"deployment/web\"} 1"), "{text}");
    }
}
