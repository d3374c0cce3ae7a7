//! A kubelet emulator for one node, on a real containerd through its CRI API, as kubelet
//! drives it. `run_pod`: RunPodSandbox (the pod's uid, name and namespace; the node's
//! network namespace, one PID namespace per container), CreateContainer and
//! StartContainer per container (`sh -c <script>` from the busybox image), container ids
//! reported in the pod's status (`containerd://<id>`). A pod may ask for a network
//! namespace of its own (`PodDef::own_network`), reached from the node at its pod IP. `delete_pod`: kubelet's kill
//! sequence per container (module `kill`), while an EndpointSlice controller takes the
//! pod out of its Service after a lag the scenario chooses; then StopPodSandbox,
//! RemoveContainer, RemovePodSandbox, the pod cgroup removed, the pod removed from the API.
//!
//! Every time in a [`DeleteReport`] is the emulator's own clock, read around each step.

mod endpoints;
mod kill;
mod objects;

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc,
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::json;

pub use kill::StopReport;

use crate::{
    apiserver::{ApiServer, Resource},
    cri::Containerd,
    runc::{state, Stamp},
};

/// How long a started container's PID 1 may stay runc's init before it execs the app.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// What runc's init process calls itself until it has exec'd the container's program.
const RUNC_INIT_COMM: &str = "runc:[2:INIT]";

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
    /// A network namespace of its own, reached from the node at the pod IP (the
    /// harness's CNI plugin makes it); otherwise the node's, with a pod IP only in the API.
    pub own_network: bool,
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
            own_network: false,
        }
    }
}

/// A container of a pod the emulator runs.
#[derive(Debug)]
pub struct PodContainer {
    id: String,
    /// Host pid of PID 1, and its start time (so a reused pid is not mistaken for it).
    pid: u32,
    start_time: u64,
}

impl PodContainer {
    /// The 64-hex-digit container id (`containerd://<id>` in the pod's status).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of the container's PID 1.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// A pod the emulator runs.
pub struct RunningPod {
    pub def: PodDef,
    pub uid: String,
    pub ip: String,
    pub sandbox_id: String,
    pub containers: Vec<(ContainerDef, PodContainer)>,
}

impl RunningPod {
    pub fn container(&self, name: &str) -> Option<&PodContainer> {
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
    /// Last container stopped → StopPodSandbox (kubelet's pod sync takes a while; the
    /// pod's network namespace, and its address, live until then).
    pub sandbox_delay: Duration,
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
    runtime: Containerd,
    next_ip: AtomicU32,
    /// Third octet of the next own-network pod's /24 (`10.245.<n>.0/24`).
    next_net: AtomicU32,
}

impl Node {
    /// Starts the node's container runtime, a private containerd (sweeping what crashed
    /// runs left first). Dropping the node removes it with every pod still running.
    pub fn new(api: Arc<ApiServer>, name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            api,
            name: name.into(),
            runtime: Containerd::start()?,
            next_ip: AtomicU32::new(10),
            next_net: AtomicU32::new(10),
        })
    }

    /// The node's containerd.
    pub fn runtime(&self) -> &Containerd {
        &self.runtime
    }

    /// Creates the pod in the API, runs its sandbox and containers through CRI, reports
    /// them running and ready.
    pub fn run_pod(&self, def: PodDef) -> anyhow::Result<RunningPod> {
        let created = self
            .api
            .create(Resource::Pods, objects::pod(&def, &self.name))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .context("pod without uid")?
            .to_string();
        let ip = if def.own_network {
            let n = self.next_net.fetch_add(1, Ordering::Relaxed);
            if n > 250 {
                bail!("out of pod networks");
            }
            let ip = format!("10.245.{n}.2");
            self.runtime.assign_pod_ip(&def.namespace, &def.name, &ip)?;
            ip
        } else {
            format!("10.244.0.{}", self.next_ip.fetch_add(1, Ordering::Relaxed))
        };
        let cri = self.runtime.cri()?;
        let log_dir = self.runtime.pod_log_dir(&def.namespace, &def.name, &uid)?;
        let sandbox_config = objects::sandbox_config(&def, &uid, &log_dir);
        let sandbox_id = self
            .runtime
            .run_pod_sandbox(sandbox_config.clone())
            .with_context(|| format!("RunPodSandbox {}/{}", def.namespace, def.name))?;
        let mut containers = Vec::new();
        let mut statuses = Vec::new();
        for c in &def.containers {
            std::fs::create_dir_all(log_dir.join(&c.name))?;
            let config = objects::container_config(&def, &uid, c);
            let id = cri.create_container(&sandbox_id, config, sandbox_config.clone())?;
            cri.start_container(&id)?;
            let (container, status) = self.wait_exec(&id)?;
            statuses.push(json!({"name": c.name, "containerID": format!("containerd://{id}"),
                "image": crate::cri::APP_IMAGE, "imageID": status.image_ref, "ready": true,
                "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": objects::rfc3339(status.started_at.unsigned_abs(), true)}}}));
            containers.push((c.clone(), container));
        }
        self.api
            .modify(Resource::Pods, &def.namespace, &def.name, |p| {
                p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                 "conditions": [{"type": "Ready", "status": "True"}],
                                 "containerStatuses": statuses});
            })?;
        if let Some(service) = &def.service {
            self.api.create(
                Resource::EndpointSlices,
                objects::slice(&def, &self.name, service, &uid, &ip),
            )?;
        }
        Ok(RunningPod {
            def,
            uid,
            ip,
            sandbox_id,
            containers,
        })
    }

    /// StartContainer returns once runc has let PID 1 go, which may still be runc's init:
    /// until it has exec'd, the script and its signal handlers are not there.
    fn wait_exec(&self, id: &str) -> anyhow::Result<(PodContainer, k8s_cri::v1::ContainerStatus)> {
        let deadline = Instant::now() + EXEC_TIMEOUT;
        loop {
            let status = self.runtime.cri()?.container_status(id)?;
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", status.pid));
            let start_time = state::start_time(status.pid);
            match (status.pid, comm, start_time) {
                (pid, Ok(comm), Some(start_time))
                    if pid > 0 && comm.trim_end() != RUNC_INIT_COMM =>
                {
                    let container = PodContainer {
                        id: id.to_string(),
                        pid,
                        start_time,
                    };
                    return Ok((container, status.status));
                }
                _ if Instant::now() > deadline => {
                    bail!(
                        "container {id} never exec'd its program: {:?}",
                        status.status
                    )
                }
                _ => sleep(Duration::from_millis(1)),
            }
        }
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
            // Owned here, so an early error return disconnects the endpoint controller
            // instead of leaving the scope waiting for it.
            let removed_tx = removed_tx;
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
            sleep(opts.sandbox_delay);
            self.remove_sandbox(pod)?;
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

    /// kubelet's pod cleanup once its containers have stopped: StopPodSandbox (the
    /// runtime SIGKILLs the pause process), RemoveContainer, RemovePodSandbox, then the
    /// pod cgroup containerd leaves behind.
    fn remove_sandbox(&self, pod: &RunningPod) -> anyhow::Result<()> {
        let cri = self.runtime.cri()?;
        cri.stop_pod_sandbox(&pod.sandbox_id)?;
        for (_, c) in &pod.containers {
            cri.remove_container(c.id())?;
        }
        cri.remove_pod_sandbox(&pod.sandbox_id)?;
        self.runtime
            .remove_pod_cgroup(&objects::cgroup_parent(&pod.uid))
    }

    /// A kubelet Event (`(type, reason)`) about a container of the pod.
    fn event(
        &self,
        pod: &RunningPod,
        container: &str,
        kind_reason: (&str, &str),
        message: &str,
    ) -> anyhow::Result<()> {
        let event = objects::event(
            &pod.def,
            &pod.uid,
            &self.name,
            container,
            kind_reason,
            message,
        );
        self.api.create(Resource::CoreEvents, event)?;
        Ok(())
    }
}
