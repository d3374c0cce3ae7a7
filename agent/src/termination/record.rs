//! Per-pod termination records. Containers that terminate together (same pod uid, or a
//! lone container) are grouped under their `join::record_key`. A record completes when
//! none of its containers is still terminating and, in Kubernetes mode, the pod being
//! deleted has left the API ([`completion`]); a container run that ended in a pod that
//! lives on gets a record of its own (see `runs`). Completed records are immutable and
//! kept in a bounded history.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{
    causes,
    classify::{self, Outcome},
    container::ContainerTrack,
    pod_classify::pod_diagnoses,
    runs::{cause_entry, run_completion, Run, Runs},
};
use crate::{
    clock::{secs, Clock},
    join::{self, JoinedMember, JoinedPod},
    kube::ApiPodState,
    metrics::{ContainerEnd, PodEnd, TerminationMetrics, Workload},
    report::{signal_name, ContainerReport, DiagnosisEntry, State, Termination, TimelineEntry},
    traffic::PodTrafficReport,
};

/// How long a signalled record of a pod not (yet) seen deleting waits for the deletion.
pub(super) const DELETION_WAIT_NS: u64 = 3_000_000_000;
/// How long after its end a record waits at most for an unreachable API server to say
/// what happened to its pod (see [`api_wait`]).
pub(super) const API_WAIT_MAX_NS: u64 = 600_000_000_000;
/// How many records wait at once for an unreachable API server; more complete at once.
pub(super) const API_HELD_MAX: usize = 256;
/// Records kept for their Events between two takes (the Events are rate-limited anyway).
const NEW_KEPT: usize = 1024;

/// What a record waiting on the API needs to know about it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ApiWait {
    /// Since when the pods watch has been down (the API server unreachable).
    pub(super) down_since: Option<u64>,
    /// Fewer than [`API_HELD_MAX`] records wait already.
    pub(super) room: bool,
}
#[derive(Default)]
pub(super) struct OpenRecord {
    pub(super) uid: Option<String>,
    pub(super) started_ns: Option<u64>,
    pub(super) finished_ns: Option<u64>,
    /// A termination signal (or a kill) started it, not processes exiting by themselves.
    signalled: bool,
    outcomes: Vec<Outcome>,
    pub(super) containers: Vec<ContainerReport>,
    members: Vec<JoinedMember>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) diagnoses: Vec<DiagnosisEntry>,
    pub(super) workload: Workload,
    /// Traffic that still reached the pod (replaced as the counts grow).
    traffic: PodTrafficReport,
    /// Set for a container run's own record (a restart), not a pod's termination.
    pub(super) run: Option<Run>,
    /// It waits for the API server to come back ([`Hold::ApiUnreachable`]).
    held_for_api: bool,
}

pub(super) struct Records {
    open: HashMap<String, OpenRecord>,
    completed: VecDeque<Arc<Termination>>,
    /// Completed since the last [`Records::take_new`] (for Events), bounded.
    new: Vec<Arc<Termination>>,
    /// Container runs' records: restart history, where each run's timeline starts.
    runs: Runs,
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
    /// A container run's record waits for the status and Events about its restart.
    RestartPending,
    /// It would complete for lack of the API's word (no deletion, no status showing the
    /// run's end), but the API server is unreachable: it waits for the relist.
    ApiUnreachable,
}

/// Why a record that would complete now (`hold` is `None`) for lack of the API's word
/// (`lacking`) waits instead: the API server is unreachable (`api.down_since`), and it
/// has waited less than [`API_WAIT_MAX_NS`] since its end, with room among the records
/// waiting. Otherwise `hold` stands.
pub(super) fn api_wait(
    hold: Option<Hold>,
    lacking: bool,
    api: ApiWait,
    finished_ns: Option<u64>,
    now_ns: u64,
) -> Option<Hold> {
    let young = finished_ns.is_none_or(|f| now_ns < f.saturating_add(API_WAIT_MAX_NS));
    match hold {
        None if lacking && api.down_since.is_some() && api.room && young => {
            Some(Hold::ApiUnreachable)
        }
        other => other,
    }
}

/// The entry that says a record completed while the API server was unreachable, without
/// what the API would have said: after the longest wait, or with too many waiting.
fn completed_unreachable(
    since: u64,
    finished_ns: Option<u64>,
    now_ns: u64,
    clock: &Clock,
) -> TimelineEntry {
    let waited = finished_ns.is_some_and(|f| now_ns >= f.saturating_add(API_WAIT_MAX_NS));
    let why = if waited {
        format!("after waiting {}s for it", API_WAIT_MAX_NS / 1_000_000_000)
    } else {
        format!("since {API_HELD_MAX} other records wait for it")
    };
    TimelineEntry {
        at: clock.rfc3339(now_ns),
        what: "api_unreachable".into(),
        container: None,
        detail: format!(
            "completed without the API's word, {why}: the API server has been unreachable since {} (pods watch down), so whether the pod was deleted, and its status and kubelet's Events, are not known",
            clock.rfc3339(since)
        ),
        at_ns: now_ns,
    }
}

/// The entry that says what was not seen of a pod that left the API while the pods
/// watch was down (`from` → `to`, the relist that found it gone).
fn gone_unseen(pod: &ApiPodState, (from, to): (u64, u64), clock: &Clock) -> TimelineEntry {
    let what = if pod.deletion_ns.is_some() {
        "its removal"
    } else {
        "its deletion (when, with what grace period) and removal"
    };
    TimelineEntry {
        at: clock.rfc3339(from),
        what: "api_unreachable".into(),
        container: None,
        detail: format!(
            "API server unreachable from {} to {} (pods watch down, then relisted): the pod left the API in between; {what}, kubelet's Events and endpoint changes in that time were not observed",
            clock.rfc3339(from),
            clock.rfc3339(to)
        ),
        at_ns: from,
    }
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
            new: Vec::new(),
            runs: Runs::default(),
            evicted: 0,
            cap: cap.max(1),
        }
    }

    /// A record to tell about (completed, or a stuck pod's view under way), for its
    /// Events; at most [`NEW_KEPT`] wait to be taken.
    pub(super) fn announce(&mut self, t: Arc<Termination>) {
        if self.new.len() < NEW_KEPT {
            self.new.push(t);
        }
    }

    /// Records completed since the last call, oldest first.
    pub(super) fn take_new(&mut self) -> Vec<Arc<Termination>> {
        std::mem::take(&mut self.new)
    }

    pub(super) fn completed(&self) -> impl Iterator<Item = &Arc<Termination>> {
        self.completed.iter()
    }

    /// Opens the record of a pod whose deletion was observed.
    /// Runs of its containers that were signalled and are still open were the start of
    /// this termination (the deletion was seen late): they join its record.
    pub(super) fn open_pod(&mut self, pod: &ApiPodState) {
        self.adopt_runs(pod, true);
    }

    /// A pod that left the API without its deletion being seen (the pods watch was
    /// down): its signalled runs still open were its termination, not restarts. Returns
    /// whether it had any (its record is open then).
    pub(super) fn pod_gone_unseen(&mut self, pod: &ApiPodState) -> bool {
        self.adopt_runs(pod, false)
    }

    /// Opens the pod's record with its signalled runs still open; `always`: even with
    /// none. Returns whether it opened one.
    fn adopt_runs(&mut self, pod: &ApiPodState, always: bool) -> bool {
        let uid = pod.pod.uid.clone();
        let early: Vec<String> = self
            .open
            .iter()
            .filter(|(_, r)| r.run.is_some() && r.signalled && r.uid.as_deref() == Some(&uid))
            .map(|(k, _)| k.clone())
            .collect();
        if early.is_empty() && !always {
            return false;
        }
        let mut merged: Vec<OpenRecord> =
            early.iter().filter_map(|k| self.open.remove(k)).collect();
        let rec = self.open.entry(uid).or_default();
        for m in merged.drain(..) {
            rec.started_ns = match (rec.started_ns, m.started_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            rec.finished_ns = rec.finished_ns.max(m.finished_ns);
            rec.signalled = true;
            rec.outcomes.extend(m.outcomes);
            rec.containers.extend(m.containers);
            rec.members.extend(m.members);
            rec.timeline.extend(m.timeline);
            rec.diagnoses.extend(m.diagnoses);
        }
        rec.uid = Some(pod.pod.uid.clone());
        rec.started_ns = pod.deletion_ns.or(rec.started_ns);
        rec.workload = Workload::new(&pod.pod.namespace, &pod.pod.workload);
        true
    }

    /// Whether `key`'s record waits for the API server to come back.
    pub(super) fn held_for_api(&self, key: &str) -> bool {
        self.open.get(key).is_some_and(|r| r.held_for_api)
    }

    /// The traffic that reached `key`'s pod so far.
    pub(super) fn set_traffic(&mut self, key: &str, t: &PodTrafficReport) {
        if let Some(rec) = self.open.get_mut(key) {
            rec.traffic = t.clone();
        }
    }

    /// Classifies a container that is done, exports its metrics and files it in its
    /// pod's record.
    /// `key`: the record it goes to (`join::record_key_in`); `run`: that record is the
    /// container run's own (its pod is not being deleted).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finalize(
        &mut self,
        mut c: ContainerTrack,
        key: String,
        run: bool,
        pod: Option<&ApiPodState>,
        metrics: &TerminationMetrics,
        clock: &Clock,
        now_ns: u64,
    ) {
        c.facts.partial |= pod.is_some_and(|p| p.deleted_before_agent);
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
        if run {
            let container_report = report(&c, Some(outcome));
            rec.run = Some(Run {
                container: c.display_name(),
                container_id: c.container.cgroup.container_id.clone(),
                outcome,
                exit_code: container_report.exit_code,
                exit_how: match (&container_report.exit_code, &container_report.exit_signal) {
                    (Some(code), _) => format!("exit code {code}"),
                    (None, Some(sig)) if outcome == Outcome::OomKilled => format!("{sig} (OOM)"),
                    (None, Some(sig)) => sig.clone(),
                    _ => "exit not seen".into(),
                },
                sigterm_to_exit_ns: c.facts.sigterm_to_exit_ns(),
            });
        }
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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn try_complete(
        &mut self,
        key: &str,
        others_pending: bool,
        pod: Option<&ApiPodState>,
        api: ApiWait,
        now_ns: u64,
        metrics: &TerminationMetrics,
        clock: &Clock,
    ) -> bool {
        let Some(rec) = self.open.get(key) else {
            return false;
        };
        let pod_state = pod.map(|p| (p.deletion_ns.is_some(), p.removed_ns.is_some()));
        // What only the API can say: whether the pod is being deleted (a signalled
        // record), or that a run ended and why (a run's record).
        let lacking = match (&rec.run, pod) {
            (Some(run), Some(p)) => {
                p.removed_ns.is_none() && p.ended_seen_ns(&run.container_id).is_none()
            }
            (None, Some(p)) => rec.signalled && p.deletion_ns.is_none() && p.removed_ns.is_none(),
            (_, None) => false,
        };
        let hold = match (&rec.run, pod) {
            // Runs of one container complete in the order they ended: each one's
            // timeline starts where the previous one's ended, and its restart history
            // (crash loops) is kept in that order.
            (Some(run), Some(_)) if self.earlier_run_open(key, run, rec.finished_ns) => {
                Some(Hold::RestartPending)
            }
            (Some(run), Some(p)) => run_completion(
                p.ended_seen_ns(&run.container_id),
                p.removed_ns.is_some(),
                rec.finished_ns,
                now_ns,
            ),
            _ => completion(
                others_pending,
                pod_state,
                rec.signalled,
                rec.finished_ns,
                now_ns,
            ),
        };
        let hold = api_wait(hold, lacking, api, rec.finished_ns, now_ns);
        if let Some(h) = hold {
            if let Some(rec) = self.open.get_mut(key) {
                rec.held_for_api = h == Hold::ApiUnreachable;
            }
            return false;
        }
        let Some(mut rec) = self.open.remove(key) else {
            return false;
        };
        if let (true, Some(since)) = (lacking, api.down_since) {
            rec.timeline
                .push(completed_unreachable(since, rec.finished_ns, now_ns, clock));
        }
        let t = match (&rec.run, pod) {
            (Some(_), Some(p)) => self.runs.complete(rec, p, metrics, clock, now_ns),
            _ => complete(rec, pod, metrics, clock),
        };
        let t = Arc::new(t);
        self.announce(t.clone());
        self.completed.push_back(t);
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
                    restarted_container: rec.run.as_ref().map(|r| r.container.clone()),
                    ..Termination::in_progress(rec.uid.clone())
                },
            )
        })
    }

    /// Open records, those that finished first first (then by key: a stable order).
    pub(super) fn open_keys(&self) -> Vec<String> {
        let mut keys: Vec<(Option<u64>, &String)> =
            self.open.iter().map(|(k, r)| (r.finished_ns, k)).collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Whether an earlier run of `run`'s container (same pod, `<pod uid>/` key) is still
    /// open.
    fn earlier_run_open(&self, key: &str, run: &Run, finished_ns: Option<u64>) -> bool {
        let pod = join::key_pod_uid(key);
        self.open.iter().any(|(k, r)| {
            k != key
                && join::key_pod_uid(k) == pod
                && r.run.as_ref().is_some_and(|o| o.container == run.container)
                && r.finished_ns < finished_ns
        })
    }

    pub(super) fn open_started(&self, key: &str) -> Option<u64> {
        self.open.get(key).and_then(|r| r.started_ns)
    }
}

/// A record made final: its pod-level metrics and diagnoses, the API's timeline merged.
pub(super) fn complete(
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
    // Kubernetes mode measures from the deletion, so a pod whose deletion was not seen
    // (gone while the API server was unreachable) has no duration rather than a shorter
    // one from its first SIGTERM; standalone mode measures from the first SIGTERM.
    let measured = match &joined {
        Some(j) => j.deletion_ns.is_some(),
        None => rec.signalled,
    };
    let cause = pod.map(|p| causes::pod_cause(Some(p), &rec.outcomes));
    if let Some(c) = &cause {
        metrics.pod_terminated(&rec.workload, c.cause, worst(&rec.outcomes).as_str());
        rec.timeline.push(cause_entry(
            c,
            None,
            started.or(rec.started_ns).unwrap_or(0),
            clock,
        ));
    }
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
    if let Some((p, outage)) = pod.and_then(|p| Some((p, p.gone_unseen?))) {
        rec.timeline.push(gone_unseen(p, outage, clock));
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
        cause: cause.map(|c| c.cause.to_string()),
        restarted_container: None,
        restart_count: None,
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
    fn a_record_lacking_the_apis_word_waits_while_it_is_unreachable() {
        let down = ApiWait {
            down_since: Some(S),
            room: true,
        };
        let f = Some(2 * S);
        let limit = 2 * S + API_WAIT_MAX_NS;
        // (hold, lacking the API's word, api, now) → hold
        let cases = [
            (None, true, down, limit - 1, Some(Hold::ApiUnreachable)),
            // At most API_WAIT_MAX_NS after its end, and while there is room.
            (None, true, down, limit, None),
            (
                None,
                true,
                ApiWait {
                    room: false,
                    ..down
                },
                3 * S,
                None,
            ),
            // The API is up, or has nothing to say about it: no wait.
            (None, true, ApiWait::default(), 3 * S, None),
            (None, false, down, 3 * S, None),
            // Other holds stand.
            (
                Some(Hold::PodPending),
                true,
                down,
                limit,
                Some(Hold::PodPending),
            ),
        ];
        for (i, (hold, lacking, api, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(api_wait(hold, lacking, api, f, now), want, "case {i}");
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
