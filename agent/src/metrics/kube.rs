//! Metrics of the Kubernetes API side: watch errors by resource.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

pub struct KubeMetrics {
    watch_errors: Family<ResourceLabels, Counter>,
}

impl KubeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            watch_errors: Family::default(),
        };
        registry.register(
            "kube_watch_errors",
            "Errors from the Kubernetes API watches, by resource (the watch retries with backoff), and API objects that could not be read",
            m.watch_errors.clone(),
        );
        m
    }

    /// A watch of `resource` failed, or sent an object that could not be read.
    pub fn watch_error(&self, resource: &'static str) {
        self.watch_errors
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }
}
