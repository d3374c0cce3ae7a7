//! `gracewatch explain`: fetches a termination from a running agent and prints it for
//! the on-call engineer: outcome per container, the timeline, and what to do.

use std::fmt::Write as _;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;

use crate::{cli::ExplainArgs, report::Termination};

#[derive(Deserialize)]
struct Body {
    terminations: Vec<Termination>,
}

/// Where `target` is answered on the agent.
pub fn endpoint(target: &str) -> anyhow::Result<String> {
    match target.split_once('/') {
        Some(("container", prefix)) if !prefix.is_empty() => {
            Ok(format!("/debug/terminations/container/{prefix}"))
        }
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok(format!("/debug/terminations/{ns}/{pod}"))
        }
        _ => bail!("cannot explain {target:?}: give <namespace>/<pod> or container/<id-prefix>"),
    }
}

pub async fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}{}",
        args.agent.trim_end_matches('/'),
        endpoint(&args.target)?
    );
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("bad agent URL {url}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client.get(uri).await.with_context(|| {
        format!(
            "cannot reach the agent at {} (is `gracewatch run` running there?)",
            args.agent
        )
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the agent's answer")?
        .to_bytes();
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let parsed: Body = serde_json::from_slice(&body).with_context(|| {
        format!("agent answered {status} with something that is not a termination list")
    })?;
    if parsed.terminations.is_empty() {
        bail!(
            "no termination recorded for {} (agent answered {status})",
            args.target
        );
    }
    for t in &parsed.terminations {
        print!("{}", render(t));
    }
    Ok(())
}

/// The text form of one termination.
pub fn render(t: &Termination) -> String {
    let mut out = String::new();
    let who = match (&t.namespace, &t.pod, &t.uid) {
        (Some(ns), Some(pod), _) => format!("pod {ns}/{pod}"),
        (_, _, Some(uid)) => format!("pod uid {uid}"),
        _ => "container".to_string(),
    };
    let state = match t.state {
        crate::report::State::InProgress => "in progress",
        crate::report::State::Completed => "completed",
    };
    let grace = t
        .grace_period_seconds
        .map(|g| format!(", grace period {g}s"))
        .unwrap_or_default();
    let _ = writeln!(out, "Termination of {who} ({state}{grace})");
    let _ = writeln!(
        out,
        "  started  {}\n  finished {}",
        t.started_at.as_deref().unwrap_or("-"),
        t.finished_at.as_deref().unwrap_or("-")
    );
    for c in &t.containers {
        let exit = match (c.exit_code, &c.exit_signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by {sig}"),
            _ => "exit not seen".into(),
        };
        let term = c
            .sigterm_to_exit_seconds
            .map(|s| format!(", SIGTERM→exit {s:.3}s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  container {} {}PID 1 {}: {} ({exit}{term})",
            &c.container_id[..c.container_id.len().min(12)],
            c.name
                .as_deref()
                .map(|n| format!("{n} "))
                .unwrap_or_default(),
            c.pid1_comm.as_deref().unwrap_or("?"),
            c.outcome.as_deref().unwrap_or("still terminating"),
        );
    }
    let _ = writeln!(out, "Timeline");
    for e in &t.timeline {
        let _ = writeln!(out, "  {}  {:<16} {}", e.at, e.what, e.detail);
    }
    if t.diagnoses.is_empty() {
        let _ = writeln!(out, "Diagnosis\n  nothing went wrong");
    } else {
        let _ = writeln!(out, "Diagnosis");
        for d in &t.diagnoses {
            let _ = writeln!(out, "  {}: {}", d.code, d.message);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ContainerReport, DiagnosisEntry, State, TimelineEntry};

    #[test]
    fn targets_map_to_endpoints() {
        assert_eq!(
            endpoint("container/abc123").expect("ok"),
            "/debug/terminations/container/abc123"
        );
        assert_eq!(
            endpoint("shop/web-1").expect("ok"),
            "/debug/terminations/shop/web-1"
        );
        assert!(endpoint("pod").is_err());
        assert!(endpoint("a/b/c").is_err());
        assert!(endpoint("container/").is_err());
    }

    #[test]
    fn renders_what_a_person_needs() {
        let t = Termination {
            namespace: None,
            pod: None,
            uid: Some("6f1c2d3e-1111-2222-3333-444455556666".into()),
            state: State::Completed,
            started_at: Some("2026-11-22T10:00:00.000000001Z".into()),
            finished_at: Some("2026-11-22T10:00:02.000000001Z".into()),
            grace_period_seconds: None,
            containers: vec![ContainerReport {
                name: None,
                container_id: "0123456789abcdef".into(),
                pid1_comm: Some("sh".into()),
                outcome: Some("forced_kill".into()),
                exit_code: None,
                exit_signal: Some("SIGKILL".into()),
                sigterm_to_exit_seconds: Some(2.0),
            }],
            timeline: vec![TimelineEntry {
                at: "2026-11-22T10:00:00.000000001Z".into(),
                what: "sigterm".into(),
                container: Some("0123456789ab".into()),
                detail: "SIGTERM from runc to sh (PID 1): ignored".into(),
                at_ns: 1,
            }],
            diagnoses: vec![DiagnosisEntry {
                code: "FORCED_KILL".into(),
                container: Some("0123456789ab".into()),
                message: "SIGKILLed by runc".into(),
            }],
        };
        let text = render(&t);
        assert!(text
            .contains("Termination of pod uid 6f1c2d3e-1111-2222-3333-444455556666 (completed)"));
        assert!(text.contains("container 0123456789ab PID 1 sh: forced_kill (killed by SIGKILL, SIGTERM→exit 2.000s)"), "{text}");
        assert!(
            text.contains("sigterm          SIGTERM from runc to sh (PID 1): ignored"),
            "{text}"
        );
        assert!(text.contains("FORCED_KILL: SIGKILLed by runc"));
    }
}
