//! The HTTP/1.1 face of the fake: accepting connections, checking the bearer token,
//! routing Kubernetes URL paths to the list/get/create/patch and watch handlers, and
//! turning every refusal into a `Status` body. Every request is recorded, whatever its
//! outcome.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::error::ApiError;
use super::handlers;
use super::proxy;
use super::request_log::{parse_query, RequestRecord, Verb};
use super::resource::Resource;
use super::store::{lock, Store};
use super::watch;

/// Response bodies: whole JSON documents or endless watch streams. The error type is
/// `io::Error` so that a watch can end its connection abruptly by yielding one.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The bearer token every request must carry (the one in the written kubeconfig).
pub const TOKEN: &str = "gracewatch-fake-token";

/// Serve until `shutdown` fires (or its sender is dropped), then close every connection,
/// open watches included, without waiting for clients.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    store: Arc<Mutex<Store>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(Arc::clone(&store), stream));
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(store: Arc<Mutex<Store>>, stream: TcpStream) {
    // Watch events are small writes that must not sit in Nagle's buffer.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let store = Arc::clone(&store);
        async move { Ok::<_, Infallible>(handle(store, req).await) }
    });
    // An error here is a client that went away or a watch broken on purpose; the
    // connection is over either way.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Where a URL path points.
pub(crate) enum Route {
    Version,
    Collection {
        resource: Resource,
        namespace: Option<String>,
    },
    Object {
        resource: Resource,
        namespace: String,
        name: String,
    },
    /// `pods/<name>[:<port>]/proxy/<path>`: `path` keeps its leading `/`.
    PodProxy {
        namespace: String,
        name: String,
        port: u16,
        path: String,
    },
}

fn parse_route(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let resource = |plural: &str| {
        Resource::from_url(&group_version, plural).ok_or_else(|| ApiError::no_route(path))
    };
    if let ["namespaces", ns, "pods", pod, "proxy", ..] = rest {
        if group_version == "v1" {
            let (name, port) = proxy::name_and_port(pod)?;
            let marker = format!("/{pod}/proxy");
            let after = path
                .find(&marker)
                .map_or("", |at| &path[at + marker.len()..]);
            return Ok(Route::PodProxy {
                namespace: (*ns).to_owned(),
                name,
                port,
                path: if after.is_empty() {
                    "/".into()
                } else {
                    after.to_owned()
                },
            });
        }
    }
    match rest {
        [plural] => Ok(Route::Collection {
            resource: resource(plural)?,
            namespace: None,
        }),
        ["namespaces", ns, plural] => Ok(Route::Collection {
            resource: resource(plural)?,
            namespace: Some((*ns).to_owned()),
        }),
        ["namespaces", ns, plural, name] => Ok(Route::Object {
            resource: resource(plural)?,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        _ => Err(ApiError::no_route(path)),
    }
}

/// Decoded query parameters of one request.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Refuse parameters the fake does not implement, rather than ignore them and
    /// answer something the real server would not.
    pub(crate) fn allow(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "query parameter {k:?} is not supported here by the fake API server"
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key}: invalid boolean {other:?}"
            ))),
        }
    }

    pub(crate) fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("{key}: invalid non-negative integer {v:?}"))
                })
            })
            .transpose()
    }
}

async fn handle(store: Arc<Mutex<Store>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let params = Params(parse_query(&query));
    let route = parse_route(&path);
    let (resource, verb) = match &route {
        Ok(Route::Collection { resource, .. }) => {
            let watching = matches!(params.get("watch"), Some("true" | "1"));
            let verb = match method {
                Method::GET if watching => Verb::Watch,
                Method::GET => Verb::List,
                Method::POST => Verb::Create,
                _ => Verb::Other,
            };
            (Some(*resource), verb)
        }
        Ok(Route::Object { resource, .. }) => {
            let verb = match method {
                Method::GET => Verb::Get,
                Method::PATCH => Verb::Patch,
                _ => Verb::Other,
            };
            (Some(*resource), verb)
        }
        Ok(Route::PodProxy { .. }) => (Some(Resource::Pods), Verb::Proxy),
        Ok(Route::Version) | Err(_) => (None, Verb::Other),
    };
    let result = match route {
        _ if !authorized(&req) => Err(ApiError::unauthorized()),
        Ok(route) => run(&store, route, verb, &params, req).await,
        Err(e) => Err(e),
    };
    let response = result.unwrap_or_else(|e| json_response(e.code, &e.status()));
    lock(&store).record(RequestRecord {
        method: method.to_string(),
        path,
        query,
        resource,
        verb,
        status: response.status().as_u16(),
    });
    response
}

fn authorized(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ") == Some(TOKEN))
}

async fn run(
    store: &Mutex<Store>,
    route: Route,
    verb: Verb,
    params: &Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match (route, verb) {
        (Route::Version, _) if req.method() == Method::GET => {
            Ok(json_response(200, &version_info()))
        }
        (
            Route::PodProxy {
                namespace,
                name,
                port,
                path,
            },
            _,
        ) if req.method() == Method::GET => {
            let target = match req.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            proxy::forward(store, &namespace, &name, port, &target).await
        }
        (
            Route::Collection {
                resource,
                namespace,
            },
            Verb::Watch,
        ) => watch::start(store, resource, namespace, params),
        (
            Route::Collection {
                resource,
                namespace,
            },
            Verb::List,
        ) => handlers::list(store, resource, namespace, params),
        (
            Route::Object {
                resource,
                namespace,
                name,
            },
            Verb::Get,
        ) => handlers::get(store, resource, &namespace, &name, params),
        (
            Route::Collection {
                resource,
                namespace: Some(namespace),
            },
            Verb::Create,
        ) if is_event(resource) => handlers::create(store, resource, &namespace, params, req).await,
        (
            Route::Object {
                resource,
                namespace,
                name,
            },
            Verb::Patch,
        ) if is_event(resource) => {
            handlers::patch(store, resource, &namespace, &name, params, req).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{} {} is not served by the fake API server (an agent only reads, and writes Events)",
            req.method(),
            req.uri().path()
        ))),
    }
}

fn is_event(resource: Resource) -> bool {
    matches!(resource, Resource::CoreEvents | Resource::Events)
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-gracewatch-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(crate) fn json_response(code: u16, body: &Value) -> Response<Body> {
    // Serialising a `Value` cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync();
    with_json_headers(code, body)
}

pub(crate) fn with_json_headers(code: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
