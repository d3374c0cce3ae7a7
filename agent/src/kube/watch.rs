//! Watchers that turn the API server's view into [`KubeUpdate`]s for the event loop:
//! this node's pods (field selector), EndpointSlices (only endpoints of this node's
//! pods are kept), and kubelet Events of a pod, watched only while it terminates, by
//! `involvedObject.uid` — so a node's API load does not grow with the cluster beyond
//! what kube-proxy already asks for.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Event, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{runtime::watcher, Api, Client};
use time::OffsetDateTime;
use tokio::{sync::mpsc, task::JoinHandle};

use super::describe;
use super::model::{api_pod, to_datetime, ApiPod};
use crate::{clock::boot_now_ns, metrics::KubeMetrics};

/// kubelet Event reasons that belong on a termination timeline.
pub const KUBELET_REASONS: [&str; 6] = [
    "Killing",
    "FailedPreStopHook",
    "FailedKillPod",
    "ExceededGracePeriod",
    "Unhealthy",
    "BackOff",
];
/// How long a deleted pod's Events are still watched (late events).
const EVENTS_LINGER: Duration = Duration::from_secs(30);
/// How long the pods watch may stay silent after a failure before it is started afresh
/// with a list. A watch that resumed where it was says nothing until a pod changes, so on
/// a quiet node nothing would tell that the API server is back, and the records that
/// wait for its word would wait their longest and then claim it was still unreachable.
/// A list either ends (`InitDone`: back) or fails (still down) within a few seconds.
const QUIET_WHILE_DOWN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointState {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Debug)]
pub enum KubeUpdate {
    /// A pod of this node was added or changed. `at_ns`: boot-clock time of arrival.
    Pod { pod: Arc<ApiPod>, at_ns: u64 },
    /// A pod left the API (deleted for good).
    PodRemoved { uid: String, at_ns: u64 },
    /// After a (re)list: the complete set of this node's pods; any other is gone. The
    /// pods watch works (again).
    PodsListed { uids: HashSet<String>, at_ns: u64 },
    /// The pods watch failed (`up: false`, sent on the first failure in a row: the API
    /// server may be unreachable, and what it says is not seen until it works again),
    /// or resumed without a relist (`up: true`, before the first change it delivers).
    PodsWatch { up: bool, at_ns: u64 },
    /// An endpoint of one of this node's pods changed (`None`: removed from the slice).
    Endpoint {
        pod_uid: String,
        slice: String,
        service: String,
        state: Option<EndpointState>,
        at_ns: u64,
    },
    /// A kubelet Event about one of this node's pods.
    KubeletEvent {
        pod_uid: String,
        /// The container it is about (`involvedObject.fieldPath`), if any.
        container: Option<String>,
        reason: String,
        message: String,
        /// The event's own time (API clock, as precise as the server stores it).
        time: Option<OffsetDateTime>,
        /// It was there when the watch started (listed), not seen as it happened.
        listed: bool,
        at_ns: u64,
    },
    /// What the pod's owners say about why it was deleted.
    Owner {
        pod_uid: String,
        verdict: super::node::OwnerVerdict,
    },
}

/// The container an Event's `fieldPath` names (`spec.containers{app}`).
pub fn field_path_container(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("spec.containers{")
        .or_else(|| path.strip_prefix("spec.initContainers{"))?;
    rest.strip_suffix('}').map(str::to_string)
}

/// Signs that a pod's containers are being restarted: its kubelet Events are watched
/// from then on (probe failures, kills, back-off), as they are while it terminates.
pub fn restarting(pod: &ApiPod) -> bool {
    pod.containers.iter().any(|c| {
        c.restart_count > 0
            || c.last_terminated.is_some()
            || c.terminated.is_some()
            || c.waiting
                .as_ref()
                .is_some_and(|(r, _)| r != "ContainerCreating")
    })
}

/// Log filter directives for the Kubernetes libraries: a failing watch is logged once,
/// by [`Retry`], not again by kube-client's request tracing (an error per failed
/// request) and kube-runtime's watcher (a warning per 403).
pub const LIBRARY_LOG_FILTER: &str = "kube_client::client::builder=off,kube_runtime::watcher=error";

/// Starts every watcher; they run until the returned handles are aborted.
pub fn spawn(
    client: Client,
    node: String,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
) -> Vec<JoinHandle<()>> {
    let known = Arc::new(RwLock::new(HashSet::new()));
    let watch = Watch {
        owners: Arc::new(super::owners::Owners::new(client.clone(), metrics.clone())),
        client,
        tx,
        metrics,
        retry: RetryPolicy::default(),
    };
    vec![
        tokio::spawn(pods(watch.clone(), node.clone(), known.clone())),
        tokio::spawn(endpoint_slices(watch, node, known)),
    ]
}

/// What every watcher needs.
#[derive(Clone)]
struct Watch {
    client: Client,
    owners: Arc<super::owners::Owners>,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
    retry: RetryPolicy,
}

/// How a failing watch is retried: after `first`, doubling with each failure in a row,
/// up to `max`.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    first: Duration,
    max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause after `failures` failures in a row, for `jitter` in [0, 1): 1 s, 2 s,
    /// 4 s … 30 s, each shortened by up to a quarter so that agents that lost the API
    /// server together do not come back together.
    fn pause(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let full = self.first.saturating_mul(1 << doublings).min(self.max);
        full.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0))
    }
}

/// The retries of one watch. kube-runtime's stream backoff starts over whenever the
/// watcher yields anything, and a watcher yields `Init` before every list attempt, so a
/// list that kept failing was retried about once a second. Here the schedule starts over
/// only when the watch works again: a list completed or a change arrived.
struct Retry {
    resource: &'static str,
    policy: RetryPolicy,
    failures: u32,
    /// A 410 Gone since the watch last worked: the next one is backed off like a failure.
    gone_seen: bool,
}

impl Retry {
    fn new(resource: &'static str, policy: RetryPolicy) -> Self {
        Self {
            resource,
            policy,
            failures: 0,
            gone_seen: false,
        }
    }

    /// Notes what the watcher yielded: anything but an error or the start of a list
    /// means the watch works.
    fn saw<K>(&mut self, item: &Result<watcher::Event<K>, watcher::Error>) {
        let works = matches!(
            item,
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))
        );
        if works {
            self.gone_seen = false;
        }
        if works && self.failures > 0 {
            tracing::info!(
                resource = self.resource,
                failures = self.failures,
                "watch works again"
            );
            self.failures = 0;
        }
    }

    /// A 410 Gone answers that the server is there and its history is not: the watcher
    /// relists next, at once rather than after the pause a failure gets (after an
    /// outage, that pause held back the relist by up to 30 s). A second 410 before the
    /// watch works again is backed off as a failure, so a server that keeps answering
    /// 410 is not listed in a loop.
    fn relist_now(&mut self, e: &watcher::Error) -> bool {
        let gone = matches!(e, watcher::Error::WatchError(status) if status.code == 410);
        if !gone || self.gone_seen {
            return false;
        }
        self.gone_seen = true;
        self.failures = 0;
        true
    }

    /// A failure: counted; returns the pause before the watcher is polled again.
    fn failed(&mut self, metrics: &KubeMetrics, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        metrics.watch_error(self.resource);
        self.policy.pause(self.failures, jitter)
    }

    /// A failure, counted and logged once with how many came in a row, then the pause.
    async fn back_off(&mut self, metrics: &KubeMetrics, e: &watcher::Error) {
        if self.relist_now(e) {
            tracing::info!(
                resource = self.resource,
                "watch history expired (410 Gone): relisting"
            );
            return;
        }
        let pause = self.failed(metrics, fastrand::f64());
        let (phase, error) = watch_failure(e);
        tracing::warn!(
            resource = self.resource,
            phase,
            failures = self.failures,
            retry_in = ?pause,
            error,
            "watch failed"
        );
        tokio::time::sleep(pause).await;
    }
}

/// Which step of the watch failed, and why, with no credentials (see [`describe`]) and
/// an API server's refusal as its code, reason and message.
fn watch_failure(e: &watcher::Error) -> (&'static str, String) {
    match e {
        watcher::Error::InitialListFailed(k) => ("list", describe(k)),
        watcher::Error::WatchStartFailed(k) | watcher::Error::WatchFailed(k) => {
            ("watch", describe(k))
        }
        watcher::Error::WatchError(status) => (
            "watch",
            format!("{} {}: {}", status.code, status.reason, status.message),
        ),
        other => ("watch", describe(other)),
    }
}

async fn pods(watch: Watch, node: String, known: Arc<RwLock<HashSet<String>>>) {
    let Watch {
        client,
        tx,
        metrics,
        retry: policy,
        ..
    } = watch.clone();
    let api: Api<Pod> = Api::all(client.clone());
    let mut explained: HashSet<String> = HashSet::new();
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api.clone(), cfg.clone()).boxed();
    let mut retry = Retry::new("pods", policy);
    let mut listing: Option<HashSet<String>> = None;
    let mut events: HashMap<String, JoinHandle<()>> = HashMap::new();
    // The watch failed and has not worked since: a relist's end or a change says it does.
    let mut down = false;
    // Logged once per failure (an unreachable server can keep the watch silent a while).
    let mut quiet_relisted = false;
    loop {
        let next = if down {
            match tokio::time::timeout(QUIET_WHILE_DOWN, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if !quiet_relisted {
                        tracing::info!(
                            resource = "pods",
                            "no word from the watch since it failed: relisting to learn whether the API server is back"
                        );
                    }
                    quiet_relisted = true;
                    stream = watcher(api.clone(), cfg.clone()).boxed();
                    listing = None;
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        let Some(item) = next else { break };
        retry.saw(&item);
        let at_ns = boot_now_ns();
        let change = watch_state_change(&mut down, &item);
        quiet_relisted &= down;
        if let Some(up) = change {
            if tx.send(KubeUpdate::PodsWatch { up, at_ns }).await.is_err() {
                break;
            }
        }
        let update = match item {
            Ok(watcher::Event::Init) => {
                listing = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) => match api_pod(&p) {
                Ok(info) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(info.uid.clone());
                    }
                    if let Ok(mut k) = known.write() {
                        k.insert(info.uid.clone());
                    }
                    let watch_events = info.deletion_timestamp.is_some() || restarting(&info);
                    if watch_events && !events.contains_key(&info.uid) {
                        let h = tokio::spawn(kubelet_events(watch.clone(), info.uid.clone()));
                        events.insert(info.uid.clone(), h);
                    }
                    // Why its owner deleted it: read once, on the deletion.
                    if info.deletion_timestamp.is_some()
                        && super::owners::worth_asking(&info)
                        && explained.insert(info.uid.clone())
                    {
                        if explained.len() > 4096 {
                            explained.clear();
                        }
                        let (owners, tx, pod) = (watch.owners.clone(), tx.clone(), info.clone());
                        tokio::spawn(async move {
                            if let Some(verdict) = owners.explain(&pod).await {
                                let _ = tx
                                    .send(KubeUpdate::Owner {
                                        pod_uid: pod.uid.clone(),
                                        verdict,
                                    })
                                    .await;
                            }
                        });
                    }
                    KubeUpdate::Pod {
                        pod: Arc::new(info),
                        at_ns,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring malformed pod");
                    metrics.watch_error("pods");
                    continue;
                }
            },
            Ok(watcher::Event::InitDone) => {
                let uids = listing.take().unwrap_or_default();
                if let Ok(mut k) = known.write() {
                    k.retain(|u| uids.contains(u));
                }
                // Pods that went during a watch gap get no Delete: stop their Events
                // watches too (after the same linger as a deletion).
                let gone: Vec<String> = events
                    .keys()
                    .filter(|u| !uids.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    if let Some(h) = events.remove(&uid) {
                        tokio::spawn(async move {
                            tokio::time::sleep(EVENTS_LINGER).await;
                            h.abort();
                        });
                    }
                }
                KubeUpdate::PodsListed { uids, at_ns }
            }
            Ok(watcher::Event::Delete(p)) => {
                let Some(uid) = p.metadata.uid else { continue };
                if let Ok(mut k) = known.write() {
                    k.remove(&uid);
                }
                if let Some(h) = events.remove(&uid) {
                    tokio::spawn(async move {
                        tokio::time::sleep(EVENTS_LINGER).await;
                        h.abort();
                    });
                }
                KubeUpdate::PodRemoved { uid, at_ns }
            }
            Err(e) => {
                retry.back_off(&metrics, &e).await;
                continue;
            }
        };
        if tx.send(update).await.is_err() {
            break;
        }
    }
    for (_, h) in events {
        h.abort();
    }
}

/// Whether the pods watch went down or came back with `item`, tracked in `down`: down
/// at the first failure in a row; back at a change (a watch resumed where it was). The
/// end of a relist (`InitDone`; [`QUIET_WHILE_DOWN`] forces one if the resumed watch
/// stays silent) brings it back too, but says so itself (`PodsListed`);
/// the pods listed before it are not the sign, since the pods missing from the list are
/// not known until its end.
fn watch_state_change<K>(
    down: &mut bool,
    item: &Result<watcher::Event<K>, watcher::Error>,
) -> Option<bool> {
    match item {
        Err(_) if !*down => {
            *down = true;
            Some(false)
        }
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if *down => {
            *down = false;
            Some(true)
        }
        Ok(watcher::Event::InitDone) => {
            *down = false;
            None
        }
        _ => None,
    }
}

/// One pod's kubelet Events, by `involvedObject.uid`, while it terminates.
async fn kubelet_events(watch: Watch, uid: String) {
    let Watch {
        client,
        tx,
        metrics,
        retry: policy,
        ..
    } = watch;
    let api: Api<Event> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("involvedObject.uid={uid}"));
    let mut stream = watcher(api, cfg).boxed();
    let mut retry = Retry::new("events", policy);
    let mut seen: HashSet<(String, i32)> = HashSet::new();
    // Events there when the watch (re)starts arrive in name order; they are sent in the
    // order they happened (their time, then creation), since their API times often tie
    // at whole seconds.
    let mut listing: Option<Vec<Event>> = None;
    while let Some(item) = stream.next().await {
        retry.saw(&item);
        let batch = match item {
            Ok(watcher::Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(e)) => {
                match listing.as_mut() {
                    Some(l) if l.len() < MAX_LISTED_EVENTS => l.push(e),
                    Some(_) => {}
                    None => listing = Some(vec![e]),
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => in_order(listing.take().unwrap_or_default())
                .into_iter()
                .map(|e| (e, true))
                .collect(),
            Ok(watcher::Event::Apply(e)) => vec![(e, false)],
            Ok(watcher::Event::Delete(_)) => continue,
            Err(e) => {
                retry.back_off(&metrics, &e).await;
                continue;
            }
        };
        for (ev, listed) in batch {
            let Some(update) = kubelet_event(&uid, ev, listed, &mut seen) else {
                continue;
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// Events of one pod kept from a (re)list, at most.
const MAX_LISTED_EVENTS: usize = 1024;

/// A list's Events in the order they happened: by their own time, then (within its
/// whole second) by creation, which the resourceVersion orders.
fn in_order(mut listed: Vec<Event>) -> Vec<Event> {
    listed.sort_by_key(|e| (event_time(e), resource_version(e)));
    listed
}

/// An Event's own time: its eventTime, else its last, else its first timestamp.
fn event_time(ev: &Event) -> Option<OffsetDateTime> {
    ev.event_time
        .as_ref()
        .map(|t| t.0)
        .or(ev.last_timestamp.as_ref().map(|t| t.0))
        .or(ev.first_timestamp.as_ref().map(|t| t.0))
        .as_ref()
        .and_then(to_datetime)
}

fn resource_version(ev: &Event) -> u64 {
    ev.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The update for one of a pod's Events, if it is kubelet's about termination or
/// restarts and not one already sent (a relist replays them; a repeat grows `count`).
fn kubelet_event(
    uid: &str,
    ev: Event,
    listed: bool,
    seen: &mut HashSet<(String, i32)>,
) -> Option<KubeUpdate> {
    let reason = ev.reason.clone().unwrap_or_default();
    if !KUBELET_REASONS.contains(&reason.as_str()) {
        return None;
    }
    let count = ev.count.unwrap_or(1);
    if !seen.insert((ev.metadata.uid.clone().unwrap_or_default(), count)) {
        return None;
    }
    let time = event_time(&ev);
    let message = ev.message.unwrap_or_default();
    Some(KubeUpdate::KubeletEvent {
        pod_uid: uid.to_string(),
        container: ev
            .involved_object
            .field_path
            .as_deref()
            .and_then(field_path_container),
        reason,
        message: if count > 1 {
            format!("{message} (x{count})")
        } else {
            message
        },
        time,
        listed,
        at_ns: boot_now_ns(),
    })
}

type SliceEndpoints = HashMap<String, EndpointState>;

async fn endpoint_slices(watch: Watch, node: String, known: Arc<RwLock<HashSet<String>>>) {
    let Watch {
        client,
        tx,
        metrics,
        retry: policy,
        ..
    } = watch;
    let api: Api<EndpointSlice> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut retry = Retry::new("endpointslices", policy);
    // Only this node's endpoints, per slice: memory does not grow with the cluster.
    let mut slices: HashMap<String, (String, SliceEndpoints)> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(item) = stream.next().await {
        retry.saw(&item);
        let at_ns = boot_now_ns();
        let mut updates = Vec::new();
        match item {
            Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s)) => {
                let key = slice_key(&s);
                if let Some(l) = listed.as_mut() {
                    l.insert(key.clone());
                }
                let now = ours(&s, &node, &known);
                let service = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name").cloned())
                    .unwrap_or_default();
                let before = slices.remove(&key).map(|(_, e)| e).unwrap_or_default();
                diff(&key, &service, &before, &now, at_ns, &mut updates);
                if !now.is_empty() {
                    slices.insert(key, (service, now));
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                forget_slice(&mut slices, &slice_key(&s), at_ns, &mut updates);
            }
            Ok(watcher::Event::InitDone) => {
                let l = listed.take().unwrap_or_default();
                let gone: Vec<String> =
                    slices.keys().filter(|k| !l.contains(*k)).cloned().collect();
                for key in gone {
                    forget_slice(&mut slices, &key, at_ns, &mut updates);
                }
            }
            Err(e) => retry.back_off(&metrics, &e).await,
        }
        for u in updates {
            if tx.send(u).await.is_err() {
                return;
            }
        }
    }
}

/// A slice that is gone: every endpoint it had for our pods is removed.
fn forget_slice(
    slices: &mut HashMap<String, (String, SliceEndpoints)>,
    key: &str,
    at_ns: u64,
    updates: &mut Vec<KubeUpdate>,
) {
    if let Some((service, before)) = slices.remove(key) {
        diff(key, &service, &before, &HashMap::new(), at_ns, updates);
    }
}

fn slice_key(s: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Endpoints of a slice that belong to this node's pods, by pod uid.
fn ours(s: &EndpointSlice, node: &str, known: &RwLock<HashSet<String>>) -> SliceEndpoints {
    let known = known.read().ok();
    s.endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            let target = e.target_ref.as_ref()?;
            if target.kind.as_deref() != Some("Pod") {
                return None;
            }
            let uid = target.uid.clone()?;
            let on_node = e.node_name.as_deref() == Some(node)
                || known.as_ref().is_some_and(|k| k.contains(&uid));
            if !on_node {
                return None;
            }
            let c = e.conditions.as_ref();
            // The API's defaults for absent conditions: ready/serving true, terminating false.
            let state = EndpointState {
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                serving: c.and_then(|c| c.serving).unwrap_or(true),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            };
            Some((uid, state))
        })
        .collect()
}

fn diff(
    slice: &str,
    service: &str,
    before: &SliceEndpoints,
    now: &SliceEndpoints,
    at_ns: u64,
    out: &mut Vec<KubeUpdate>,
) {
    for (uid, state) in now {
        if before.get(uid) != Some(state) {
            out.push(KubeUpdate::Endpoint {
                pod_uid: uid.clone(),
                slice: slice.to_string(),
                service: service.to_string(),
                state: Some(*state),
                at_ns,
            });
        }
    }
    for uid in before.keys().filter(|u| !now.contains_key(*u)) {
        out.push(KubeUpdate::Endpoint {
            pod_uid: uid.clone(),
            slice: slice.to_string(),
            service: service.to_string(),
            state: None,
            at_ns,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    fn endpoint(uid: &str, node: &str, conditions: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "addresses": ["10.1.0.7"],
            "nodeName": node,
            "targetRef": {"kind": "Pod", "uid": uid, "name": uid, "namespace": "shop"},
            "conditions": conditions,
        })
    }

    fn core_event(uid: &str, rv: &str, reason: &str, at: &str, count: i32) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-1.{uid}"), "uid": uid, "resourceVersion": rv},
            "involvedObject": {"kind": "Pod", "uid": "p1", "fieldPath": "spec.containers{app}"},
            "reason": reason, "message": "m", "count": count, "lastTimestamp": at,
        }))
        .expect("event")
    }

    #[test]
    fn listed_events_go_in_the_order_they_happened_and_repeats_once() {
        // Same whole second: creation order decides (the probe failed, then the kill).
        let listed = vec![
            core_event("k", "12", "Killing", "2026-12-01T10:00:05Z", 1),
            core_event("u", "11", "Unhealthy", "2026-12-01T10:00:05Z", 3),
            core_event("s", "10", "Scheduled", "2026-12-01T10:00:01Z", 1),
        ];
        let mut seen = HashSet::new();
        let updates: Vec<KubeUpdate> = in_order(listed)
            .into_iter()
            .filter_map(|e| kubelet_event("p1", e, true, &mut seen))
            .collect();
        let reasons: Vec<(&str, &str, Option<&str>)> = updates
            .iter()
            .filter_map(|u| match u {
                KubeUpdate::KubeletEvent {
                    reason,
                    message,
                    container,
                    ..
                } => Some((reason.as_str(), message.as_str(), container.as_deref())),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("Unhealthy", "m (x3)", Some("app")),
                ("Killing", "m", Some("app"))
            ]
        );
        // A relist replays them: nothing new.
        let again = core_event("u", "11", "Unhealthy", "2026-12-01T10:00:05Z", 3);
        assert!(kubelet_event("p1", again, true, &mut seen).is_none());
        assert_eq!(
            field_path_container("spec.initContainers{proxy}").as_deref(),
            Some("proxy")
        );
    }

    #[test]
    fn keeps_only_this_nodes_pod_endpoints_with_api_defaults() {
        let known = RwLock::new(HashSet::from(["moved".to_string()]));
        let s = slice(serde_json::json!([
            endpoint("mine", "node-a", serde_json::json!({})),
            endpoint("other", "node-b", serde_json::json!({"ready": true})),
            // A pod of ours whose endpoint still names its old node.
            endpoint("moved", "node-b", serde_json::json!({"ready": false, "terminating": true})),
            {"addresses": ["10.1.0.9"], "nodeName": "node-a"},
            {"addresses": ["10.1.0.8"], "nodeName": "node-a",
             "targetRef": {"kind": "Node", "uid": "n", "name": "node-a"}},
        ]));
        let got = ours(&s, "node-a", &known);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got["mine"],
            EndpointState {
                ready: true,
                serving: true,
                terminating: false
            },
            "absent conditions take the API's defaults"
        );
        assert!(got["moved"].terminating && !got["moved"].ready);
        assert_eq!(slice_key(&s), "shop/web-abc");
    }

    #[test]
    fn diff_reports_changes_and_removals_only() {
        let up = EndpointState {
            ready: true,
            serving: true,
            terminating: false,
        };
        let down = EndpointState {
            ready: false,
            serving: true,
            terminating: true,
        };
        let before: SliceEndpoints = [("a".into(), up), ("b".into(), up), ("c".into(), up)].into();
        let now: SliceEndpoints = [("a".into(), up), ("b".into(), down), ("d".into(), up)].into();
        let mut out = Vec::new();
        diff("shop/web-abc", "web", &before, &now, 7, &mut out);
        let mut seen: Vec<(String, Option<EndpointState>)> = out
            .into_iter()
            .map(|u| match u {
                KubeUpdate::Endpoint {
                    pod_uid,
                    state,
                    slice,
                    service,
                    at_ns,
                } => {
                    assert_eq!(
                        (slice.as_str(), service.as_str(), at_ns),
                        ("shop/web-abc", "web", 7)
                    );
                    (pod_uid, state)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        seen.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            seen,
            [
                ("b".to_string(), Some(down)),
                ("c".to_string(), None),
                ("d".to_string(), Some(up))
            ]
        );
        // A deleted slice removes every endpoint it had.
        let mut slices = HashMap::from([("shop/web-abc".to_string(), ("web".to_string(), now))]);
        let mut out = Vec::new();
        forget_slice(&mut slices, "shop/web-abc", 8, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|u| matches!(u, KubeUpdate::Endpoint { state: None, .. })));
        assert!(slices.is_empty());
    }

    #[test]
    fn retries_double_from_one_second_to_thirty_with_jitter() {
        let p = RetryPolicy::default();
        let secs: Vec<f64> = (1..=8).map(|n| p.pause(n, 0.0).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(p.pause(u32::MAX, 0.0), Duration::from_secs(30));
        // Jitter only shortens, by at most a quarter: the cap holds.
        assert_eq!(p.pause(1, 0.999_999).as_millis(), 750);
        assert_eq!(p.pause(9, 0.5), Duration::from_millis(26_250));
        let in_30s: f64 = (1..=6)
            .map(|n| p.pause(n, 0.0).as_secs_f64())
            .take_while(|_| true)
            .sum();
        assert!(in_30s > 30.0, "at most 6 attempts in the first 30 s");
    }

    #[test]
    fn the_pods_watch_is_down_from_its_first_failure_until_it_delivers_again() {
        type Item = Result<watcher::Event<Pod>, watcher::Error>;
        let mut down = false;
        let failed = || Err::<watcher::Event<Pod>, _>(watcher::Error::NoResourceVersion);
        let steps: [(Item, Option<bool>); 8] = [
            (Ok(watcher::Event::Apply(Pod::default())), None),
            // Said once, however many failures follow.
            (failed(), Some(false)),
            (Ok(watcher::Event::Init), None),
            (failed(), None),
            // A relist under way is not the sign; its end says so (PodsListed).
            (Ok(watcher::Event::InitApply(Pod::default())), None),
            (Ok(watcher::Event::InitDone), None),
            (failed(), Some(false)),
            // A watch that resumed where it was: back before its first change.
            (Ok(watcher::Event::Delete(Pod::default())), Some(true)),
        ];
        for (i, (item, want)) in steps.into_iter().enumerate() {
            assert_eq!(watch_state_change(&mut down, &item), want, "step {i}");
        }
        assert!(!down);
    }

    #[test]
    fn the_schedule_starts_over_only_when_the_watch_works() {
        let metrics = crate::metrics::Metrics::new("test");
        let mut r = Retry::new("pods", RetryPolicy::default());
        let pauses: Vec<u64> = (0..3)
            .map(|_| {
                // What a failing list yields each time: Init, then the error.
                r.saw::<Pod>(&Ok(watcher::Event::Init));
                r.failed(&metrics.kube, 0.0).as_secs()
            })
            .collect();
        assert_eq!(pauses, [1, 2, 4]);
        r.saw::<Pod>(&Ok(watcher::Event::InitApply(Pod::default())));
        assert_eq!(r.failed(&metrics.kube, 0.0).as_secs(), 8);
        r.saw::<Pod>(&Ok(watcher::Event::InitDone));
        assert_eq!(r.failed(&metrics.kube, 0.0).as_secs(), 1);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains("gracewatch_kube_watch_errors_total{resource=\"pods\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn a_410_after_an_outage_relists_at_once_but_not_in_a_loop() {
        let metrics = crate::metrics::Metrics::new("test");
        let mut r = Retry::new("pods", RetryPolicy::default());
        let gone = || {
            let status = kube::core::Status {
                code: 410,
                ..kube::core::Status::failure("too old resource version", "Expired")
            };
            watcher::Error::WatchError(status.boxed())
        };
        // Down for a while: the pauses grew.
        for _ in 0..5 {
            r.failed(&metrics.kube, 0.0);
        }
        // Back, but the history is gone: relist now, and start the schedule over.
        assert!(r.relist_now(&gone()));
        assert_eq!(r.failures, 0);
        // Another 410 before anything worked: a failure like any other.
        assert!(!r.relist_now(&gone()));
        assert_eq!(r.failed(&metrics.kube, 0.0).as_secs(), 1);
        // Once the watch worked, the next 410 relists at once again.
        r.saw::<Pod>(&Ok(watcher::Event::InitDone));
        assert!(r.relist_now(&gone()));
        // Anything but a 410 is never relisted at once.
        assert!(!r.relist_now(&watcher::Error::NoResourceVersion));
    }
}

/// A watch against an API server that fails every request, over loopback.
#[cfg(test)]
mod failing_api_server {
    use super::*;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Answers every request 500 with a Status, counting them.
    async fn failing_api_server(requests: Arc<AtomicUsize>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let requests = requests.clone();
                let svc = hyper::service::service_fn(move |_req| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcd is down","reason":"InternalError","code":500}"#;
                    let mut resp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_failing_list_backs_off_and_each_failure_is_logged_once() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_env_filter(format!("info,{LIBRARY_LOG_FILTER}"))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let requests = Arc::new(AtomicUsize::new(0));
        let addr = failing_api_server(requests.clone()).await;
        let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
        let metrics = Arc::new(crate::metrics::Metrics::new("test"));
        let (tx, _rx) = mpsc::channel(16);
        // The default schedule scaled down 10×: 100 ms doubling to 800 ms.
        let client = Client::try_from(config).expect("client");
        let watch = Watch {
            owners: Arc::new(crate::kube::owners::Owners::new(
                client.clone(),
                metrics.kube.clone(),
            )),
            client,
            tx,
            metrics: metrics.kube.clone(),
            retry: RetryPolicy {
                first: Duration::from_millis(100),
                max: Duration::from_millis(800),
            },
        };
        let task = tokio::spawn(pods(watch, "node-a".into(), Arc::default()));
        tokio::time::sleep(Duration::from_millis(3000)).await;
        task.abort();
        // Attempts at 0, 0.1, 0.3, 0.7, 1.5 and 2.3 s, each pause up to a quarter shorter:
        // 6 to 8 in 3 s. Starting over at the first pause after every Init (the old
        // behaviour) would make about 30.
        let n = requests.load(Ordering::Relaxed);
        assert!((5..=8).contains(&n), "{n} requests in 3 s");
        let text = logs.0.lock().map(|v| v.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().all(|l| l.contains("watch failed")),
            "only our line: {text}"
        );
        assert!(
            lines.len() == n || lines.len() + 1 == n,
            "{n} requests: {text}"
        );
        assert!(lines[0].contains("failures=1"), "{}", lines[0]);
        assert!(lines[0].contains("phase=\"list\""), "{}", lines[0]);
        assert!(
            lines[0].contains("500 InternalError: etcd is down"),
            "{}",
            lines[0]
        );
        assert!(lines[2].contains("failures=3"), "{}", lines[2]);
        let counted = metrics.encode().expect("encode");
        let series = format!(
            "gracewatch_kube_watch_errors_total{{resource=\"pods\"}} {}",
            lines.len()
        );
        assert!(counted.contains(&series), "{series} in {counted}");
    }
}
