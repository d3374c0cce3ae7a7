//! What a termination looks like to a user: the JSON served at `/debug/terminations`
//! and rendered by `gracewatch explain`, and the snapshot the HTTP side reads. Field names
//! are part of the interface. Shared by every stage that writes a timeline entry (the
//! API's view in `kube`, the kernel's in `termination`) and by the readers in `export`
//! and `explain`; it depends on nothing else in the agent.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// "1 TCP reset", "3 TCP resets".
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    InProgress,
    Completed,
}

/// Why a pod or a container run was stopped: a bounded set, the `cause` label's values
/// and a record's `cause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopCause {
    Rollout,
    ScaleDown,
    Eviction,
    Preemption,
    Taint,
    NodePressure,
    LivenessProbe,
    StartupProbe,
    Oom,
    Crash,
    Completed,
    Delete,
    Unknown,
}

impl StopCause {
    pub fn as_str(self) -> &'static str {
        match self {
            StopCause::Rollout => "rollout",
            StopCause::ScaleDown => "scale_down",
            StopCause::Eviction => "eviction",
            StopCause::Preemption => "preemption",
            StopCause::Taint => "taint",
            StopCause::NodePressure => "node_pressure",
            StopCause::LivenessProbe => "liveness_probe",
            StopCause::StartupProbe => "startup_probe",
            StopCause::Oom => "oom",
            StopCause::Crash => "crash",
            StopCause::Completed => "completed",
            StopCause::Delete => "delete",
            StopCause::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Termination {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub uid: Option<String>,
    pub state: State,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub grace_period_seconds: Option<f64>,
    pub containers: Vec<ContainerReport>,
    pub timeline: Vec<TimelineEntry>,
    pub diagnoses: Vec<DiagnosisEntry>,
    /// Why it was stopped (Kubernetes mode): a [`StopCause`] (a string here, so that a
    /// reader older than the agent still reads it). The evidence is the timeline's `cause`
    /// entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Set on the record of one container's run that ended while its pod lived on (a
    /// restart, or a container that finished): that container's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_container: Option<String>,
    /// The container's `restartCount` once kubelet had restarted it after this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
}

impl Termination {
    /// A termination under way that nothing is known of yet but its pod uid.
    pub fn in_progress(uid: Option<String>) -> Self {
        Self {
            namespace: None,
            pod: None,
            uid,
            state: State::InProgress,
            started_at: None,
            finished_at: None,
            grace_period_seconds: None,
            containers: vec![],
            timeline: vec![],
            diagnoses: vec![],
            cause: None,
            restarted_container: None,
            restart_count: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Container name (Kubernetes mode); null in standalone mode.
    pub name: Option<String>,
    pub container_id: String,
    pub pid1_comm: Option<String>,
    /// Null while the container is still terminating.
    pub outcome: Option<String>,
    pub exit_code: Option<u8>,
    /// Name of the signal PID 1 died of, e.g. "SIGKILL".
    pub exit_signal: Option<String>,
    pub sigterm_to_exit_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// RFC 3339, nanoseconds, UTC.
    pub at: String,
    pub what: String,
    /// The container the entry is about: its name in Kubernetes mode, its 12-character id
    /// in standalone mode; null for pod-level entries (deletion, endpoints, Events).
    pub container: Option<String>,
    pub detail: String,
    /// Kernel boot-clock time, for ordering; not serialized.
    #[serde(skip)]
    pub at_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisEntry {
    pub code: String,
    pub container: Option<String>,
    pub message: String,
}

/// Everything export reads, published by the termination tracker as one immutable value.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Completed terminations (oldest first), then those in progress.
    pub terminations: Vec<Arc<Termination>>,
}

#[derive(Serialize)]
pub struct TerminationsBody<'a> {
    pub terminations: Vec<&'a Termination>,
}

impl Snapshot {
    /// Terminations with a container whose id starts with `prefix`.
    pub fn by_container_prefix(&self, prefix: &str) -> Vec<&Termination> {
        self.terminations
            .iter()
            .filter(|t| {
                t.containers
                    .iter()
                    .any(|c| c.container_id.starts_with(prefix))
            })
            .map(|t| t.as_ref())
            .collect()
    }

    /// Every record of the pod `namespace/name` (its containers' restarts, its
    /// termination; a pod name can be reused: all of them), newest first: those in
    /// progress, then by when they finished. Records complete in a different order
    /// than they finished (a restart's record waits for kubelet's status, and a quick
    /// second restart can be reported first), so completion order is not used.
    pub fn by_pod(&self, namespace: &str, name: &str) -> Vec<&Termination> {
        let mut found: Vec<(Option<OffsetDateTime>, &Termination)> = self
            .terminations
            .iter()
            .rev()
            .filter(|t| t.namespace.as_deref() == Some(namespace) && t.pod.as_deref() == Some(name))
            .map(|t| (finished(t), t.as_ref()))
            .collect();
        // Stable: records with equal (or unreadable) times keep newest-completed first.
        found.sort_by(|(a, _), (b, _)| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => b.cmp(a),
        });
        found.into_iter().map(|(_, t)| t).collect()
    }

    pub fn all(&self) -> Vec<&Termination> {
        self.terminations.iter().map(|t| t.as_ref()).collect()
    }
}

/// When a record finished; None while in progress. Our own RFC 3339 text always parses.
fn finished(t: &Termination) -> Option<OffsetDateTime> {
    match t.state {
        State::InProgress => None,
        _ => t
            .finished_at
            .as_deref()
            .and_then(|f| OffsetDateTime::parse(f, &Rfc3339).ok()),
    }
}

/// Conventional name of a signal number (Linux x86-64/arm64 numbering).
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(sig as usize) {
        Some(n) if sig > 0 => (*n).to_string(),
        _ if (34..=64).contains(&sig) => format!("SIGRTMIN+{}", sig - 34),
        _ => format!("SIG{sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        pod: &str,
        state: State,
        finished_at: Option<&str>,
        restart_count: i32,
    ) -> Arc<Termination> {
        Arc::new(Termination {
            namespace: Some("shop".into()),
            pod: Some(pod.into()),
            state,
            finished_at: finished_at.map(String::from),
            restart_count: Some(restart_count),
            ..Termination::in_progress(None)
        })
    }

    #[test]
    fn a_pods_records_are_newest_first_by_when_they_finished_not_completed() {
        // Completion order: run 2, run 1, an unrelated pod, run 3, then the pod's termination in progress.
        let snap = Snapshot {
            terminations: vec![
                record("loop", State::Completed, Some("2026-12-01T10:00:01.2Z"), 2),
                record("loop", State::Completed, Some("2026-12-01T10:00:00.95Z"), 1),
                record("other", State::Completed, Some("2026-12-01T10:00:09Z"), 7),
                record(
                    "loop",
                    State::Completed,
                    Some("2026-12-01T10:00:01.800000001Z"),
                    3,
                ),
                record("loop", State::InProgress, None, 4),
            ],
        };
        let order: Vec<Option<i32>> = snap
            .by_pod("shop", "loop")
            .iter()
            .map(|t| t.restart_count)
            .collect();
        assert_eq!(order, [Some(4), Some(3), Some(2), Some(1)]);
        assert!(snap.by_pod("kube-system", "loop").is_empty());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(35), "SIGRTMIN+1");
        assert_eq!(signal_name(0), "SIG0");
    }
}
