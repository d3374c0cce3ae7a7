//! A one-node cluster for the end-to-end suites: the fake API server, a kubeconfig for
//! it, and the node (kubelet emulator over a private containerd). Dropping it removes the
//! kubeconfig; the node and the API server clean up after themselves.

use std::{path::PathBuf, sync::Arc};

use crate::{agent::Agent, apiserver::ApiServer, kubelet::Node};

pub struct Cluster {
    pub api: Arc<ApiServer>,
    pub node: Node,
    pub kubeconfig: PathBuf,
    node_name: String,
}

impl Cluster {
    /// Starts the API server and the node `node_name`; panics (the test fails) when a
    /// part cannot start, with what went wrong. Root only.
    pub fn new(node_name: &str) -> Cluster {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root (cargo xtask test)"
        );
        let api = Arc::new(ApiServer::start().expect("api server"));
        let kubeconfig =
            std::env::temp_dir().join(format!("gracewatch-kubeconfig-{}", api.addr().port()));
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        // Sweeps what crashed runs left, then starts the node's containerd.
        let node = Node::new(api.clone(), node_name).expect("node with containerd");
        Cluster {
            api,
            node,
            kubeconfig,
            node_name: node_name.to_string(),
        }
    }

    /// The agent in Kubernetes mode for this node, as the DaemonSet runs it (Events on),
    /// with a 2 s stuck margin so stuck pods show within a test.
    pub fn agent(&self) -> Agent {
        self.agent_with(&[])
    }

    /// [`Cluster::agent`] with more flags.
    pub fn agent_with(&self, extra: &[&str]) -> Agent {
        let mut args = vec!["--stuck-margin-seconds", "2", "--emit-events"];
        args.extend_from_slice(extra);
        Agent::start_kubernetes(&self.kubeconfig, &self.node_name, &args).expect("agent")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}
