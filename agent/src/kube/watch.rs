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
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use time::OffsetDateTime;
use tokio::{sync::mpsc, task::JoinHandle};

use super::model::{api_pod, to_datetime, ApiPod};
use crate::{clock::boot_now_ns, metrics::KubeMetrics};

/// kubelet Event reasons that belong on a termination timeline.
pub const KUBELET_REASONS: [&str; 4] = [
    "Killing",
    "FailedPreStopHook",
    "FailedKillPod",
    "ExceededGracePeriod",
];
/// How long a deleted pod's Events are still watched (late events).
const EVENTS_LINGER: Duration = Duration::from_secs(30);

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
    /// After a (re)list: the complete set of this node's pods; any other is gone.
    PodsListed { uids: HashSet<String>, at_ns: u64 },
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
        reason: String,
        message: String,
        /// The event's own time (API clock, as precise as the server stores it).
        time: Option<OffsetDateTime>,
        at_ns: u64,
    },
}

/// Starts every watcher; they run until the returned handles are aborted.
pub fn spawn(
    client: Client,
    node: String,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
) -> Vec<JoinHandle<()>> {
    let known = Arc::new(RwLock::new(HashSet::new()));
    vec![
        tokio::spawn(pods(
            client.clone(),
            node.clone(),
            tx.clone(),
            metrics.clone(),
            known.clone(),
        )),
        tokio::spawn(endpoint_slices(client, node, tx, metrics, known)),
    ]
}

fn count_error(metrics: &KubeMetrics, resource: &'static str, e: &watcher::Error) {
    tracing::warn!(resource, error = %e, "watch failed; retrying with backoff");
    metrics.watch_error(resource);
}

async fn pods(
    client: Client,
    node: String,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
    known: Arc<RwLock<HashSet<String>>>,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut listing: Option<HashSet<String>> = None;
    let mut events: HashMap<String, JoinHandle<()>> = HashMap::new();
    while let Some(item) = stream.next().await {
        let at_ns = boot_now_ns();
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
                    if info.deletion_timestamp.is_some() && !events.contains_key(&info.uid) {
                        let h = tokio::spawn(kubelet_events(
                            client.clone(),
                            info.uid.clone(),
                            tx.clone(),
                            metrics.clone(),
                        ));
                        events.insert(info.uid.clone(), h);
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
                count_error(&metrics, "pods", &e);
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

/// One pod's kubelet Events, by `involvedObject.uid`, while it terminates.
async fn kubelet_events(
    client: Client,
    uid: String,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
) {
    let api: Api<Event> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("involvedObject.uid={uid}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut seen: HashSet<(String, i32)> = HashSet::new();
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(watcher::Event::InitApply(e) | watcher::Event::Apply(e)) => e,
            Ok(_) => continue,
            Err(e) => {
                count_error(&metrics, "events", &e);
                continue;
            }
        };
        let reason = ev.reason.clone().unwrap_or_default();
        if !KUBELET_REASONS.contains(&reason.as_str()) {
            continue;
        }
        // A relist replays events already sent; an Event's count grows on repeats.
        let key = (
            ev.metadata.uid.clone().unwrap_or_default(),
            ev.count.unwrap_or(1),
        );
        if !seen.insert(key) {
            continue;
        }
        let time = ev
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or(ev.last_timestamp.as_ref().map(|t| t.0))
            .or(ev.first_timestamp.as_ref().map(|t| t.0))
            .as_ref()
            .and_then(to_datetime);
        let update = KubeUpdate::KubeletEvent {
            pod_uid: uid.clone(),
            reason,
            message: ev.message.unwrap_or_default(),
            time,
            at_ns: boot_now_ns(),
        };
        if tx.send(update).await.is_err() {
            break;
        }
    }
}

type SliceEndpoints = HashMap<String, EndpointState>;

async fn endpoint_slices(
    client: Client,
    node: String,
    tx: mpsc::Sender<KubeUpdate>,
    metrics: Arc<KubeMetrics>,
    known: Arc<RwLock<HashSet<String>>>,
) {
    let api: Api<EndpointSlice> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Only this node's endpoints, per slice: memory does not grow with the cluster.
    let mut slices: HashMap<String, (String, SliceEndpoints)> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(item) = stream.next().await {
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
            Err(e) => count_error(&metrics, "endpointslices", &e),
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
}
