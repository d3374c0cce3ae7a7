//! The API's view of this node: each pod's latest model, when its deletion and endpoint
//! changes were observed, kubelet's Events about it, and the secondary indexes (container
//! id → pod and container name, pod IP → pod). Fed by the watchers' [`KubeUpdate`]s;
//! recently removed pods stay for a while so late kernel events still resolve.
//!
//! Every rule here is a function of the update and of the time passed in (the watch
//! arrival time, boot clock), so each has a unit test.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use time::OffsetDateTime;

use super::{
    model::ApiPod,
    watch::{EndpointState, KubeUpdate},
};
use crate::{
    clock::Clock,
    report::{StopCause, TimelineEntry},
};

/// Grace periods beyond this (about 115 days) are treated as this, so time arithmetic
/// cannot overflow on a hostile value.
pub const MAX_GRACE_SECONDS: i64 = 10_000_000;

/// Removed pods kept for late events and `/debug`.
const REMOVED_KEPT: usize = 512;

/// API timeline entries kept per pod (endpoint flaps and Events over a long life).
const MAX_POD_TIMELINE: usize = 256;

/// One pod of this node as the API shows it, with the times the agent observed changes.
#[derive(Debug)]
pub struct ApiPodState {
    pub pod: Arc<ApiPod>,
    /// Boot-clock time the deletion was first observed (watch arrival), or derived from
    /// the API's deletionTimestamp when the agent started after the deletion.
    pub deletion_ns: Option<u64>,
    /// The deletion happened before the agent saw this pod: times come from the API
    /// (second precision) and kernel events before the agent started are unknown.
    pub deleted_before_agent: bool,
    pub removed_ns: Option<u64>,
    /// First time an endpoint of the pod left its Services (terminating, or removed).
    pub endpoint_down_ns: Option<u64>,
    endpoints: HashMap<String, EndpointState>,
    /// Earliest kubelet `Killing` Event.
    pub killing_ns: Option<u64>,
    timeline: VecDeque<TimelineEntry>,
    /// Container ids (or names, for a status without ids) whose end the status has
    /// shown, with when it was first seen (boot clock).
    terminated_seen: HashMap<String, u64>,
    /// Container id → its container's name and the `restartCount` the status showed
    /// while that run was current.
    run_restart_counts: HashMap<String, (String, i32)>,
    /// Per container, the waiting reason and restart count last put on the timeline.
    waiting_seen: HashMap<String, String>,
    /// Why the pod's owner stopped it, once read (see `owners`).
    pub owner_verdict: Option<OwnerVerdict>,
    /// The pod left the API while the pods watch was down (the API server unreachable):
    /// from when the watch failed to the relist that found it gone. Its removal, and its
    /// deletion unless `deletion_ns` was seen before, happened in between, unobserved.
    pub gone_unseen: Option<(u64, u64)>,
}

/// What the pod's owners said about its deletion: the cause and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerVerdict {
    pub cause: StopCause,
    pub evidence: String,
}

impl ApiPodState {
    fn new(pod: Arc<ApiPod>) -> Self {
        Self {
            pod,
            deletion_ns: None,
            deleted_before_agent: false,
            removed_ns: None,
            endpoint_down_ns: None,
            endpoints: HashMap::new(),
            killing_ns: None,
            timeline: VecDeque::new(),
            terminated_seen: HashMap::new(),
            waiting_seen: HashMap::new(),
            run_restart_counts: HashMap::new(),
            owner_verdict: None,
            gone_unseen: None,
        }
    }

    /// The container's `restartCount` after run `id`: what the status showed while the
    /// run was current, one more once kubelet has started the next run (`restarted`).
    pub fn restart_count_after(&self, id: &str, restarted: bool) -> Option<i32> {
        self.run_restart_counts
            .get(id)
            .map(|(_, n)| n + i32::from(restarted))
    }

    /// When the API's status first showed container run `id` ended (its own state
    /// terminated, or a later run's `lastState`).
    pub fn ended_seen_ns(&self, id: &str) -> Option<u64> {
        self.terminated_seen.get(id).copied()
    }

    fn note(&mut self, clock: &Clock, at_ns: u64, what: &str, detail: String) {
        self.note_about(clock, at_ns, what, None, detail);
    }

    fn note_about(
        &mut self,
        clock: &Clock,
        at_ns: u64,
        what: &str,
        container: Option<String>,
        detail: String,
    ) {
        if self.timeline.len() >= MAX_POD_TIMELINE {
            // The oldest entries matter least: the termination is at the end.
            self.timeline.pop_front();
        }
        self.timeline.push_back(TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: what.to_string(),
            container,
            detail,
            at_ns,
        });
    }

    /// Entries between `from` and `to` (inclusive), pod-level or about `container`.
    pub fn timeline_between<'a>(
        &'a self,
        from: u64,
        to: u64,
        container: &'a str,
    ) -> impl Iterator<Item = &'a TimelineEntry> {
        self.timeline.iter().filter(move |e| {
            e.at_ns >= from
                && e.at_ns <= to
                && e.container.as_deref().is_none_or(|c| c == container)
        })
    }

    /// Entries from shortly before `start` on: what a record starting then should show.
    pub fn timeline_since(&self, start: u64) -> impl Iterator<Item = &TimelineEntry> {
        self.timeline
            .iter()
            .filter(move |e| e.at_ns.saturating_add(1_000_000_000) >= start)
    }

    /// Being deleted and still in the API.
    pub fn is_terminating(&self) -> bool {
        self.deletion_ns.is_some() && self.removed_ns.is_none()
    }
}

/// What an update changed that the termination side must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum PodChange {
    None,
    /// Names or labels of this pod's containers may have changed.
    Updated(String),
    /// Deletion first observed.
    Deleting(String),
    /// The pod left the API.
    Removed(String),
}

/// Whether an endpoint change means the pod left its Service: marked terminating (only
/// a deletion does that), or removed from its slice once the pod is being deleted. A
/// slice reshuffle or a readiness flap before deletion is not it.
pub fn endpoint_left(
    before: Option<EndpointState>,
    now: Option<EndpointState>,
    deleting: bool,
) -> bool {
    match now {
        Some(s) => s.terminating && !before.is_some_and(|b| b.terminating),
        None => before.is_some() && deleting,
    }
}

/// When the pod's deletion was requested, and whether that is the API's (second
/// precision) time rather than the watch arrival: a pod first seen already deleting was
/// deleted before the agent started. deletionTimestamp is when the grace period ends;
/// the request was grace seconds earlier.
pub fn deletion_requested_ns(
    deadline: OffsetDateTime,
    grace_seconds: i64,
    first_sight: bool,
    arrival_ns: u64,
    clock: &Clock,
) -> (u64, bool) {
    if !first_sight {
        return (arrival_ns, false);
    }
    let requested = deadline
        .checked_sub(time::Duration::seconds(
            grace_seconds.clamp(0, MAX_GRACE_SECONDS),
        ))
        .unwrap_or(deadline);
    (clock.boot_ns(requested), true)
}

/// A kubelet Event's time: its own when it has sub-second precision (an events.k8s.io
/// eventTime), else the watch arrival, which is closer than a whole second.
pub fn event_time_ns(api_time: Option<OffsetDateTime>, arrival_ns: u64, clock: &Clock) -> u64 {
    api_time
        .filter(|t| t.nanosecond() != 0)
        .map(|t| clock.boot_ns(t))
        .unwrap_or(arrival_ns)
}

/// The API's view of this node's pods.
#[derive(Default)]
pub struct NodeView {
    by_uid: HashMap<String, ApiPodState>,
    /// Container id → (pod uid, container name).
    by_container: HashMap<String, (String, String)>,
    /// Pod IP → pod uid.
    by_ip: HashMap<String, String>,
    removed: VecDeque<String>,
    /// Since when the pods watch has been failing (boot clock), until it works again.
    down_since: Option<u64>,
}

impl NodeView {
    /// Since when the pods watch has been down (the API server unreachable, or the watch
    /// failing): what the API says about this node's pods is not seen until it is back.
    pub fn api_down_since(&self) -> Option<u64> {
        self.down_since
    }

    pub fn get(&self, uid: &str) -> Option<&ApiPodState> {
        self.by_uid.get(uid)
    }

    /// Pod uid and container name of a container id.
    pub fn container(&self, id: &str) -> Option<(&str, &str)> {
        self.by_container
            .get(id)
            .map(|(uid, name)| (uid.as_str(), name.as_str()))
    }

    pub fn by_ip(&self, ip: &str) -> Option<&ApiPodState> {
        self.by_ip.get(ip).and_then(|uid| self.by_uid.get(uid))
    }

    /// Pods being deleted and still in the API.
    pub fn terminating(&self) -> impl Iterator<Item = &ApiPodState> {
        self.by_uid.values().filter(|p| p.is_terminating())
    }

    pub fn apply(&mut self, update: KubeUpdate, clock: &Clock) -> Vec<PodChange> {
        match update {
            KubeUpdate::Pod { pod, at_ns } => vec![self.pod(pod, at_ns, clock)],
            KubeUpdate::PodRemoved { uid, at_ns } => {
                vec![self.remove(&uid, at_ns, clock, "pod removed from the API")]
            }
            KubeUpdate::PodsWatch { up, at_ns } => {
                // Back without a relist: the watch replays what changed meanwhile.
                self.down_since = match (up, self.down_since) {
                    (true, _) => None,
                    (false, since) => since.or(Some(at_ns)),
                };
                vec![PodChange::None]
            }
            KubeUpdate::PodsListed { uids, at_ns } => {
                let outage = self.down_since.take().map(|from| (from, at_ns));
                let why = match outage {
                    Some((from, _)) => format!(
                        "pod gone from the API at the relist after the pods watch was down since {} (API server unreachable): it was removed in between, when is not known; its deletion and removal were not observed",
                        clock.rfc3339(from)
                    ),
                    None => {
                        "pod gone from the API (removed while the watch was reconnecting)".into()
                    }
                };
                let gone: Vec<String> = self
                    .by_uid
                    .iter()
                    .filter(|(uid, p)| p.removed_ns.is_none() && !uids.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                gone.iter()
                    .map(|uid| {
                        if let Some(p) = self.by_uid.get_mut(uid) {
                            p.gone_unseen = outage;
                        }
                        self.remove(uid, at_ns, clock, &why)
                    })
                    .collect()
            }
            KubeUpdate::Endpoint {
                pod_uid,
                slice,
                service,
                state,
                at_ns,
            } => {
                if let Some(p) = self.by_uid.get_mut(&pod_uid) {
                    endpoint(p, &slice, &service, state, at_ns, clock);
                }
                vec![PodChange::None]
            }
            KubeUpdate::Owner { pod_uid, verdict } => {
                // Its evidence goes on the record's timeline as its `cause` entry.
                if let Some(p) = self.by_uid.get_mut(&pod_uid) {
                    p.owner_verdict = Some(verdict);
                }
                vec![PodChange::None]
            }
            KubeUpdate::KubeletEvent {
                pod_uid,
                container,
                reason,
                message,
                time,
                listed,
                at_ns,
            } => {
                let Some(p) = self.by_uid.get_mut(&pod_uid) else {
                    return vec![PodChange::None];
                };
                // An Event listed when its watch started happened before the arrival:
                // its own time, however coarse, is closer.
                let at = match (listed, time) {
                    (true, Some(t)) => clock.boot_ns(t).min(at_ns),
                    _ => event_time_ns(time, at_ns, clock),
                };
                if reason == "Killing" && p.deletion_ns.is_some() {
                    p.killing_ns = Some(p.killing_ns.map_or(at, |k| k.min(at)));
                }
                let api_time = time
                    .map(crate::clock::rfc3339)
                    .unwrap_or_else(|| "-".into());
                p.note_about(
                    clock,
                    at,
                    &format!("event_{}", reason.to_ascii_lowercase()),
                    container,
                    if listed {
                        format!("kubelet Event {reason}: {message} (API time {api_time}, listed when its watch started)")
                    } else {
                        format!("kubelet Event {reason}: {message} (API time {api_time})")
                    },
                );
                vec![PodChange::None]
            }
        }
    }

    fn pod(&mut self, pod: Arc<ApiPod>, at_ns: u64, clock: &Clock) -> PodChange {
        // Ids and IPs the pod no longer has (restarts, new IPs) leave the indexes.
        // A restarted container's previous id stays in `lastState`, so the exit of the
        // run it names still resolves to the container, never to the sandbox.
        if let Some(old) = self.by_uid.get(&pod.uid).map(|p| p.pod.clone()) {
            for (id, _) in old.container_ids() {
                if pod.container_by_id(id).is_none() {
                    self.by_container.remove(id);
                }
            }
            for ip in old.ips.iter().filter(|ip| !pod.ips.contains(ip)) {
                if self.by_ip.get(ip) == Some(&pod.uid) {
                    self.by_ip.remove(ip);
                }
            }
        }
        for (id, c) in pod.container_ids() {
            self.by_container
                .insert(id.to_string(), (pod.uid.clone(), c.name.clone()));
        }
        for ip in &pod.ips {
            self.by_ip.insert(ip.clone(), pod.uid.clone());
        }
        let uid = pod.uid.clone();
        let first_sight = !self.by_uid.contains_key(&uid);
        let p = self
            .by_uid
            .entry(uid.clone())
            .or_insert_with(|| ApiPodState::new(pod.clone()));
        p.pod = pod.clone();
        for c in &pod.containers {
            if let Some(id) = &c.container_id {
                p.run_restart_counts
                    .insert(id.clone(), (c.name.clone(), c.restart_count));
            }
            let runs = [(&c.terminated, false), (&c.last_terminated, true)];
            for (t, restarted) in runs {
                let Some(t) = t else { continue };
                let id = t
                    .container_id
                    .clone()
                    .or_else(|| c.container_id.clone().filter(|_| !restarted))
                    .unwrap_or_else(|| c.name.clone());
                if p.terminated_seen.contains_key(&id) {
                    continue;
                }
                p.terminated_seen.insert(id.clone(), at_ns);
                let signal = t
                    .signal
                    .map(|s| format!(", signal {s}"))
                    .unwrap_or_default();
                let reason = t.reason.as_deref().unwrap_or("-");
                let (what, detail) = if restarted {
                    let short: String = id.chars().take(12).collect();
                    (
                        "restarted_status",
                        format!(
                            "API: container {}'s previous run {short} terminated, exitCode {}{signal}, reason {reason} (restartCount {}) (watch)",
                            c.name, t.exit_code, c.restart_count
                        ),
                    )
                } else {
                    (
                        "terminated_status",
                        format!(
                            "API: container {} terminated, exitCode {}{signal}, reason {reason} (watch)",
                            c.name, t.exit_code
                        ),
                    )
                };
                p.note_about(clock, at_ns, what, Some(c.name.clone()), detail);
            }
            // A status can skip a run's end (a quick restart, a watch that relisted): a
            // later run being current shows the earlier ones ended.
            if let Some(id) = &c.container_id {
                let skipped: Vec<String> = p
                    .run_restart_counts
                    .iter()
                    .filter(|(other, (name, n))| {
                        *other != id && *name == c.name && *n < c.restart_count
                    })
                    .map(|(other, _)| other.clone())
                    .filter(|other| !p.terminated_seen.contains_key(other))
                    .collect();
                for other in skipped {
                    p.terminated_seen.insert(other, at_ns);
                }
            }
            if let Some((reason, message)) = &c.waiting {
                let key = format!("{reason}:{}", c.restart_count);
                let fresh = p.waiting_seen.get(&c.name) != Some(&key);
                if !reason.is_empty() && reason != "ContainerCreating" && fresh {
                    p.waiting_seen.insert(c.name.clone(), key);
                    p.note_about(
                        clock,
                        at_ns,
                        "waiting_status",
                        Some(c.name.clone()),
                        format!(
                            "API: container {} waiting, reason {reason}: {message} (watch)",
                            c.name
                        ),
                    );
                }
            }
        }
        // Only ids the status still names are kept (a crash loop makes new ones).
        if p.terminated_seen.len() > 64 || p.run_restart_counts.len() > 64 {
            let named: HashSet<&str> = pod.container_ids().map(|(id, _)| id).collect();
            p.terminated_seen.retain(|k, _| named.contains(k.as_str()));
            p.run_restart_counts
                .retain(|k, _| named.contains(k.as_str()));
        }
        let (Some(deadline), None) = (pod.deletion_timestamp, p.deletion_ns) else {
            return PodChange::Updated(uid);
        };
        let grace = pod.effective_grace_seconds();
        // First seen deleting in the relist after an outage: deleted while the API
        // server was unreachable, at the time the API gives (not the arrival), and
        // not before the watch went down.
        let outage = self.down_since.filter(|_| !first_sight);
        let from_api = first_sight || outage.is_some();
        let (at, _) = deletion_requested_ns(deadline, grace, from_api, at_ns, clock);
        let at = outage.map_or(at, |from| at.max(from).min(at_ns));
        p.deletion_ns = Some(at);
        p.deleted_before_agent = first_sight;
        let how = match (first_sight, outage) {
            (true, _) => "before the agent started; time from the API, whole seconds",
            (false, Some(_)) => "while the API server was unreachable, seen at the relist; time from the API, whole seconds",
            (false, None) => "watch",
        };
        let finalizers = if pod.finalizers.is_empty() {
            String::new()
        } else {
            format!(", finalizers {}", pod.finalizers.join(","))
        };
        p.note(
            clock,
            at,
            "deletion_requested",
            format!(
                "pod deleted: deletionTimestamp {}, grace period {grace}s{finalizers} ({how})",
                crate::clock::rfc3339(deadline)
            ),
        );
        PodChange::Deleting(uid)
    }

    fn remove(&mut self, uid: &str, at_ns: u64, clock: &Clock, why: &str) -> PodChange {
        let Some(p) = self.by_uid.get_mut(uid) else {
            return PodChange::None;
        };
        if p.removed_ns.is_some() {
            return PodChange::None;
        }
        p.removed_ns = Some(at_ns);
        p.note(clock, at_ns, "pod_removed", format!("{why} (watch)"));
        self.removed.push_back(uid.to_string());
        while self.removed.len() > REMOVED_KEPT {
            if let Some(old) = self.removed.pop_front() {
                self.forget(&old);
            }
        }
        PodChange::Removed(uid.to_string())
    }

    fn forget(&mut self, uid: &str) {
        if let Some(p) = self.by_uid.remove(uid) {
            for (id, _) in p.pod.container_ids() {
                self.by_container.remove(id);
            }
            for ip in &p.pod.ips {
                if self.by_ip.get(ip).map(String::as_str) == Some(uid) {
                    self.by_ip.remove(ip);
                }
            }
        }
    }
}

/// An endpoint of `p` changed in one slice.
fn endpoint(
    p: &mut ApiPodState,
    slice: &str,
    service: &str,
    state: Option<EndpointState>,
    at_ns: u64,
    clock: &Clock,
) {
    let before = match state {
        Some(s) => p.endpoints.insert(slice.to_string(), s),
        None => p.endpoints.remove(slice),
    };
    let deleting = p.deletion_ns.is_some();
    let left = endpoint_left(before, state, deleting);
    // An endpoint back in service before any deletion resets the latch.
    if matches!(state, Some(s) if s.ready && !s.terminating) && !deleting {
        p.endpoint_down_ns = None;
    }
    if left && p.endpoint_down_ns.is_none() {
        p.endpoint_down_ns = Some(at_ns);
    }
    let (what, detail) = match state {
        Some(s) => (
            if left {
                "endpoint_terminating"
            } else {
                "endpoint_changed"
            },
            format!(
                "endpoint in EndpointSlice {slice} (service {service}): ready={} serving={} terminating={}",
                s.ready, s.serving, s.terminating
            ),
        ),
        None => (
            "endpoint_removed",
            format!("endpoint removed from EndpointSlice {slice} (service {service})"),
        ),
    };
    p.note(clock, at_ns, what, format!("{detail} (watch)"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ep(ready: bool, terminating: bool) -> Option<EndpointState> {
        Some(EndpointState {
            ready,
            serving: ready || terminating,
            terminating,
        })
    }

    #[test]
    fn when_an_endpoint_has_left_its_service() {
        // (before, now, pod deleting) → left
        let cases = [
            (ep(true, false), ep(false, true), false, true),
            (ep(true, false), ep(false, true), true, true),
            // Already terminating: not a second departure.
            (ep(false, true), ep(false, true), true, false),
            // A readiness flap is not a departure.
            (ep(true, false), ep(false, false), false, false),
            (ep(true, false), ep(false, false), true, false),
            // Removed from the slice: leaving only while the pod is being deleted.
            (ep(true, false), None, true, true),
            (ep(true, false), None, false, false),
            (None, None, true, false),
            // First seen already terminating (the agent started late).
            (None, ep(false, true), true, true),
        ];
        for (i, (before, now, deleting, want)) in cases.into_iter().enumerate() {
            assert_eq!(endpoint_left(before, now, deleting), want, "case {i}");
        }
    }

    #[test]
    fn deletion_time_is_the_watch_arrival_unless_it_happened_before_the_agent() {
        let clock = Clock::with_offset_ns(1_700_000_000 * S as i128);
        let deadline = OffsetDateTime::from_unix_timestamp(1_700_000_100).expect("time");
        // Seen live: the arrival time, whatever the API says.
        assert_eq!(
            deletion_requested_ns(deadline, 30, false, 42 * S, &clock),
            (42 * S, false)
        );
        // Deleted before the agent started: deadline − grace, in boot-clock time.
        assert_eq!(
            deletion_requested_ns(deadline, 30, true, 500 * S, &clock),
            (70 * S, true)
        );
        // Hostile grace values cannot overflow.
        let (at, before) = deletion_requested_ns(deadline, i64::MAX, true, 500 * S, &clock);
        assert!(before);
        assert_eq!(at, 0, "a time before boot is clamped to 0");
        assert_eq!(
            deletion_requested_ns(deadline, -5, true, 500 * S, &clock),
            (100 * S, true)
        );
    }

    #[test]
    fn event_times_with_whole_seconds_yield_to_the_arrival() {
        let clock = Clock::with_offset_ns(0);
        let whole = OffsetDateTime::from_unix_timestamp(10).expect("time");
        let precise = whole + time::Duration::milliseconds(250);
        assert_eq!(event_time_ns(Some(whole), 11 * S, &clock), 11 * S);
        assert_eq!(event_time_ns(Some(precise), 11 * S, &clock), 10 * S + S / 4);
        assert_eq!(event_time_ns(None, 11 * S, &clock), 11 * S);
    }

    fn pod(deleting: bool) -> Arc<ApiPod> {
        Arc::new(crate::kube::model::sample_pod("u1", "c1", deleting))
    }

    /// `pod(false)` with its container's run `id` current after `count` restarts and the
    /// run `last` (exit code 137) in `lastState`, delivered at `at_ns`.
    fn rerun(id: &str, count: i32, last: &str, at_ns: u64) -> KubeUpdate {
        let mut p = (*pod(false)).clone();
        p.containers[0].container_id = Some(id.into());
        p.containers[0].restart_count = count;
        p.containers[0].last_terminated = Some(crate::kube::model::ApiTerminated {
            exit_code: 137,
            reason: Some("Error".into()),
            container_id: Some(last.into()),
            ..Default::default()
        });
        KubeUpdate::Pod {
            pod: Arc::new(p),
            at_ns,
        }
    }

    #[test]
    fn a_pod_through_deletion_and_removal() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        let up = |at_ns| KubeUpdate::Pod {
            pod: pod(false),
            at_ns,
        };
        assert_eq!(v.apply(up(S), &clock), [PodChange::Updated("u1".into())]);
        assert_eq!(v.container("c1"), Some(("u1", "app")));
        assert_eq!(
            v.by_ip("10.1.0.7").map(|p| p.pod.name.as_str()),
            Some("web-1")
        );
        let deleted = KubeUpdate::Pod {
            pod: pod(true),
            at_ns: 5 * S,
        };
        assert_eq!(v.apply(deleted, &clock), [PodChange::Deleting("u1".into())]);
        let p = v.get("u1").expect("pod");
        assert_eq!(
            (p.deletion_ns, p.deleted_before_agent),
            (Some(5 * S), false)
        );
        assert_eq!(v.terminating().count(), 1);
        let gone = KubeUpdate::PodRemoved {
            uid: "u1".into(),
            at_ns: 9 * S,
        };
        assert_eq!(v.apply(gone, &clock), [PodChange::Removed("u1".into())]);
        assert_eq!(v.terminating().count(), 0);
        let whats: Vec<&str> = v
            .get("u1")
            .expect("kept after removal")
            .timeline_since(0)
            .map(|e| e.what.as_str())
            .collect();
        assert_eq!(whats, ["deletion_requested", "pod_removed"]);
    }

    #[test]
    fn a_restarted_containers_old_id_still_names_it() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        v.apply(
            KubeUpdate::Pod {
                pod: pod(false),
                at_ns: S,
            },
            &clock,
        );
        v.apply(rerun("c2", 1, "c1", 2 * S), &clock);
        assert_eq!(v.container("c1"), Some(("u1", "app")), "the old run");
        assert_eq!(v.container("c2"), Some(("u1", "app")), "the new run");
        let p = v.get("u1").expect("pod");
        assert_eq!(p.ended_seen_ns("c1"), Some(2 * S));
        let entry = p
            .timeline_since(0)
            .find(|e| e.what == "restarted_status")
            .expect("restart on the timeline");
        assert_eq!(entry.container.as_deref(), Some("app"));
        assert!(
            entry.detail.contains(
                "API: container app's previous run c1 terminated, exitCode 137, reason Error (restartCount 1)"
            ),
            "{}",
            entry.detail
        );
        // Two quick restarts more; the watch shows only the last: c4 current, c3 in
        // lastState. c2 ended too: a later run is current.
        v.apply(rerun("c4", 3, "c3", 4 * S), &clock);
        let p = v.get("u1").expect("pod");
        assert_eq!(p.ended_seen_ns("c2"), Some(4 * S), "c2 ran before c4");
        assert_eq!(p.ended_seen_ns("c3"), Some(4 * S));
        assert_eq!(p.ended_seen_ns("c4"), None, "still running");
        // Only the runs the status named are on the timeline.
        let ends = p
            .timeline_since(0)
            .filter(|e| e.what == "restarted_status")
            .count();
        assert_eq!(ends, 2);
    }

    #[test]
    fn an_outage_ends_with_the_relist_and_says_what_was_not_observed() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        let other = |deleting: bool| {
            let mut p = (*pod(deleting)).clone();
            p.uid = "u2".into();
            p.ips = vec!["10.1.0.8".into()];
            p.containers[0].container_id = Some("c2".into());
            Arc::new(p)
        };
        for p in [pod(false), other(false)] {
            v.apply(KubeUpdate::Pod { pod: p, at_ns: S }, &clock);
        }
        for at in [10, 20] {
            let down = KubeUpdate::PodsWatch {
                up: false,
                at_ns: at * S,
            };
            assert_eq!(v.apply(down, &clock), [PodChange::None]);
        }
        assert_eq!(v.api_down_since(), Some(10 * S), "from the first failure");
        // The relist: u2 is being deleted (requested at 100 s by the API's time, not at
        // the arrival), u1 is gone.
        let relisted = KubeUpdate::Pod {
            pod: other(true),
            at_ns: 200 * S,
        };
        assert_eq!(
            v.apply(relisted, &clock),
            [PodChange::Deleting("u2".into())]
        );
        let u2 = v.get("u2").expect("u2");
        assert_eq!(u2.deletion_ns, Some(100 * S));
        assert!(!u2.deleted_before_agent);
        let entry = u2
            .timeline_since(0)
            .find(|e| e.what == "deletion_requested")
            .expect("deletion");
        assert!(
            entry
                .detail
                .contains("while the API server was unreachable"),
            "{}",
            entry.detail
        );
        let listed = KubeUpdate::PodsListed {
            uids: HashSet::from(["u2".to_string()]),
            at_ns: 200 * S,
        };
        assert_eq!(v.apply(listed, &clock), [PodChange::Removed("u1".into())]);
        assert_eq!(v.api_down_since(), None, "the relist ends it");
        let u1 = v.get("u1").expect("u1 kept a while");
        assert_eq!(u1.gone_unseen, Some((10 * S, 200 * S)));
        assert_eq!(u1.deletion_ns, None, "no deletion time invented");
        let removed = u1
            .timeline_since(0)
            .find(|e| e.what == "pod_removed")
            .expect("removal");
        assert!(
            removed.detail.contains("were not observed"),
            "{}",
            removed.detail
        );
        assert_eq!(v.get("u2").and_then(|p| p.gone_unseen), None);
        // A watch that resumes without a relist ends it too.
        v.apply(
            KubeUpdate::PodsWatch {
                up: false,
                at_ns: 300 * S,
            },
            &clock,
        );
        v.apply(
            KubeUpdate::PodsWatch {
                up: true,
                at_ns: 301 * S,
            },
            &clock,
        );
        assert_eq!(v.api_down_since(), None);
    }

    #[test]
    fn a_relist_without_the_pod_removes_it() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        v.apply(
            KubeUpdate::Pod {
                pod: pod(true),
                at_ns: S,
            },
            &clock,
        );
        let listed = KubeUpdate::PodsListed {
            uids: HashSet::new(),
            at_ns: 2 * S,
        };
        assert_eq!(v.apply(listed, &clock), [PodChange::Removed("u1".into())]);
        assert_eq!(v.get("u1").and_then(|p| p.removed_ns), Some(2 * S));
    }

    #[test]
    fn endpoint_flaps_do_not_grow_memory() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        v.apply(
            KubeUpdate::Pod {
                pod: pod(false),
                at_ns: S,
            },
            &clock,
        );
        for i in 0..10_000u64 {
            v.apply(
                KubeUpdate::Endpoint {
                    pod_uid: "u1".into(),
                    slice: "shop/web-abc".into(),
                    service: "web".into(),
                    state: ep(i % 2 == 0, false),
                    at_ns: S + i,
                },
                &clock,
            );
        }
        let p = v.get("u1").expect("pod");
        assert_eq!(p.timeline_since(0).count(), MAX_POD_TIMELINE);
        assert_eq!(
            p.endpoint_down_ns, None,
            "flaps before deletion are not removal"
        );
    }

    #[test]
    fn the_first_departure_after_deletion_is_the_removal_time() {
        let clock = Clock::with_offset_ns(0);
        let mut v = NodeView::default();
        let endpoint = |state, at_ns| KubeUpdate::Endpoint {
            pod_uid: "u1".into(),
            slice: "shop/web-abc".into(),
            service: "web".into(),
            state,
            at_ns,
        };
        v.apply(
            KubeUpdate::Pod {
                pod: pod(false),
                at_ns: S,
            },
            &clock,
        );
        v.apply(endpoint(ep(true, false), S), &clock);
        v.apply(
            KubeUpdate::Pod {
                pod: pod(true),
                at_ns: 2 * S,
            },
            &clock,
        );
        v.apply(endpoint(ep(false, true), 3 * S), &clock);
        v.apply(endpoint(None, 4 * S), &clock);
        let p = v.get("u1").expect("pod");
        assert_eq!(p.endpoint_down_ns, Some(3 * S));
        let whats: Vec<&str> = p.timeline_since(0).map(|e| e.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "endpoint_changed",
                "deletion_requested",
                "endpoint_terminating",
                "endpoint_removed"
            ]
        );
    }
}
