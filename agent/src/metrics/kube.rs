//! Metrics of the Kubernetes API side: watch errors by resource, reads of pods' owners,
//! and the Events the agent writes.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    result: &'static str,
}

pub struct KubeMetrics {
    watch_errors: Family<ResourceLabels, Counter>,
    owner_requests: Family<RequestLabels, Counter>,
    events_written: Family<RequestLabels, Counter>,
}

impl KubeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            watch_errors: Family::default(),
            owner_requests: Family::default(),
            events_written: Family::default(),
        };
        registry.register(
            "kube_owner_requests",
            "Reads of deleted pods' owners (replicaset, deployment, statefulset) to find why they were deleted, by result (ok, error)",
            m.owner_requests.clone(),
        );
        registry.register(
            "kube_events",
            "Kubernetes Events the agent wrote about diagnoses (--emit-events), by kind (created, series) and result (ok, error, rate_limited, dropped)",
            m.events_written.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Errors from the Kubernetes API watches, by resource (the watch retries with backoff), and API objects that could not be read",
            m.watch_errors.clone(),
        );
        m
    }

    /// A read of a pod's owner of `kind`, with its `result` ("ok", "error").
    pub fn owner_request(&self, kind: &'static str, result: &'static str) {
        self.owner_requests
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    /// An Event write (`kind` "created" or "series") and its `result` ("ok", "error"),
    /// or one not written ("rate_limited", "dropped").
    pub fn event(&self, kind: &'static str, result: &'static str) {
        self.events_written
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    /// A watch of `resource` failed, or sent an object that could not be read.
    pub fn watch_error(&self, resource: &'static str) {
        self.watch_errors
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }
}
