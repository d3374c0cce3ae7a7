//! Graceful deletion as the API server (not the kubelet) performs it: the object stays,
//! with `metadata.deletionTimestamp` and `metadata.deletionGracePeriodSeconds` set, until
//! someone deletes it for good. For pods the kubelet emulator does that after the
//! containers stopped.

use serde_json::Value;

use super::error::ApiError;
use super::meta;
use super::resource::{metadata_mut, Resource};
use super::store::Store;

/// The pod default for `spec.terminationGracePeriodSeconds`, applied by defaulting on the
/// real server and so assumed here when a test's pod leaves it out.
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// Start a graceful deletion, or delete at once when the grace period comes out as 0.
///
/// As on the real server: `deletionTimestamp` is the moment the grace period *ends*
/// (now + grace), not the moment of the request; pods take their grace from
/// `spec.terminationGracePeriodSeconds` when none is given; an unscheduled or already
/// finished pod is deleted at once; a negative grace means 1 s; and a second request may
/// shorten the grace period but never lengthen it. Other resources have no grace period
/// unless one is given.
pub(crate) fn delete_gracefully(
    store: &mut Store,
    resource: Resource,
    ns: &str,
    name: &str,
    grace_period_seconds: Option<i64>,
) -> Result<Value, ApiError> {
    let current = store
        .get(resource, ns, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let grace = effective_grace(resource, &current, grace_period_seconds);
    if grace == 0 {
        return store.delete(resource, ns, name);
    }
    store.modify(resource, ns, name, |obj| {
        let Some(m) = metadata_mut(obj) else {
            return Ok(());
        };
        let already = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
        if already.is_some_and(|a| a <= grace) {
            return Ok(());
        }
        m.insert("deletionTimestamp".into(), meta::timestamp_in(grace).into());
        m.insert("deletionGracePeriodSeconds".into(), grace.into());
        Ok(())
    })
}

fn effective_grace(resource: Resource, obj: &Value, requested: Option<i64>) -> i64 {
    let grace = if resource == Resource::Pods {
        let spec = obj.get("spec");
        let unscheduled = spec
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        let phase = obj
            .get("status")
            .and_then(|s| s.get("phase"))
            .and_then(Value::as_str);
        if unscheduled || matches!(phase, Some("Succeeded" | "Failed")) {
            0
        } else {
            requested.unwrap_or_else(|| {
                spec.and_then(|s| s.get("terminationGracePeriodSeconds"))
                    .and_then(Value::as_i64)
                    .unwrap_or(DEFAULT_POD_GRACE_SECONDS)
            })
        }
    } else {
        requested.unwrap_or(0)
    };
    if grace < 0 {
        1
    } else {
        grace
    }
}
