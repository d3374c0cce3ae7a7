//! The in-memory etcd plus watch cache: objects keyed by (namespace, name) per storage,
//! one global resourceVersion counter, a bounded history of changes per storage, and the
//! registry of open watches (`watchers`).
//!
//! Every change is numbered, applied, recorded and pushed to the matching watches while
//! the store lock is held, so each watch receives changes in resourceVersion order with
//! no gap between its replay of history and its live events, and a bookmark (also pushed
//! under the lock) never overtakes an event it covers.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::meta;
use super::request_log::{RequestRecord, Verb};
use super::resource::{meta_str, metadata_mut, Resource, Storage};
use super::selector::Filter;
use super::watchers::{event_for, Change, ChangeKind, Watchers};
pub(crate) use super::watchers::{Key, WatchMsg};

#[derive(Default)]
struct Table {
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Changes at or below this resourceVersion are no longer in `history`.
    floor: u64,
}

/// Where a new watch starts.
pub(crate) enum WatchFrom {
    /// At the current resourceVersion, optionally after synthetic ADDED events for the
    /// current state and a bookmark marking their end.
    Now {
        initial_events: bool,
        initial_events_end: bool,
    },
    /// Replaying every change after this resourceVersion.
    After(u64),
}

pub(crate) struct Store {
    rv: u64,
    tables: [Table; Storage::COUNT],
    history_limit: usize,
    watchers: Watchers,
    requests: Vec<RequestRecord>,
}

/// Lock the store. A panic elsewhere while holding the lock cannot leave a half-applied
/// change (every mutation completes before notifying), so a poisoned lock is still usable.
pub(crate) fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        Self {
            rv: 0,
            tables: Default::default(),
            history_limit: history_limit.max(1),
            watchers: Watchers::default(),
            requests: Vec::new(),
        }
    }

    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    fn table(&self, storage: Storage) -> &Table {
        &self.tables[storage.index()]
    }

    pub(crate) fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<Value> {
        self.table(resource.storage())
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|o| resource.to_wire(o))
    }

    /// Create an object (given in `resource`'s form), filling uid, creationTimestamp,
    /// resourceVersion and, from `generateName`, the name.
    pub(crate) fn create(&mut self, resource: Resource, obj: Value) -> Result<Value, ApiError> {
        let storage = resource.storage();
        let mut obj = resource.to_stored(obj);
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON map"));
        }
        let ns = match meta_str(&obj, "namespace") {
            "" => "default".to_owned(),
            ns => ns.to_owned(),
        };
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            ("", "") => {
                return Err(ApiError::bad_request(
                    "metadata.name or metadata.generateName is required",
                ))
            }
            ("", prefix) => loop {
                let candidate = format!("{prefix}{}", meta::name_suffix());
                if !self
                    .table(storage)
                    .objects
                    .contains_key(&(ns.clone(), candidate.clone()))
                {
                    break candidate;
                }
            },
            (name, _) => name.to_owned(),
        };
        let key = (ns.clone(), name.clone());
        if self.table(storage).objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        let rv = self.next_rv();
        if let Some(m) = metadata_mut(&mut obj) {
            m.insert("name".into(), name.into());
            m.insert("namespace".into(), ns.into());
            m.insert("uid".into(), meta::new_uid().into());
            m.insert("creationTimestamp".into(), meta::timestamp_in(0).into());
            m.insert("resourceVersion".into(), rv.to_string().into());
            // Only graceful deletion sets these, never a client.
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        self.commit(storage, ChangeKind::Added, key, None, obj.clone());
        Ok(resource.to_wire(&obj))
    }

    /// Read-modify-write of one object under the lock. `edit` sees and changes the
    /// object in `resource`'s form; name, namespace, uid and creationTimestamp are kept.
    /// An edit that changes nothing bumps no resourceVersion and sends no event, as on
    /// the real server.
    pub(crate) fn modify(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let storage = resource.storage();
        let key = (ns.to_owned(), name.to_owned());
        let current = self.tables[storage.index()]
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut wire = resource.to_wire(&current);
        edit(&mut wire)?;
        let mut next = resource.to_stored(wire);
        if !next.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON map"));
        }
        if let Some(m) = metadata_mut(&mut next) {
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "resourceVersion",
            ] {
                match current.get("metadata").and_then(|cm| cm.get(field)) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
        }
        if next == current {
            return Ok(resource.to_wire(&current));
        }
        let rv = self.next_rv();
        if let Some(m) = metadata_mut(&mut next) {
            m.insert("resourceVersion".into(), rv.to_string().into());
        }
        self.commit(
            storage,
            ChangeKind::Modified,
            key,
            Some(current),
            next.clone(),
        );
        Ok(resource.to_wire(&next))
    }

    /// Replace an object. A non-empty `metadata.resourceVersion` is a precondition (409
    /// if stale); the deletion fields cannot be changed by an update.
    pub(crate) fn update(&mut self, resource: Resource, obj: Value) -> Result<Value, ApiError> {
        let ns = match meta_str(&obj, "namespace") {
            "" => "default".to_owned(),
            ns => ns.to_owned(),
        };
        let name = meta_str(&obj, "name").to_owned();
        let expected = meta_str(&obj, "resourceVersion").to_owned();
        self.modify(resource, &ns, &name, |current| {
            if !expected.is_empty() && expected != meta_str(current, "resourceVersion") {
                return Err(ApiError::conflict(resource, &name));
            }
            let deletion: Vec<(&str, Option<Value>)> =
                ["deletionTimestamp", "deletionGracePeriodSeconds"]
                    .into_iter()
                    .map(|f| (f, current.get("metadata").and_then(|m| m.get(f)).cloned()))
                    .collect();
            *current = obj;
            if let Some(m) = metadata_mut(current) {
                for (field, value) in deletion {
                    match value {
                        Some(v) => m.insert(field.into(), v),
                        None => m.remove(field),
                    };
                }
            }
            Ok(())
        })
    }

    /// Remove an object now; watchers get DELETED with its final state at a new
    /// resourceVersion.
    pub(crate) fn delete(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let storage = resource.storage();
        let key = (ns.to_owned(), name.to_owned());
        let prev = self.tables[storage.index()]
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let rv = self.next_rv();
        let mut last = prev.clone();
        if let Some(m) = metadata_mut(&mut last) {
            m.insert("resourceVersion".into(), rv.to_string().into());
        }
        self.commit(storage, ChangeKind::Deleted, key, Some(prev), last.clone());
        Ok(resource.to_wire(&last))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn commit(
        &mut self,
        storage: Storage,
        kind: ChangeKind,
        key: Key,
        prev: Option<Value>,
        obj: Value,
    ) {
        let rv = self.rv;
        let table = &mut self.tables[storage.index()];
        match kind {
            ChangeKind::Deleted => table.objects.remove(&key),
            ChangeKind::Added | ChangeKind::Modified => {
                table.objects.insert(key.clone(), obj.clone())
            }
        };
        let change = Change {
            rv,
            kind,
            key,
            prev,
            obj,
        };
        self.watchers.notify(storage, &change);
        table.history.push_back(change);
        while table.history.len() > self.history_limit {
            if let Some(dropped) = table.history.pop_front() {
                table.floor = dropped.rv;
            }
        }
    }

    /// The objects of a storage as they were at `rv`, rebuilt by undoing later changes.
    pub(crate) fn snapshot(
        &self,
        storage: Storage,
        rv: u64,
    ) -> Result<BTreeMap<Key, Value>, ApiError> {
        let table = self.table(storage);
        if rv < table.floor {
            return Err(ApiError::expired(format!(
                "The resourceVersion for the provided list is too old: {rv} (oldest kept: {})",
                table.floor
            )));
        }
        if rv > self.rv {
            return Err(ApiError::too_new(rv));
        }
        let mut objects = table.objects.clone();
        for change in table.history.iter().rev().take_while(|c| c.rv > rv) {
            match (change.kind, &change.prev) {
                (ChangeKind::Added, _) | (_, None) => objects.remove(&change.key),
                (ChangeKind::Modified | ChangeKind::Deleted, Some(prev)) => {
                    objects.insert(change.key.clone(), prev.clone())
                }
            };
        }
        Ok(objects)
    }

    /// Objects after `after` in key order, for a page of a list.
    pub(crate) fn page<'a>(
        objects: &'a BTreeMap<Key, Value>,
        after: Option<&Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        objects.range((start, Bound::Unbounded))
    }

    /// Open a watch. Fails with 410 when `from` is older than the retained history.
    pub(crate) fn watch(
        &mut self,
        storage: Storage,
        filter: Filter,
        bookmarks: bool,
        from: WatchFrom,
    ) -> Result<UnboundedReceiver<WatchMsg>, ApiError> {
        let (tx, rx) = unbounded_channel();
        let table = self.table(storage);
        // Sends cannot fail here: `rx` is still in hand.
        match from {
            WatchFrom::After(rv) => {
                if rv < table.floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        table.floor
                    )));
                }
                for change in table.history.iter().filter(|c| c.rv > rv) {
                    if let Some(msg) = event_for(&filter, change) {
                        let _ = tx.send(msg);
                    }
                }
            }
            WatchFrom::Now {
                initial_events,
                initial_events_end,
            } => {
                if initial_events {
                    for obj in table.objects.values().filter(|o| filter.matches(o)) {
                        let _ = tx.send(WatchMsg::Event {
                            kind: "ADDED",
                            object: obj.clone(),
                        });
                    }
                }
                if initial_events_end {
                    let _ = tx.send(WatchMsg::Bookmark {
                        rv: self.rv,
                        initial_events_end: true,
                    });
                }
            }
        }
        self.watchers.register(storage, filter, bookmarks, tx);
        Ok(rx)
    }

    pub(crate) fn send_bookmarks(&mut self) {
        self.watchers.send_bookmarks(self.rv);
    }

    /// Abort every open watch; returns how many were open.
    pub(crate) fn break_watches(&mut self) -> usize {
        self.watchers.break_all()
    }

    pub(crate) fn open_watches(&self, storage: Option<Storage>) -> usize {
        self.watchers.open(storage)
    }

    /// Forget all history. The counter moves on first, as a real cluster's would through
    /// writes to other resources (leases, nodes), so every resourceVersion handed out so
    /// far, including the newest, becomes too old to watch or list from.
    pub(crate) fn compact(&mut self) {
        let rv = self.next_rv();
        for table in &mut self.tables {
            table.history.clear();
            table.floor = rv;
        }
    }

    pub(crate) fn record(&mut self, record: RequestRecord) {
        self.requests.push(record);
    }

    pub(crate) fn requests(&self) -> &[RequestRecord] {
        &self.requests
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }

    pub(crate) fn count(&self, resource: Resource, verb: Verb) -> usize {
        self.requests
            .iter()
            .filter(|r| r.resource == Some(resource) && r.verb == verb)
            .count()
    }
}
