//! A fake Kubernetes API server that speaks the real list/watch protocol over plain
//! HTTP/1.1, so that the real kube-rs client code (`kube::Api`, `kube::runtime::watcher`,
//! `reflector`) runs against it in tests where no cluster can.
//!
//! It serves core/v1 pods (and their `proxy` subresource, to pods on loopback),
//! discovery.k8s.io/v1 endpointslices, core/v1 events and events.k8s.io/v1 events (the two
//! Event APIs share one stored collection, converted on the way in and out, as on the real
//! server), and apps/v1 replicasets, deployments and statefulsets (read by name, as an
//! agent reads a pod's owners). Objects live in memory with one global
//! resourceVersion counter and a bounded change history per resource, so watches resume,
//! replay, and expire with 410 like the real thing.
//!
//! Tests and the kubelet emulator change objects from Rust ([`ApiServer::create`],
//! [`ApiServer::modify`], [`ApiServer::delete_gracefully`], ...); the kubelet's decisions
//! stay in the emulator. Faults: [`ApiServer::break_watches`], [`ApiServer::compact`],
//! [`ApiServer::stop`] / [`ApiServer::restart`]. Every request is logged
//! ([`ApiServer::requests`], [`ApiServer::count`]).
//!
//! The server runs on its own small tokio runtime, so it serves equally well to a
//! synchronous test, to `#[tokio::test]` (either flavour) and to a separate agent process;
//! every method is synchronous and cheap except `stop`/`restart`, which wait (briefly)
//! for the listener and its connections to close.

mod error;
mod graceful;
mod handlers;
mod http;
mod meta;
mod proxy;
mod request_log;
mod resource;
mod selector;
mod store;
mod watch;
mod watchers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

pub use error::ApiError;
pub use http::TOKEN;
pub use request_log::{RequestRecord, Verb};
pub use resource::Resource;

use store::{lock, Store};

/// How long `stop` waits for the listener and connections to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Knobs for [`ApiServer::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Period of BOOKMARK events to watches that asked for them; `None` sends none.
    /// The real server sends one about a minute; tests want them sooner.
    pub bookmark_interval: Option<Duration>,
    /// Changes kept per resource for watches to resume from; older resourceVersions
    /// get 410.
    pub history_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Some(Duration::from_secs(1)),
            history_limit: 1024,
        }
    }
}

/// A running (or stopped) fake API server on 127.0.0.1. Dropping it stops it.
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    addr: SocketAddr,
    serving: Mutex<Option<Serving>>,
    /// `Option` only so that `Drop` can take it out and shut it down without blocking,
    /// which is what lets an async test drop the server.
    runtime: Option<Runtime>,
}

/// The accept loop of one start: fire `shutdown` and wait for `done`.
struct Serving {
    shutdown: oneshot::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl ApiServer {
    /// Start on a free port with [`Options::default`].
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .context("building the fake API server's runtime")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the fake API server to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store::new(options.history_limit)));
        if let Some(period) = options.bookmark_interval {
            let store = Arc::clone(&store);
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    lock(&store).send_bookmarks();
                }
            });
        }
        let server = Self {
            store,
            addr,
            serving: Mutex::new(None),
            runtime: Some(runtime),
        };
        server.serve(listener)?;
        Ok(server)
    }

    fn runtime(&self) -> anyhow::Result<&Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| anyhow!("the fake API server's runtime is gone"))
    }

    fn serve(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let runtime = self.runtime()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (done_tx, done) = mpsc::channel();
        let store = Arc::clone(&self.store);
        runtime.spawn(async move {
            http::accept_loop(listener, store, shutdown_rx).await;
            let _ = done_tx.send(());
        });
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(Serving { shutdown, done });
        Ok(())
    }

    /// The address clients connect to (stable across `restart`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server with the bearer [`TOKEN`].
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             current-context: gracewatch-fake\n\
             clusters:\n\
             - name: gracewatch-fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: gracewatch-agent\n  user:\n    token: {TOKEN}\n\
             contexts:\n\
             - name: gracewatch-fake\n  context:\n    cluster: gracewatch-fake\n    user: gracewatch-agent\n    namespace: default\n\
             preferences: {{}}\n",
            url = self.url()
        )
    }

    /// Write [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
            .with_context(|| format!("writing kubeconfig {}", path.display()))
    }

    pub fn is_running(&self) -> bool {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stop listening and cut every connection, watches included, as a crashed API server
    /// would. The objects and history stay. Stopping a stopped server does nothing.
    pub fn stop(&self) -> anyhow::Result<()> {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(serving) = serving else {
            return Ok(());
        };
        // A send error means the loop already ended, which is what we want.
        let _ = serving.shutdown.send(());
        match serving.done.recv_timeout(STOP_TIMEOUT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "the fake API server did not stop within {STOP_TIMEOUT:?}"
            )),
        }
    }

    /// Stop (if running) and listen again on the same port with the same objects and
    /// history, so watchers resume where they were. Call [`ApiServer::compact`] in between
    /// to model a restarted server whose rebuilt watch cache no longer knows old versions.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop()?;
        let mut attempt = 0;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                // The old socket can take a moment to be released.
                Err(_) if attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("rebinding {}", self.addr));
                }
            }
        };
        self.serve(listener)
    }

    /// Create an object given in `resource`'s form (namespace defaults to "default"); the
    /// server fills uid, creationTimestamp, resourceVersion and a generated name.
    pub fn create(&self, resource: Resource, obj: Value) -> anyhow::Result<Value> {
        Ok(lock(&self.store).create(resource, obj)?)
    }

    /// Replace an object (found by its metadata.namespace/name). A non-empty
    /// metadata.resourceVersion must be current (else 409); deletion fields are kept.
    pub fn update(&self, resource: Resource, obj: Value) -> anyhow::Result<Value> {
        Ok(lock(&self.store).update(resource, obj)?)
    }

    /// Change an object in place, atomically. A change that changes nothing sends no event.
    pub fn modify(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        let edited = lock(&self.store).modify(resource, namespace, name, |obj| {
            edit(obj);
            Ok(())
        })?;
        Ok(edited)
    }

    /// Apply a JSON merge patch (RFC 7386), as `kubectl patch --type merge` would.
    pub fn patch_merge(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> anyhow::Result<Value> {
        let patched = lock(&self.store).modify(resource, namespace, name, |obj| {
            handlers::merge_patch_checked(resource, obj, patch)
        })?;
        Ok(patched)
    }

    /// Remove an object now (watchers get DELETED with its final state).
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> anyhow::Result<Value> {
        Ok(lock(&self.store).delete(resource, namespace, name)?)
    }

    /// What `kubectl delete` asks of the API server: set `deletionTimestamp` (= now +
    /// grace) and `deletionGracePeriodSeconds` and keep the object (watchers get
    /// MODIFIED), or delete at once when the grace is 0. See `graceful.rs` for the rules.
    pub fn delete_gracefully(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        grace_period_seconds: Option<i64>,
    ) -> anyhow::Result<Value> {
        let mut store = lock(&self.store);
        Ok(graceful::delete_gracefully(
            &mut store,
            resource,
            namespace,
            name,
            grace_period_seconds,
        )?)
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.store).get(resource, namespace, name)
    }

    /// Every object of a resource, in key order.
    pub fn list(&self, resource: Resource) -> Vec<Value> {
        let store = lock(&self.store);
        match store.snapshot(resource.storage(), store.rv()) {
            Ok(objects) => objects.values().map(|o| resource.to_wire(o)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> String {
        lock(&self.store).rv().to_string()
    }

    /// Cut every open watch stream abruptly (no final chunk); returns how many were open.
    pub fn break_watches(&self) -> usize {
        lock(&self.store).break_watches()
    }

    /// Drop all history and move the resourceVersion on, so that every resourceVersion
    /// handed out so far is too old: the next watch from one gets an ERROR 410 event, an
    /// `Exact` list or a continue token from before gets HTTP 410. A BOOKMARK sent after
    /// this carries a fresh resourceVersion and so spares the watch that gets it; use
    /// `Options { bookmark_interval: None, .. }` when a test needs the 410 for sure.
    pub fn compact(&self) {
        lock(&self.store).compact();
    }

    /// Watches currently open, for one resource (its shared storage) or all.
    pub fn open_watches(&self, resource: Option<Resource>) -> usize {
        lock(&self.store).open_watches(resource.map(Resource::storage))
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.store).requests().to_vec()
    }

    /// How many requests had this resource and verb.
    pub fn count(&self, resource: Resource, verb: Verb) -> usize {
        lock(&self.store).count(resource, verb)
    }

    /// Every Event as events.k8s.io/v1 shows it, in key order (what an agent wrote, and
    /// kubelet's, converted).
    pub fn events(&self) -> Vec<Value> {
        self.list(Resource::Events)
    }

    pub fn clear_requests(&self) {
        lock(&self.store).clear_requests();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Nothing to report from a destructor; the runtime shutdown below ends any
        // straggler anyway.
        let _ = self.stop();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
