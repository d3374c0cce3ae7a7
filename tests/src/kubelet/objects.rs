//! What kubelet writes: the pod, EndpointSlice and Event objects the emulator puts in the
//! API server, and the CRI configs it hands the runtime (sandbox and container).

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};
use serde_json::{json, Value};

use super::{ContainerDef, Hook, PodDef};
use crate::cri::APP_IMAGE;
use crate::runc::Stamp;

pub(super) fn pod(def: &PodDef, node: &str) -> Value {
    let containers: Vec<Value> = def
        .containers
        .iter()
        .map(|c| {
            let mut v =
                json!({"name": c.name, "image": APP_IMAGE, "command": ["sh", "-c", c.script]});
            match &c.prestop {
                Some(Hook::Sleep(d)) => {
                    v["lifecycle"] = json!({"preStop": {"sleep": {"seconds": d.as_secs()}}})
                }
                Some(Hook::Exec(cmd)) => {
                    v["lifecycle"] = json!({"preStop": {"exec": {"command": cmd}}})
                }
                None => {}
            }
            v
        })
        .collect();
    let mut meta =
        json!({"name": def.name, "namespace": def.namespace, "labels": {"app": def.name}});
    if let Some(d) = &def.deployment {
        let hash = "7d4b9c8f6";
        meta["labels"]["pod-template-hash"] = json!(hash);
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": format!("{d}-{hash}"), "uid": "00000000-0000-4000-8000-000000000001", "controller": true}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": {"nodeName": node, "terminationGracePeriodSeconds": def.grace_seconds,
                    "containers": containers},
           "status": {"phase": "Pending"}})
}

pub(super) fn slice(def: &PodDef, node: &str, service: &str, uid: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": slice_name(def, service), "namespace": def.namespace,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip], "nodeName": node,
                          "conditions": {"ready": true, "serving": true, "terminating": false},
                          "targetRef": {"kind": "Pod", "namespace": def.namespace, "name": def.name, "uid": uid}}],
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

pub(super) fn slice_name(def: &PodDef, service: &str) -> String {
    format!("{service}-{}", def.name)
}

/// A kubelet Event about a container of the pod (core/v1, as kubelet's recorder).
pub(super) fn event(
    def: &PodDef,
    uid: &str,
    node: &str,
    container: &str,
    (kind, reason): (&str, &str),
    message: &str,
) -> Value {
    let now = rfc3339(Stamp::now().realtime_ns, false);
    json!({"apiVersion": "v1", "kind": "Event",
           "metadata": {"generateName": format!("{}.", def.name), "namespace": def.namespace},
           "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": def.name,
                              "namespace": def.namespace, "uid": uid,
                              "fieldPath": format!("spec.containers{{{container}}}")},
           "reason": reason, "message": message, "type": kind, "count": 1,
           "source": {"component": "kubelet", "host": node},
           "firstTimestamp": now, "lastTimestamp": now})
}

/// The pod cgroup kubelet's cgroupfs driver gives a BestEffort pod.
pub(super) fn cgroup_parent(uid: &str) -> String {
    format!("/kubepods/besteffort/pod{uid}")
}

/// Network: the node's, a harness shortcut (the API still shows a pod IP of its own, as a
/// CNI would have given it), unless the pod asks for its own (the harness's CNI plugin
/// then gives it the pod IP). PID: one namespace per container, so each app is its
/// container's PID 1. IPC: shared by the pod.
fn namespaces(def: &PodDef) -> NamespaceOption {
    NamespaceOption {
        network: if def.own_network {
            NamespaceMode::Pod.into()
        } else {
            NamespaceMode::Node.into()
        },
        pid: NamespaceMode::Container.into(),
        ipc: NamespaceMode::Pod.into(),
        ..Default::default()
    }
}

fn pod_labels(def: &PodDef, uid: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".into(), def.name.clone()),
        ("io.kubernetes.pod.namespace".into(), def.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), uid.into()),
    ])
}

pub(super) fn sandbox_config(def: &PodDef, uid: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: def.name.clone(),
            uid: uid.into(),
            namespace: def.namespace.clone(),
            attempt: 0,
        }),
        // kubelet names only pods with a network namespace of their own; in the node's,
        // runc refuses a hostname (no private UTS namespace).
        hostname: String::new(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: pod_labels(def, uid),
        annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(def)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn container_config(def: &PodDef, uid: &str, c: &ContainerDef) -> ContainerConfig {
    let mut labels = pod_labels(def, uid);
    labels.insert("io.kubernetes.container.name".into(), c.name.clone());
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: APP_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), c.script.clone()],
        // Relative to the sandbox's log directory, as kubelet sets it.
        log_path: format!("{}/0.log", c.name),
        labels,
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(def)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Nanoseconds since the epoch as `metav1.Time` (whole seconds) or `MicroTime`.
pub(super) fn rfc3339(ns: u64, fraction: bool) -> String {
    let ns = if fraction {
        ns / 1000 * 1000
    } else {
        ns / 1_000_000_000 * 1_000_000_000
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_api_times() {
        assert_eq!(rfc3339(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_763_800_000_123_456_789, true),
            "2025-11-22T08:26:40.123456Z"
        );
        assert_eq!(
            rfc3339(1_763_800_000_923_456_789, false),
            "2025-11-22T08:26:40Z"
        );
    }

    #[test]
    fn sandbox_and_containers_share_the_pod_cgroup_and_namespaces() {
        let def = PodDef::new("shop", "web-1", vec![ContainerDef::shell("app", "sleep 1")]);
        let uid = "0f0e0d0c-0b0a-4908-8706-050403020100";
        let sandbox = sandbox_config(&def, uid, Path::new("/logs"));
        let linux = sandbox.linux.as_ref().expect("linux");
        assert_eq!(
            linux.cgroup_parent,
            format!("/kubepods/besteffort/pod{uid}")
        );
        let meta = sandbox.metadata.as_ref().expect("metadata");
        assert_eq!((meta.name.as_str(), meta.uid.as_str()), ("web-1", uid));
        let c = container_config(&def, uid, &def.containers[0]);
        assert_eq!(c.command, ["sh", "-c", "sleep 1"]);
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.pid, i32::from(NamespaceMode::Container));
        assert_eq!(ns.network, i32::from(NamespaceMode::Node));
    }
}
