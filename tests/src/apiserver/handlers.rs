//! List (with resourceVersion semantics and `limit`/`continue` pagination over consistent
//! snapshots), get, and the writes an agent makes: creating Events and merge-patching
//! them (kube-runtime's event `Recorder` patches a repeated event's series).

use std::sync::Mutex;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::http::{json_response, Body, Params};
use super::meta::{hex_decode, hex_encode};
use super::resource::{meta_str, strip_type_meta, Resource};
use super::selector::Filter;
use super::store::{lock, Key, Store};

/// The real server's limit on a request body.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub(crate) fn list(
    store: &Mutex<Store>,
    resource: Resource,
    namespace: Option<String>,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    params.allow(&[
        "watch",
        "fieldSelector",
        "labelSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "allowWatchBookmarks",
        "pretty",
    ])?;
    let filter = Filter::parse(
        resource,
        namespace,
        params.get("fieldSelector"),
        params.get("labelSelector"),
    )?;
    // limit=0 means "no limit", as on the real server.
    let limit = params.number("limit")?.filter(|&l| l > 0);
    let store = lock(store);
    let (rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if params.get("resourceVersion").is_some_and(|v| !v.is_empty()) {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, key) = decode_continue(resource, token)?;
            (rv, Some(key))
        }
        None => (list_rv(&store, params)?, None),
    };
    let objects = store.snapshot(resource.storage(), rv).map_err(|e| {
        if after.is_some() && e.code == 410 {
            ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            )
        } else {
            e
        }
    })?;
    let mut items = Vec::new();
    let mut next = None;
    let mut last_key: Option<&Key> = None;
    for (key, obj) in Store::page(&objects, after.as_ref()).filter(|(_, o)| filter.matches(o)) {
        if limit.is_some_and(|l| items.len() as u64 >= l) {
            next = last_key.map(|k| encode_continue(resource, rv, k));
            break;
        }
        items.push(strip_type_meta(resource.to_wire(obj)));
        last_key = Some(key);
    }
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), rv.to_string().into());
    if let Some(token) = next {
        metadata.insert("continue".into(), token.into());
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

/// The resourceVersion a list is served at. Unset or "0" (or `NotOlderThan` anything not
/// in the future) is the newest state; `Exact` is that version, if still in history.
fn list_rv(store: &Store, params: &Params) -> Result<u64, ApiError> {
    let requested = params.get("resourceVersion").filter(|v| !v.is_empty());
    let matching = params.get("resourceVersionMatch").filter(|v| !v.is_empty());
    let parse = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))
    };
    match (requested, matching) {
        (None, None) | (Some("0"), None | Some("NotOlderThan")) => Ok(store.rv()),
        (None, Some(_)) => Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (Some("0"), Some("Exact")) => Err(ApiError::bad_request(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
        )),
        (Some(v), None | Some("NotOlderThan")) => {
            let rv = parse(v)?;
            if rv > store.rv() {
                Err(ApiError::too_new(rv))
            } else {
                Ok(store.rv())
            }
        }
        (Some(v), Some("Exact")) => parse(v),
        (_, Some(other)) => Err(ApiError::bad_request(format!(
            "unknown resourceVersionMatch {other:?}"
        ))),
    }
}

/// Continue tokens carry the snapshot's resourceVersion and the last key sent, as the
/// real server's do, hex-encoded so that clients treat them as opaque.
fn encode_continue(resource: Resource, rv: u64, key: &Key) -> String {
    let token = json!({"resource": resource.plural(), "rv": rv, "ns": key.0, "name": key.1});
    hex_encode(token.to_string().as_bytes())
}

fn decode_continue(resource: Resource, token: &str) -> Result<(u64, Key), ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid");
    let bytes = hex_decode(token).ok_or_else(invalid)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if value.get("resource").and_then(Value::as_str) != Some(resource.plural()) {
        return Err(invalid());
    }
    let rv = value
        .get("rv")
        .and_then(Value::as_u64)
        .ok_or_else(invalid)?;
    let field = |f: &str| value.get(f).and_then(Value::as_str).map(str::to_owned);
    Ok((
        rv,
        (
            field("ns").ok_or_else(invalid)?,
            field("name").ok_or_else(invalid)?,
        ),
    ))
}

pub(crate) fn get(
    store: &Mutex<Store>,
    resource: Resource,
    namespace: &str,
    name: &str,
    params: &Params,
) -> Result<Response<Body>, ApiError> {
    // Any resourceVersion is satisfied by the newest state.
    params.allow(&["resourceVersion", "pretty"])?;
    let obj = lock(store)
        .get(resource, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    Ok(json_response(200, &obj))
}

pub(crate) async fn create(
    store: &Mutex<Store>,
    resource: Resource,
    namespace: &str,
    params: &Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // No dryRun: the fake would have to pretend, and a test should see that it was asked.
    params.allow(&["fieldManager", "fieldValidation", "pretty"])?;
    let mut obj = read_json(req, "application/json").await?;
    for (field, expected) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind()),
    ] {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(got) if got == expected => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} does not match the request path ({expected:?})"
                )))
            }
        }
    }
    match meta_str(&obj, "namespace") {
        "" => {
            if let Some(m) = super::resource::metadata_mut(&mut obj) {
                m.insert("namespace".into(), namespace.into());
            }
        }
        ns if ns == namespace => {}
        _ => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
    let created = lock(store).create(resource, obj)?;
    Ok(json_response(201, &created))
}

pub(crate) async fn patch(
    store: &Mutex<Store>,
    resource: Resource,
    namespace: &str,
    name: &str,
    params: &Params,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    params.allow(&["fieldManager", "fieldValidation", "pretty"])?;
    let patch = read_json(req, "application/merge-patch+json").await?;
    let patched = lock(store).modify(resource, namespace, name, |obj| {
        merge_patch_checked(resource, obj, &patch)
    })?;
    Ok(json_response(200, &patched))
}

/// Apply a JSON merge patch whose `metadata.resourceVersion`, if any, must be current.
pub(crate) fn merge_patch_checked(
    resource: Resource,
    obj: &mut Value,
    patch: &Value,
) -> Result<(), ApiError> {
    let wanted = meta_str(patch, "resourceVersion");
    if !wanted.is_empty() && wanted != meta_str(obj, "resourceVersion") {
        return Err(ApiError::conflict(resource, meta_str(obj, "name")));
    }
    merge_patch(obj, patch);
    Ok(())
}

/// RFC 7386 JSON merge patch: maps merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, change) in changes {
            if change.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
}

async fn read_json(req: Request<Incoming>, content_type: &str) -> Result<Value, ApiError> {
    let got = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if got.split(';').next().map(str::trim) != Some(content_type) {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({got:?}); the fake API server accepts {content_type}"
        )));
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::too_large("the request body is larger than 3 MiB")
            } else {
                ApiError::bad_request(format!("reading the request body failed: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}
