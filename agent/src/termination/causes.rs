//! Why a pod or a container was stopped: the bounded set of causes, chosen from the
//! strongest evidence at hand (the pod's `DisruptionTarget` condition and status, what
//! its owners say, kubelet's Killing Event, the kernel's outcome), each with the evidence
//! as words; the restart history of each container, bounded, that makes a crash loop;
//! and the LIVENESS_KILLED and CRASH_LOOP diagnoses. Pure functions of the facts passed in.

use std::collections::{HashMap, VecDeque};

use super::classify::{Code, Diagnosis, Outcome};
use crate::{
    kube::ApiPodState,
    report::{StopCause, TimelineEntry},
};

/// A container restarted this often within [`CRASH_LOOP_WINDOW_NS`] is crash-looping.
pub const CRASH_LOOP_RESTARTS: usize = 3;
pub const CRASH_LOOP_WINDOW_NS: u64 = 600_000_000_000;
/// Restarts remembered per container (the crash loop's evidence).
const HISTORY_PER_CONTAINER: usize = 8;
/// Containers whose restarts are remembered.
const HISTORY_CONTAINERS: usize = 4096;

/// A cause and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub cause: StopCause,
    pub evidence: String,
}

fn cause(cause: StopCause, evidence: String) -> Cause {
    Cause { cause, evidence }
}

/// Why a pod was deleted (or, without a deletion, why its containers ended).
pub fn pod_cause(pod: Option<&ApiPodState>, outcomes: &[Outcome]) -> Cause {
    if let Some(p) = pod {
        let stop = &p.pod.stop;
        if let Some((c, evidence)) = stop.own_cause() {
            return cause(c, evidence);
        }
        if let Some(v) = &p.owner_verdict {
            return cause(v.cause, v.evidence.clone());
        }
        if p.deletion_ns.is_some() {
            let how = match &stop.disruption {
                Some((reason, _)) => format!(" (DisruptionTarget reason {reason})"),
                None => String::new(),
            };
            return cause(
                StopCause::Delete,
                format!("the pod was deleted through the API{how}; nothing says who or why"),
            );
        }
        if p.gone_unseen.is_some() {
            return cause(
                StopCause::Delete,
                "the pod left the API while the API server was unreachable: it was deleted, unobserved; nothing says who or why".into(),
            );
        }
    }
    outcome_cause(outcomes.first().copied(), None, None)
}

/// A cause from how a container ended by itself (no probe, no deletion).
fn outcome_cause(
    outcome: Option<Outcome>,
    exit_code: Option<u8>,
    api_reason: Option<&str>,
) -> Cause {
    if outcome == Some(Outcome::OomKilled) || api_reason == Some("OOMKilled") {
        return cause(StopCause::Oom, "the kernel's OOM killer ended PID 1".into());
    }
    match (outcome, exit_code) {
        (Some(Outcome::Crashed), _) => cause(StopCause::Crash, "PID 1 died of a signal".into()),
        (Some(Outcome::SelfExit), Some(0)) => {
            cause(StopCause::Completed, "PID 1 exited with code 0".into())
        }
        (Some(Outcome::SelfExit), Some(code)) => {
            cause(StopCause::Crash, format!("PID 1 exited with code {code}"))
        }
        _ => cause(StopCause::Unknown, "nothing seen says why".into()),
    }
}

/// kubelet's Killing Event about `container` in `entries`, if it killed it for a probe.
fn probe_kill<'a>(
    entries: &[&'a TimelineEntry],
    container: &str,
) -> Option<(StopCause, &'a TimelineEntry)> {
    entries.iter().rev().find_map(|e| {
        if e.what != "event_killing" || e.container.as_deref().is_some_and(|c| c != container) {
            return None;
        }
        if e.detail.contains("failed liveness probe") {
            Some((StopCause::LivenessProbe, *e))
        } else if e.detail.contains("failed startup probe") {
            Some((StopCause::StartupProbe, *e))
        } else {
            None
        }
    })
}

/// Why a container of a pod that is not being deleted ended. `entries`: the pod's
/// timeline around the run's end.
pub fn container_cause(
    entries: &[&TimelineEntry],
    container: &str,
    outcome: Outcome,
    exit_code: Option<u8>,
    api_reason: Option<&str>,
) -> Cause {
    if let Some((c, e)) = probe_kill(entries, container) {
        return cause(c, e.detail.clone());
    }
    let found = outcome_cause(Some(outcome), exit_code, api_reason);
    if found.cause != StopCause::Unknown {
        return found;
    }
    // Stopped by a signal that neither kubelet's Events nor the status explain (a
    // `kubectl exec … kill 1`, a process of the container's own): the kernel names who.
    match stop_request(entries, container) {
        Some(e) => cause(
            StopCause::Unknown,
            format!("{}; nothing from the API says why", e.detail),
        ),
        None => found,
    }
}

/// The signal that asked `container`'s PID 1 to stop, as the timeline tells it.
fn stop_request<'a>(entries: &[&'a TimelineEntry], container: &str) -> Option<&'a TimelineEntry> {
    entries.iter().copied().find(|e| {
        matches!(e.what.as_str(), "sigterm" | "stop_signal")
            && e.container.as_deref().is_none_or(|c| c == container)
            && e.detail.contains("(PID 1)")
    })
}

fn secs(ns: u64) -> String {
    format!("{:.1}s", ns as f64 / 1e9)
}

/// LIVENESS_KILLED: the probe's failures, how long from the first to the kill, and how
/// the app took it.
pub fn liveness_diagnosis(
    entries: &[&TimelineEntry],
    container: &str,
    outcome: Outcome,
    sigterm_to_exit_ns: Option<u64>,
) -> Option<Diagnosis> {
    let (kind, kill) = probe_kill(entries, container)?;
    if kind != StopCause::LivenessProbe {
        return None;
    }
    let failures: Vec<&&TimelineEntry> = entries
        .iter()
        .filter(|e| {
            e.what == "event_unhealthy"
                && e.container.as_deref().is_none_or(|c| c == container)
                && e.detail.contains("Liveness probe")
        })
        .collect();
    let first = failures.first();
    // Events listed when their watch started carry only the API's whole seconds.
    let coarse = |e: &TimelineEntry| e.detail.contains("listed when its watch started");
    let failed = match first {
        Some(f) => format!(
            "its liveness probe failed ({}); {}{} from the first failure seen to the kill",
            f.detail
                .strip_prefix("kubelet Event Unhealthy: ")
                .unwrap_or(&f.detail)
                .split(" (API time")
                .next()
                .unwrap_or_default(),
            if coarse(f) || coarse(kill) {
                "about "
            } else {
                ""
            },
            secs(kill.at_ns.saturating_sub(f.at_ns))
        ),
        None => "its liveness probe failed (no Unhealthy Event seen)".to_string(),
    };
    let after = match (outcome, sigterm_to_exit_ns) {
        (Outcome::Graceful, Some(t)) => format!(
            "the app then shut down gracefully, {:.3}s after SIGTERM",
            t as f64 / 1e9
        ),
        (Outcome::ForcedKill, Some(t)) => format!(
            "the app did not exit on SIGTERM and was SIGKILLed {:.3}s later, at the end of its grace period",
            t as f64 / 1e9
        ),
        (o, _) => format!("the app's end: {}", o.as_str()),
    };
    Some(Diagnosis {
        code: Code::LivenessKilled,
        message: format!("kubelet restarted {container} because {failed}; {after}"),
    })
}

/// kubelet's back-off from a waiting message ("back-off 20s restarting failed container=…").
pub fn back_off(message: &str) -> Option<&str> {
    let rest = message.split("back-off ").nth(1)?;
    rest.split_whitespace().next()
}

/// One restart as the crash loop shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartSeen {
    pub exit_ns: u64,
    /// "exit code 3", "SIGSEGV", "SIGKILL (OOM)".
    pub how: String,
}

/// The recent restarts of each container, bounded in both directions.
#[derive(Default)]
pub struct RestartHistory {
    by_container: HashMap<(String, String), VecDeque<RestartSeen>>,
}

impl RestartHistory {
    /// Notes a restart of (pod uid, container) and returns the restarts within the
    /// crash-loop window, oldest first.
    pub fn note(&mut self, uid: &str, container: &str, seen: RestartSeen) -> Vec<RestartSeen> {
        let now = seen.exit_ns;
        if self.by_container.len() >= HISTORY_CONTAINERS {
            self.by_container.retain(|_, v| {
                v.back()
                    .is_some_and(|r| now.saturating_sub(r.exit_ns) < CRASH_LOOP_WINDOW_NS)
            });
        }
        let runs = self
            .by_container
            .entry((uid.to_string(), container.to_string()))
            .or_default();
        runs.push_back(seen);
        while runs.len() > HISTORY_PER_CONTAINER {
            runs.pop_front();
        }
        runs.iter()
            .filter(|r| now.saturating_sub(r.exit_ns) < CRASH_LOOP_WINDOW_NS)
            .cloned()
            .collect()
    }

    pub fn containers(&self) -> usize {
        self.by_container.len()
    }
}

/// CRASH_LOOP once `recent` (within the window) holds enough restarts.
pub fn crash_loop_diagnosis(
    container: &str,
    recent: &[RestartSeen],
    back_off: Option<&str>,
) -> Option<Diagnosis> {
    if recent.len() < CRASH_LOOP_RESTARTS {
        return None;
    }
    let span = recent
        .last()
        .map_or(0, |l| l.exit_ns.saturating_sub(recent[0].exit_ns));
    let hows: Vec<&str> = recent
        .iter()
        .rev()
        .take(5)
        .map(|r| r.how.as_str())
        .collect();
    let back_off = match back_off {
        Some(b) => format!("kubelet's back-off between restarts is now {b}"),
        None => "kubelet's back-off grows from 10s, doubling up to 5m".to_string(),
    };
    Some(Diagnosis {
        code: Code::CrashLoop,
        message: format!(
            "{container} was restarted {} times within {} (last exits, newest first: {}); {back_off}",
            recent.len(),
            secs(span),
            hows.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_s: u64, what: &str, container: &str, detail: &str) -> TimelineEntry {
        TimelineEntry {
            at: String::new(),
            what: what.into(),
            container: Some(container.into()),
            detail: detail.into(),
            at_ns: at_s * 1_000_000_000,
        }
    }

    #[test]
    fn a_run_stopped_by_a_signal_the_api_does_not_explain_names_its_sender() {
        let sigterm = entry(
            5,
            "sigterm",
            "app",
            "SIGTERM from kill (host pid 77, inside the container, in an exec session) to sh (PID 1): delivered",
        );
        let child = entry(
            4,
            "sigterm",
            "app",
            "SIGTERM from sh (host pid 70, inside the container) to sleep (pid 9): delivered",
        );
        let c = container_cause(&[&child, &sigterm], "app", Outcome::Graceful, Some(0), None);
        assert_eq!(c.cause, StopCause::Unknown);
        assert_eq!(
            c.evidence,
            "SIGTERM from kill (host pid 77, inside the container, in an exec session) to sh (PID 1): delivered; nothing from the API says why"
        );
        // Without one, nothing is claimed.
        let c = container_cause(&[&child], "app", Outcome::Graceful, Some(0), None);
        assert_eq!(c.evidence, "nothing seen says why");
        // A cause the outcome gives stands.
        let c = container_cause(&[&sigterm], "app", Outcome::SelfExit, Some(3), None);
        assert_eq!(c.cause, StopCause::Crash);
    }

    #[test]
    fn container_causes() {
        let killing = entry(
            10,
            "event_killing",
            "app",
            "kubelet Event Killing: Container app failed liveness probe, will be restarted",
        );
        let startup = entry(
            10,
            "event_killing",
            "app",
            "kubelet Event Killing: Container app failed startup probe, will be restarted",
        );
        let other = entry(
            10,
            "event_killing",
            "side",
            "kubelet Event Killing: Container side failed liveness probe, will be restarted",
        );
        // (entries, outcome, exit code, API reason) → cause
        type Case<'a> = (
            Vec<&'a TimelineEntry>,
            Outcome,
            Option<u8>,
            Option<&'a str>,
            StopCause,
        );
        let cases: [Case; 8] = [
            (
                vec![&killing],
                Outcome::Graceful,
                Some(0),
                None,
                StopCause::LivenessProbe,
            ),
            (
                vec![&startup],
                Outcome::ForcedKill,
                None,
                None,
                StopCause::StartupProbe,
            ),
            (
                vec![&other],
                Outcome::Graceful,
                Some(0),
                None,
                StopCause::Unknown,
            ),
            (vec![], Outcome::OomKilled, None, None, StopCause::Oom),
            (
                vec![],
                Outcome::ForcedKill,
                None,
                Some("OOMKilled"),
                StopCause::Oom,
            ),
            (vec![], Outcome::SelfExit, Some(3), None, StopCause::Crash),
            (vec![], Outcome::Crashed, None, None, StopCause::Crash),
            (
                vec![],
                Outcome::SelfExit,
                Some(0),
                None,
                StopCause::Completed,
            ),
        ];
        for (i, (entries, outcome, code, reason, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                container_cause(&entries, "app", outcome, code, reason).cause,
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn liveness_kill_says_how_long_and_how_the_app_took_it() {
        let first = entry(
            4,
            "event_unhealthy",
            "app",
            "kubelet Event Unhealthy: Liveness probe failed: no (API time -)",
        );
        let kill = entry(
            7,
            "event_killing",
            "app",
            "kubelet Event Killing: Container app failed liveness probe, will be restarted",
        );
        let d = liveness_diagnosis(&[&first, &kill], "app", Outcome::Graceful, Some(50_000_000))
            .expect("diagnosis");
        assert_eq!(d.code, Code::LivenessKilled);
        assert!(
            d.message
                .contains("(Liveness probe failed: no); 3.0s from the first failure"),
            "{}",
            d.message
        );
        assert!(
            d.message
                .contains("shut down gracefully, 0.050s after SIGTERM"),
            "{}",
            d.message
        );
        assert!(liveness_diagnosis(&[&first], "app", Outcome::Graceful, None).is_none());
        let listed = entry(4, "event_unhealthy", "app", "kubelet Event Unhealthy: Liveness probe failed: no (API time 2026-12-01T10:00:04Z, listed when its watch started)");
        let d = liveness_diagnosis(
            &[&listed, &kill],
            "app",
            Outcome::ForcedKill,
            Some(2_000_000_000),
        )
        .expect("diagnosis");
        assert!(
            d.message
                .contains("(Liveness probe failed: no); about 3.0s from the first failure"),
            "{}",
            d.message
        );
        assert!(
            d.message
                .contains("did not exit on SIGTERM and was SIGKILLed 2.000s later"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_crash_loop_needs_three_restarts_in_ten_minutes_and_memory_stays_bounded() {
        let mut h = RestartHistory::default();
        let s = 1_000_000_000;
        let seen = |at: u64| RestartSeen {
            exit_ns: at * s,
            how: format!("exit code {at}"),
        };
        assert!(crash_loop_diagnosis("app", &h.note("u", "app", seen(1)), None).is_none());
        assert!(crash_loop_diagnosis("app", &h.note("u", "app", seen(700)), None).is_none());
        assert!(crash_loop_diagnosis("app", &h.note("u", "app", seen(710)), None).is_none());
        let d =
            crash_loop_diagnosis("app", &h.note("u", "app", seen(730)), Some("40s")).expect("loop");
        assert!(d.message.starts_with("app was restarted 3 times within 30.0s (last exits, newest first: exit code 730, exit code 710, exit code 700)"), "{}", d.message);
        assert!(
            d.message.ends_with("back-off between restarts is now 40s"),
            "{}",
            d.message
        );
        for i in 0..100 {
            h.note("u", "app", seen(800 + i));
        }
        assert_eq!(
            h.by_container[&("u".to_string(), "app".to_string())].len(),
            HISTORY_PER_CONTAINER
        );
        for i in 0..(HISTORY_CONTAINERS as u64 + 10) {
            h.note(&format!("p{i}"), "app", seen(2000 + i * 700));
        }
        assert!(h.containers() <= HISTORY_CONTAINERS, "{}", h.containers());
    }

    #[test]
    fn back_off_from_kubelets_message() {
        assert_eq!(
            back_off("back-off 20s restarting failed container=app pod=web-1_shop(u)"),
            Some("20s")
        );
        assert_eq!(back_off("nothing"), None);
    }
}
