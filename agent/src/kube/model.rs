//! What Gracewatch keeps of a Kubernetes Pod: converted once, on arrival, from the API
//! object into a small model (identity, workload, grace, hooks, container ids, deletion
//! and terminated state). Missing required fields are errors, never guessed.

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use time::OffsetDateTime;

use crate::report::StopCause;

/// Container name kubelet gives a pod's sandbox ("pause") container in its own records;
/// Gracewatch uses it as the sandbox's `container` label.
pub const SANDBOX: &str = "POD";

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("pod without metadata.{0}")]
    MissingField(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreStop {
    Exec(Vec<String>),
    HttpGet(String),
    Sleep(i64),
    TcpSocket,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiContainerKind {
    #[default]
    App,
    /// Init containers, native sidecars (`restartPolicy: Always`) among them.
    Init,
    Ephemeral,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiContainer {
    pub name: String,
    pub kind: ApiContainerKind,
    pub prestop: Option<PreStop>,
    /// `lifecycle.stopSignal` as a signal number, when set (an unknown name is ignored:
    /// the runtime would refuse it).
    pub stop_signal: Option<u32>,
    /// Runtime container id without its `containerd://` scheme, once started.
    pub container_id: Option<String>,
    pub terminated: Option<ApiTerminated>,
    /// How often kubelet restarted it (`restartCount`).
    pub restart_count: i32,
    /// The previous run's end (`lastState.terminated`), with that run's container id.
    pub last_terminated: Option<ApiTerminated>,
    /// `state.waiting` as (reason, message), e.g. ("CrashLoopBackOff", "back-off 20s …").
    pub waiting: Option<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiTerminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    /// The run's container id, without its scheme.
    pub container_id: Option<String>,
}

/// What the pod's metadata and status say about why it was stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiStopFacts {
    /// The controlling owner reference: (kind, name).
    pub controller: Option<(String, String)>,
    /// Label `controller-revision-hash` (StatefulSet and DaemonSet pods).
    pub revision_hash: Option<String>,
    /// The `DisruptionTarget` condition, when true: (reason, message).
    pub disruption: Option<(String, String)>,
    /// `status.reason` and `status.message` (kubelet's node-pressure eviction: "Evicted").
    pub status_reason: Option<(String, String)>,
}

impl ApiStopFacts {
    /// Why the pod was stopped, when its own fields say (the `DisruptionTarget` condition
    /// with a reason this knows, or kubelet's eviction status), with the evidence. Its
    /// owners are asked only when this says nothing.
    pub fn own_cause(&self) -> Option<(StopCause, String)> {
        if let Some((reason, message)) = &self.disruption {
            if let Some(c) = disruption_cause(reason) {
                return Some((
                    c,
                    format!("pod condition DisruptionTarget, reason {reason}: {message}"),
                ));
            }
        }
        match &self.status_reason {
            Some((reason, message)) if reason == "Evicted" => Some((
                StopCause::NodePressure,
                format!("pod status reason Evicted: {message}"),
            )),
            _ => None,
        }
    }
}

/// The `DisruptionTarget` condition's reason as a cause (others, such as PodGC's
/// `DeletionByPodGC`, leave the cause to the owners or to the deletion).
fn disruption_cause(reason: &str) -> Option<StopCause> {
    Some(match reason {
        "EvictionByEvictionAPI" => StopCause::Eviction,
        "PreemptionByScheduler" | "PreemptionByKubeScheduler" => StopCause::Preemption,
        "DeletionByTaintManager" => StopCause::Taint,
        "TerminationByKubelet" => StopCause::NodePressure,
        _ => return None,
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `<kind>/<name>` of the controlling workload ("deployment/web"), or "" for none.
    pub workload: String,
    pub ips: Vec<String>,
    /// `spec.hostNetwork`: the pod uses the node's addresses, so its traffic cannot be
    /// told apart from the node's by address.
    pub host_network: bool,
    pub deletion_timestamp: Option<OffsetDateTime>,
    pub deletion_grace_seconds: Option<i64>,
    pub termination_grace_seconds: i64,
    pub finalizers: Vec<String>,
    pub containers: Vec<ApiContainer>,
    pub stop: ApiStopFacts,
}

impl ApiPod {
    /// The grace kubelet applies: the deletion's, else the spec's, else 30 s.
    pub fn effective_grace_seconds(&self) -> i64 {
        self.deletion_grace_seconds
            .unwrap_or(self.termination_grace_seconds)
    }

    pub fn container_by_id(&self, id: &str) -> Option<&ApiContainer> {
        self.containers.iter().find(|c| {
            c.container_id.as_deref() == Some(id)
                || c.last_terminated
                    .as_ref()
                    .is_some_and(|t| t.container_id.as_deref() == Some(id))
        })
    }

    /// Every container id the pod's status names: current runs and previous ones.
    pub fn container_ids(&self) -> impl Iterator<Item = (&str, &ApiContainer)> {
        self.containers.iter().flat_map(|c| {
            let last = c
                .last_terminated
                .as_ref()
                .and_then(|t| t.container_id.as_deref());
            c.container_id
                .as_deref()
                .into_iter()
                .chain(last)
                .map(move |id| (id, c))
        })
    }

    pub fn container(&self, name: &str) -> Option<&ApiContainer> {
        self.containers.iter().find(|c| c.name == name)
    }
}

pub fn api_pod(pod: &Pod) -> Result<ApiPod, ModelError> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().ok_or(ModelError::MissingField("uid"))?;
    let name = meta.name.clone().ok_or(ModelError::MissingField("name"))?;
    let namespace = meta
        .namespace
        .clone()
        .ok_or(ModelError::MissingField("namespace"))?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let statuses =
        |pick: fn(&PodStatus) -> &Option<Vec<ContainerStatus>>| -> Vec<&ContainerStatus> {
            status
                .into_iter()
                .flat_map(|s| pick(s).iter().flatten())
                .collect()
        };
    let app = statuses(|s| &s.container_statuses);
    let init = statuses(|s| &s.init_container_statuses);
    let mut containers: Vec<ApiContainer> = spec
        .map(|s| {
            s.containers
                .iter()
                .map(|c| container(c, &app, ApiContainerKind::App))
                .collect()
        })
        .unwrap_or_default();
    containers.extend(
        spec.iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| container(c, &init, ApiContainerKind::Init)),
    );
    // Ephemeral containers (kubectl debug) only matter for naming their cgroup.
    containers.extend(
        statuses(|s| &s.ephemeral_container_statuses)
            .into_iter()
            .map(|st| ApiContainer {
                name: st.name.clone(),
                kind: ApiContainerKind::Ephemeral,
                prestop: None,
                stop_signal: None,
                container_id: st.container_id.as_deref().map(strip_scheme),
                ..ApiContainer::default()
            }),
    );
    Ok(ApiPod {
        uid,
        namespace,
        name,
        workload: workload(meta),
        ips: status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        deletion_timestamp: meta
            .deletion_timestamp
            .as_ref()
            .and_then(|t| to_datetime(&t.0)),
        deletion_grace_seconds: meta.deletion_grace_period_seconds,
        termination_grace_seconds: spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        containers,
        stop: stop_facts(meta, status),
    })
}

fn stop_facts(meta: &ObjectMeta, status: Option<&PodStatus>) -> ApiStopFacts {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    ApiStopFacts {
        controller: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone())),
        revision_hash: label("controller-revision-hash"),
        disruption: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            })
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            }),
        status_reason: status.and_then(|s| {
            s.reason
                .clone()
                .map(|r| (r, s.message.clone().unwrap_or_default()))
        }),
    }
}

fn terminated(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> ApiTerminated {
    ApiTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone(),
        container_id: t.container_id.as_deref().map(strip_scheme),
    }
}

fn container(c: &Container, statuses: &[&ContainerStatus], kind: ApiContainerKind) -> ApiContainer {
    let status = statuses.iter().find(|s| s.name == c.name);
    let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    let prestop = hook.and_then(|h| {
        if let Some(e) = &h.exec {
            Some(PreStop::Exec(e.command.clone().unwrap_or_default()))
        } else if let Some(g) = &h.http_get {
            Some(PreStop::HttpGet(g.path.clone().unwrap_or_default()))
        } else if let Some(s) = &h.sleep {
            Some(PreStop::Sleep(s.seconds))
        } else {
            h.tcp_socket.as_ref().map(|_| PreStop::TcpSocket)
        }
    });
    ApiContainer {
        name: c.name.clone(),
        kind,
        prestop,
        stop_signal: c
            .lifecycle
            .as_ref()
            .and_then(|l| l.stop_signal.as_deref())
            .and_then(signal_number),
        container_id: status
            .and_then(|s| s.container_id.as_deref())
            .map(strip_scheme),
        terminated: status
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(terminated),
        restart_count: status.map_or(0, |s| s.restart_count),
        last_terminated: status
            .and_then(|s| s.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(terminated),
        waiting: status
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .map(|w| {
                (
                    w.reason.clone().unwrap_or_default(),
                    w.message.clone().unwrap_or_default(),
                )
            }),
    }
}

/// A signal's number from its name as the API spells it (`SIGQUIT`).
fn signal_number(name: &str) -> Option<u32> {
    use std::str::FromStr;
    nix::sys::signal::Signal::from_str(name)
        .ok()
        .map(|s| s as u32)
}

/// An API timestamp as the `time` crate's type the rest of the agent uses.
pub fn to_datetime(t: &k8s_openapi::jiff::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).ok()
}

/// `containerd://abc` → `abc` (also cri-o://, docker://).
pub fn strip_scheme(id: &str) -> String {
    id.split_once("://")
        .map_or(id, |(_, rest)| rest)
        .to_string()
}

/// The controlling workload from owner references and labels alone (no API calls): a
/// ReplicaSet stands for its Deployment (its name less the `pod-template-hash`), a Job
/// named `<cronjob>-<scheduled minute>` for its CronJob. Bounded cardinality: no
/// controller → "".
pub fn workload(meta: &ObjectMeta) -> String {
    let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return String::new();
    };
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match owner.kind.as_str() {
        "ReplicaSet" => match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            Some(deployment) => format!("deployment/{deployment}"),
            None => format!("replicaset/{}", owner.name),
        },
        "Job" => match cronjob_of(&owner.name) {
            Some(cron) => format!("cronjob/{cron}"),
            None => format!("job/{}", owner.name),
        },
        "StatefulSet" | "DaemonSet" | "ReplicationController" => {
            format!("{}/{}", owner.kind.to_ascii_lowercase(), owner.name)
        }
        // A Node owns mirror (static) pods; anything else is someone's custom controller.
        "Node" => String::new(),
        other => format!("{}/{}", other.to_ascii_lowercase(), owner.name),
    }
}

/// CronJob controllers name Jobs `<cronjob>-<minutes since the epoch>` (8+ digits today).
fn cronjob_of(job: &str) -> Option<&str> {
    let (base, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty())
        .then_some(base)
}

/// The pod unit tests build: shop/web-1 of deployment/web at 10.1.0.7, grace 30 s,
/// one app container `app` at run `container_id`; `deleting`: deletion requested with
/// a 30 s grace and a deadline at 130 s (Unix time).
#[cfg(test)]
pub fn sample_pod(uid: &str, container_id: &str, deleting: bool) -> ApiPod {
    ApiPod {
        uid: uid.into(),
        namespace: "shop".into(),
        name: "web-1".into(),
        workload: "deployment/web".into(),
        ips: vec!["10.1.0.7".into()],
        deletion_timestamp: deleting
            .then(|| OffsetDateTime::from_unix_timestamp(130).expect("time")),
        deletion_grace_seconds: deleting.then_some(30),
        termination_grace_seconds: 30,
        containers: vec![ApiContainer {
            name: "app".into(),
            kind: ApiContainerKind::App,
            container_id: Some(container_id.into()),
            ..ApiContainer::default()
        }],
        ..ApiPod::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn the_pods_own_word_on_why_it_stopped() {
        let facts = |d: Option<(&str, &str)>, r: Option<(&str, &str)>| ApiStopFacts {
            disruption: d.map(|(a, b)| (a.to_string(), b.to_string())),
            status_reason: r.map(|(a, b)| (a.to_string(), b.to_string())),
            ..Default::default()
        };
        let cases = [
            (
                Some(("EvictionByEvictionAPI", "m")),
                None,
                Some(StopCause::Eviction),
            ),
            (
                Some(("PreemptionByScheduler", "m")),
                None,
                Some(StopCause::Preemption),
            ),
            (
                Some(("PreemptionByKubeScheduler", "m")),
                None,
                Some(StopCause::Preemption),
            ),
            (
                Some(("DeletionByTaintManager", "m")),
                None,
                Some(StopCause::Taint),
            ),
            (
                Some(("TerminationByKubelet", "m")),
                None,
                Some(StopCause::NodePressure),
            ),
            (Some(("DeletionByPodGC", "m")), None, None),
            (None, Some(("Evicted", "m")), Some(StopCause::NodePressure)),
            (None, Some(("Terminated", "m")), None),
            // The condition wins over the status reason.
            (
                Some(("EvictionByEvictionAPI", "m")),
                Some(("Evicted", "m")),
                Some(StopCause::Eviction),
            ),
            (None, None, None),
        ];
        for (i, (d, r, want)) in cases.into_iter().enumerate() {
            assert_eq!(facts(d, r).own_cause().map(|(c, _)| c), want, "case {i}");
        }
        let (_, evidence) = facts(Some(("EvictionByEvictionAPI", "drain of node-a")), None)
            .own_cause()
            .expect("cause");
        assert_eq!(
            evidence,
            "pod condition DisruptionTarget, reason EvictionByEvictionAPI: drain of node-a"
        );
    }

    fn meta(kind: &str, owner: &str, hash: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                kind: kind.into(),
                name: owner.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            labels: hash.map(|h| [("pod-template-hash".to_string(), h.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn workloads_from_owner_references() {
        assert_eq!(
            workload(&meta("ReplicaSet", "web-7d4b9c8f6", Some("7d4b9c8f6"))),
            "deployment/web"
        );
        assert_eq!(
            workload(&meta("ReplicaSet", "web-7d4b9c8f6", None)),
            "replicaset/web-7d4b9c8f6"
        );
        assert_eq!(workload(&meta("StatefulSet", "db", None)), "statefulset/db");
        assert_eq!(
            workload(&meta("DaemonSet", "agent", None)),
            "daemonset/agent"
        );
        assert_eq!(
            workload(&meta("Job", "backup-29433600", None)),
            "cronjob/backup"
        );
        assert_eq!(workload(&meta("Job", "migrate", None)), "job/migrate");
        assert_eq!(workload(&meta("Node", "node-a", None)), "");
        assert_eq!(workload(&ObjectMeta::default()), "");
    }

    fn pod_json(extra_meta: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [
                    {"name": "app", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}},
                    {"name": "side", "lifecycle": {"preStop": {"exec": {"command": ["/bin/drain"]}}, "stopSignal": "SIGQUIT"}}
                ],
                "initContainers": [{"name": "proxy", "restartPolicy": "Always"}]
            },
            "status": {
                "podIPs": [{"ip": "10.0.0.7"}],
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://abc", "image": "", "imageID": "",
                     "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 137, "reason": "Error", "signal": 9}}},
                    {"name": "side", "image": "", "imageID": "", "ready": true, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "proxy", "containerID": "containerd://def", "image": "", "imageID": "", "ready": true, "restartCount": 0}
                ]
            }
        });
        if let (Some(m), Some(extra)) = (v["metadata"].as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn a_host_network_pod_is_marked() {
        let mut pod = pod_json(serde_json::json!({}));
        if let Some(spec) = pod.spec.as_mut() {
            spec.host_network = Some(true);
        }
        assert!(api_pod(&pod).expect("convert").host_network);
    }

    #[test]
    fn converts_a_pod() {
        let p = api_pod(&pod_json(serde_json::json!({
            "deletionTimestamp": "2026-11-22T10:00:30Z",
            "deletionGracePeriodSeconds": 10,
            "finalizers": ["example.com/hold"]
        })))
        .expect("convert");
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
            ("shop", "web-1", "u-1")
        );
        assert_eq!(p.effective_grace_seconds(), 10);
        assert_eq!(p.termination_grace_seconds, 20);
        assert_eq!(p.ips, ["10.0.0.7"]);
        assert!(!p.host_network);
        assert_eq!(p.finalizers, ["example.com/hold"]);
        assert_eq!(p.containers[0].prestop, Some(PreStop::Sleep(5)));
        assert_eq!(
            (p.containers[0].stop_signal, p.containers[1].stop_signal),
            (None, Some(3))
        );
        assert_eq!(
            p.containers[1].prestop,
            Some(PreStop::Exec(vec!["/bin/drain".into()]))
        );
        let app = p.container_by_id("abc").expect("by id");
        assert_eq!(app.name, "app");
        assert_eq!(
            app.terminated.as_ref().map(|t| (t.exit_code, t.signal)),
            Some((137, Some(9)))
        );
        assert_eq!(p.containers[1].container_id, None);
        let sidecar = p.container_by_id("def").expect("init container by id");
        assert_eq!(
            (sidecar.name.as_str(), sidecar.kind),
            ("proxy", ApiContainerKind::Init)
        );
        assert!(p.deletion_timestamp.is_some());
    }

    #[test]
    fn restarts_and_stop_facts() {
        let mut v = serde_json::to_value(pod_json(serde_json::json!({
            "labels": {"controller-revision-hash": "db-5c9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                 "uid": "o", "controller": true}]
        })))
        .expect("json");
        v["status"]["containerStatuses"][0]["restartCount"] = 2.into();
        v["status"]["containerStatuses"][0]["lastState"] = serde_json::json!(
            {"terminated": {"exitCode": 3, "reason": "Error", "containerID": "containerd://old"}});
        v["status"]["containerStatuses"][1]["state"] = serde_json::json!(
            {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container=side"}});
        v["status"]["reason"] = "Evicted".into();
        v["status"]["message"] = "The node was low on resource: memory.".into();
        v["status"]["conditions"] = serde_json::json!([
            {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": "memory pressure"},
            {"type": "Ready", "status": "False"}]);
        let p = api_pod(&serde_json::from_value(v).expect("pod")).expect("convert");
        let app = &p.containers[0];
        assert_eq!(app.restart_count, 2);
        assert_eq!(
            app.last_terminated
                .as_ref()
                .and_then(|t| t.container_id.as_deref()),
            Some("old")
        );
        assert_eq!(
            p.container_by_id("old").map(|c| c.name.as_str()),
            Some("app")
        );
        let ids: Vec<&str> = p.container_ids().map(|(id, _)| id).collect();
        assert_eq!(ids, ["abc", "old", "def"]);
        assert_eq!(
            p.containers[1].waiting.as_ref().map(|(r, _)| r.as_str()),
            Some("CrashLoopBackOff")
        );
        assert_eq!(p.stop.controller, Some(("StatefulSet".into(), "db".into())));
        assert_eq!(p.stop.revision_hash.as_deref(), Some("db-5c9"));
        assert_eq!(
            p.stop.disruption,
            Some(("TerminationByKubelet".into(), "memory pressure".into()))
        );
        assert_eq!(
            p.stop.status_reason.as_ref().map(|(r, _)| r.as_str()),
            Some("Evicted")
        );
    }

    #[test]
    fn missing_identity_is_an_error() {
        let mut pod = pod_json(serde_json::json!({}));
        pod.metadata.uid = None;
        assert_eq!(api_pod(&pod), Err(ModelError::MissingField("uid")));
        let bare = Pod {
            metadata: ObjectMeta {
                uid: Some("u".into()),
                name: Some("n".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = api_pod(&bare).expect("a pod without spec or status still converts");
        assert_eq!(p.effective_grace_seconds(), DEFAULT_GRACE_SECONDS);
        assert!(p.containers.is_empty());
    }

    #[test]
    fn container_ids_lose_their_scheme() {
        assert_eq!(strip_scheme("containerd://abc"), "abc");
        assert_eq!(strip_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_scheme("abc"), "abc");
    }
}
