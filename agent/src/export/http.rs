//! The agent's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/debug/terminations`
//! and `/debug/terminations/container/<id-prefix>`. Handlers read the latest published
//! snapshot (an `Arc` swap through a watch channel) and never block the event loop.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use crate::metrics::Metrics;
use crate::report::{Snapshot, Termination, TerminationsBody};

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Set once every probe is attached.
    pub ready: Arc<AtomicBool>,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(body) {
        Ok(b) => reply(status, "application/json", b),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

pub fn route(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    route_path(state, req.method() == hyper::Method::GET, req.uri().path())
}

fn route_path(state: &HttpState, is_get: bool, path: &str) -> Response<Full<Bytes>> {
    if !is_get {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match path {
        "/metrics" => match state.metrics.encode() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, "text/plain", "ready\n")
        }
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: kernel probes are not attached yet\n",
        ),
        "/debug/terminations" => {
            let snap = state.snapshot.borrow().clone();
            json(
                StatusCode::OK,
                &TerminationsBody {
                    terminations: snap.all(),
                },
            )
        }
        p => match p.strip_prefix("/debug/terminations/").map(|r| r.split_once('/')) {
            Some(Some(("container", prefix))) => container(state, prefix),
            Some(Some((ns, pod))) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                pod_terminations(state, ns, pod)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no such endpoint: {p} (try /debug/terminations/<namespace>/<pod> or /debug/terminations/container/<id-prefix>)\n"),
            ),
        },
    }
}

fn pod_terminations(state: &HttpState, ns: &str, pod: &str) -> Response<Full<Bytes>> {
    let snap = state.snapshot.borrow().clone();
    found(snap.by_pod(ns, pod))
}

/// The terminations a lookup found; 404 (with an empty list) when none.
fn found(terminations: Vec<&Termination>) -> Response<Full<Bytes>> {
    let status = if terminations.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    json(status, &TerminationsBody { terminations })
}

fn container(state: &HttpState, prefix: &str) -> Response<Full<Bytes>> {
    let valid = (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        let msg = serde_json::json!({"error": format!("{prefix:?} is not a container id prefix (1-64 lowercase hex characters)")});
        return json(StatusCode::BAD_REQUEST, &msg);
    }
    let snap = state.snapshot.borrow().clone();
    found(snap.by_container_prefix(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ContainerReport, State};
    use http_body_util::BodyExt;

    fn termination(ns: &str, pod: &str, id: &str) -> Arc<Termination> {
        Arc::new(Termination {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            state: State::Completed,
            containers: vec![ContainerReport {
                name: Some("app".into()),
                container_id: id.into(),
                pid1_comm: Some("app".into()),
                outcome: Some("graceful".into()),
                exit_code: Some(0),
                exit_signal: None,
                sigterm_to_exit_seconds: Some(0.2),
            }],
            ..Termination::in_progress(Some("u1".into()))
        })
    }

    fn state(ready: bool) -> HttpState {
        let snap = Snapshot {
            terminations: vec![
                termination("shop", "web-1", &"ab".repeat(32)),
                termination("shop", "web-2", &"cd".repeat(32)),
            ],
        };
        let (_tx, rx) = watch::channel(Arc::new(snap));
        HttpState {
            metrics: Arc::new(Metrics::new("test")),
            snapshot: rx,
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    fn body(resp: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = futures::executor::block_on(resp.into_body().collect())
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn routes() {
        let s = state(true);
        // (GET?, path, status, content type starts with, body contains)
        let cases = [
            (
                true,
                "/metrics",
                StatusCode::OK,
                "application/openmetrics-text",
                "gracewatch_build_info",
            ),
            (true, "/healthz", StatusCode::OK, "text/plain", "ok"),
            (true, "/readyz", StatusCode::OK, "text/plain", "ready"),
            (
                true,
                "/debug/terminations",
                StatusCode::OK,
                "application/json",
                "web-2",
            ),
            (
                true,
                "/debug/terminations/shop/web-1",
                StatusCode::OK,
                "application/json",
                "\"pod\": \"web-1\"",
            ),
            (
                true,
                "/debug/terminations/shop/nope",
                StatusCode::NOT_FOUND,
                "application/json",
                "\"terminations\": []",
            ),
            (
                true,
                "/debug/terminations/shop/web-1/x",
                StatusCode::NOT_FOUND,
                "text/plain",
                "no such endpoint",
            ),
            (
                true,
                "/debug/terminations/container/abab",
                StatusCode::OK,
                "application/json",
                "web-1",
            ),
            (
                true,
                "/debug/terminations/container/ABAB",
                StatusCode::BAD_REQUEST,
                "application/json",
                "not a container id prefix",
            ),
            (
                true,
                "/debug/terminations/container/",
                StatusCode::BAD_REQUEST,
                "application/json",
                "not a container id prefix",
            ),
            (
                true,
                "/nope",
                StatusCode::NOT_FOUND,
                "text/plain",
                "no such endpoint: /nope",
            ),
            (
                false,
                "/metrics",
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET",
            ),
        ];
        for (get, path, status, ctype, contains) in cases {
            let (got_status, got_type, text) = body(route_path(&s, get, path));
            assert_eq!(got_status, status, "{path}: {text}");
            assert!(got_type.starts_with(ctype), "{path}: {got_type}");
            assert!(text.contains(contains), "{path}: {text}");
        }
        let by_prefix = body(route_path(&s, true, "/debug/terminations/container/abab")).2;
        assert!(!by_prefix.contains("web-2"), "{by_prefix}");
    }

    #[test]
    fn not_ready_until_the_probes_are_attached() {
        let (status, _, text) = body(route_path(&state(false), true, "/readyz"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("kernel probes are not attached"), "{text}");
    }
}
