//! A kubelet emulator for one node: it runs each pod's containers as real runc
//! containers (kubelet-style cgroups, the pod's uid, container ids reported in the pod's
//! status), and on deletion follows kubelet's kill sequence — Killing event, preStop
//! (exec through `runc exec`, or sleep), grace minus preStop with a 2 s minimum, SIGTERM,
//! wait, SIGKILL, terminated status, pod removal — while an EndpointSlice controller takes
//! the pod out of its Service after a lag the scenario chooses.

use std::{
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{
    apiserver::{ApiServer, Resource},
    runc::{Container, ContainerSpec, ExitStatus, PodRef, Qos, Stamp, StopReport},
};

/// kubelet never gives a container less than this after its preStop hook.
const MIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub enum Hook {
    Sleep(Duration),
    Exec(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct ContainerDef {
    pub name: String,
    /// `sh -c` script run as the container's PID 1.
    pub script: String,
    pub prestop: Option<Hook>,
}

impl ContainerDef {
    pub fn shell(name: &str, script: &str) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            prestop: None,
        }
    }

    pub fn with_prestop(mut self, hook: Hook) -> Self {
        self.prestop = Some(hook);
        self
    }
}

#[derive(Clone, Debug)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    /// Deployment name: the pod is owned by ReplicaSet `<deployment>-<hash>`.
    pub deployment: Option<String>,
    pub grace_seconds: i64,
    pub containers: Vec<ContainerDef>,
    /// Service whose EndpointSlice lists the pod.
    pub service: Option<String>,
}

impl PodDef {
    pub fn new(namespace: &str, name: &str, containers: Vec<ContainerDef>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            deployment: None,
            grace_seconds: 30,
            containers,
            service: None,
        }
    }
}

/// A pod the emulator runs.
pub struct RunningPod {
    pub def: PodDef,
    pub uid: String,
    pub ip: String,
    pub containers: Vec<(ContainerDef, Container)>,
}

impl RunningPod {
    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers
            .iter()
            .find(|(d, _)| d.name == name)
            .map(|(_, c)| c)
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `kubectl delete --grace-period`; `None`: the pod's own.
    pub grace_seconds: Option<i64>,
    /// `--force` with grace 0: the API forgets the pod at once, kubelet still kills.
    pub force: bool,
    /// Deletion → endpoint marked terminating (the EndpointSlice controller's lag).
    pub endpoint_lag: Duration,
}

/// What the emulator did and when (its own clock), for tests to compare with the agent.
#[derive(Debug)]
pub struct DeleteReport {
    pub requested: Stamp,
    pub endpoint_terminating: Option<Stamp>,
    pub containers: Vec<ContainerReport>,
    pub removed: Stamp,
}

#[derive(Debug)]
pub struct ContainerReport {
    pub name: String,
    pub killing: Stamp,
    pub prestop: Option<(Stamp, Stamp)>,
    pub stop: StopReport,
}

impl DeleteReport {
    pub fn container(&self, name: &str) -> Option<&ContainerReport> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Deletion request → last container exit, as the emulator saw it.
    pub fn duration(&self) -> Duration {
        let last = self
            .containers
            .iter()
            .map(|c| c.stop.exited.boottime_ns)
            .max()
            .unwrap_or(self.requested.boottime_ns);
        Duration::from_nanos(last.saturating_sub(self.requested.boottime_ns))
    }
}

pub struct Node {
    pub api: Arc<ApiServer>,
    pub name: String,
    next_ip: std::sync::atomic::AtomicU32,
}

impl Node {
    pub fn new(api: Arc<ApiServer>, name: &str) -> Self {
        Self {
            api,
            name: name.into(),
            next_ip: std::sync::atomic::AtomicU32::new(10),
        }
    }

    /// Creates the pod in the API, starts its containers, reports them running and ready.
    pub fn run_pod(&self, def: PodDef) -> anyhow::Result<RunningPod> {
        let created = self.api.create(Resource::Pods, self.pod_object(&def))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .context("pod without uid")?
            .to_string();
        let ip = format!(
            "10.244.0.{}",
            self.next_ip
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let pod_ref = PodRef {
            uid: uid.clone(),
            qos: Qos::BestEffort,
        };
        let mut containers = Vec::new();
        for c in &def.containers {
            let mut spec = ContainerSpec::shell(&c.name, &c.script)?;
            spec.pod = Some(pod_ref.clone());
            containers.push((c.clone(), Container::start(spec)?));
        }
        let statuses: Vec<Value> = containers
            .iter()
            .map(|(d, c)| {
                json!({"name": d.name, "containerID": format!("containerd://{}", c.id()), "image": "busybox",
                       "imageID": "", "ready": true, "restartCount": 0, "started": true,
                       "state": {"running": {"startedAt": now_rfc3339()}}})
            })
            .collect();
        self.api
            .modify(Resource::Pods, &def.namespace, &def.name, |p| {
                p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                 "conditions": [{"type": "Ready", "status": "True"}],
                                 "containerStatuses": statuses});
            })?;
        if let Some(service) = &def.service {
            self.api.create(
                Resource::EndpointSlices,
                self.slice_object(&def, service, &uid, &ip),
            )?;
        }
        Ok(RunningPod {
            def,
            uid,
            ip,
            containers,
        })
    }

    fn pod_object(&self, def: &PodDef) -> Value {
        let containers: Vec<Value> = def
            .containers
            .iter()
            .map(|c| {
                let mut v =
                    json!({"name": c.name, "image": "busybox", "command": ["sh", "-c", c.script]});
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
               "spec": {"nodeName": self.name, "terminationGracePeriodSeconds": def.grace_seconds, "containers": containers},
               "status": {"phase": "Pending"}})
    }

    fn slice_object(&self, def: &PodDef, service: &str, uid: &str, ip: &str) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-{}", def.name), "namespace": def.namespace,
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [ip], "nodeName": self.name,
                              "conditions": {"ready": true, "serving": true, "terminating": false},
                              "targetRef": {"kind": "Pod", "namespace": def.namespace, "name": def.name, "uid": uid}}],
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    }

    /// `kubectl delete pod`, then what the EndpointSlice controller and kubelet do.
    pub fn delete_pod(
        &self,
        pod: &RunningPod,
        opts: &DeleteOptions,
    ) -> anyhow::Result<DeleteReport> {
        let (ns, name) = (pod.def.namespace.as_str(), pod.def.name.as_str());
        let requested = Stamp::now();
        let grace_req = if opts.force {
            Some(0)
        } else {
            opts.grace_seconds
        };
        let deleted = self
            .api
            .delete_gracefully(Resource::Pods, ns, name, grace_req)?;
        let grace = if opts.force {
            0
        } else {
            deleted["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(pod.def.grace_seconds)
        };
        let (removed_tx, removed_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| -> anyhow::Result<DeleteReport> {
            let endpoints =
                s.spawn(|| self.endpoint_controller(pod, opts.endpoint_lag, removed_rx));
            let kills: Vec<_> = pod
                .containers
                .iter()
                .map(|(def, c)| s.spawn(move || self.kill_container(pod, def, c, grace)))
                .collect();
            let mut containers = Vec::new();
            for k in kills {
                match k.join() {
                    Ok(r) => containers.push(r?),
                    Err(_) => bail!("a container kill thread panicked"),
                }
            }
            if !opts.force {
                // kubelet's final delete, once every container has stopped.
                self.api.delete(Resource::Pods, ns, name)?;
            }
            let removed = Stamp::now();
            let _ = removed_tx.send(());
            let endpoint_terminating = match endpoints.join() {
                Ok(r) => r?,
                Err(_) => bail!("the endpoint controller thread panicked"),
            };
            Ok(DeleteReport {
                requested,
                endpoint_terminating,
                containers,
                removed,
            })
        })
    }

    /// The API side of `kubectl delete` alone: kubelet does not act on it (a hung kubelet,
    /// or processes it cannot kill), so the pod stays Terminating.
    pub fn delete_without_kubelet(
        &self,
        pod: &RunningPod,
        grace_seconds: i64,
    ) -> anyhow::Result<Stamp> {
        let requested = Stamp::now();
        self.api.delete_gracefully(
            Resource::Pods,
            &pod.def.namespace,
            &pod.def.name,
            Some(grace_seconds),
        )?;
        Ok(requested)
    }

    /// Marks the endpoint terminating after `lag`, removes it once the pod is gone.
    fn endpoint_controller(
        &self,
        pod: &RunningPod,
        lag: Duration,
        removed: mpsc::Receiver<()>,
    ) -> anyhow::Result<Option<Stamp>> {
        let Some(service) = &pod.def.service else {
            return Ok(None);
        };
        let slice = format!("{service}-{}", pod.def.name);
        let ns = pod.def.namespace.as_str();
        let deadline = Instant::now() + lag;
        let mut marked = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if marked.is_none() && left.is_zero() {
                self.api.modify(Resource::EndpointSlices, ns, &slice, |s| {
                    s["endpoints"][0]["conditions"] =
                        json!({"ready": false, "serving": false, "terminating": true});
                })?;
                marked = Some(Stamp::now());
            }
            let wait = if marked.is_none() {
                left
            } else {
                Duration::from_secs(60)
            };
            match removed.recv_timeout(wait) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if marked.is_none() {
                        // The pod went before the lag ran out: the controller still
                        // marks it terminating first, then drops it.
                        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                        continue;
                    }
                    self.api.delete(Resource::EndpointSlices, ns, &slice)?;
                    return Ok(marked);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn kill_container(
        &self,
        pod: &RunningPod,
        def: &ContainerDef,
        c: &Container,
        grace: i64,
    ) -> anyhow::Result<ContainerReport> {
        let killing = Stamp::now();
        self.event(
            pod,
            &def.name,
            "Killing",
            &format!("Stopping container {}", def.name),
        )?;
        let budget = Duration::from_secs(grace.max(0) as u64);
        let started = Instant::now();
        let prestop = match (&def.prestop, grace > 0) {
            (Some(hook), true) => {
                let begin = Stamp::now();
                match hook {
                    Hook::Sleep(d) => std::thread::sleep((*d).min(budget)),
                    Hook::Exec(cmd) => {
                        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                        let out = c.exec(&args)?;
                        if !out.status.success() {
                            let msg = format!(
                                "PreStopHook failed: {}",
                                String::from_utf8_lossy(&out.stderr).trim()
                            );
                            self.event(pod, &def.name, "FailedPreStopHook", &msg)?;
                        }
                    }
                }
                Some((begin, Stamp::now()))
            }
            _ => None,
        };
        let left = budget.saturating_sub(started.elapsed()).max(MIN_GRACE);
        let stop = c.stop_like_kubelet(left)?;
        let (exit_code, reason) = match stop.status {
            ExitStatus::Code(0) => (0, "Completed"),
            ExitStatus::Code(code) => (code, "Error"),
            s @ ExitStatus::Signal(_) => (s.kubelet_exit_code(), "Error"),
        };
        let ns = pod.def.namespace.as_str();
        // A force-deleted pod is already gone from the API: nothing to report to.
        if self.api.get(Resource::Pods, ns, &pod.def.name).is_some() {
            self.api.modify(Resource::Pods, ns, &pod.def.name, |p| {
                if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                    for st in statuses.iter_mut().filter(|st| st["name"] == def.name.as_str()) {
                        st["ready"] = json!(false);
                        st["state"] = json!({"terminated": {"exitCode": exit_code, "reason": reason,
                            "containerID": format!("containerd://{}", c.id()), "finishedAt": now_rfc3339()}});
                    }
                }
            })?;
        }
        Ok(ContainerReport {
            name: def.name.clone(),
            killing,
            prestop,
            stop,
        })
    }

    /// A kubelet Event about a container of the pod (core/v1, as kubelet's recorder).
    fn event(
        &self,
        pod: &RunningPod,
        container: &str,
        reason: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        let now = now_rfc3339_seconds();
        self.api.create(
            Resource::CoreEvents,
            json!({"apiVersion": "v1", "kind": "Event",
                   "metadata": {"generateName": format!("{}.", pod.def.name), "namespace": pod.def.namespace},
                   "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.def.name,
                                      "namespace": pod.def.namespace, "uid": pod.uid,
                                      "fieldPath": format!("spec.containers{{{container}}}")},
                   "reason": reason, "message": message, "type": "Normal", "count": 1,
                   "source": {"component": "kubelet", "host": self.name},
                   "firstTimestamp": now, "lastTimestamp": now}),
        )?;
        Ok(())
    }
}

fn now_rfc3339() -> String {
    rfc3339(Stamp::now().realtime_ns, true)
}

/// Kubernetes `metav1.Time` keeps whole seconds.
fn now_rfc3339_seconds() -> String {
    rfc3339(Stamp::now().realtime_ns, false)
}

fn rfc3339(ns: u64, fraction: bool) -> String {
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
}
