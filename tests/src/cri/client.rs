//! A blocking client for containerd's CRI runtime service (`runtime.v1`), the calls
//! kubelet makes, over the daemon's unix socket. The emulator drives pods from plain
//! threads, so each call runs on a small private tokio runtime and is bounded by a
//! deadline: a hung daemon fails the test instead of hanging it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerStatus, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ExecSyncResponse, ImageSpec, ImageStatusRequest, ListPodSandboxRequest,
    PodSandboxConfig, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
    VersionResponse,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a call may take beyond any time it asks the runtime to wait for.
const CALL_SLACK: Duration = Duration::from_secs(30);

/// A connection to one containerd's CRI socket.
pub struct Cri {
    // Declared before the runtime: the channel's tasks live on it.
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    rt: tokio::runtime::Runtime,
}

/// A container's status as the runtime reports it, plus its PID 1 on the host.
#[derive(Debug, Clone)]
pub struct Status {
    pub status: ContainerStatus,
    /// Host pid of the container's PID 1 (0 once it has exited).
    pub pid: u32,
}

impl Cri {
    /// Connects to the socket; fails if nothing listens there yet.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cri-client")
            .enable_all()
            .build()
            .context("building the CRI client's runtime")?;
        let socket = socket.to_path_buf();
        let channel = rt.block_on(async {
            // The URI is a placeholder: the connector below always dials the socket.
            let endpoint =
                Endpoint::try_from("http://[::1]:50051")?.connect_timeout(Duration::from_secs(2));
            let connect =
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket: PathBuf = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }));
            tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| anyhow!("connecting timed out"))?
                .map_err(anyhow::Error::from)
        })?;
        Ok(Cri {
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
        })
    }

    fn call<T, F>(&self, what: &str, wait: Duration, call: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = wait + CALL_SLACK;
        self.rt.block_on(async {
            match tokio::time::timeout(deadline, call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(anyhow!(
                    "CRI {what}: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                Err(_) => Err(anyhow!("CRI {what} took longer than {deadline:?}")),
            }
        })
    }

    pub fn version(&self) -> Result<VersionResponse> {
        let mut c = self.client.clone();
        self.call("Version", Duration::ZERO, async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// Whether the runtime's image store has `image` (by reference).
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = self.images.clone();
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self.call("ImageStatus", Duration::ZERO, async move {
            c.image_status(request).await
        })?;
        Ok(r.image.is_some())
    }

    /// Returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let mut c = self.client.clone();
        let r = self.call("RunPodSandbox", Duration::ZERO, async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// Returns the container id.
    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.client.clone();
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let r = self.call("CreateContainer", Duration::ZERO, async move {
            c.create_container(request).await
        })?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.client.clone();
        let request = StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", Duration::ZERO, async move {
            c.start_container(request).await
        })
        .map(drop)
    }

    /// The runtime sends the stop signal, waits up to `timeout_seconds`, then SIGKILLs;
    /// the call returns once the container has exited.
    pub fn stop_container(&self, id: &str, timeout_seconds: i64) -> Result<()> {
        let mut c = self.client.clone();
        let request = StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_seconds,
        };
        let wait = Duration::from_secs(timeout_seconds.max(0).unsigned_abs());
        self.call("StopContainer", wait, async move {
            c.stop_container(request).await
        })
        .map(drop)
    }

    /// `ContainerStatus` with `verbose`, which adds the runtime's info (PID 1's pid).
    pub fn container_status(&self, id: &str) -> Result<Status> {
        let mut c = self.client.clone();
        let request = ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let r = self.call("ContainerStatus", Duration::ZERO, async move {
            c.container_status(request).await
        })?;
        let status = r
            .status
            .with_context(|| format!("ContainerStatus of {id} without a status"))?;
        // containerd's verbose info: {"info": "{\"pid\": 1234, ...}"}.
        let pid = r
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or(0);
        Ok(Status { status, pid })
    }

    /// Runs `cmd` in the container (its namespaces and cgroup, from outside), for at most
    /// `timeout`; a command that runs longer is an error.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecSyncResponse> {
        let mut c = self.client.clone();
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.to_vec(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        self.call(
            "ExecSync",
            timeout,
            async move { c.exec_sync(request).await },
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.client.clone();
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", Duration::ZERO, async move {
            c.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.client.clone();
        let request = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", Duration::ZERO, async move {
            c.remove_container(request).await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.client.clone();
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", Duration::ZERO, async move {
            c.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// Ids of every pod sandbox the runtime knows, ready or not.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        let r = self.call("ListPodSandbox", Duration::ZERO, async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(r.items.into_iter().map(|s| s.id).collect())
    }
}
