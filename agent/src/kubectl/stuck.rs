//! `kubectl gracewatch stuck`: pods past their deletion time plus grace period (plus a
//! margin) that still exist, cluster-wide, each with its reason: the STUCK_TERMINATING
//! diagnosis of the agent on its node (live processes and their state, containers never
//! reported terminated, finalizers), or what the API alone shows when no agent has one.

use std::{collections::BTreeMap, fmt::Write as _};

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::{locate::Agents, PluginError};
use crate::explain::{printable, Palette};
use crate::report::Termination;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StuckPod {
    pub namespace: String,
    pub pod: String,
    pub node: Option<String>,
    /// Seconds since deletion time + grace period.
    pub overdue_seconds: i64,
    pub reason: String,
    /// `agent` when the reason is the agent's diagnosis, `api` when it is the API's view.
    pub source: &'static str,
}

/// A pod the API shows as stuck, before its agent is asked.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    namespace: String,
    pod: String,
    node: Option<String>,
    overdue_seconds: i64,
    finalizers: Vec<String>,
}

pub async fn find(agents: &Agents<'_>, margin_seconds: u64) -> Result<Vec<StuckPod>, PluginError> {
    let api: Api<Pod> = Api::all(agents.client.clone());
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(|e| PluginError::Api {
            what: "listing pods in all namespaces".into(),
            message: crate::kube::describe(&e),
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let candidates: Vec<Candidate> = pods
        .items
        .iter()
        .filter_map(|p| candidate(p, now, margin_seconds))
        .collect();
    let mut agent_by_node = BTreeMap::new();
    let mut out = Vec::new();
    for c in candidates {
        let (reason, source) = match &c.node {
            None => ("not scheduled on any node".to_string(), "api"),
            Some(node) => {
                if !agent_by_node.contains_key(node) {
                    let found = agents.on_node(node).await.ok();
                    agent_by_node.insert(node.clone(), found);
                }
                match agent_by_node.get(node).cloned().flatten() {
                    None => (
                        api_reason(&c, &format!("no Gracewatch agent on node {node}")),
                        "api",
                    ),
                    Some(agent) => {
                        let path = format!("/debug/terminations/{}/{}", c.namespace, c.pod);
                        let (status, body) = agents.get(&agent, &path).await?;
                        match agent_reason(status, &body) {
                            Some(reason) => (reason, "agent"),
                            None => (
                                api_reason(
                                    &c,
                                    &format!("the agent on {node} has no diagnosis yet"),
                                ),
                                "api",
                            ),
                        }
                    }
                }
            }
        };
        out.push(StuckPod {
            namespace: c.namespace,
            pod: c.pod,
            node: c.node,
            overdue_seconds: c.overdue_seconds,
            reason,
            source,
        });
    }
    Ok(out)
}

fn candidate(p: &Pod, now: i64, margin_seconds: u64) -> Option<Candidate> {
    let deadline = p.metadata.deletion_timestamp.as_ref()?.0.as_second();
    let overdue = now - deadline;
    (overdue >= margin_seconds as i64).then(|| Candidate {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        pod: p.metadata.name.clone().unwrap_or_default(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        overdue_seconds: overdue,
        finalizers: p.metadata.finalizers.clone().unwrap_or_default(),
    })
}

/// The agent's STUCK_TERMINATING message for the pod, if it has one.
fn agent_reason(status: StatusCode, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        terminations: Vec<Termination>,
    }
    if status != StatusCode::OK {
        return None;
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    body.terminations
        .iter()
        .flat_map(|t| &t.diagnoses)
        .find(|d| d.code == "STUCK_TERMINATING")
        .map(|d| d.message.clone())
}

fn api_reason(c: &Candidate, why: &str) -> String {
    if c.finalizers.is_empty() {
        why.to_string()
    } else {
        format!(
            "{why}; finalizers not yet removed: {}",
            c.finalizers.join(", ")
        )
    }
}

pub fn json(found: &[StuckPod]) -> String {
    let body = serde_json::json!({ "stuck": found });
    // Serialising plain strings and numbers cannot fail.
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    format!("{text}\n")
}

pub fn table(found: &[StuckPod], palette: Palette) -> String {
    if found.is_empty() {
        return "No pods stuck in Terminating.\n".into();
    }
    let rows: Vec<[String; 4]> = found
        .iter()
        .map(|s| {
            [
                printable(&format!("{}/{}", s.namespace, s.pod)).into_owned(),
                printable(s.node.as_deref().unwrap_or("-")).into_owned(),
                format!("{}s", s.overdue_seconds),
                printable(&s.reason).into_owned(),
            ]
        })
        .collect();
    let header = ["POD", "NODE", "OVERDUE", "REASON"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    let head = format!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {}",
        header[0], header[1], header[2], header[3]
    );
    let _ = writeln!(out, "{}", paint(palette.heading, &head, palette));
    for r in &rows {
        let _ = writeln!(
            out,
            "{}  {:<w1$}  {}  {}",
            paint(palette.bad, &format!("{:<w0$}", r[0]), palette),
            r[1],
            format_args!("{:>w2$}", r[2]),
            r[3]
        );
    }
    out
}

fn paint(style: &str, text: &str, palette: Palette) -> String {
    if style.is_empty() {
        text.to_string()
    } else {
        format!("{style}{text}{}", palette.reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(deletion: Option<&str>, finalizers: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "namespace": "shop", "name": "web-1",
                "deletionTimestamp": deletion,
                "finalizers": finalizers,
            },
            "spec": {"nodeName": "node-a", "containers": []},
        }))
        .expect("pod")
    }

    #[test]
    fn stuck_means_past_deletion_plus_grace_plus_margin() {
        // 2026-01-01T00:00:00Z
        let deadline = 1_767_225_600;
        let cases = [
            (None, 1_000, 0, false),
            (Some("2026-01-01T00:00:00Z"), deadline - 1, 0, false),
            (Some("2026-01-01T00:00:00Z"), deadline, 0, true),
            (Some("2026-01-01T00:00:00Z"), deadline + 29, 30, false),
            (Some("2026-01-01T00:00:00Z"), deadline + 30, 30, true),
        ];
        for (deletion, now, margin, stuck) in cases {
            let found = candidate(&pod(deletion, &[]), now, margin);
            assert_eq!(
                found.is_some(),
                stuck,
                "{deletion:?} now={now} margin={margin}"
            );
        }
        let c = candidate(
            &pod(Some("2026-01-01T00:00:00Z"), &["example.com/keep"]),
            deadline + 40,
            30,
        )
        .expect("stuck");
        assert_eq!(c.overdue_seconds, 40);
        assert_eq!(
            api_reason(&c, "the agent on node-a has no diagnosis yet"),
            "the agent on node-a has no diagnosis yet; finalizers not yet removed: example.com/keep"
        );
    }

    #[test]
    fn reason_is_the_agents_stuck_diagnosis() {
        let body = serde_json::json!({"terminations": [{
            "namespace": "shop", "pod": "web-1", "uid": null, "state": "in_progress",
            "started_at": null, "finished_at": null, "grace_period_seconds": 1.0,
            "containers": [], "timeline": [],
            "diagnoses": [{"code": "STUCK_TERMINATING", "container": null,
                           "message": "5s past deletion + grace period and still present: processes still alive: sleep"}]
        }]})
        .to_string();
        assert_eq!(
            agent_reason(StatusCode::OK, body.as_bytes()).as_deref(),
            Some("5s past deletion + grace period and still present: processes still alive: sleep")
        );
        assert_eq!(
            agent_reason(StatusCode::NOT_FOUND, br#"{"terminations":[]}"#),
            None
        );
    }

    #[test]
    fn table_escapes_and_aligns() {
        let found = [StuckPod {
            namespace: "shop".into(),
            pod: "web-1".into(),
            node: Some("node-a".into()),
            overdue_seconds: 42,
            reason: "processes still alive: \u{1b}[2Jevil".into(),
            source: "agent",
        }];
        let text = table(&found, Palette::PLAIN);
        assert!(
            text.starts_with("POD         NODE    OVERDUE  REASON\n"),
            "{text}"
        );
        assert!(
            text.contains("shop/web-1  node-a      42s  processes still alive: \\x1b[2Jevil"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
        assert!(table(&found, Palette::ANSI).contains("\u{1b}[31mshop/web-1"));
        assert_eq!(
            table(&[], Palette::PLAIN),
            "No pods stuck in Terminating.\n"
        );
        let json: serde_json::Value = serde_json::from_str(&json(&found)).expect("json");
        assert_eq!(json["stuck"][0]["overdue_seconds"], 42);
    }
}
