//! Finding and reading agents through the API: a pod's node from its spec, the Gracewatch
//! agent pod on that node by label and field selector, and its HTTP endpoints through the
//! API server's pod proxy (`/api/v1/namespaces/<ns>/pods/<agent>:<port>/proxy/<path>`),
//! which needs only `get` on `pods/proxy` in the agent's namespace.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Request, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::PluginError;
use crate::explain::MAX_ANSWER_BYTES;

/// The label the DaemonSet's pods carry (deploy/kustomize/base/daemonset.yaml).
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=gracewatch";

/// Where the agents are.
pub struct Agents<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    pub port: u16,
}

/// One agent pod: its name and node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    pub name: String,
    pub node: String,
}

fn api_error(what: impl Into<String>, e: &kube::Error) -> PluginError {
    PluginError::Api {
        what: what.into(),
        message: crate::kube::describe(e),
    }
}

impl Agents<'_> {
    /// The answer to `path` of the agent that saw pod `namespace/pod`: the one on its node
    /// while the pod exists; once it is gone from the API (a finished termination), the
    /// first agent that has a record of it.
    pub async fn terminations_of(
        &self,
        namespace: &str,
        pod: &str,
        path: &str,
    ) -> Result<(AgentPod, StatusCode, Bytes), PluginError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let found = pods
            .get_opt(pod)
            .await
            .map_err(|e| api_error(format!("reading pod {namespace}/{pod}"), &e))?;
        if let Some(found) = found {
            let node =
                found
                    .spec
                    .and_then(|s| s.node_name)
                    .ok_or_else(|| PluginError::NotScheduled {
                        namespace: namespace.into(),
                        pod: pod.into(),
                    })?;
            let agent = self.on_node(&node).await?;
            let (status, body) = self.get(&agent, path).await?;
            return Ok((agent, status, body));
        }
        let agents = self.all().await?;
        for agent in &agents {
            let (status, body) = self.get(agent, path).await?;
            if status == StatusCode::OK {
                return Ok((agent.clone(), status, body));
            }
        }
        Err(PluginError::NowhereFound {
            namespace: namespace.into(),
            pod: pod.into(),
            agents: agents.len(),
        })
    }

    /// The running agent pod on `node`.
    pub async fn on_node(&self, node: &str) -> Result<AgentPod, PluginError> {
        let params = ListParams::default()
            .labels(AGENT_SELECTOR)
            .fields(&format!("spec.nodeName={node}"));
        self.list(&params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| PluginError::NoAgentOnNode {
                node: node.into(),
                namespace: self.namespace.into(),
            })
    }

    /// Every running agent pod.
    pub async fn all(&self) -> Result<Vec<AgentPod>, PluginError> {
        let agents = self
            .list(&ListParams::default().labels(AGENT_SELECTOR))
            .await?;
        if agents.is_empty() {
            return Err(PluginError::NoAgents(self.namespace.into()));
        }
        Ok(agents)
    }

    async fn list(&self, params: &ListParams) -> Result<Vec<AgentPod>, PluginError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace);
        let list = api.list(params).await.map_err(|e| {
            api_error(
                format!("listing agent pods in namespace {}", self.namespace),
                &e,
            )
        })?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                let status = p.status.as_ref();
                status.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && status.and_then(|s| s.pod_ip.as_deref()).is_some()
            })
            .filter_map(|p| {
                Some(AgentPod {
                    name: p.metadata.name?,
                    node: p.spec?.node_name?,
                })
            })
            .collect())
    }

    /// GET `path` of `agent` through the pod proxy: the agent's own status and body. An
    /// answer from the API server itself (no such pod, forbidden, unreachable) is an
    /// error naming the agent and, for a refusal, the permission it needs.
    pub async fn get(
        &self,
        agent: &AgentPod,
        path: &str,
    ) -> Result<(StatusCode, Bytes), PluginError> {
        let uri = proxy_path(self.namespace, &agent.name, self.port, path);
        let request = Request::get(&uri)
            .body(kube::client::Body::from(Vec::new()))
            .map_err(|e| PluginError::Api {
                what: uri.clone(),
                message: e.to_string(),
            })?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| api_error(format!("GET {uri}"), &e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| PluginError::Api {
                what: format!("GET {uri}"),
                message: format!("reading the answer: {e}"),
            })?
            .to_bytes();
        if let Some(message) = api_status_message(&body) {
            let hint = match status {
                StatusCode::FORBIDDEN => " (you need `get` on pods/proxy in the agent's namespace: the ClusterRole gracewatch-viewer in deploy/)",
                _ => "",
            };
            return Err(PluginError::Proxy {
                agent: format!("{}/{} on node {}", self.namespace, agent.name, agent.node),
                status,
                message,
                hint,
            });
        }
        Ok((status, body))
    }
}

/// The pod proxy path of `path` on `pod:port`.
pub fn proxy_path(namespace: &str, pod: &str, port: u16, path: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}")
}

/// The message of a Kubernetes `Status` body: the API server answered instead of the
/// agent (whose bodies are termination lists, metrics or plain text).
fn api_status_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    (value["kind"] == "Status" && value["apiVersion"] == "v1").then(|| {
        crate::explain::printable(value["message"].as_str().unwrap_or("(no message)")).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(
            proxy_path("gracewatch", "gracewatch-x1", 9610, "/debug/terminations/shop/web-1"),
            "/api/v1/namespaces/gracewatch/pods/gracewatch-x1:9610/proxy/debug/terminations/shop/web-1"
        );
    }

    #[test]
    fn tells_api_server_answers_from_agent_answers() {
        let cases: [(&str, Option<&str>); 4] = [
            (
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" is forbidden","code":403}"#,
                Some("pods \"x\" is forbidden"),
            ),
            (r#"{"terminations":[]}"#, None),
            ("no such endpoint\n", None),
            (
                r#"{"kind":"Status","apiVersion":"v1","message":"a\u001b[2Jb"}"#,
                Some("a\\x1b[2Jb"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                api_status_message(body.as_bytes()).as_deref(),
                want,
                "{body}"
            );
        }
    }
}
