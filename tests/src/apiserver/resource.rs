//! The resources the fake serves (pods, EndpointSlices, both Event APIs, and the apps/v1
//! owners an agent reads by name: ReplicaSets, Deployments, StatefulSets), where they live in the URL space, which field
//! selectors each accepts, and how `events.k8s.io/v1` Events map onto the core/v1 Events
//! they share storage with.
//!
//! Like the real API server, both Event APIs are views of one stored collection: an Event
//! the kubelet emulator writes as core/v1 is visible (converted) through events.k8s.io/v1
//! and the other way round. Objects are stored in core/v1 form; the field renames below
//! follow the upstream conversion (`pkg/apis/events/v1`).

use serde_json::{Map, Value};

/// A resource the fake API server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// core/v1 `pods`.
    Pods,
    /// discovery.k8s.io/v1 `endpointslices`.
    EndpointSlices,
    /// core/v1 `events` (same storage as [`Resource::Events`]).
    CoreEvents,
    /// events.k8s.io/v1 `events` (same storage as [`Resource::CoreEvents`]).
    Events,
    /// apps/v1 `replicasets`.
    ReplicaSets,
    /// apps/v1 `deployments`.
    Deployments,
    /// apps/v1 `statefulsets`.
    StatefulSets,
}

/// Where a resource's objects are kept; the two Event APIs share one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    Pods,
    EndpointSlices,
    Events,
    ReplicaSets,
    Deployments,
    StatefulSets,
}

impl Storage {
    pub(crate) const COUNT: usize = 6;

    pub(crate) fn index(self) -> usize {
        match self {
            Storage::Pods => 0,
            Storage::EndpointSlices => 1,
            Storage::Events => 2,
            Storage::ReplicaSets => 3,
            Storage::Deployments => 4,
            Storage::StatefulSets => 5,
        }
    }
}

/// (core/v1 name, events.k8s.io/v1 name) of the top-level Event fields that differ.
const EVENT_RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

type FieldTable = &'static [(&'static str, &'static [&'static str])];

const COMMON_FIELDS: FieldTable = &[
    ("metadata.name", &["metadata", "name"]),
    ("metadata.namespace", &["metadata", "namespace"]),
];

/// The pod field labels the real server indexes (a subset: the ones an agent would use).
const POD_FIELDS: FieldTable = &[
    ("spec.nodeName", &["spec", "nodeName"]),
    ("spec.restartPolicy", &["spec", "restartPolicy"]),
    ("spec.schedulerName", &["spec", "schedulerName"]),
    ("spec.serviceAccountName", &["spec", "serviceAccountName"]),
    ("status.phase", &["status", "phase"]),
    ("status.podIP", &["status", "podIP"]),
    ("status.nominatedNodeName", &["status", "nominatedNodeName"]),
];

const CORE_EVENT_FIELDS: FieldTable = &[
    ("involvedObject.kind", &["involvedObject", "kind"]),
    ("involvedObject.namespace", &["involvedObject", "namespace"]),
    ("involvedObject.name", &["involvedObject", "name"]),
    ("involvedObject.uid", &["involvedObject", "uid"]),
    (
        "involvedObject.apiVersion",
        &["involvedObject", "apiVersion"],
    ),
    (
        "involvedObject.resourceVersion",
        &["involvedObject", "resourceVersion"],
    ),
    ("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
    ("reason", &["reason"]),
    ("reportingComponent", &["reportingComponent"]),
    ("source", &["source", "component"]),
    ("type", &["type"]),
];

/// events.k8s.io/v1 field labels, pointing into the stored core/v1 form.
const EVENT_FIELDS: FieldTable = &[
    ("regarding.kind", &["involvedObject", "kind"]),
    ("regarding.namespace", &["involvedObject", "namespace"]),
    ("regarding.name", &["involvedObject", "name"]),
    ("regarding.uid", &["involvedObject", "uid"]),
    ("regarding.apiVersion", &["involvedObject", "apiVersion"]),
    (
        "regarding.resourceVersion",
        &["involvedObject", "resourceVersion"],
    ),
    ("regarding.fieldPath", &["involvedObject", "fieldPath"]),
    ("reason", &["reason"]),
    ("reportingController", &["reportingComponent"]),
    ("type", &["type"]),
];

impl Resource {
    /// Every resource served.
    pub const ALL: [Resource; 7] = [
        Resource::Pods,
        Resource::EndpointSlices,
        Resource::CoreEvents,
        Resource::Events,
        Resource::ReplicaSets,
        Resource::Deployments,
        Resource::StatefulSets,
    ];

    /// `apiVersion` of this resource's objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::CoreEvents => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Events => "events.k8s.io/v1",
            Resource::ReplicaSets | Resource::Deployments | Resource::StatefulSets => "apps/v1",
        }
    }

    /// `kind` of this resource's objects.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::CoreEvents | Resource::Events => "Event",
            Resource::ReplicaSets => "ReplicaSet",
            Resource::Deployments => "Deployment",
            Resource::StatefulSets => "StatefulSet",
        }
    }

    /// The plural name used in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::EndpointSlices => "endpointslices",
            Resource::CoreEvents | Resource::Events => "events",
            Resource::ReplicaSets => "replicasets",
            Resource::Deployments => "deployments",
            Resource::StatefulSets => "statefulsets",
        }
    }

    /// The collection URL path, across all namespaces or in one.
    pub fn collection_path(self, namespace: Option<&str>) -> String {
        let prefix = match self.api_version() {
            "v1" => "/api/v1".to_owned(),
            group_version => format!("/apis/{group_version}"),
        };
        match namespace {
            Some(ns) => format!("{prefix}/namespaces/{ns}/{}", self.plural()),
            None => format!("{prefix}/{}", self.plural()),
        }
    }

    /// The resource behind `/api/v1/<plural>` (group_version "v1") or
    /// `/apis/<group>/<version>/<plural>`.
    pub(crate) fn from_url(group_version: &str, plural: &str) -> Option<Self> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    pub(crate) fn storage(self) -> Storage {
        match self {
            Resource::Pods => Storage::Pods,
            Resource::EndpointSlices => Storage::EndpointSlices,
            Resource::CoreEvents | Resource::Events => Storage::Events,
            Resource::ReplicaSets => Storage::ReplicaSets,
            Resource::Deployments => Storage::Deployments,
            Resource::StatefulSets => Storage::StatefulSets,
        }
    }

    /// The JSON path, in stored form, behind a field selector label; `None` if the real
    /// server would reject the label for this resource.
    pub(crate) fn field_path(self, label: &str) -> Option<&'static [&'static str]> {
        let specific: FieldTable = match self {
            Resource::Pods => POD_FIELDS,
            Resource::EndpointSlices => &[],
            Resource::CoreEvents => CORE_EVENT_FIELDS,
            Resource::Events => EVENT_FIELDS,
            Resource::ReplicaSets | Resource::Deployments | Resource::StatefulSets => &[],
        };
        COMMON_FIELDS
            .iter()
            .chain(specific)
            .find(|(name, _)| *name == label)
            .map(|(_, path)| *path)
    }

    /// The field selector labels this resource accepts, for error messages.
    pub(crate) fn field_labels(self) -> Vec<&'static str> {
        let specific: FieldTable = match self {
            Resource::Pods => POD_FIELDS,
            Resource::EndpointSlices => &[],
            Resource::CoreEvents => CORE_EVENT_FIELDS,
            Resource::Events => EVENT_FIELDS,
            Resource::ReplicaSets | Resource::Deployments | Resource::StatefulSets => &[],
        };
        COMMON_FIELDS
            .iter()
            .chain(specific)
            .map(|(name, _)| *name)
            .collect()
    }

    /// A stored object as this resource presents it, with `apiVersion` and `kind`.
    pub(crate) fn to_wire(self, stored: &Value) -> Value {
        let mut obj = stored.clone();
        if self == Resource::Events {
            rename_fields(
                &mut obj,
                EVENT_RENAMES.iter().map(|(core, ev)| (*core, *ev)),
            );
        }
        set_type_meta(&mut obj, self.api_version(), self.kind());
        obj
    }

    /// An object in this resource's form converted to the stored form.
    pub(crate) fn to_stored(self, wire: Value) -> Value {
        let mut obj = wire;
        if self == Resource::Events {
            rename_fields(
                &mut obj,
                EVENT_RENAMES.iter().map(|(core, ev)| (*ev, *core)),
            );
        }
        let stored_as = match self.storage() {
            Storage::Pods => Resource::Pods,
            Storage::EndpointSlices => Resource::EndpointSlices,
            Storage::Events => Resource::CoreEvents,
            Storage::ReplicaSets => Resource::ReplicaSets,
            Storage::Deployments => Resource::Deployments,
            Storage::StatefulSets => Resource::StatefulSets,
        };
        set_type_meta(&mut obj, stored_as.api_version(), stored_as.kind());
        obj
    }
}

fn rename_fields<'a>(obj: &mut Value, renames: impl Iterator<Item = (&'a str, &'a str)>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    // Take every source field out first so that a rename never overwrites a field that
    // is itself about to be renamed.
    let moved: Vec<(&str, Value)> = renames
        .filter_map(|(from, to)| map.remove(from).map(|v| (to, v)))
        .collect();
    for (to, value) in moved {
        map.insert(to.to_owned(), value);
    }
}

fn set_type_meta(obj: &mut Value, api_version: &str, kind: &str) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version.into()));
        map.insert("kind".into(), Value::String(kind.into()));
    }
}

/// The object without `apiVersion`/`kind`, as items of a typed list are sent.
pub(crate) fn strip_type_meta(mut obj: Value) -> Value {
    if let Some(map) = obj.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    obj
}

/// The value at a JSON path as a field selector compares it: strings as they are,
/// numbers and booleans printed, missing or null as "" (an unscheduled pod matches
/// `spec.nodeName=`).
pub(crate) fn field_value(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The `metadata` map of an object, created if absent; `None` if the object is not a map.
pub(crate) fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

/// `metadata.<field>` as a string, "" when absent.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}
