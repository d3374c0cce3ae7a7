//! Per-pod termination records. Containers that terminate together (same pod uid, or a
//! lone container) are grouped. A record completes when none of its containers is still
//! terminating and, in Kubernetes mode, the pod being deleted has left the API. Completed
//! records are immutable and kept in a bounded history.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    classify::{self, ContainerFacts, Outcome},
    container::ContainerState,
    model::{signal_name, ContainerSummary, DiagnosisEntry, State, Termination, TimelineEntry},
    pod_classify::{pod_diagnoses, MemberFacts, PodFacts},
    pods::PodState,
    tracker::SANDBOX,
};
use crate::{
    attribution::ContainerInfo,
    clock::Clock,
    export::{
        metrics::{DurationLabels, OutcomeLabels, WorkloadLabels},
        Metrics,
    },
    kube::PreStop,
};

/// How long a signalled record of a pod not (yet) seen deleting waits for the deletion.
const DELETION_WAIT_NS: u64 = 3_000_000_000;

/// Groups containers of one pod (by uid), or stands for a container outside any pod.
pub(super) fn record_key(info: &ContainerInfo) -> &str {
    info.cgroup
        .pod_uid
        .as_deref()
        .unwrap_or(&info.cgroup.container_id)
}

#[derive(Default)]
struct OpenRecord {
    uid: Option<String>,
    started_ns: Option<u64>,
    finished_ns: Option<u64>,
    /// A termination signal (or a kill) started it, not processes exiting by themselves.
    signalled: bool,
    outcomes: Vec<Outcome>,
    containers: Vec<ContainerSummary>,
    members: Vec<MemberFacts>,
    timeline: Vec<TimelineEntry>,
    diagnoses: Vec<DiagnosisEntry>,
    labels: WorkloadLabels,
}

pub(super) struct Records {
    open: HashMap<String, OpenRecord>,
    completed: VecDeque<Arc<Termination>>,
    /// Completed records dropped from the bounded history.
    evicted: usize,
    cap: usize,
}

/// The pod's outcome for `termination_duration_seconds`: its worst container's.
fn worst(outcomes: &[Outcome]) -> Outcome {
    const ORDER: [Outcome; 7] = [
        Outcome::OomKilled,
        Outcome::ForcedKill,
        Outcome::KilledWithoutSigterm,
        Outcome::Crashed,
        Outcome::Unknown,
        Outcome::SelfExit,
        Outcome::Graceful,
    ];
    ORDER
        .into_iter()
        .find(|o| outcomes.contains(o))
        .unwrap_or(Outcome::Unknown)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub(super) fn summary(c: &ContainerState, outcome: Option<Outcome>) -> ContainerSummary {
    let exit = c.facts.pid1_exit;
    ContainerSummary {
        name: c.name.clone(),
        container_id: c.info.cgroup.container_id.clone(),
        pid1_comm: c.facts.pid1_comm.clone(),
        outcome: outcome.map(|o| o.as_str().to_string()),
        exit_code: exit.and_then(|e| e.exit_code()),
        exit_signal: exit
            .and_then(|e| e.signal())
            .map(|s| signal_name(u32::from(s))),
        sigterm_to_exit_seconds: c.facts.sigterm_to_exit_ns().map(secs),
    }
}

pub(super) fn timeline_of(c: &ContainerState, clock: &Clock) -> Vec<TimelineEntry> {
    let mut t = c.timeline.clone();
    if c.timeline_dropped > 0 {
        let at_ns = t.last().map(|e| e.at_ns).unwrap_or(0);
        t.push(TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: "truncated".into(),
            container: Some(c.labels.container.clone()),
            detail: format!(
                "{} more events not recorded (timeline limit)",
                c.timeline_dropped
            ),
            at_ns,
        });
    }
    t
}

fn member(c: &ContainerState, pod: Option<&PodState>) -> MemberFacts {
    let f: &ContainerFacts = &c.facts;
    let prestop = pod.and_then(|p| {
        p.info
            .containers
            .iter()
            .find(|m| Some(&m.name) == c.name.as_ref())
            .and_then(|m| m.prestop.as_ref())
    });
    MemberFacts {
        name: c.name.clone().unwrap_or_else(|| c.labels.container.clone()),
        has_prestop: prestop.is_some(),
        prestop_kind: prestop.map(|p| match p {
            PreStop::Exec(_) => "exec",
            PreStop::HttpGet(_) => "httpGet",
            PreStop::Sleep(_) => "sleep",
            PreStop::TcpSocket => "tcpSocket",
        }),
        sigterm_ns: f.first_sigterm.as_ref().map(|s| s.at_ns),
        sigkill_ns: f.external_sigkill.as_ref().map(|s| s.at_ns),
        last_exit_ns: c.last_exit_ns.or(f.pid1_exit_ns),
    }
}

/// The pod-level facts of a record joined with its pod's API state.
fn pod_facts(members: &[MemberFacts], pod: &PodState) -> PodFacts {
    PodFacts {
        grace_seconds: pod.info.effective_grace_seconds(),
        deletion_ns: pod.deletion_ns,
        killing_ns: pod.killing_ns,
        endpoint_down_ns: pod.endpoint_down_ns,
        members: members.to_vec(),
    }
}

impl Records {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            open: HashMap::new(),
            completed: VecDeque::new(),
            evicted: 0,
            cap: cap.max(1),
        }
    }

    pub(super) fn completed(&self) -> impl Iterator<Item = &Arc<Termination>> {
        self.completed.iter()
    }

    /// Opens the record of a pod whose deletion was observed.
    pub(super) fn open_pod(&mut self, pod: &PodState) {
        let rec = self.open.entry(pod.info.uid.clone()).or_default();
        rec.uid = Some(pod.info.uid.clone());
        rec.started_ns = pod.deletion_ns.or(rec.started_ns);
        rec.labels = WorkloadLabels {
            namespace: pod.info.namespace.clone(),
            workload: pod.info.workload.clone(),
        };
    }

    /// Classifies a container that is done, exports its metrics and files it in its
    /// pod's record.
    pub(super) fn finalize(
        &mut self,
        mut c: ContainerState,
        pod: Option<&PodState>,
        metrics: &Metrics,
        clock: &Clock,
    ) {
        c.facts.partial |= pod.is_some_and(|p| p.deleted_before_agent);
        if pod.is_some() && c.name.as_deref() == Some(SANDBOX) {
            // The sandbox is SIGKILLed by the runtime once the containers are gone: part
            // of the story, not an outcome.
            if let Some(rec) = self.open.get_mut(record_key(&c.info)) {
                rec.timeline
                    .extend(timeline_of(&c, clock).into_iter().map(|mut e| {
                        e.detail = format!("sandbox: {}", e.detail);
                        e
                    }));
            }
            return;
        }
        let outcome = classify::outcome(&c.facts);
        let l = &c.labels;
        metrics
            .container_terminations
            .get_or_create(&OutcomeLabels {
                namespace: l.namespace.clone(),
                workload: l.workload.clone(),
                container: l.container.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
        if outcome == Outcome::ForcedKill {
            metrics.forced_kills.get_or_create(l).inc();
        }
        if let Some(ns) = c.facts.sigterm_to_exit_ns() {
            metrics.sigterm_to_exit.get_or_create(l).observe(secs(ns));
        }
        let m = member(&c, pod);
        if let Some(p) = pod {
            if let Some(ns) = pod_facts(std::slice::from_ref(&m), p).prestop_ns(&m) {
                metrics.prestop_duration.get_or_create(l).observe(secs(ns));
            }
        }
        let key = record_key(&c.info).to_string();
        let rec = self.open.entry(key).or_default();
        rec.uid = c.info.cgroup.pod_uid.clone();
        rec.labels = WorkloadLabels {
            namespace: l.namespace.clone(),
            workload: l.workload.clone(),
        };
        let start = c.terminating_since.unwrap_or(0);
        rec.started_ns = Some(rec.started_ns.map_or(start, |s| s.min(start)));
        if let Some(end) = m.last_exit_ns {
            rec.finished_ns = Some(rec.finished_ns.map_or(end, |f| f.max(end)));
        }
        rec.signalled |= c.facts.first_sigterm.is_some()
            || c.facts.external_sigkill.is_some()
            || c.facts.kernel_sigkill.is_some();
        rec.outcomes.push(outcome);
        rec.containers.push(summary(&c, Some(outcome)));
        rec.members.push(m);
        rec.timeline.extend(timeline_of(&c, clock));
        let mut diagnoses = classify::diagnoses(&c.facts);
        diagnoses.extend(c.orphans.clone());
        rec.diagnoses
            .extend(diagnoses.into_iter().map(|d| DiagnosisEntry {
                code: d.code.as_str().to_string(),
                container: Some(c.name.clone().unwrap_or_else(|| c.labels.container.clone())),
                message: d.message,
            }));
    }

    /// Completes `key`'s record when nothing of it is pending any more.
    pub(super) fn try_complete(
        &mut self,
        key: &str,
        others_pending: bool,
        pod: Option<&PodState>,
        now_ns: u64,
        metrics: &Metrics,
        clock: &Clock,
    ) {
        let Some(rec) = self.open.get(key) else {
            return;
        };
        let pod_pending = pod.is_some_and(|p| p.deletion_ns.is_some() && p.removed_ns.is_none());
        // A pod's deletion can reach us after its containers stopped (a slow watch): a
        // signalled record of a live pod waits a little for it rather than splitting.
        let awaiting_deletion = pod
            .is_some_and(|p| p.deletion_ns.is_none() && p.removed_ns.is_none())
            && rec.signalled
            && rec
                .finished_ns
                .is_some_and(|f| now_ns < f.saturating_add(DELETION_WAIT_NS));
        if others_pending || pod_pending || awaiting_deletion {
            return;
        }
        let Some(rec) = self.open.remove(key) else {
            return;
        };
        let t = self.complete(rec, pod, metrics, clock);
        self.completed.push_back(Arc::new(t));
        while self.completed.len() > self.cap {
            self.completed.pop_front();
            self.evicted += 1;
        }
    }

    fn complete(
        &self,
        mut rec: OpenRecord,
        pod: Option<&PodState>,
        metrics: &Metrics,
        clock: &Clock,
    ) -> Termination {
        let facts = pod.map(|p| pod_facts(&rec.members, p));
        let started = facts
            .as_ref()
            .and_then(|f| f.deletion_ns)
            .or(rec.started_ns);
        let finished = rec.finished_ns.or(pod.and_then(|p| p.removed_ns));
        let labels = std::mem::take(&mut rec.labels);
        if rec.signalled || facts.as_ref().is_some_and(|f| f.deletion_ns.is_some()) {
            if let (Some(s), Some(f)) = (started, rec.finished_ns) {
                metrics
                    .termination_duration
                    .get_or_create(&DurationLabels {
                        namespace: labels.namespace.clone(),
                        workload: labels.workload.clone(),
                        outcome: worst(&rec.outcomes).as_str(),
                    })
                    .observe(secs(f.saturating_sub(s)));
            }
        }
        if let Some(f) = &facts {
            if let Some(r) = f.grace_used_ratio() {
                metrics
                    .grace_period_used_ratio
                    .get_or_create(&labels)
                    .observe(r);
            }
            if let Some(lag) = f.endpoint_lag_ns() {
                metrics
                    .endpoint_removal_lag
                    .get_or_create(&labels)
                    .observe(secs(lag));
            }
            if f.sigterm_before_endpoint_removal() {
                metrics
                    .sigterm_before_endpoint_removal
                    .get_or_create(&labels)
                    .inc();
            }
            rec.diagnoses
                .extend(
                    pod_diagnoses(f)
                        .into_iter()
                        .map(|(container, d)| DiagnosisEntry {
                            code: d.code.as_str().to_string(),
                            container,
                            message: d.message,
                        }),
                );
        }
        if let Some(p) = pod {
            rec.timeline
                .extend(p.timeline_since(started.unwrap_or(0)).cloned());
        }
        if let Some(f) = &facts {
            rec.timeline.extend(prestop_entries(f, clock));
        }
        rec.timeline.sort_by_key(|e| e.at_ns);
        Termination {
            namespace: pod.map(|p| p.info.namespace.clone()),
            pod: pod.map(|p| p.info.name.clone()),
            uid: rec.uid,
            state: State::Completed,
            started_at: started.map(|s| clock.rfc3339(s)),
            finished_at: finished.map(|f| clock.rfc3339(f)),
            grace_period_seconds: pod.map(|p| p.info.effective_grace_seconds() as f64),
            containers: rec.containers,
            timeline: rec.timeline,
            diagnoses: rec.diagnoses,
        }
    }

    /// A view of every record still open, for the snapshot.
    pub(super) fn open_views(&self) -> impl Iterator<Item = (&str, Termination)> {
        self.open.iter().map(|(key, rec)| {
            (
                key.as_str(),
                Termination {
                    namespace: None,
                    pod: None,
                    uid: rec.uid.clone(),
                    state: State::InProgress,
                    started_at: None,
                    finished_at: None,
                    grace_period_seconds: None,
                    containers: rec.containers.clone(),
                    timeline: rec.timeline.clone(),
                    diagnoses: rec.diagnoses.clone(),
                },
            )
        })
    }

    /// Records completed so far (a change tells a new snapshot is due).
    pub(super) fn completed_count(&self) -> usize {
        self.completed.len() + self.evicted
    }

    pub(super) fn open_keys(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    pub(super) fn open_started(&self, key: &str) -> Option<u64> {
        self.open.get(key).and_then(|r| r.started_ns)
    }
}

/// preStop start and end, inferred from the deletion and the container's SIGTERM (an exec
/// hook's own processes show up as `exec` entries between the two).
fn prestop_entries(f: &PodFacts, clock: &Clock) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    let Some(start) = f.hooks_start_ns() else {
        return out;
    };
    for m in f.members.iter().filter(|m| m.has_prestop) {
        let kind = m.prestop_kind.unwrap_or("hook");
        let entry = |at_ns: u64, what: &str, detail: String| TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: what.to_string(),
            container: Some(m.name.clone()),
            detail,
            at_ns,
        };
        out.push(entry(
            start,
            "prestop_started",
            format!(
                "preStop {kind} hook of {} started (inferred: kubelet runs it on deletion)",
                m.name
            ),
        ));
        if let Some(term) = m.sigterm_ns {
            out.push(entry(
                term,
                "prestop_finished",
                format!("preStop {kind} hook of {} finished after {:.3}s (inferred: SIGTERM follows the hook)", m.name, secs(term.saturating_sub(start))),
            ));
        }
    }
    out
}
