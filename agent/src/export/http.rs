//! The agent's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/debug/terminations`,
//! `/debug/terminations/container/<id-prefix>` and the pictures at `/ui/...`. Handlers read the latest published
//! snapshot (an `Arc` swap through a watch channel) and never block the event loop. GET
//! and HEAD only; what a connection may cost (timeouts, sizes, how many at once) is
//! bounded in [`super::server`].

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode, Uri};
use tokio::{net::TcpListener, sync::watch};

use super::server::{self, Limits};
use crate::metrics::Metrics;
use crate::report::{Snapshot, Termination, TerminationsBody};

/// Longest request target (path and query) answered; longer ones get 414. Every real
/// target is far shorter: a namespace (63) and a pod name (253), or a 64-character id.
pub const MAX_URL_BYTES: usize = 2048;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Set once every probe is attached.
    pub ready: Arc<AtomicBool>,
}

/// Serves until the task is dropped, within the default [`Limits`].
pub async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    server::serve(listener, Arc::new(Router::new(state)), Limits::default()).await;
}

/// Answers requests from the shared state.
pub struct Router {
    state: Arc<HttpState>,
    /// `/debug/terminations` of the latest snapshot, encoded once: every client reading
    /// it at once (or slowly) shares one buffer instead of holding a copy each.
    all: Mutex<Option<(Arc<Snapshot>, Bytes)>>,
}

type Reply = Response<Full<Bytes>>;

impl Router {
    pub fn new(state: Arc<HttpState>) -> Self {
        Self {
            state,
            all: Mutex::new(None),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The answer to one request, counted by route and status class.
    pub fn respond<B>(&self, req: &Request<B>) -> Reply {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let openmetrics = super::textformat::wants_openmetrics(accept);
        let (route, resp) = self.answer(req.method(), req.uri(), openmetrics);
        self.state
            .metrics
            .http
            .request(route, resp.status().as_u16());
        resp
    }

    /// The route name (a fixed set, for metrics) and the response. HEAD is answered as
    /// GET, with the same headers (Content-Length included) and no body.
    fn answer(&self, method: &Method, uri: &Uri, openmetrics: bool) -> (&'static str, Reply) {
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            let mut resp = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET and HEAD\n",
            );
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return ("other", resp);
        }
        let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > MAX_URL_BYTES {
            let msg = format!("request target longer than {MAX_URL_BYTES} bytes\n");
            return ("other", reply(StatusCode::URI_TOO_LONG, "text/plain", msg));
        }
        let (route, resp) = self.route_path(uri.path(), openmetrics);
        (route, if head { without_body(resp) } else { resp })
    }

    /// `openmetrics`: the client's Accept header named OpenMetrics; others get `/metrics`
    /// in the Prometheus text format.
    fn route_path(&self, path: &str, openmetrics: bool) -> (&'static str, Reply) {
        let state = &self.state;
        match path {
            "/metrics" => (
                "metrics",
                match state.metrics.encode() {
                    Ok(text) if openmetrics => reply(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    ),
                    Ok(text) => reply(
                        StatusCode::OK,
                        super::textformat::TEXT_CONTENT_TYPE,
                        super::textformat::from_openmetrics(&text),
                    ),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string(),
                    ),
                },
            ),
            "/healthz" => ("healthz", reply(StatusCode::OK, "text/plain", "ok\n")),
            "/readyz" if state.ready.load(Ordering::Acquire) => {
                ("readyz", reply(StatusCode::OK, "text/plain", "ready\n"))
            }
            "/readyz" => (
                "readyz",
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: kernel probes are not attached yet\n",
                ),
            ),
            "/debug/terminations" => ("terminations", self.all_terminations()),
            p if p.starts_with("/ui/") => ("ui", picture(state, &p["/ui/".len()..])),
            p => match p.strip_prefix("/debug/terminations/").map(|r| r.split_once('/')) {
                Some(Some(("container", prefix))) => {
                    ("terminations_container", container(state, prefix))
                }
                Some(Some((ns, pod))) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                    ("terminations_pod", pod_terminations(state, ns, pod))
                }
                _ => (
                    "other",
                    reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no such endpoint: {p} (try /debug/terminations/<namespace>/<pod> or /debug/terminations/container/<id-prefix>)\n"),
                    ),
                ),
            },
        }
    }

    fn all_terminations(&self) -> Reply {
        let snap = self.state.snapshot.borrow().clone();
        let mut cached = match self.all.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let body = match cached.as_ref() {
            Some((s, body)) if Arc::ptr_eq(s, &snap) => body.clone(),
            _ => {
                let all = TerminationsBody {
                    terminations: snap.all(),
                };
                match serde_json::to_vec_pretty(&all) {
                    Ok(b) => {
                        let body = Bytes::from(b);
                        *cached = Some((snap.clone(), body.clone()));
                        body
                    }
                    Err(e) => {
                        return reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            e.to_string(),
                        )
                    }
                }
            }
        };
        reply(StatusCode::OK, "application/json", body)
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// The response to HEAD: GET's status and headers, its length, no body.
fn without_body(resp: Reply) -> Reply {
    use hyper::body::Body as _;
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec_pretty(body) {
        Ok(b) => reply(status, "application/json", b),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn pod_terminations(state: &HttpState, ns: &str, pod: &str) -> Reply {
    let snap = state.snapshot.borrow().clone();
    found(snap.by_pod(ns, pod))
}

/// The terminations a lookup found; 404 (with an empty list) when none.
fn found(terminations: Vec<&Termination>) -> Reply {
    let status = if terminations.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    json(status, &TerminationsBody { terminations })
}

/// The picture page of `<namespace>/<pod>` or `container/<id-prefix>` (404 when nothing
/// is recorded, 400 for a malformed target). No script, no external asset: the CSP says so.
fn picture(state: &HttpState, target: &str) -> Reply {
    let snap = state.snapshot.borrow().clone();
    let (title, found) = match target.split_once('/') {
        Some(("container", prefix))
            if (1..=64).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            (
                format!("container {prefix}"),
                snap.by_container_prefix(prefix),
            )
        }
        Some((ns, pod))
            if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') && ns != "container" =>
        {
            (format!("pod {ns}/{pod}"), snap.by_pod(ns, pod))
        }
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "use /ui/<namespace>/<pod> or /ui/container/<id-prefix>\n",
            )
        }
    };
    let status = if found.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let mut resp = reply(
        status,
        "text/html; charset=utf-8",
        super::ui::page(&title, &found),
    );
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}

fn container(state: &HttpState, prefix: &str) -> Reply {
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

    fn router(ready: bool) -> Router {
        let snap = Snapshot {
            terminations: vec![
                termination("shop", "web-1", &"ab".repeat(32)),
                termination("shop", "web-2", &"cd".repeat(32)),
            ],
        };
        let (_tx, rx) = watch::channel(Arc::new(snap));
        Router::new(Arc::new(HttpState {
            metrics: Arc::new(Metrics::new("test")),
            snapshot: rx,
            ready: Arc::new(AtomicBool::new(ready)),
        }))
    }

    fn call(r: &Router, method: Method, target: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(target)
            .body(())
            .expect("request");
        r.respond(&req)
    }

    fn body(resp: Reply) -> (StatusCode, String, String) {
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
    fn metrics_format_follows_the_accept_header() {
        let r = router(true);
        let req = Request::builder()
            .uri("/metrics")
            .header(
                header::ACCEPT,
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .body(())
            .expect("request");
        let (status, ctype, text) = body(r.respond(&req));
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let (_, ctype, text) = body(call(&r, Method::GET, "/metrics"));
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn routes() {
        let s = router(true);
        // (GET?, path, status, content type starts with, body contains)
        let cases = [
            (
                true,
                "/metrics",
                StatusCode::OK,
                "text/plain; version=0.0.4",
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
                "/ui/shop/web-1",
                StatusCode::OK,
                "text/html",
                "<h1>Termination of pod shop/web-1</h1>",
            ),
            (
                true,
                "/ui/shop/nope",
                StatusCode::NOT_FOUND,
                "text/html",
                "No termination recorded",
            ),
            (
                true,
                "/ui/shop/web-1/x",
                StatusCode::BAD_REQUEST,
                "text/plain",
                "/ui/<namespace>/<pod>",
            ),
            (
                true,
                "/ui/container/XY",
                StatusCode::BAD_REQUEST,
                "text/plain",
                "/ui/container/<id-prefix>",
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
                "only GET and HEAD",
            ),
        ];
        for (get, path, status, ctype, contains) in cases {
            let method = if get { Method::GET } else { Method::POST };
            let (got_status, got_type, text) = body(call(&s, method, path));
            assert_eq!(got_status, status, "{path}: {text}");
            assert!(got_type.starts_with(ctype), "{path}: {got_type}");
            assert!(text.contains(contains), "{path}: {text}");
        }
        let by_prefix = body(call(&s, Method::GET, "/debug/terminations/container/abab")).2;
        assert!(!by_prefix.contains("web-2"), "{by_prefix}");
    }

    #[test]
    fn not_ready_until_the_probes_are_attached() {
        let (status, _, text) = body(call(&router(false), Method::GET, "/readyz"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("kernel probes are not attached"), "{text}");
    }

    #[test]
    fn head_is_get_without_a_body() {
        let r = router(true);
        // Not /metrics: counting each request changes it between the two.
        for path in ["/healthz", "/readyz", "/debug/terminations", "/nope"] {
            let get = call(&r, Method::GET, path);
            let head = call(&r, Method::HEAD, path);
            assert_eq!(head.status(), get.status(), "{path}");
            assert_eq!(
                head.headers().get(header::CONTENT_TYPE),
                get.headers().get(header::CONTENT_TYPE)
            );
            let (_, _, get_body) = body(get);
            let length = head
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            assert_eq!(length, Some(get_body.len()), "{path}");
            assert_eq!(body(head).2, "", "{path}");
        }
        let head = call(&r, Method::HEAD, "/metrics");
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.headers().contains_key(header::CONTENT_LENGTH));
        assert_eq!(body(head).2, "");
        let refused = call(&r, Method::DELETE, "/metrics");
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            refused.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[test]
    fn a_target_over_the_limit_is_414_and_requests_are_counted() {
        let r = router(true);
        let at_limit = format!(
            "/debug/terminations/shop/{}",
            "p".repeat(MAX_URL_BYTES - 25)
        );
        assert_eq!(at_limit.len(), MAX_URL_BYTES);
        assert_eq!(
            call(&r, Method::GET, &at_limit).status(),
            StatusCode::NOT_FOUND
        );
        let over = format!("/metrics?{}", "q".repeat(MAX_URL_BYTES));
        let (status, _, text) = body(call(&r, Method::GET, &over));
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert!(text.contains("longer than 2048 bytes"), "{text}");
        let _ = call(&r, Method::GET, "/healthz");
        let metrics = r.metrics().encode().expect("encode");
        for line in [
            "gracewatch_http_requests_total{route=\"other\",status=\"4xx\"} 1",
            "gracewatch_http_requests_total{route=\"terminations_pod\",status=\"4xx\"} 1",
            "gracewatch_http_requests_total{route=\"healthz\",status=\"2xx\"} 1",
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
    }

    #[test]
    fn all_terminations_are_encoded_once_per_snapshot() {
        let r = router(true);
        let first = body(call(&r, Method::GET, "/debug/terminations")).2;
        let second = body(call(&r, Method::GET, "/debug/terminations")).2;
        assert_eq!(first, second);
        let cached = r.all.lock().expect("lock").as_ref().map(|(_, b)| b.len());
        assert_eq!(cached, Some(first.len()));
    }
}
