//! Watch requests: deciding where a watch starts from its parameters, and streaming its
//! events as the real server does, one `{"type":..,"object":..}` JSON document per line
//! in a chunked response, until `timeoutSeconds` passes (a clean end), the client leaves,
//! or a fault is injected (an abrupt end).
//!
//! A watch from a resourceVersion the history no longer holds is still answered 200,
//! with a single ERROR event carrying a 410 `Status`: that is what the real server does,
//! and what makes kube's watcher relist.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::http::{with_json_headers, Body, Params};
use super::resource::Resource;
use super::selector::Filter;
use super::store::{lock, Store, WatchFrom, WatchMsg};

/// Used when the client sends no `timeoutSeconds`; the real server picks 30-60 minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

pub(crate) fn start(
    store: &Mutex<Store>,
    resource: Resource,
    namespace: Option<String>,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    params.allow(&[
        "watch",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "allowWatchBookmarks",
        "sendInitialEvents",
        "fieldSelector",
        "labelSelector",
        "pretty",
    ])?;
    let filter = Filter::parse(
        resource,
        namespace,
        params.get("fieldSelector"),
        params.get("labelSelector"),
    )?;
    let bookmarks = params.flag("allowWatchBookmarks")?.unwrap_or(false);
    let timeout = params
        .number("timeoutSeconds")?
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let from = start_point(params, bookmarks)?;
    let body = match lock(store).watch(resource.storage(), filter, bookmarks, from) {
        Ok(rx) => event_stream(resource, rx, timeout),
        Err(gone) => {
            let line = event_line("ERROR", &gone.status());
            StreamBody::new(stream::once(async move { Ok(Frame::data(line)) })).boxed_unsync()
        }
    };
    Ok(with_json_headers(200, body))
}

/// Where the watch starts, following the API's rules: an unset or "0" resourceVersion
/// means "now, after the current state as ADDED events" unless `sendInitialEvents=false`;
/// `sendInitialEvents=true` (streaming lists) also requires bookmarks and
/// `resourceVersionMatch=NotOlderThan`, and ends the initial events with a bookmark
/// annotated `k8s.io/initial-events-end`; any other resourceVersion replays history.
fn start_point(params: &Params, bookmarks: bool) -> Result<WatchFrom, ApiError> {
    let send_initial = params.flag("sendInitialEvents")?;
    let matching = params.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let rv = params.get("resourceVersion").filter(|v| !v.is_empty());
    if send_initial == Some(true) {
        if !bookmarks {
            return Err(ApiError::bad_request(
                "allowWatchBookmarks must be true when sendInitialEvents is true",
            ));
        }
        if matching != Some("NotOlderThan") {
            return Err(ApiError::bad_request(
                "resourceVersionMatch must be NotOlderThan when sendInitialEvents is set",
            ));
        }
        // The current state is at least as new as any resourceVersion the client names.
        return Ok(WatchFrom::Now {
            initial_events: true,
            initial_events_end: true,
        });
    }
    if matching.is_some() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is set",
        ));
    }
    match rv {
        None | Some("0") => Ok(WatchFrom::Now {
            initial_events: send_initial != Some(false),
            initial_events_end: false,
        }),
        Some(v) => v
            .parse::<u64>()
            .map(WatchFrom::After)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}"))),
    }
}

fn event_stream(resource: Resource, rx: UnboundedReceiver<WatchMsg>, timeout: Duration) -> Body {
    let deadline = Box::pin(tokio::time::sleep(timeout));
    let frames = stream::unfold(Some((rx, deadline)), move |state| async move {
        let (mut rx, mut deadline) = state?;
        // `None` (timeout, or the store let go of this watch) ends the response cleanly.
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            () = &mut deadline => None,
        }?;
        let line = match msg {
            WatchMsg::Event { kind, object } => event_line(kind, &resource.to_wire(&object)),
            WatchMsg::Bookmark {
                rv,
                initial_events_end,
            } => event_line("BOOKMARK", &bookmark(resource, rv, initial_events_end)),
            // An error from the body makes hyper drop the connection without the final
            // chunk: the client sees the stream cut, as when an API server dies.
            WatchMsg::Break => {
                let cut = std::io::Error::other("watch broken by fault injection");
                return Some((Err(cut), None));
            }
        };
        Some((Ok(Frame::data(line)), Some((rx, deadline))))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A bookmark carries only the kind and a resourceVersion the client may resume from.
fn bookmark(resource: Resource, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    json!({
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    })
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}
