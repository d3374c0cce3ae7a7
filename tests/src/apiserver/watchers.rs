//! The open watches and what each is sent: changes judged against the watch's selector
//! (entering and leaving it included), bookmarks, and the fault that cuts them. The store
//! calls in here with its lock held, which is what keeps each watch in resourceVersion
//! order.

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::resource::{metadata_mut, Storage};
use super::selector::Filter;

/// (namespace, name): etcd's key order, which list pagination follows.
pub(crate) type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One numbered change. `prev` (the object before it) lets a watch with a selector turn
/// "stopped matching" into DELETED and lets a list be served at an older resourceVersion.
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: ChangeKind,
    pub(crate) key: Key,
    pub(crate) prev: Option<Value>,
    pub(crate) obj: Value,
}

/// What a watch stream has to send next; objects are in stored form.
pub(crate) enum WatchMsg {
    Event { kind: &'static str, object: Value },
    Bookmark { rv: u64, initial_events_end: bool },
    Break,
}

struct Watcher {
    storage: Storage,
    filter: Filter,
    bookmarks: bool,
    tx: UnboundedSender<WatchMsg>,
}

/// Every open watch. A watch whose client went away is dropped the next time a send to
/// it fails.
#[derive(Default)]
pub(crate) struct Watchers(Vec<Watcher>);

impl Watchers {
    pub(crate) fn register(
        &mut self,
        storage: Storage,
        filter: Filter,
        bookmarks: bool,
        tx: UnboundedSender<WatchMsg>,
    ) {
        self.0.push(Watcher {
            storage,
            filter,
            bookmarks,
            tx,
        });
    }

    pub(crate) fn notify(&mut self, storage: Storage, change: &Change) {
        self.0.retain(|w| {
            if w.storage != storage {
                return true;
            }
            match event_for(&w.filter, change) {
                Some(msg) => w.tx.send(msg).is_ok(),
                None => !w.tx.is_closed(),
            }
        });
    }

    pub(crate) fn send_bookmarks(&mut self, rv: u64) {
        self.0.retain(|w| {
            let bookmark = WatchMsg::Bookmark {
                rv,
                initial_events_end: false,
            };
            !w.bookmarks || w.tx.send(bookmark).is_ok()
        });
    }

    /// Abort every open watch; returns how many were open.
    pub(crate) fn break_all(&mut self) -> usize {
        self.0
            .drain(..)
            .filter(|w| w.tx.send(WatchMsg::Break).is_ok())
            .count()
    }

    pub(crate) fn open(&self, storage: Option<Storage>) -> usize {
        self.0
            .iter()
            .filter(|w| !w.tx.is_closed() && storage.is_none_or(|s| s == w.storage))
            .count()
    }
}

/// What a change means to one watch: membership is judged on the object before and after,
/// so an object that stops matching the selector is DELETED for that watch (carrying its
/// last matching state at the new resourceVersion, as the real watch cache does) and one
/// that starts matching is ADDED.
pub(crate) fn event_for(filter: &Filter, change: &Change) -> Option<WatchMsg> {
    let was = change.prev.as_ref().is_some_and(|p| filter.matches(p));
    let is = filter.matches(&change.obj);
    let (kind, object) = match (change.kind, was, is) {
        (ChangeKind::Added, _, true) => ("ADDED", change.obj.clone()),
        (ChangeKind::Modified, true, true) => ("MODIFIED", change.obj.clone()),
        (ChangeKind::Modified, false, true) => ("ADDED", change.obj.clone()),
        (ChangeKind::Modified, true, false) => {
            let mut last = change.prev.clone().unwrap_or_default();
            if let Some(m) = metadata_mut(&mut last) {
                m.insert("resourceVersion".into(), change.rv.to_string().into());
            }
            ("DELETED", last)
        }
        (ChangeKind::Deleted, _, true) => ("DELETED", change.obj.clone()),
        _ => return None,
    };
    Some(WatchMsg::Event { kind, object })
}
