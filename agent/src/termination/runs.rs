//! Records of container runs that ended while their pod lived on (restarts, and
//! containers that finished): when such a record may complete (once the pod's status
//! shows the run's end and kubelet's Events had time to arrive), and what it gets then:
//! the API's entries about the container since its previous run, its cause with the
//! evidence, its restart count, and the LIVENESS_KILLED and CRASH_LOOP diagnoses from
//! each container's bounded restart history.

use std::collections::HashMap;

use super::{
    causes::{self, RestartHistory, RestartSeen},
    classify::Outcome,
    record::{self, Hold, OpenRecord},
};
use crate::{
    clock::Clock,
    kube::ApiPodState,
    metrics::TerminationMetrics,
    report::{DiagnosisEntry, State, Termination, TimelineEntry},
};

/// How long a container run's record waits, once the pod's status shows its end, for
/// kubelet's Events about it (probe failures, the kill, back-off) to arrive.
pub(super) const EVENTS_SETTLE_NS: u64 = 1_500_000_000;
/// How long it waits at most after the run's end for the status to show it.
pub(super) const RESTART_WAIT_NS: u64 = 10_000_000_000;
/// How far back a run's record looks for kubelet's Events about it (probe failures).
const RUN_LOOKBACK_NS: u64 = 300_000_000_000;

/// The run of one container that ended while its pod lived on.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub(super) container: String,
    pub(super) container_id: String,
    pub(super) outcome: Outcome,
    pub(super) exit_code: Option<u8>,
    /// "exit code 3", "SIGSEGV", "SIGKILL (OOM)".
    pub(super) exit_how: String,
    pub(super) sigterm_to_exit_ns: Option<u64>,
}

/// Whether a container run's record (a restart) can complete: once the pod's status
/// showed the run's end (`ended_seen`) and Events had time to arrive, or after
/// [`RESTART_WAIT_NS`] without it, or at once when the pod is gone.
pub(super) fn run_completion(
    ended_seen: Option<u64>,
    removed: bool,
    finished_ns: Option<u64>,
    now_ns: u64,
) -> Option<Hold> {
    if removed {
        return None;
    }
    let settled = ended_seen.is_some_and(|t| now_ns >= t.saturating_add(EVENTS_SETTLE_NS));
    let waited = finished_ns.is_none_or(|f| now_ns >= f.saturating_add(RESTART_WAIT_NS));
    (!settled && !waited).then_some(Hold::RestartPending)
}

/// The timeline entry that gives a record's cause and its evidence.
pub(super) fn cause_entry(
    cause: &causes::Cause,
    container: Option<&str>,
    at_ns: u64,
    clock: &Clock,
) -> TimelineEntry {
    TimelineEntry {
        at: clock.rfc3339(at_ns),
        what: "cause".into(),
        container: container.map(str::to_string),
        detail: format!("{}: {}", cause.cause, cause.evidence),
        at_ns,
    }
}

/// What run records remember across runs, bounded.
#[derive(Default)]
pub(super) struct Runs {
    /// Each container's recent restarts (crash loops).
    history: RestartHistory,
    /// Each container's last run end that got a record, so the next run's record
    /// starts after it.
    last_run_end: HashMap<(String, String), u64>,
}

impl Runs {
    /// A container run's record made final: the API's entries about the container since
    /// its previous run, its cause, its restart count, LIVENESS_KILLED and CRASH_LOOP.
    pub(super) fn complete(
        &mut self,
        mut rec: OpenRecord,
        pod: &ApiPodState,
        metrics: &TerminationMetrics,
        clock: &Clock,
        now_ns: u64,
    ) -> Termination {
        let Some(run) = rec.run.take() else {
            return record::complete(rec, Some(pod), metrics, clock);
        };
        let started = rec.started_ns.unwrap_or(0);
        let finished = rec.finished_ns.unwrap_or(started);
        let key = (pod.pod.uid.clone(), run.container.clone());
        let from = self
            .last_run_end
            .get(&key)
            .map(|t| t.saturating_add(1))
            .unwrap_or(0)
            .max(started.saturating_sub(RUN_LOOKBACK_NS));
        if self.last_run_end.len() >= 4096 {
            self.last_run_end.clear();
        }
        self.last_run_end.insert(key, finished);
        let entries: Vec<&TimelineEntry> =
            pod.timeline_between(from, now_ns, &run.container).collect();
        let api_container = pod.pod.container(&run.container);
        let api_reason = api_container
            .and_then(|c| {
                [&c.last_terminated, &c.terminated]
                    .into_iter()
                    .flatten()
                    .find(|t| t.container_id.as_deref() == Some(&run.container_id))
            })
            .and_then(|t| t.reason.clone());
        // The API's entries, and the kernel's (who signalled PID 1).
        let seen: Vec<&TimelineEntry> = entries.iter().copied().chain(&rec.timeline).collect();
        let cause = causes::container_cause(
            &seen,
            &run.container,
            run.outcome,
            run.exit_code,
            api_reason.as_deref(),
        );
        let mut timeline: Vec<TimelineEntry> = entries.iter().map(|e| (*e).clone()).collect();
        timeline.push(cause_entry(&cause, Some(&run.container), finished, clock));
        if let Some(d) = causes::liveness_diagnosis(
            &entries,
            &run.container,
            run.outcome,
            run.sigterm_to_exit_ns,
        ) {
            rec.diagnoses.push(DiagnosisEntry {
                code: d.code.as_str().into(),
                container: Some(run.container.clone()),
                message: d.message,
            });
        }
        let restarted = api_container.is_some_and(|c| {
            c.container_id.as_deref() != Some(&run.container_id) || c.waiting.is_some()
        });
        if restarted {
            let recent = self.history.note(
                &pod.pod.uid,
                &run.container,
                RestartSeen {
                    exit_ns: finished,
                    how: run.exit_how.clone(),
                },
            );
            let back_off = api_container
                .and_then(|c| c.waiting.as_ref())
                .and_then(|(_, m)| causes::back_off(m))
                .or_else(|| {
                    // Running again: the back-off it waited before this start.
                    entries
                        .iter()
                        .rev()
                        .filter(|e| e.what == "waiting_status")
                        .find_map(|e| causes::back_off(&e.detail))
                });
            if let Some(d) = causes::crash_loop_diagnosis(&run.container, &recent, back_off) {
                rec.diagnoses.push(DiagnosisEntry {
                    code: d.code.as_str().into(),
                    container: Some(run.container.clone()),
                    message: d.message,
                });
            }
        }
        if restarted {
            metrics.container_restarted(&rec.workload, &run.container, cause.cause);
        }
        rec.timeline.extend(timeline);
        rec.timeline.sort_by_key(|e| e.at_ns);
        Termination {
            namespace: Some(pod.pod.namespace.clone()),
            pod: Some(pod.pod.name.clone()),
            uid: rec.uid,
            state: State::Completed,
            started_at: Some(clock.rfc3339(started)),
            finished_at: Some(clock.rfc3339(finished)),
            grace_period_seconds: Some(pod.pod.effective_grace_seconds() as f64),
            containers: rec.containers,
            timeline: rec.timeline,
            diagnoses: rec.diagnoses,
            cause: Some(cause.cause.to_string()),
            restarted_container: Some(run.container),
            restart_count: pod
                .restart_count_after(&run.container_id, restarted)
                .or(api_container.map(|c| c.restart_count)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn when_a_container_runs_record_completes() {
        // (status showed the end at, pod removed, finished, now) → hold
        let cases = [
            (None, false, Some(S), 2 * S, Some(Hold::RestartPending)),
            // Shown: Events get EVENTS_SETTLE_NS to arrive.
            (
                Some(2 * S),
                false,
                Some(S),
                2 * S + EVENTS_SETTLE_NS - 1,
                Some(Hold::RestartPending),
            ),
            (Some(2 * S), false, Some(S), 2 * S + EVENTS_SETTLE_NS, None),
            // Never shown: RESTART_WAIT_NS after the end.
            (None, false, Some(S), S + RESTART_WAIT_NS, None),
            // The pod is gone: nothing more will come.
            (None, true, Some(S), S, None),
        ];
        for (i, (seen, removed, finished, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                run_completion(seen, removed, finished, now),
                want,
                "case {i}"
            );
        }
    }
}
