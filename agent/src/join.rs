//! The join of what the kernel saw with what the Kubernetes API says, in one place:
//! which pod and container an attributed kernel fact belongs to and what it is called and
//! labelled ([`place`], [`record_key`]); the pod-level facts a termination is judged on
//! ([`JoinedPod`]); how the API's timeline merges into the kernel's ([`merge_timeline`]);
//! and what "stuck in Terminating" means ([`overdue_seconds`], [`StuckFacts`]).
//!
//! In standalone mode there is no API view: a container is its cgroup, named by its
//! short id. Nothing else in the agent joins kernel facts with API facts.

use crate::{
    attribution::CgroupContainer,
    clock::Clock,
    kube::{ApiContainerKind, ApiPodState, NodeView, PreStop, SANDBOX},
    metrics::Subject,
    report::TimelineEntry,
};

/// Where a kernel fact about a container belongs.
#[derive(Debug)]
pub struct Placement {
    /// The container's name in its pod (Kubernetes mode; "POD" for the sandbox).
    pub name: Option<String>,
    /// The pod's sandbox ("pause") container: part of the story, never an outcome.
    pub sandbox: bool,
    /// Who its metrics are about.
    pub subject: Subject,
    /// The signal the pod spec says stops it (`lifecycle.stopSignal`), when not SIGTERM.
    pub stop_signal: Option<u32>,
    /// How long after its stop signal the runtime may wait before SIGKILL: the pod's grace
    /// (at least kubelet's 2 s minimum), with a second of slack. `None`: not known.
    pub stop_window_ns: Option<u64>,
}

/// Places a container: by its id in the API's view (Kubernetes mode), else as a cgroup of
/// a known pod that is none of its containers (the sandbox), else by its id alone.
pub fn place(view: &NodeView, c: &CgroupContainer) -> Placement {
    let id = &c.cgroup.container_id;
    let (pod, name) = match view.container(id) {
        Some((uid, name)) => (view.get(uid), Some(name)),
        None => (c.cgroup.pod_uid.as_deref().and_then(|u| view.get(u)), None),
    };
    match pod {
        Some(p) => {
            let name = name.unwrap_or(SANDBOX);
            let grace_s = p
                .pod
                .effective_grace_seconds()
                .clamp(2, crate::kube::node::MAX_GRACE_SECONDS) as u64;
            Placement {
                name: Some(name.to_string()),
                sandbox: name == SANDBOX,
                subject: Subject::new(&p.pod.namespace, &p.pod.workload, name),
                stop_signal: p
                    .pod
                    .containers
                    .iter()
                    .find(|m| m.name == name)
                    .and_then(|m| m.stop_signal),
                stop_window_ns: Some((grace_s + 1) * 1_000_000_000),
            }
        }
        None => Placement {
            name: None,
            sandbox: false,
            subject: Subject::standalone(c.short_id()),
            stop_signal: None,
            stop_window_ns: None,
        },
    }
}

/// The record a container's termination is filed under: its pod (by uid), or, outside
/// any pod, the container's run: its id and its cgroup, since an engine restarting a
/// container (Docker's restart policy) reuses the id with a new cgroup each time.
pub fn record_key(c: &CgroupContainer) -> String {
    match &c.cgroup.pod_uid {
        Some(uid) => uid.clone(),
        None => format!("{}@{}", c.cgroup.container_id, c.cgroup_id),
    }
}

/// The pod uid a record key names: all of a pod's key, the part before `/` of a container
/// run's (see [`record_key_in`]). A key outside any pod names no pod in the API's view.
pub fn key_pod_uid(key: &str) -> &str {
    key.split_once('/').map_or(key, |(uid, _)| uid)
}

/// Whether `c`'s [`record_key`] is `key`, without building it (asked for every tracked
/// container each time a record may complete).
pub fn is_record_key(c: &CgroupContainer, key: &str) -> bool {
    match &c.cgroup.pod_uid {
        Some(uid) => uid == key,
        None => key
            .strip_prefix(c.cgroup.container_id.as_str())
            .and_then(|rest| rest.strip_prefix('@'))
            .is_some_and(|id| id.parse::<u64>().ok() == Some(c.cgroup_id)),
    }
}

/// The record a finished container goes to, and whether it is the container run's own:
/// a named container of a pod that is not being deleted and is still in the API ended
/// by itself or was killed by kubelet to be restarted, so its run gets a record of its
/// own (`<pod uid>/<container id>`); anything else goes to [`record_key`].
pub fn record_key_in(view: &NodeView, c: &CgroupContainer, sandbox: bool) -> (String, bool) {
    let pod = c.cgroup.pod_uid.as_deref().and_then(|u| view.get(u));
    match pod {
        Some(p) if !sandbox && p.deletion_ns.is_none() && p.removed_ns.is_none() => {
            (format!("{}/{}", p.pod.uid, c.cgroup.container_id), true)
        }
        _ => (record_key(c), false),
    }
}

/// One container's part in a pod termination, as the kernel saw it and the pod spec
/// describes it (boot-clock ns throughout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinedMember {
    pub name: String,
    /// Its preStop hook's kind ("exec", "httpGet", "sleep", "tcpSocket"), if any.
    pub prestop_kind: Option<&'static str>,
    pub sigterm_ns: Option<u64>,
    pub sigkill_ns: Option<u64>,
    pub last_exit_ns: Option<u64>,
    /// The exec preStop hook as the kernel saw it enter the container: its start, and
    /// its end with whether it was killed (cut at the grace period) rather than exiting.
    pub hook_seen: Option<HookSeen>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookSeen {
    pub started_ns: u64,
    pub ended_ns: Option<u64>,
    pub killed: bool,
}

/// How far around the deletion kubelet's exec preStop hook may start: it runs the hook
/// as soon as it sees the deletion, usually within milliseconds.
pub const HOOK_START_WINDOW_NS: (u64, u64) = (500_000_000, 3_000_000_000);

impl JoinedMember {
    pub fn has_prestop(&self) -> bool {
        self.prestop_kind.is_some()
    }
}

/// The kind of a container's preStop hook in the pod's spec.
pub fn prestop_kind(pod: &ApiPodState, container: &str) -> Option<&'static str> {
    let hook = pod
        .pod
        .containers
        .iter()
        .find(|m| m.name == container)?
        .prestop
        .as_ref()?;
    Some(match hook {
        PreStop::Exec(_) => "exec",
        PreStop::HttpGet(_) => "httpGet",
        PreStop::Sleep(_) => "sleep",
        PreStop::TcpSocket => "tcpSocket",
    })
}

/// A pod termination's facts: the API's (grace, deletion, kubelet's Killing, endpoint
/// removal) beside each container's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinedPod {
    pub grace_seconds: i64,
    pub deletion_ns: Option<u64>,
    pub killing_ns: Option<u64>,
    pub endpoint_down_ns: Option<u64>,
    pub members: Vec<JoinedMember>,
}

/// Kubelet never gives the container less than this after preStop.
pub const MIN_GRACE_NS: u64 = 2_000_000_000;

impl JoinedPod {
    pub fn new(pod: &ApiPodState, members: Vec<JoinedMember>) -> Self {
        Self {
            grace_seconds: pod.pod.effective_grace_seconds(),
            deletion_ns: pod.deletion_ns,
            killing_ns: pod.killing_ns,
            endpoint_down_ns: pod.endpoint_down_ns,
            members,
        }
    }

    pub fn first_stop_ns(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.sigterm_ns).min()
    }

    pub fn last_exit_ns(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.last_exit_ns).max()
    }

    /// When kubelet started the hooks: at the deletion it observed, within milliseconds
    /// (its Killing Event carries whole seconds only, so it is the fallback).
    pub fn hooks_start_ns(&self) -> Option<u64> {
        self.deletion_ns.or(self.killing_ns)
    }

    /// Deletion → endpoint leaving its Services.
    pub fn endpoint_lag_ns(&self) -> Option<u64> {
        Some(self.endpoint_down_ns?.saturating_sub(self.deletion_ns?))
    }

    /// Deletion → last exit over the grace period.
    pub fn grace_used_ratio(&self) -> Option<f64> {
        let used = self.last_exit_ns()?.saturating_sub(self.deletion_ns?);
        (self.grace_seconds > 0).then(|| used as f64 / 1e9 / self.grace_seconds as f64)
    }

    /// How long a container's preStop hook held SIGTERM back.
    pub fn prestop_ns(&self, m: &JoinedMember) -> Option<u64> {
        if !m.has_prestop() {
            return None;
        }
        Some(m.sigterm_ns?.saturating_sub(self.hooks_start_ns()?))
    }

    /// SIGTERM reached the pod while its endpoint was still in its Services.
    pub fn sigterm_before_endpoint_removal(&self) -> bool {
        match (self.first_stop_ns(), self.endpoint_down_ns) {
            (Some(term), Some(down)) => term < down,
            _ => false,
        }
    }
}

/// The kernel's timeline of a pod's termination with the API's beside it (from shortly
/// before `since`), and the preStop hooks' start and end as inferred from the deletion
/// and each container's SIGTERM; in time order.
pub fn merge_timeline(
    timeline: &mut Vec<TimelineEntry>,
    pod: Option<&ApiPodState>,
    joined: Option<&JoinedPod>,
    since: u64,
    clock: &Clock,
) {
    if let Some(p) = pod {
        timeline.extend(p.timeline_since(since).cloned());
    }
    if let Some(j) = joined {
        timeline.extend(prestop_entries(j, clock));
    }
    timeline.sort_by_key(|e| e.at_ns);
}

/// preStop start and end: an exec hook's as the kernel saw it enter the container and
/// end, otherwise inferred from the deletion and the container's SIGTERM.
fn prestop_entries(j: &JoinedPod, clock: &Clock) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    let Some(start) = j.hooks_start_ns() else {
        return out;
    };
    for m in &j.members {
        let Some(kind) = m.prestop_kind else { continue };
        let entry = |at_ns: u64, what: &str, detail: String| TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: what.to_string(),
            container: Some(m.name.clone()),
            detail,
            at_ns,
        };
        if let Some(h) = m.hook_seen {
            out.push(entry(
                h.started_ns,
                "prestop_started",
                format!(
                    "preStop exec hook of {} entered the container (kernel)",
                    m.name
                ),
            ));
            if let Some(end) = h.ended_ns {
                let how = if h.killed {
                    "was killed (cut at the grace period)"
                } else {
                    "finished"
                };
                out.push(entry(
                    end,
                    "prestop_finished",
                    format!(
                        "preStop exec hook of {} {how} after {:.3}s (kernel)",
                        m.name,
                        end.saturating_sub(h.started_ns) as f64 / 1e9
                    ),
                ));
            }
            continue;
        }
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
                format!(
                    "preStop {kind} hook of {} finished after {:.3}s (inferred: SIGTERM follows the hook)",
                    m.name,
                    term.saturating_sub(start) as f64 / 1e9
                ),
            ));
        }
    }
    out
}

/// How far past its deadline a terminating pod is, in seconds, once it is stuck: still
/// in the API `margin_ns` after deletion + grace period.
pub fn overdue_seconds(pod: &ApiPodState, now_ns: u64, margin_ns: u64) -> Option<f64> {
    if !pod.is_terminating() {
        return None;
    }
    let deletion = pod.deletion_ns?;
    let grace = pod
        .pod
        .effective_grace_seconds()
        .clamp(0, crate::kube::node::MAX_GRACE_SECONDS) as u64;
    let due = deletion.saturating_add(grace * 1_000_000_000);
    let deadline = due.saturating_add(margin_ns);
    (now_ns > deadline).then(|| (now_ns - due) as f64 / 1e9)
}

/// Why a pod is still Terminating past its deadline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StuckFacts {
    pub overdue_seconds: f64,
    pub finalizers: Vec<String>,
    /// Live processes, as "name (pid N, state S)".
    pub alive: Vec<String>,
    /// Containers the API does not show as terminated.
    pub not_terminated: Vec<String>,
}

impl StuckFacts {
    /// The API's reasons beside the kernel's (`alive`: the pod's live processes).
    pub fn new(pod: &ApiPodState, overdue_seconds: f64, alive: Vec<String>) -> Self {
        Self {
            overdue_seconds,
            finalizers: pod.pod.finalizers.clone(),
            alive,
            not_terminated: pod
                .pod
                .containers
                .iter()
                .filter(|c| c.kind == ApiContainerKind::App && c.terminated.is_none())
                .map(|c| c.name.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::cgroup_path;

    fn container(path: &str, cgroup_id: u64) -> CgroupContainer {
        CgroupContainer {
            cgroup_id,
            cgroup: cgroup_path::parse(path).expect("path"),
            path: path.to_string(),
        }
    }

    #[test]
    fn a_record_key_is_recognised_without_being_built() {
        let id = "a".repeat(64);
        let pod = container(
            &format!("/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666/{id}"),
            7,
        );
        let docker = container(&format!("/docker/{id}"), 9);
        for c in [&pod, &docker] {
            assert!(is_record_key(c, &record_key(c)), "{}", record_key(c));
        }
        assert!(
            !is_record_key(&docker, &format!("{id}@10")),
            "another cgroup"
        );
        assert!(!is_record_key(&docker, &format!("{id}@")));
        assert!(!is_record_key(&docker, &id));
        assert!(!is_record_key(
            &pod,
            "6f1c2d3e-1111-2222-3333-444455556666/x"
        ));
        assert!(!is_record_key(&pod, &record_key(&docker)));
        // Every key names its pod, a run's key too; a lone container's names none.
        let uid = "6f1c2d3e-1111-2222-3333-444455556666";
        assert_eq!(key_pod_uid(&record_key(&pod)), uid);
        assert_eq!(key_pod_uid(&format!("{uid}/{id}")), uid);
        assert_eq!(key_pod_uid(&record_key(&docker)), format!("{id}@9"));
    }
}
