//! Why a controller deleted a pod, from its owners read by name when the deletion is
//! seen (no cluster-wide watch): a ReplicaSet that is no longer its Deployment's current
//! revision (a rolling update), a StatefulSet whose update revision is not the pod's
//! (a rolling update) or whose replicas no longer cover the pod's ordinal (a scale-down),
//! a current ReplicaSet that wants fewer pods than it has, or whose `spec.replicas` was
//! written shortly before the deletion (a scale-down: its `managedFields` time; the
//! ReplicaSet controller counts the deleted pod out of `status.replicas` at once, and a
//! pod deleted by hand leaves the ReplicaSet's spec alone). Reads are
//! cached briefly, so a rollout or scale-down of many pods costs a few requests, and
//! every request is counted (`gracewatch_kube_owner_requests_total`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::apps::v1::{Deployment, ReplicaSet, StatefulSet},
    apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
};
use kube::{Api, Client};
use time::OffsetDateTime;

use super::{
    model::{to_datetime, ApiPod},
    node::OwnerVerdict,
};
use crate::{metrics::KubeMetrics, report::StopCause};

/// How long an owner read is reused: a rollout deletes pods in bursts.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Owners cached at most; the cache is emptied when it is full.
const CACHE_MAX: usize = 256;
/// A ReplicaSet whose replicas were written this long before a deletion (or up to
/// [`SCALED_AFTER`] after it, clocks and whole seconds) was scaled down for it.
const SCALED_BEFORE: time::Duration = time::Duration::seconds(30);
const SCALED_AFTER: time::Duration = time::Duration::seconds(2);
/// Deployment annotation with its (and each of its ReplicaSets') revision.
const REVISION: &str = "deployment.kubernetes.io/revision";

/// A ReplicaSet as far as the cause needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RsFacts {
    pub name: String,
    pub revision: Option<String>,
    pub replicas: Option<i32>,
    pub status_replicas: i32,
    /// Its controlling Deployment's name.
    pub deployment: Option<String>,
    /// When `spec.replicas` was last written (its managedFields entry's time).
    pub replicas_written: Option<OffsetDateTime>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentFacts {
    pub name: String,
    pub revision: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StsFacts {
    pub name: String,
    pub replicas: Option<i32>,
    pub update_revision: Option<String>,
}

/// Whether a deleted pod's owners can say why: a controller that is a ReplicaSet or a
/// StatefulSet, and no stronger evidence on the pod itself.
pub fn worth_asking(pod: &ApiPod) -> bool {
    pod.stop.own_cause().is_none()
        && matches!(
            pod.stop.controller.as_ref().map(|(k, _)| k.as_str()),
            Some("ReplicaSet" | "StatefulSet")
        )
}

/// When `spec.replicas` was last written: the time of the managedFields entry (not of
/// the status subresource) that owns `f:spec` → `f:replicas`.
fn replicas_written(entries: &[ManagedFieldsEntry]) -> Option<OffsetDateTime> {
    entries
        .iter()
        .filter(|e| e.subresource.as_deref().is_none_or(str::is_empty))
        .filter(|e| {
            e.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
            })
        })
        .filter_map(|e| e.time.as_ref().and_then(|t| to_datetime(&t.0)))
        .max()
}

/// The verdict on a ReplicaSet's pod deleted at `deleted` (the request, API time).
pub fn replicaset_verdict(
    rs: &RsFacts,
    d: Option<&DeploymentFacts>,
    deleted: Option<OffsetDateTime>,
) -> Option<OwnerVerdict> {
    if let (Some(d), Some(mine), Some(current)) = (
        d,
        rs.revision.as_deref(),
        d.and_then(|d| d.revision.as_deref()),
    ) {
        if mine != current {
            return Some(OwnerVerdict {
                cause: StopCause::Rollout,
                evidence: format!(
                    "ReplicaSet {} is revision {mine} of Deployment {}, which is at revision {current}: a rolling update replaced the pod",
                    rs.name, d.name
                ),
            });
        }
    }
    let wanted = rs.replicas.unwrap_or(1);
    if wanted < rs.status_replicas || wanted == 0 {
        return Some(OwnerVerdict {
            cause: StopCause::ScaleDown,
            evidence: format!(
                "ReplicaSet {} wants {wanted} replicas and had {}: scaled down",
                rs.name, rs.status_replicas
            ),
        });
    }
    let (written, deleted) = (rs.replicas_written?, deleted?);
    let ago = deleted - written;
    (ago <= SCALED_BEFORE && ago >= -SCALED_AFTER).then(|| OwnerVerdict {
        cause: StopCause::ScaleDown,
        evidence: format!(
            "ReplicaSet {}'s replicas were set to {wanted} at {}, {}s before the deletion: scaled down",
            rs.name,
            crate::clock::rfc3339(written),
            ago.whole_seconds().max(0)
        ),
    })
}

/// The verdict on a StatefulSet's pod (`pod_name` ends in its ordinal).
pub fn statefulset_verdict(
    sts: &StsFacts,
    pod_name: &str,
    pod_revision: Option<&str>,
) -> Option<OwnerVerdict> {
    let ordinal = pod_name
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<i32>().ok());
    if let (Some(n), Some(replicas)) = (ordinal, sts.replicas) {
        if n >= replicas {
            return Some(OwnerVerdict {
                cause: StopCause::ScaleDown,
                evidence: format!(
                    "StatefulSet {} wants {replicas} replicas; ordinal {n} is beyond them: scaled down",
                    sts.name
                ),
            });
        }
    }
    match (pod_revision, sts.update_revision.as_deref()) {
        (Some(mine), Some(update)) if mine != update => Some(OwnerVerdict {
            cause: StopCause::Rollout,
            evidence: format!(
                "the pod is at revision {mine}; StatefulSet {} is updating to {update}: a rolling update replaced it",
                sts.name
            ),
        }),
        _ => None,
    }
}

#[derive(Clone)]
enum Cached {
    Rs(Option<RsFacts>),
    Deployment(Option<DeploymentFacts>),
    Sts(Option<StsFacts>),
}

/// (kind, namespace, name) of a cached owner.
type OwnerKey = (&'static str, String, String);

/// Reads owners on demand, with a short cache.
pub struct Owners {
    client: Client,
    metrics: Arc<KubeMetrics>,
    cache: Mutex<HashMap<OwnerKey, (Instant, Cached)>>,
}

impl Owners {
    pub fn new(client: Client, metrics: Arc<KubeMetrics>) -> Self {
        Self {
            client,
            metrics,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Why the deleted `pod`'s owner removed it, if its owners say.
    pub async fn explain(&self, pod: &ApiPod) -> Option<OwnerVerdict> {
        let (kind, name) = pod.stop.controller.as_ref()?;
        let ns = pod.namespace.as_str();
        match kind.as_str() {
            "ReplicaSet" => {
                let rs = self.replicaset(ns, name).await?;
                let d = match &rs.deployment {
                    Some(d) => self.deployment(ns, d).await,
                    None => None,
                };
                let deleted = pod.deletion_timestamp.map(|t| {
                    t - time::Duration::seconds(pod.effective_grace_seconds().clamp(0, 1 << 30))
                });
                replicaset_verdict(&rs, d.as_ref(), deleted)
            }
            "StatefulSet" => {
                let sts = self.statefulset(ns, name).await?;
                statefulset_verdict(&sts, &pod.name, pod.stop.revision_hash.as_deref())
            }
            _ => None,
        }
    }

    fn cached(&self, kind: &'static str, ns: &str, name: &str) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        let (at, v) = cache.get(&(kind, ns.to_string(), name.to_string()))?;
        (at.elapsed() < CACHE_TTL).then(|| v.clone())
    }

    fn store(&self, kind: &'static str, ns: &str, name: &str, v: Cached) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                (kind, ns.to_string(), name.to_string()),
                (Instant::now(), v),
            );
        }
    }

    async fn get<K>(&self, kind: &'static str, ns: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let got = api.get_opt(name).await;
        self.metrics
            .owner_request(kind, if got.is_ok() { "ok" } else { "error" });
        match got {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(kind, namespace = ns, name, error = %super::describe(&e), "cannot read a pod's owner");
                None
            }
        }
    }

    async fn replicaset(&self, ns: &str, name: &str) -> Option<RsFacts> {
        if let Some(Cached::Rs(v)) = self.cached("replicaset", ns, name) {
            return v;
        }
        let facts = self
            .get::<ReplicaSet>("replicaset", ns, name)
            .await
            .map(|rs| RsFacts {
                name: name.to_string(),
                revision: rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION).cloned()),
                replicas: rs.spec.replicas,
                status_replicas: rs.status.as_ref().map_or(0, |s| s.replicas),
                replicas_written: rs
                    .metadata
                    .managed_fields
                    .as_deref()
                    .and_then(replicas_written),
                deployment: rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                    .map(|o| o.name.clone()),
            });
        self.store("replicaset", ns, name, Cached::Rs(facts.clone()));
        facts
    }

    async fn deployment(&self, ns: &str, name: &str) -> Option<DeploymentFacts> {
        if let Some(Cached::Deployment(v)) = self.cached("deployment", ns, name) {
            return v;
        }
        let facts = self
            .get::<Deployment>("deployment", ns, name)
            .await
            .map(|d| DeploymentFacts {
                name: name.to_string(),
                revision: d
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION).cloned()),
            });
        self.store("deployment", ns, name, Cached::Deployment(facts.clone()));
        facts
    }

    async fn statefulset(&self, ns: &str, name: &str) -> Option<StsFacts> {
        if let Some(Cached::Sts(v)) = self.cached("statefulset", ns, name) {
            return v;
        }
        let facts = self
            .get::<StatefulSet>("statefulset", ns, name)
            .await
            .map(|s| StsFacts {
                name: name.to_string(),
                replicas: s.spec.replicas,
                update_revision: s.status.as_ref().and_then(|s| s.update_revision.clone()),
            });
        self.store("statefulset", ns, name, Cached::Sts(facts.clone()));
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(revision: &str, replicas: i32, had: i32) -> RsFacts {
        RsFacts {
            name: "web-abc".into(),
            revision: Some(revision.into()),
            replicas: Some(replicas),
            status_replicas: had,
            deployment: Some("web".into()),
            replicas_written: None,
        }
    }

    #[test]
    fn replicaset_pods() {
        let d = DeploymentFacts {
            name: "web".into(),
            revision: Some("2".into()),
        };
        // (ReplicaSet, deployment) → cause
        let cases = [
            (rs("1", 1, 2), Some(&d), Some("rollout")),
            (rs("2", 1, 2), Some(&d), Some("scale_down")),
            (rs("2", 0, 0), Some(&d), Some("scale_down")),
            (rs("2", 2, 2), Some(&d), None),
            (rs("1", 2, 2), None, None),
        ];
        for (i, (r, d, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                replicaset_verdict(&r, d, None).map(|v| v.cause.as_str()),
                want,
                "case {i}"
            );
        }
        let v = replicaset_verdict(&rs("1", 1, 2), Some(&d), None).expect("verdict");
        assert!(
            v.evidence
                .contains("revision 1 of Deployment web, which is at revision 2"),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn a_satisfied_replicaset_scaled_just_before_the_deletion_was_scaled_down() {
        let at = |s: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).expect("time");
        let d = DeploymentFacts {
            name: "web".into(),
            revision: Some("2".into()),
        };
        // (replicas written, deletion) → cause
        let cases = [
            (Some(at(0)), Some(at(1)), Some("scale_down")),
            (Some(at(0)), Some(at(30)), Some("scale_down")),
            (Some(at(0)), Some(at(31)), None),
            (Some(at(2)), Some(at(0)), Some("scale_down")),
            (Some(at(3)), Some(at(0)), None),
            (None, Some(at(0)), None),
            (Some(at(0)), None, None),
        ];
        for (i, (written, deleted, want)) in cases.into_iter().enumerate() {
            let r = RsFacts {
                replicas_written: written,
                ..rs("2", 2, 2)
            };
            assert_eq!(
                replicaset_verdict(&r, Some(&d), deleted).map(|v| v.cause.as_str()),
                want,
                "case {i}"
            );
        }
        let entries: Vec<ManagedFieldsEntry> = serde_json::from_value(serde_json::json!([
            {"manager": "kube-controller-manager", "operation": "Update", "time": "2026-12-01T10:00:05Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
             "time": "2026-12-01T10:00:09Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:replicas": {}}}},
            {"manager": "kubectl", "operation": "Update", "time": "2026-12-01T10:00:07Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}
        ]))
        .expect("entries");
        assert_eq!(
            replicas_written(&entries).map(|t| t.unix_timestamp() % 60),
            Some(5)
        );
    }

    #[test]
    fn statefulset_pods() {
        let sts = StsFacts {
            name: "db".into(),
            replicas: Some(2),
            update_revision: Some("db-2".into()),
        };
        let cases = [
            ("db-2", Some("db-2"), Some("scale_down")),
            ("db-1", Some("db-1"), Some("rollout")),
            ("db-1", Some("db-2"), None),
            ("db-0", None, None),
        ];
        for (i, (pod, rev, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                statefulset_verdict(&sts, pod, rev).map(|v| v.cause.as_str()),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn owners_are_asked_exactly_when_the_pod_itself_does_not_say() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        // (controller kind, DisruptionTarget reason, status reason) → ask the owners
        let cases = [
            ("ReplicaSet", None, None, true),
            ("StatefulSet", None, None, true),
            ("DaemonSet", None, None, false),
            (
                "ReplicaSet",
                pair("EvictionByEvictionAPI", "drain"),
                None,
                false,
            ),
            (
                "ReplicaSet",
                pair("TerminationByKubelet", "memory"),
                None,
                false,
            ),
            ("ReplicaSet", None, pair("Evicted", "low on memory"), false),
            // A reason the cause does not come from leaves the owners to say.
            (
                "ReplicaSet",
                pair("DeletionByPodGC", "orphaned"),
                None,
                true,
            ),
            (
                "ReplicaSet",
                None,
                pair("Terminated", "node shutdown"),
                true,
            ),
        ];
        for (i, (kind, disruption, status_reason, want)) in cases.into_iter().enumerate() {
            let mut pod = crate::kube::model::sample_pod("u1", "c1", true);
            pod.stop.controller = Some((kind.to_string(), "web-7d4b".to_string()));
            pod.stop.disruption = disruption;
            pod.stop.status_reason = status_reason;
            assert_eq!(worth_asking(&pod), want, "case {i}");
        }
    }
}
