//! Per-pod termination records: containers that terminate together (same pod uid, or a
//! lone container) are grouped; a record completes when none of its containers is still
//! terminating. Completed records are immutable and kept in a bounded history.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    classify::{self, Outcome},
    model::{signal_name, ContainerSummary, DiagnosisEntry, State, Termination, TimelineEntry},
    tracker::ContainerState,
};
use crate::{
    attribution::ContainerInfo,
    clock::Clock,
    export::{
        metrics::{DurationLabels, OutcomeLabels},
        Metrics,
    },
};

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
    started_ns: u64,
    finished_ns: u64,
    outcomes: Vec<Outcome>,
    /// A termination signal (or a kill) started it, not processes exiting by themselves.
    signalled: bool,
    containers: Vec<ContainerSummary>,
    timeline: Vec<TimelineEntry>,
    diagnoses: Vec<DiagnosisEntry>,
    namespace: String,
    workload: String,
}

pub(super) struct Records {
    open: HashMap<String, OpenRecord>,
    completed: VecDeque<Arc<Termination>>,
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

fn summary(c: &ContainerState, outcome: Option<Outcome>) -> ContainerSummary {
    let exit = c.facts.pid1_exit;
    ContainerSummary {
        name: None,
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

fn timeline_of(c: &ContainerState, clock: &Clock) -> Vec<TimelineEntry> {
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

impl Records {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            open: HashMap::new(),
            completed: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub(super) fn completed(&self) -> impl Iterator<Item = &Arc<Termination>> {
        self.completed.iter()
    }

    /// Classifies a container that is done, exports its metrics and files it in its
    /// pod's record; completes the record when no sibling is still terminating.
    pub(super) fn finalize(
        &mut self,
        c: ContainerState,
        others_pending: bool,
        metrics: &Metrics,
        clock: &Clock,
    ) {
        let outcome = classify::outcome(&c.facts);
        let diagnoses = classify::diagnoses(&c.facts);
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

        let key = record_key(&c.info).to_string();
        let rec = self.open.entry(key.clone()).or_insert_with(|| OpenRecord {
            uid: c.info.cgroup.pod_uid.clone(),
            started_ns: u64::MAX,
            namespace: l.namespace.clone(),
            workload: l.workload.clone(),
            ..Default::default()
        });
        let start = c.terminating_since.unwrap_or(0);
        let end = c.last_exit_ns.or(c.facts.pid1_exit_ns).unwrap_or(start);
        rec.started_ns = rec.started_ns.min(start);
        rec.finished_ns = rec.finished_ns.max(end);
        rec.outcomes.push(outcome);
        rec.signalled |= c.facts.first_sigterm.is_some()
            || c.facts.external_sigkill.is_some()
            || c.facts.kernel_sigkill.is_some();
        rec.containers.push(summary(&c, Some(outcome)));
        rec.timeline.extend(timeline_of(&c, clock));
        rec.diagnoses
            .extend(diagnoses.into_iter().map(|d| DiagnosisEntry {
                code: d.code.as_str().to_string(),
                container: Some(c.labels.container.clone()),
                message: d.message,
            }));
        if others_pending {
            return;
        }
        let Some(mut rec) = self.open.remove(&key) else {
            return;
        };
        // Processes that simply exited were not terminated: no duration to speak of.
        if rec.signalled {
            metrics
                .termination_duration
                .get_or_create(&DurationLabels {
                    namespace: std::mem::take(&mut rec.namespace),
                    workload: std::mem::take(&mut rec.workload),
                    outcome: worst(&rec.outcomes).as_str(),
                })
                .observe(secs(rec.finished_ns.saturating_sub(rec.started_ns)));
        }
        rec.timeline.sort_by_key(|e| e.at_ns);
        self.completed.push_back(Arc::new(Termination {
            namespace: None,
            pod: None,
            uid: rec.uid,
            state: State::Completed,
            started_at: Some(clock.rfc3339(rec.started_ns)),
            finished_at: Some(clock.rfc3339(rec.finished_ns)),
            grace_period_seconds: None,
            containers: rec.containers,
            timeline: rec.timeline,
            diagnoses: rec.diagnoses,
        }));
        while self.completed.len() > self.cap {
            self.completed.pop_front();
        }
    }

    /// Views of terminations still under way: finalized containers of open records plus
    /// containers still terminating.
    pub(super) fn in_progress(
        &self,
        containers: &HashMap<u64, ContainerState>,
        clock: &Clock,
    ) -> Vec<Arc<Termination>> {
        let mut views: HashMap<&str, Termination> = HashMap::new();
        let mut starts: HashMap<&str, u64> = HashMap::new();
        for (key, rec) in &self.open {
            starts.insert(key.as_str(), rec.started_ns);
            views.insert(
                key.as_str(),
                view(
                    rec.uid.clone(),
                    rec.containers.clone(),
                    rec.timeline.clone(),
                    rec.diagnoses.clone(),
                ),
            );
        }
        for c in containers.values() {
            let Some(since) = c.terminating_since else {
                continue;
            };
            let key = record_key(&c.info);
            let v = views
                .entry(key)
                .or_insert_with(|| view(c.info.cgroup.pod_uid.clone(), vec![], vec![], vec![]));
            v.containers.push(summary(c, None));
            v.timeline.extend(timeline_of(c, clock));
            let s = starts.entry(key).or_insert(since);
            *s = (*s).min(since);
        }
        let mut out: Vec<(u64, Termination)> = views
            .into_iter()
            .map(|(key, mut v)| {
                let start = starts.get(key).copied().unwrap_or(0);
                v.started_at = Some(clock.rfc3339(start));
                v.timeline.sort_by_key(|e| e.at_ns);
                (start, v)
            })
            .collect();
        out.sort_by_key(|(start, _)| *start);
        out.into_iter().map(|(_, v)| Arc::new(v)).collect()
    }
}

fn view(
    uid: Option<String>,
    containers: Vec<ContainerSummary>,
    timeline: Vec<TimelineEntry>,
    diagnoses: Vec<DiagnosisEntry>,
) -> Termination {
    Termination {
        namespace: None,
        pod: None,
        uid,
        state: State::InProgress,
        started_at: None,
        finished_at: None,
        grace_period_seconds: None,
        containers,
        timeline,
        diagnoses,
    }
}
