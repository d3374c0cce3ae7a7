//! Per-pod termination records. Containers that terminate together (same pod uid, or a
//! lone container) are grouped under their `join::record_key`. A record completes when
//! none of its containers is still terminating and, in Kubernetes mode, the pod being
//! deleted has left the API ([`completion`]). Completed records are immutable and kept in
//! a bounded history.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    classify::{self, Outcome},
    container::ContainerTrack,
    pod_classify::pod_diagnoses,
};
use crate::{
    clock::Clock,
    join::{self, JoinedMember, JoinedPod},
    kube::ApiPodState,
    metrics::{ContainerEnd, PodEnd, TerminationMetrics, Workload},
    report::{signal_name, ContainerReport, DiagnosisEntry, State, Termination, TimelineEntry},
    traffic::PodTrafficReport,
};

/// How long a signalled record of a pod not (yet) seen deleting waits for the deletion.
pub(super) const DELETION_WAIT_NS: u64 = 3_000_000_000;

#[derive(Default)]
struct OpenRecord {
    uid: Option<String>,
    started_ns: Option<u64>,
    finished_ns: Option<u64>,
    /// A termination signal (or a kill) started it, not processes exiting by themselves.
    signalled: bool,
    outcomes: Vec<Outcome>,
    containers: Vec<ContainerReport>,
    members: Vec<JoinedMember>,
    timeline: Vec<TimelineEntry>,
    diagnoses: Vec<DiagnosisEntry>,
    workload: Workload,
    /// Traffic that still reached the pod (replaced as the counts grow).
    traffic: PodTrafficReport,
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

/// What holds a record open, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// Another container of the record is still terminating.
    ContainersPending,
    /// The pod is being deleted and is still in the API.
    PodPending,
    /// Signalled, but the pod's deletion has not been seen yet: a slow watch may still
    /// deliver it, and the record must not split in two.
    AwaitingDeletion,
}

/// Whether a record can complete now. `pod`: its pod's (deletion seen, removed) state,
/// `None` outside Kubernetes; `finished_ns`: its last exit.
pub(super) fn completion(
    others_pending: bool,
    pod: Option<(bool, bool)>,
    signalled: bool,
    finished_ns: Option<u64>,
    now_ns: u64,
) -> Option<Hold> {
    if others_pending {
        return Some(Hold::ContainersPending);
    }
    match pod {
        Some((true, false)) => Some(Hold::PodPending),
        Some((false, false))
            if signalled
                && finished_ns.is_some_and(|f| now_ns < f.saturating_add(DELETION_WAIT_NS)) =>
        {
            Some(Hold::AwaitingDeletion)
        }
        _ => None,
    }
}

pub(super) fn report(c: &ContainerTrack, outcome: Option<Outcome>) -> ContainerReport {
    let exit = c.facts.pid1_exit;
    ContainerReport {
        name: c.name.clone(),
        container_id: c.container.cgroup.container_id.clone(),
        pid1_comm: c.facts.pid1_comm.clone(),
        outcome: outcome.map(|o| o.as_str().to_string()),
        exit_code: exit.and_then(|e| e.exit_code()),
        exit_signal: exit
            .and_then(|e| e.signal())
            .map(|s| signal_name(u32::from(s))),
        sigterm_to_exit_seconds: c.facts.sigterm_to_exit_ns().map(secs),
    }
}

pub(super) fn timeline_of(c: &ContainerTrack, clock: &Clock) -> Vec<TimelineEntry> {
    let mut t = c.timeline.clone();
    if c.timeline_dropped > 0 {
        let at_ns = t.last().map(|e| e.at_ns).unwrap_or(0);
        t.push(TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: "truncated".into(),
            container: Some(c.subject.container().to_string()),
            detail: format!(
                "{} more events not recorded (timeline limit)",
                c.timeline_dropped
            ),
            at_ns,
        });
    }
    t
}

fn member(c: &ContainerTrack, pod: Option<&ApiPodState>) -> JoinedMember {
    let name = c.display_name();
    let prestop_kind = pod.and_then(|p| join::prestop_kind(p, &name));
    // The exec session that entered the container as kubelet ran the hook.
    let hook_seen = match (prestop_kind, pod.and_then(|p| p.deletion_ns)) {
        (Some("exec"), Some(deletion)) => {
            let (before, after) = join::HOOK_START_WINDOW_NS;
            c.facts
                .exec_session_between(
                    deletion.saturating_sub(before),
                    deletion.saturating_add(after),
                )
                .map(|s| join::HookSeen {
                    started_ns: s.started_ns,
                    ended_ns: s.ended_ns,
                    killed: s.exit.and_then(|e| e.signal()) == Some(9),
                })
        }
        _ => None,
    };
    JoinedMember {
        prestop_kind,
        hook_seen,
        name,
        sigterm_ns: c.facts.stop_signal.as_ref().map(|s| s.at_ns),
        sigkill_ns: c.facts.external_sigkill.as_ref().map(|s| s.at_ns),
        last_exit_ns: c.last_exit_ns.or(c.facts.pid1_exit_ns),
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
    pub(super) fn open_pod(&mut self, pod: &ApiPodState) {
        let rec = self.open.entry(pod.pod.uid.clone()).or_default();
        rec.uid = Some(pod.pod.uid.clone());
        rec.started_ns = pod.deletion_ns.or(rec.started_ns);
        rec.workload = Workload::new(&pod.pod.namespace, &pod.pod.workload);
    }

    /// The traffic that reached `key`'s pod so far.
    pub(super) fn set_traffic(&mut self, key: &str, t: &PodTrafficReport) {
        if let Some(rec) = self.open.get_mut(key) {
            rec.traffic = t.clone();
        }
    }

    /// Classifies a container that is done, exports its metrics and files it in its
    /// pod's record.
    pub(super) fn finalize(
        &mut self,
        mut c: ContainerTrack,
        pod: Option<&ApiPodState>,
        metrics: &TerminationMetrics,
        clock: &Clock,
        now_ns: u64,
    ) {
        c.facts.partial |= pod.is_some_and(|p| p.deleted_before_agent);
        let key = join::record_key(&c.container);
        if pod.is_some() && c.sandbox {
            // The sandbox is SIGKILLed by the runtime once the containers are gone: part
            // of the story, not an outcome.
            if let Some(rec) = self.open.get_mut(&key) {
                rec.timeline
                    .extend(timeline_of(&c, clock).into_iter().map(|mut e| {
                        e.detail = format!("sandbox: {}", e.detail);
                        e
                    }));
            }
            return;
        }
        let outcome = classify::outcome(&c.facts);
        let m = member(&c, pod);
        let prestop = pod.and_then(|p| JoinedPod::new(p, Vec::new()).prestop_ns(&m));
        metrics.container_ended(
            &c.subject,
            &ContainerEnd {
                outcome: outcome.as_str(),
                forced: outcome == Outcome::ForcedKill,
                sigterm_to_exit_seconds: c.facts.sigterm_to_exit_ns().map(secs),
                prestop_seconds: prestop.map(secs),
            },
            now_ns,
        );
        let rec = self.open.entry(key).or_default();
        rec.uid = c.container.cgroup.pod_uid.clone();
        rec.workload = c.subject.workload();
        let start = c.terminating_since.unwrap_or(0);
        rec.started_ns = Some(rec.started_ns.map_or(start, |s| s.min(start)));
        if let Some(end) = m.last_exit_ns {
            rec.finished_ns = Some(rec.finished_ns.map_or(end, |f| f.max(end)));
        }
        rec.signalled |= c.facts.stop_signal.is_some()
            || c.facts.external_sigkill.is_some()
            || c.facts.kernel_sigkill.is_some();
        rec.outcomes.push(outcome);
        rec.containers.push(report(&c, Some(outcome)));
        rec.members.push(m);
        rec.timeline.extend(timeline_of(&c, clock));
        let mut diagnoses = classify::diagnoses(&c.facts);
        diagnoses.extend(c.orphans.iter().cloned());
        let who = c.display_name();
        rec.diagnoses
            .extend(diagnoses.into_iter().map(|d| DiagnosisEntry {
                code: d.code.as_str().to_string(),
                container: Some(who.clone()),
                message: d.message,
            }));
    }

    /// Completes `key`'s record when nothing of it is pending any more; true if it did.
    pub(super) fn try_complete(
        &mut self,
        key: &str,
        others_pending: bool,
        pod: Option<&ApiPodState>,
        now_ns: u64,
        metrics: &TerminationMetrics,
        clock: &Clock,
    ) -> bool {
        let Some(rec) = self.open.get(key) else {
            return false;
        };
        let pod_state = pod.map(|p| (p.deletion_ns.is_some(), p.removed_ns.is_some()));
        if completion(
            others_pending,
            pod_state,
            rec.signalled,
            rec.finished_ns,
            now_ns,
        )
        .is_some()
        {
            return false;
        }
        let Some(rec) = self.open.remove(key) else {
            return false;
        };
        let t = complete(rec, pod, metrics, clock);
        self.completed.push_back(Arc::new(t));
        while self.completed.len() > self.cap {
            self.completed.pop_front();
            self.evicted += 1;
        }
        true
    }

    /// A view of every record still open, for the snapshot.
    pub(super) fn open_views(&self) -> impl Iterator<Item = (&str, Termination)> {
        self.open.iter().map(|(key, rec)| {
            (
                key.as_str(),
                Termination {
                    containers: rec.containers.clone(),
                    timeline: rec
                        .timeline
                        .iter()
                        .chain(&rec.traffic.timeline)
                        .cloned()
                        .collect(),
                    diagnoses: rec.diagnoses.clone(),
                    ..Termination::in_progress(rec.uid.clone())
                },
            )
        })
    }

    pub(super) fn open_keys(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    pub(super) fn open_started(&self, key: &str) -> Option<u64> {
        self.open.get(key).and_then(|r| r.started_ns)
    }
}

/// A record made final: its pod-level metrics and diagnoses, the API's timeline merged.
fn complete(
    mut rec: OpenRecord,
    pod: Option<&ApiPodState>,
    metrics: &TerminationMetrics,
    clock: &Clock,
) -> Termination {
    let joined = pod.map(|p| JoinedPod::new(p, std::mem::take(&mut rec.members)));
    let started = joined
        .as_ref()
        .and_then(|j| j.deletion_ns)
        .or(rec.started_ns);
    let finished = rec.finished_ns.or(pod.and_then(|p| p.removed_ns));
    let measured = rec.signalled || joined.as_ref().is_some_and(|j| j.deletion_ns.is_some());
    metrics.pod_ended(
        &rec.workload,
        &PodEnd {
            outcome: worst(&rec.outcomes).as_str(),
            duration_seconds: match (measured, started, rec.finished_ns) {
                (true, Some(s), Some(f)) => Some(secs(f.saturating_sub(s))),
                _ => None,
            },
            grace_used_ratio: joined.as_ref().and_then(JoinedPod::grace_used_ratio),
            endpoint_lag_seconds: joined
                .as_ref()
                .and_then(JoinedPod::endpoint_lag_ns)
                .map(secs),
            sigterm_before_endpoint_removal: joined
                .as_ref()
                .is_some_and(JoinedPod::sigterm_before_endpoint_removal),
        },
    );
    rec.timeline.append(&mut rec.traffic.timeline);
    rec.diagnoses.append(&mut rec.traffic.diagnoses);
    if let Some(j) = &joined {
        rec.diagnoses.extend(
            pod_diagnoses(j)
                .into_iter()
                .map(|(container, d)| DiagnosisEntry {
                    code: d.code.as_str().to_string(),
                    container,
                    message: d.message,
                }),
        );
    }
    join::merge_timeline(
        &mut rec.timeline,
        pod,
        joined.as_ref(),
        started.unwrap_or(0),
        clock,
    );
    Termination {
        namespace: pod.map(|p| p.pod.namespace.clone()),
        pod: pod.map(|p| p.pod.name.clone()),
        uid: rec.uid,
        state: State::Completed,
        started_at: started.map(|s| clock.rfc3339(s)),
        finished_at: finished.map(|f| clock.rfc3339(f)),
        grace_period_seconds: pod.map(|p| p.pod.effective_grace_seconds() as f64),
        containers: rec.containers,
        timeline: rec.timeline,
        diagnoses: rec.diagnoses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn when_a_record_completes() {
        // (others pending, pod (deletion seen, removed), signalled, finished, now) → hold
        type Case = (
            bool,
            Option<(bool, bool)>,
            bool,
            Option<u64>,
            u64,
            Option<Hold>,
        );
        let cases: [Case; 9] = [
            // Standalone: done when no other container is pending.
            (false, None, true, Some(S), S, None),
            (true, None, true, Some(S), S, Some(Hold::ContainersPending)),
            // A pod being deleted waits for it to leave the API.
            (
                false,
                Some((true, false)),
                true,
                Some(S),
                100 * S,
                Some(Hold::PodPending),
            ),
            (false, Some((true, true)), true, Some(S), S, None),
            (
                true,
                Some((true, true)),
                true,
                Some(S),
                S,
                Some(Hold::ContainersPending),
            ),
            // Signalled but no deletion seen: wait up to DELETION_WAIT_NS after the exit.
            (
                false,
                Some((false, false)),
                true,
                Some(S),
                S + DELETION_WAIT_NS - 1,
                Some(Hold::AwaitingDeletion),
            ),
            (
                false,
                Some((false, false)),
                true,
                Some(S),
                S + DELETION_WAIT_NS,
                None,
            ),
            // A container that exited by itself in a live pod (a crash): no wait.
            (false, Some((false, false)), false, Some(S), S, None),
            // Nothing finished yet: nothing to wait for.
            (false, Some((false, false)), true, None, S, None),
        ];
        for (i, (others, pod, signalled, finished, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                completion(others, pod, signalled, finished, now),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn the_worst_outcome_names_the_pod() {
        assert_eq!(
            worst(&[Outcome::Graceful, Outcome::ForcedKill]),
            Outcome::ForcedKill
        );
        assert_eq!(worst(&[Outcome::SelfExit]), Outcome::SelfExit);
        assert_eq!(worst(&[]), Outcome::Unknown);
    }
}
