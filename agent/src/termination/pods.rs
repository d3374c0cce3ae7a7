//! The API's side of each pod on this node, as the tracker keeps it: the latest model,
//! when deletion and endpoint changes were observed, kubelet Events, and the secondary
//! indexes (container id → pod and container name, pod IP → pod). Recently removed pods
//! stay for a while so late kernel events still resolve.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use super::model::TimelineEntry;
use crate::{
    clock::Clock,
    kube::{EndpointState, KubeUpdate, PodInfo},
};

/// Grace periods beyond this (about 115 days) are treated as this, so time arithmetic
/// cannot overflow on a hostile value.
pub const MAX_GRACE_SECONDS: i64 = 10_000_000;

/// Removed pods kept for late events and `/debug`.
const REMOVED_KEPT: usize = 512;

#[derive(Debug)]
pub struct PodState {
    pub info: Arc<PodInfo>,
    /// Boot-clock time the deletion was first observed (watch arrival), or derived from
    /// the API's deletionTimestamp when the agent started after the deletion.
    pub deletion_ns: Option<u64>,
    /// The deletion happened before the agent saw this pod: times come from the API
    /// (second precision) and kernel events before the agent started are unknown.
    pub deleted_before_agent: bool,
    pub removed_ns: Option<u64>,
    /// First time an endpoint of the pod left its Service (terminating, or removed).
    pub endpoint_down_ns: Option<u64>,
    pub endpoints: HashMap<String, EndpointState>,
    pub killing_ns: Option<u64>,
    pub timeline: Vec<TimelineEntry>,
    terminated_seen: HashSet<String>,
}

/// API timeline entries kept per pod (endpoint flaps and Events over a long life).
const MAX_POD_TIMELINE: usize = 256;

impl PodState {
    fn note(&mut self, e: TimelineEntry) {
        if self.timeline.len() >= MAX_POD_TIMELINE {
            // The oldest entries matter least: the termination is at the end.
            self.timeline.remove(0);
        }
        self.timeline.push(e);
    }

    /// Entries from shortly before `start` on: what a record starting then should show.
    pub fn timeline_since(&self, start: u64) -> impl Iterator<Item = &TimelineEntry> {
        self.timeline
            .iter()
            .filter(move |e| e.at_ns.saturating_add(1_000_000_000) >= start)
    }
}

#[derive(Default)]
pub struct PodIndex {
    pub by_uid: HashMap<String, PodState>,
    by_container: HashMap<String, (String, String)>,
    by_ip: HashMap<String, String>,
    removed: VecDeque<String>,
}

/// What an update changed that the tracker must act on.
pub enum PodChange {
    None,
    /// Labels of this pod's containers may have changed.
    Updated(String),
    /// Deletion first observed.
    Deleting(String),
    /// The pod left the API.
    Removed(String),
}

fn entry(
    clock: &Clock,
    at_ns: u64,
    what: &str,
    container: Option<String>,
    detail: String,
) -> TimelineEntry {
    TimelineEntry {
        at: clock.rfc3339(at_ns),
        what: what.to_string(),
        container,
        detail,
        at_ns,
    }
}

impl PodIndex {
    pub fn get(&self, uid: &str) -> Option<&PodState> {
        self.by_uid.get(uid)
    }

    /// Pod uid and container name of a container id.
    pub fn container(&self, id: &str) -> Option<&(String, String)> {
        self.by_container.get(id)
    }

    pub fn by_ip(&self, ip: &str) -> Option<&PodState> {
        self.by_ip.get(ip).and_then(|uid| self.by_uid.get(uid))
    }

    pub fn apply(&mut self, update: KubeUpdate, clock: &Clock) -> Vec<PodChange> {
        match update {
            KubeUpdate::Pod { pod, at_ns } => vec![self.pod(pod, at_ns, clock)],
            KubeUpdate::PodRemoved { uid, at_ns } => {
                vec![self.remove(&uid, at_ns, clock, "pod removed from the API")]
            }
            KubeUpdate::PodsListed { uids, at_ns } => {
                let gone: Vec<String> = self
                    .by_uid
                    .iter()
                    .filter(|(uid, p)| p.removed_ns.is_none() && !uids.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                gone.iter()
                    .map(|uid| {
                        self.remove(
                            uid,
                            at_ns,
                            clock,
                            "pod gone from the API (removed while the watch was reconnecting)",
                        )
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
                let Some(p) = self.by_uid.get_mut(&pod_uid) else {
                    return vec![PodChange::None];
                };
                let prev = p.endpoints.get(&slice).copied();
                let detail = match state {
                    Some(s) => {
                        p.endpoints.insert(slice.clone(), s);
                        format!(
                            "endpoint in EndpointSlice {slice} (service {service}): ready={} serving={} terminating={}",
                            s.ready, s.serving, s.terminating
                        )
                    }
                    None => {
                        p.endpoints.remove(&slice);
                        format!("endpoint removed from EndpointSlice {slice} (service {service})")
                    }
                };
                // Leaving the Service: marked terminating (only deletion does that), or
                // removed once the pod is being deleted. A slice reshuffle or readiness
                // flap before deletion is not it, and an endpoint back in service resets.
                let left = match state {
                    Some(s) => s.terminating && !prev.is_some_and(|p| p.terminating),
                    None => prev.is_some() && p.deletion_ns.is_some(),
                };
                if matches!(state, Some(s) if s.ready && !s.terminating) && p.deletion_ns.is_none()
                {
                    p.endpoint_down_ns = None;
                }
                let what = match (left, state) {
                    (true, Some(_)) => "endpoint_terminating",
                    (_, None) => "endpoint_removed",
                    (false, Some(_)) => "endpoint_changed",
                };
                if left && p.endpoint_down_ns.is_none() {
                    p.endpoint_down_ns = Some(at_ns);
                }
                p.timeline
                    .push(entry(clock, at_ns, what, None, format!("{detail} (watch)")));
                vec![PodChange::None]
            }
            KubeUpdate::KubeletEvent {
                pod_uid,
                reason,
                message,
                time,
                at_ns,
            } => {
                let Some(p) = self.by_uid.get_mut(&pod_uid) else {
                    return vec![PodChange::None];
                };
                // An event time with sub-second precision is better than our arrival time.
                let at = time
                    .filter(|t| t.nanosecond() != 0)
                    .map(|t| clock.boot_ns(t))
                    .unwrap_or(at_ns);
                if reason == "Killing" {
                    p.killing_ns = Some(p.killing_ns.map_or(at, |k| k.min(at)));
                }
                let api_time = time
                    .map(crate::clock::rfc3339)
                    .unwrap_or_else(|| "-".into());
                p.note(entry(
                    clock,
                    at,
                    &format!("event_{}", reason.to_ascii_lowercase()),
                    None,
                    format!("kubelet Event {reason}: {message} (API time {api_time})"),
                ));
                vec![PodChange::None]
            }
        }
    }

    fn pod(&mut self, pod: Arc<PodInfo>, at_ns: u64, clock: &Clock) -> PodChange {
        // Ids and IPs the pod no longer has (restarts, new IPs) leave the indexes.
        if let Some(old) = self.by_uid.get(&pod.uid).map(|p| p.info.clone()) {
            for id in old
                .containers
                .iter()
                .filter_map(|c| c.container_id.as_ref())
            {
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
        for c in &pod.containers {
            if let Some(id) = &c.container_id {
                self.by_container
                    .insert(id.clone(), (pod.uid.clone(), c.name.clone()));
            }
        }
        for ip in &pod.ips {
            self.by_ip.insert(ip.clone(), pod.uid.clone());
        }
        let uid = pod.uid.clone();
        let first_sight = !self.by_uid.contains_key(&uid);
        let p = self.by_uid.entry(uid.clone()).or_insert_with(|| PodState {
            info: pod.clone(),
            deletion_ns: None,
            deleted_before_agent: false,
            removed_ns: None,
            endpoint_down_ns: None,
            endpoints: HashMap::new(),
            killing_ns: None,
            timeline: Vec::new(),
            terminated_seen: HashSet::new(),
        });
        p.info = pod.clone();
        for c in &pod.containers {
            if let Some(t) = &c.terminated {
                if p.terminated_seen.insert(c.name.clone()) {
                    let signal = t
                        .signal
                        .map(|s| format!(", signal {s}"))
                        .unwrap_or_default();
                    let reason = t.reason.as_deref().unwrap_or("-");
                    p.note(entry(
                        clock,
                        at_ns,
                        "terminated_status",
                        None,
                        format!("API: container {} terminated, exitCode {}{signal}, reason {reason} (watch)", c.name, t.exit_code),
                    ));
                }
            }
        }
        match (&pod.deletion_timestamp, p.deletion_ns) {
            (Some(deadline), None) => {
                let grace = pod.effective_grace_seconds();
                // deletionTimestamp is when the grace period ends; the request was grace
                // seconds earlier. The API keeps whole seconds only.
                let requested = deadline
                    .checked_sub(time::Duration::seconds(grace.clamp(0, MAX_GRACE_SECONDS)))
                    .unwrap_or(*deadline);
                let (at, how) = if first_sight {
                    p.deleted_before_agent = true;
                    (
                        clock.boot_ns(requested),
                        "before the agent started; time from the API, whole seconds",
                    )
                } else {
                    (at_ns, "watch")
                };
                p.deletion_ns = Some(at);
                let finalizers = if pod.finalizers.is_empty() {
                    String::new()
                } else {
                    format!(", finalizers {}", pod.finalizers.join(","))
                };
                p.note(entry(
                    clock,
                    at,
                    "deletion_requested",
                    None,
                    format!(
                        "pod deleted: deletionTimestamp {}, grace period {grace}s{finalizers} ({how})",
                        crate::clock::rfc3339(*deadline)
                    ),
                ));
                PodChange::Deleting(uid)
            }
            _ => PodChange::Updated(uid),
        }
    }

    fn remove(&mut self, uid: &str, at_ns: u64, clock: &Clock, why: &str) -> PodChange {
        let Some(p) = self.by_uid.get_mut(uid) else {
            return PodChange::None;
        };
        if p.removed_ns.is_some() {
            return PodChange::None;
        }
        p.removed_ns = Some(at_ns);
        p.note(entry(
            clock,
            at_ns,
            "pod_removed",
            None,
            format!("{why} (watch)"),
        ));
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
            for c in &p.info.containers {
                if let Some(id) = &c.container_id {
                    self.by_container.remove(id);
                }
            }
            for ip in &p.info.ips {
                if self.by_ip.get(ip).map(String::as_str) == Some(uid) {
                    self.by_ip.remove(ip);
                }
            }
        }
    }

    /// Pods being deleted and still in the API.
    pub fn terminating(&self) -> impl Iterator<Item = &PodState> {
        self.by_uid
            .values()
            .filter(|p| p.deletion_ns.is_some() && p.removed_ns.is_none())
    }
}
