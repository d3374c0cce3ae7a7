//! The Kubernetes side: watchers of this node's pods, the endpoints of those pods and
//! kubelet's Events about them (`watch`), the model each pod is converted into on arrival
//! (`model`), and the API's view of the node that the updates build (`node`).

pub mod model;
pub mod node;
pub mod watch;

pub use model::{ApiContainerKind, ApiPod, PreStop, SANDBOX};
pub use node::{ApiPodState, NodeView, PodChange};
pub use watch::{EndpointState, KubeUpdate};

use std::path::Path;

/// What can stop Kubernetes mode from starting.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes mode needs this node's name: pass --node-name or set NODE_NAME (from the downward API: spec.nodeName), or run with --standalone")]
    NodeNameMissing,
    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("no Kubernetes client configuration (not in a cluster, no KUBECONFIG): {0}")]
    Config(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `--kubeconfig` / KUBECONFIG, else in-cluster or the default kubeconfig.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Ok(kube::Client::try_from(config)?)
}
