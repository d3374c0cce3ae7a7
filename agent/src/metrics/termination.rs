//! Metrics of terminations: signals to container processes, how each container and each
//! pod ended, and the pods of this node that are terminating or stuck. Callers name who a
//! metric is about with a [`Subject`] (a container) or a [`Workload`] (a pod's
//! namespace and workload) and say what happened; the label sets are built here.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::duration_histogram;
use crate::report::{signal_name, StopCause};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
struct ContainerLabels {
    namespace: String,
    workload: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    namespace: String,
    workload: String,
    container: String,
    signal: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    workload: String,
    container: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    namespace: String,
    workload: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub(super) struct WorkloadLabels {
    namespace: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodCauseLabels {
    namespace: String,
    workload: String,
    cause: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    namespace: String,
    workload: String,
    container: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// Who a container metric is about. Kubernetes mode: the pod's namespace, its workload
/// (`deployment/web`, "" for none) and the container's name; standalone mode: namespace
/// and workload empty and the 12-character container id. It also caches the signal
/// counters of its container, so counting a signal allocates nothing.
#[derive(Debug)]
pub struct Subject {
    labels: ContainerLabels,
    signals: HashMap<(u32, &'static str), Counter>,
    /// Its labels name one container instance (standalone: the id), not a workload:
    /// its series are dropped a while after it ended, so churn cannot grow them forever.
    expires: bool,
}

impl Subject {
    pub fn new(namespace: &str, workload: &str, container: &str) -> Self {
        Self {
            labels: ContainerLabels {
                namespace: namespace.to_string(),
                workload: workload.to_string(),
                container: container.to_string(),
            },
            signals: HashMap::new(),
            expires: false,
        }
    }

    /// A container outside Kubernetes, by its short id.
    pub fn standalone(short_id: &str) -> Self {
        Self {
            expires: true,
            ..Self::new("", "", short_id)
        }
    }

    /// The value of the `container` label (a name, or a short id).
    pub fn container(&self) -> &str {
        &self.labels.container
    }

    /// The pod-level subject of this container.
    pub fn workload(&self) -> Workload {
        Workload(WorkloadLabels {
            namespace: self.labels.namespace.clone(),
            workload: self.labels.workload.clone(),
        })
    }

    /// Same labels (the signal cache aside).
    pub fn same_as(&self, other: &Subject) -> bool {
        self.labels == other.labels
    }
}

/// Who a pod-level metric is about: namespace and workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload(WorkloadLabels);

impl Workload {
    pub fn new(namespace: &str, workload: &str) -> Self {
        Self(WorkloadLabels {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
        })
    }

    pub(super) fn labels(&self) -> &WorkloadLabels {
        &self.0
    }
}

/// How one container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerEnd {
    /// The outcome's stable name (`graceful`, `forced_kill`, ...).
    pub outcome: &'static str,
    /// SIGKILLed from outside after SIGTERM: the grace period ran out.
    pub forced: bool,
    pub sigterm_to_exit_seconds: Option<f64>,
    /// How long its preStop hook held SIGTERM back (Kubernetes mode).
    pub prestop_seconds: Option<f64>,
}

/// How one pod (or, standalone, one container's termination) ended.
#[derive(Clone, Debug, PartialEq)]
pub struct PodEnd {
    /// Its worst container's outcome.
    pub outcome: &'static str,
    /// Start (deletion, or first signal) to the last exit.
    pub duration_seconds: Option<f64>,
    pub grace_used_ratio: Option<f64>,
    pub endpoint_lag_seconds: Option<f64>,
    pub sigterm_before_endpoint_removal: bool,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The series of one ended container, and when they go (boot clock).
struct Expiring {
    at_ns: u64,
    labels: ContainerLabels,
    signals: Vec<(u32, &'static str)>,
    outcome: &'static str,
}

/// Default time a standalone container's series are kept after it ended.
pub const SERIES_TTL_NS: u64 = 120_000_000_000;

/// Share of the grace period used: 0.05 … 1.5 (above 1: the pod outlived its grace).
fn ratio_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.1, 1.5])
}

pub struct TerminationMetrics {
    signals: Family<SignalLabels, Counter>,
    container_terminations: Family<OutcomeLabels, Counter>,
    forced_kills: Family<ContainerLabels, Counter>,
    sigterm_ignored: Family<ContainerLabels, Counter>,
    sigterm_to_exit: HistogramFamily<ContainerLabels>,
    prestop_duration: HistogramFamily<ContainerLabels>,
    termination_duration: HistogramFamily<DurationLabels>,
    grace_period_used_ratio: HistogramFamily<WorkloadLabels>,
    endpoint_removal_lag: HistogramFamily<WorkloadLabels>,
    sigterm_before_endpoint_removal: Family<WorkloadLabels, Counter>,
    pod_terminations: Family<PodCauseLabels, Counter>,
    container_restarts: Family<RestartLabels, Counter>,
    terminating_pods: Family<NamespaceLabels, Gauge>,
    stuck_terminating_pods: Family<NamespaceLabels, Gauge>,
    waiting_for_api: Gauge,
    /// Namespaces the pod gauges were last set for (to zero them when they empty).
    gauge_namespaces: Mutex<Vec<String>>,
    /// Series of ended standalone containers, in the order they go.
    expiring: Mutex<VecDeque<Expiring>>,
    series_ttl_ns: AtomicU64,
}

impl TerminationMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            signals: Family::default(),
            container_terminations: Family::default(),
            forced_kills: Family::default(),
            sigterm_ignored: Family::default(),
            sigterm_to_exit: Family::new_with_constructor(duration_histogram),
            prestop_duration: Family::new_with_constructor(duration_histogram),
            termination_duration: Family::new_with_constructor(duration_histogram),
            grace_period_used_ratio: Family::new_with_constructor(ratio_histogram),
            endpoint_removal_lag: Family::new_with_constructor(duration_histogram),
            sigterm_before_endpoint_removal: Family::default(),
            pod_terminations: Family::default(),
            container_restarts: Family::default(),
            terminating_pods: Family::default(),
            stuck_terminating_pods: Family::default(),
            waiting_for_api: Gauge::default(),
            gauge_namespaces: Mutex::new(Vec::new()),
            expiring: Mutex::new(VecDeque::new()),
            series_ttl_ns: AtomicU64::new(SERIES_TTL_NS),
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
            "pod_terminations",
            "Pod terminations, by why the pod was stopped (cause: rollout, scale_down, eviction, preemption, taint, node_pressure, delete, …) and its worst container's outcome",
            m.pod_terminations.clone(),
        );
        registry.register(
            "container_restarts",
            "Container runs that ended while their pod lived on (restarts), by cause: liveness_probe, startup_probe, oom, crash, completed, unknown",
            m.container_restarts.clone(),
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
            "terminations_waiting_for_api",
            "Termination and restart records held open while the API server is unreachable, until a relist says whether their pod was deleted (bounded in number and to 10 minutes each)",
            m.waiting_for_api.clone(),
        );
        m
    }

    /// How many records wait for the API server now.
    pub fn held_for_api(&self, records: usize) {
        self.waiting_for_api
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// A pod's termination completed; `cause` and `outcome` are stable names.
    pub fn pod_terminated(&self, who: &Workload, cause: StopCause, outcome: &'static str) {
        self.pod_terminations
            .get_or_create(&PodCauseLabels {
                namespace: who.0.namespace.clone(),
                workload: who.0.workload.clone(),
                cause: cause.as_str(),
                outcome,
            })
            .inc();
    }

    /// A run of `container` ended while its pod lived on.
    pub fn container_restarted(&self, who: &Workload, container: &str, cause: StopCause) {
        self.container_restarts
            .get_or_create(&RestartLabels {
                namespace: who.0.namespace.clone(),
                workload: who.0.workload.clone(),
                container: container.to_string(),
                cause: cause.as_str(),
            })
            .inc();
    }

    /// A signal was generated for a process of `who`; `result` is what the kernel did
    /// with it (delivered, ignored, ...).
    pub fn signal(&self, who: &mut Subject, sig: u32, result: &'static str) {
        let Subject {
            labels, signals, ..
        } = who;
        signals
            .entry((sig, result))
            .or_insert_with(|| {
                self.signals
                    .get_or_create(&SignalLabels {
                        namespace: labels.namespace.clone(),
                        workload: labels.workload.clone(),
                        container: labels.container.clone(),
                        signal: signal_name(sig),
                        result,
                    })
                    .clone()
            })
            .inc();
    }

    /// PID 1 of `who` had no SIGTERM handler and the kernel dropped a SIGTERM.
    pub fn sigterm_ignored(&self, who: &Subject) {
        self.sigterm_ignored.get_or_create(&who.labels).inc();
    }

    /// How long a standalone container's series stay after it ended.
    pub fn set_series_ttl_ns(&self, ttl_ns: u64) {
        self.series_ttl_ns.store(ttl_ns, Ordering::Relaxed);
    }

    /// `who` ended at `now_ns` (boot clock).
    pub fn container_ended(&self, who: &Subject, end: &ContainerEnd, now_ns: u64) {
        let l = &who.labels;
        if who.expires {
            let mut q = self
                .expiring
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            q.push_back(Expiring {
                at_ns: now_ns.saturating_add(self.series_ttl_ns.load(Ordering::Relaxed)),
                labels: l.clone(),
                signals: who.signals.keys().copied().collect(),
                outcome: end.outcome,
            });
        }
        self.container_terminations
            .get_or_create(&OutcomeLabels {
                namespace: l.namespace.clone(),
                workload: l.workload.clone(),
                container: l.container.clone(),
                outcome: end.outcome,
            })
            .inc();
        if end.forced {
            self.forced_kills.get_or_create(l).inc();
        }
        if let Some(s) = end.sigterm_to_exit_seconds {
            self.sigterm_to_exit.get_or_create(l).observe(s);
        }
        if let Some(s) = end.prestop_seconds {
            self.prestop_duration.get_or_create(l).observe(s);
        }
    }

    pub fn pod_ended(&self, who: &Workload, end: &PodEnd) {
        let w = &who.0;
        if let Some(s) = end.duration_seconds {
            self.termination_duration
                .get_or_create(&DurationLabels {
                    namespace: w.namespace.clone(),
                    workload: w.workload.clone(),
                    outcome: end.outcome,
                })
                .observe(s);
        }
        if let Some(r) = end.grace_used_ratio {
            self.grace_period_used_ratio.get_or_create(w).observe(r);
        }
        if let Some(s) = end.endpoint_lag_seconds {
            self.endpoint_removal_lag.get_or_create(w).observe(s);
        }
        if end.sigterm_before_endpoint_removal {
            self.sigterm_before_endpoint_removal.get_or_create(w).inc();
        }
    }

    /// Drops the series of standalone containers that ended a TTL before `now_ns`; returns
    /// how many containers' series went.
    pub fn expire(&self, now_ns: u64) -> usize {
        let mut q = self
            .expiring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut dropped = 0;
        while q.front().is_some_and(|e| e.at_ns <= now_ns) {
            let Some(e) = q.pop_front() else { break };
            let l = &e.labels;
            for (sig, result) in e.signals {
                self.signals.remove(&SignalLabels {
                    namespace: l.namespace.clone(),
                    workload: l.workload.clone(),
                    container: l.container.clone(),
                    signal: signal_name(sig),
                    result,
                });
            }
            self.container_terminations.remove(&OutcomeLabels {
                namespace: l.namespace.clone(),
                workload: l.workload.clone(),
                container: l.container.clone(),
                outcome: e.outcome,
            });
            self.forced_kills.remove(l);
            self.sigterm_ignored.remove(l);
            self.sigterm_to_exit.remove(l);
            self.prestop_duration.remove(l);
            dropped += 1;
        }
        dropped
    }

    /// Terminating and stuck pods per namespace, as of now. Namespaces that had pods at
    /// the last call and have none now are set to zero.
    pub fn terminating_pods(&self, by_namespace: &BTreeMap<String, (i64, i64)>) {
        let mut known = self
            .gauge_namespaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for ns in known.iter().filter(|ns| !by_namespace.contains_key(*ns)) {
            let l = NamespaceLabels {
                namespace: ns.clone(),
            };
            self.terminating_pods.get_or_create(&l).set(0);
            self.stuck_terminating_pods.get_or_create(&l).set(0);
        }
        for (ns, (terminating, stuck)) in by_namespace {
            let l = NamespaceLabels {
                namespace: ns.clone(),
            };
            self.terminating_pods.get_or_create(&l).set(*terminating);
            self.stuck_terminating_pods.get_or_create(&l).set(*stuck);
        }
        *known = by_namespace.keys().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_counters_are_cached_per_subject() {
        let mut registry = Registry::default();
        let m = TerminationMetrics::register(&mut registry);
        let mut who = Subject::new("shop", "deployment/web", "app");
        for _ in 0..3 {
            m.signal(&mut who, 15, "ignored");
        }
        m.signal(&mut who, 9, "delivered");
        assert_eq!(who.signals.len(), 2);
        let got = m
            .signals
            .get_or_create(&SignalLabels {
                namespace: "shop".into(),
                workload: "deployment/web".into(),
                container: "app".into(),
                signal: "SIGTERM".into(),
                result: "ignored",
            })
            .get();
        assert_eq!(got, 3);
    }

    #[test]
    fn churning_a_thousand_standalone_containers_keeps_series_bounded() {
        const S: u64 = 1_000_000_000;
        let mut registry = Registry::default();
        let m = TerminationMetrics::register(&mut registry);
        m.set_series_ttl_ns(2 * S);
        let series = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
            // Per-container series only: the gauge of records waiting for the API is
            // always there.
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("terminations_waiting"))
                .count()
        };
        // 1,000 containers, 100 a second: each gets SIGTERM, ignores it, is SIGKILLed.
        let mut most = 0;
        for i in 0..1000u64 {
            let now = i * S / 100;
            let mut who = Subject::standalone(&format!("{i:012x}"));
            m.signal(&mut who, 15, "ignored");
            m.signal(&mut who, 9, "delivered");
            m.sigterm_ignored(&who);
            m.container_ended(
                &who,
                &ContainerEnd {
                    outcome: "forced_kill",
                    forced: true,
                    sigterm_to_exit_seconds: Some(2.0),
                    prestop_seconds: None,
                },
                now,
            );
            m.expire(now);
            if i % 50 == 49 {
                most = most.max(series(&registry));
            }
        }
        // Per container: 2 signal series, 1 outcome, 1 forced kill, 1 ignored, and the
        // histogram's 21 buckets + +Inf + sum + count: 29. Alive: TTL × rate = 200 (+1).
        assert!(
            (200 * 29..=201 * 29).contains(&most),
            "the TTL keeps the last 2 s of containers, no more: {most} series"
        );
        m.expire(1000 * S);
        assert_eq!(series(&registry), 0, "every ended container's series went");
        // Kubernetes label sets name workloads, not instances: they stay.
        let who = Subject::new("shop", "deployment/web", "app");
        m.container_ended(
            &who,
            &ContainerEnd {
                outcome: "graceful",
                forced: false,
                sigterm_to_exit_seconds: None,
                prestop_seconds: None,
            },
            0,
        );
        m.expire(u64::MAX);
        assert_eq!(series(&registry), 1);
    }

    #[test]
    fn emptied_namespaces_go_to_zero() {
        let mut registry = Registry::default();
        let m = TerminationMetrics::register(&mut registry);
        m.terminating_pods(&[("shop".to_string(), (2, 1))].into());
        m.terminating_pods(&BTreeMap::new());
        let l = NamespaceLabels {
            namespace: "shop".into(),
        };
        assert_eq!(m.terminating_pods.get_or_create(&l).get(), 0);
        assert_eq!(m.stuck_terminating_pods.get_or_create(&l).get(), 0);
    }
}
