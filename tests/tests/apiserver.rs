//! The fake API server driven by the real kube-rs client: `Api` lists and watches, and the
//! `watcher` + `reflector` stack an agent runs, through the faults an agent must survive
//! (broken watches, compacted history, an API server restart). Each test is bounded in
//! time and stops its server on drop.

use std::io::{Read, Write};
use std::pin::pin;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt};
use gracewatch_tests::apiserver::{ApiError, ApiServer, Options, Resource, Verb, TOKEN};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Upper bound for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one expected event (covers kube's backoff after an outage).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

async fn bounded(
    test: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .context("test timed out")?
}

/// A kube client built the way the agent builds one: from a kubeconfig file.
async fn client(server: &ApiServer) -> anyhow::Result<Client> {
    let path = std::env::temp_dir().join(format!(
        "gracewatch-fake-kubeconfig-{}-{}.yaml",
        std::process::id(),
        server.addr().port()
    ));
    server.write_kubeconfig(&path)?;
    let kubeconfig = Kubeconfig::read_from(&path);
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kubeconfig?, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut spec = json!({ "containers": [{ "name": "app", "image": "busybox" }] });
    if let Some(node) = node {
        spec["nodeName"] = node.into();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": { "app": "web" } },
        "spec": spec,
    })
}

fn core_event(name: &str, uid: &str, reason: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": "default" },
        "involvedObject": { "kind": "Pod", "namespace": "default", "name": "web-0", "uid": uid, "apiVersion": "v1" },
        "reason": reason,
        "message": format!("{reason} for web-0"),
        "type": "Normal",
        "source": { "component": "kubelet", "host": "node-a" },
        "reportingComponent": "kubelet",
        "reportingInstance": "node-a",
        "count": 1,
    })
}

/// Runs `watcher(..).default_backoff().reflect(..)` as an agent does and reports each
/// event as a line, so tests can assert the exact sequence.
struct Recorder {
    lines: mpsc::UnboundedReceiver<String>,
    store: reflector::Store<Pod>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    fn start(api: Api<Pod>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let (tx, lines) = mpsc::unbounded_channel();
        let events = watcher(api, config).default_backoff().reflect(writer);
        let task = tokio::spawn(async move {
            let mut events = pin!(events);
            while let Some(event) = events.next().await {
                if tx.send(describe(event)).is_err() {
                    break;
                }
            }
        });
        Self { lines, store, task }
    }

    /// Every line up to and including `last`.
    async fn until(&mut self, last: &str) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, self.lines.recv())
                .await
                .with_context(|| format!("waiting for {last:?}, saw {seen:?}"))?
                .context("the watcher stream ended")?;
            let done = line == last;
            seen.push(line);
            if done {
                return Ok(seen);
            }
        }
    }

    async fn assert_quiet(&mut self, period: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(period, self.lines.recv()).await {
            Ok(Some(line)) => bail!("expected no event, got {line:?}"),
            _ => Ok(()),
        }
    }

    /// Names in the reflector's store, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn describe(event: Result<watcher::Event<Pod>, watcher::Error>) -> String {
    match event {
        Ok(watcher::Event::Init) => "init".into(),
        Ok(watcher::Event::InitApply(p)) => format!("init-apply {}", p.name_any()),
        Ok(watcher::Event::InitDone) => "init-done".into(),
        Ok(watcher::Event::Apply(p)) if p.metadata.deletion_timestamp.is_some() => {
            format!("apply {} terminating", p.name_any())
        }
        Ok(watcher::Event::Apply(p)) => format!("apply {}", p.name_any()),
        Ok(watcher::Event::Delete(p)) => format!("delete {}", p.name_any()),
        Err(e) => format!("error: {e}"),
    }
}

fn events_only(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| !l.starts_with("error"))
        .map(String::as_str)
        .collect()
}

async fn next_event<K>(
    stream: &mut (impl Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> anyhow::Result<WatchEvent<K>> {
    let event = tokio::time::timeout(STEP_TIMEOUT, stream.next())
        .await
        .context("no watch event in time")?
        .context("the watch stream ended")?;
    Ok(event?)
}

fn api_status(
    result: Result<impl std::fmt::Debug, kube::Error>,
) -> anyhow::Result<Box<kube::core::Status>> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status),
        other => bail!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn list_filters_by_node_and_paginates_consistently() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        for name in ["a1", "a2", "a3"] {
            server.create(Resource::Pods, pod(name, Some("node-a")))?;
        }
        server.create(Resource::Pods, pod("b1", Some("node-b")))?;
        server.create(Resource::Pods, pod("pending", None))?;
        let mut other_ns = pod("a4", Some("node-a"));
        other_ns["metadata"]["namespace"] = "other".into();
        server.create(Resource::Pods, other_ns)?;
        let client = client(&server).await?;
        let all = Api::<Pod>::all(client.clone());

        let node_a = ListParams::default().fields("spec.nodeName=node-a");
        let listed = all.list(&node_a).await?;
        let names: Vec<String> = listed.items.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a1", "a2", "a3", "a4"]);
        assert_eq!(
            listed.metadata.resource_version,
            Some(server.resource_version())
        );
        let unscheduled = all
            .list(&ListParams::default().fields("spec.nodeName="))
            .await?;
        assert_eq!(unscheduled.items.len(), 1);
        let in_default = Api::<Pod>::namespaced(client.clone(), "default")
            .list(&node_a)
            .await?;
        assert_eq!(in_default.items.len(), 3);

        // One pod per page; a pod created mid-way is not in the pages of the snapshot.
        let mut pages = Vec::new();
        let mut params = node_a.clone().limit(1);
        loop {
            let page = all.list(&params).await?;
            if pages.is_empty() {
                server.create(Resource::Pods, pod("a0-late", Some("node-a")))?;
            }
            pages.push((
                page.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
                page.metadata.resource_version.clone(),
            ));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        let names: Vec<String> = pages.iter().flat_map(|(n, _)| n.clone()).collect();
        assert_eq!(names, ["a1", "a2", "a3", "a4"]);
        assert!(pages
            .iter()
            .all(|(n, rv)| n.len() == 1 && *rv == pages[0].1));

        // Single objects, and a missing one.
        let a1 = Api::<Pod>::namespaced(client.clone(), "default")
            .get("a1")
            .await?;
        assert_eq!(a1.spec.and_then(|s| s.node_name).as_deref(), Some("node-a"));
        assert!(a1.metadata.uid.is_some() && a1.metadata.creation_timestamp.is_some());
        let missing = Api::<Pod>::namespaced(client, "default").get("nope").await;
        assert_eq!(api_status(missing)?.code, 404);

        assert_eq!(server.count(Resource::Pods, Verb::List), 3 + pages.len());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_sees_own_node_pod_lifecycle_in_order_and_nothing_else() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("old-a", Some("node-a")))?;
        server.create(Resource::Pods, pod("old-b", Some("node-b")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let mut rec = Recorder::start(
            api,
            watcher::Config::default().fields("spec.nodeName=node-a"),
        );
        assert_eq!(
            rec.until("init-done").await?,
            ["init", "init-apply old-a", "init-done"]
        );

        server.create(Resource::Pods, pod("b1", Some("node-b")))?;
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        server.delete_gracefully(Resource::Pods, "default", "b1", Some(30))?;
        server.delete_gracefully(Resource::Pods, "default", "a1", Some(30))?;
        server.delete(Resource::Pods, "default", "b1")?;
        server.delete(Resource::Pods, "default", "a1")?;
        // Scheduling sets spec.nodeName: the pod enters the node's selector.
        server.create(Resource::Pods, pod("late", None))?;
        server.modify(Resource::Pods, "default", "late", |p| {
            p["spec"]["nodeName"] = "node-a".into();
        })?;

        let lines = rec.until("apply late").await?;
        assert_eq!(
            lines,
            [
                "apply a1",
                "apply a1 terminating",
                "delete a1",
                "apply late"
            ]
        );
        // Bookmarks (every second) must not surface as events.
        rec.assert_quiet(Duration::from_millis(1500)).await?;
        assert_eq!(rec.names(), ["late", "old-a"]);
        assert_eq!(server.count(Resource::Pods, Verb::List), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_sends_bookmarks_when_asked_and_honours_timeout() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);

        let params = WatchParams::default().fields("spec.nodeName=node-a");
        let mut stream = api.watch(&params, "0").await?.boxed();
        match next_event(&mut stream).await? {
            WatchEvent::Added(p) => assert_eq!(p.name_any(), "a0"),
            other => bail!("expected ADDED a0, got {other:?}"),
        }
        match next_event(&mut stream).await? {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, server.resource_version());
                assert_eq!(b.types.kind, "Pod");
            }
            other => bail!("expected a BOOKMARK, got {other:?}"),
        }
        let watch = server
            .requests()
            .into_iter()
            .find(|r| r.verb == Verb::Watch)
            .context("no watch logged")?;
        assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
        assert_eq!(
            watch.param("fieldSelector").as_deref(),
            Some("spec.nodeName=node-a")
        );

        // Without bookmarks and with timeoutSeconds=2 the stream carries only the ADDED
        // and then ends cleanly.
        let quiet = WatchParams::default().disable_bookmarks().timeout(2);
        let started = std::time::Instant::now();
        let events: Vec<_> = api.watch(&quiet, "0").await?.collect().await;
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], Ok(WatchEvent::Added(_))));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_resumes_after_broken_watches_without_loss_or_duplicates() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let mut rec = Recorder::start(
            api,
            watcher::Config::default().fields("spec.nodeName=node-a"),
        );
        assert_eq!(
            rec.until("init-done").await?,
            ["init", "init-apply a0", "init-done"]
        );
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        assert_eq!(rec.until("apply a1").await?, ["apply a1"]);

        assert_eq!(server.break_watches(), 1);
        server.create(Resource::Pods, pod("a2", Some("node-a")))?;
        server.delete_gracefully(Resource::Pods, "default", "a0", None)?;
        server.delete(Resource::Pods, "default", "a1")?;
        let lines = rec.until("delete a1").await?;
        assert_eq!(
            events_only(&lines),
            ["apply a2", "apply a0 terminating", "delete a1"]
        );

        assert_eq!(server.break_watches(), 1);
        server.create(Resource::Pods, pod("a3", Some("node-a")))?;
        let lines = rec.until("apply a3").await?;
        assert_eq!(events_only(&lines), ["apply a3"]);
        assert_eq!(rec.names(), ["a0", "a2", "a3"]);

        // It resumed from resourceVersions, never relisting.
        assert_eq!(server.count(Resource::Pods, Verb::List), 1);
        let resumed: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.verb == Verb::Watch)
            .filter_map(|r| r.param("resourceVersion"))
            .collect();
        assert!(resumed.len() >= 3, "watches: {resumed:?}");
        assert!(resumed
            .iter()
            .all(|rv| rv.parse::<u64>().is_ok_and(|n| n > 0)));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_relists_after_410_from_compacted_history() -> anyhow::Result<()> {
    bounded(async {
        // No bookmarks: one arriving after compact() would carry a fresh resourceVersion
        // and spare the watcher its 410.
        let server = ApiServer::start_with(Options {
            bookmark_interval: None,
            ..Options::default()
        })?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let mut rec = Recorder::start(
            api,
            watcher::Config::default().fields("spec.nodeName=node-a"),
        );
        rec.until("init-done").await?;
        server.create(Resource::Pods, pod("a2", Some("node-a")))?;
        server.delete(Resource::Pods, "default", "a1")?;
        assert_eq!(rec.until("delete a1").await?, ["apply a2", "delete a1"]);

        server.compact();
        assert_eq!(server.break_watches(), 1);
        let lines = rec.until("init-done").await?;
        assert_eq!(
            events_only(&lines),
            ["init", "init-apply a0", "init-apply a2", "init-done"]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("error") && l.contains("Expired")),
            "no 410 seen: {lines:?}"
        );
        server.create(Resource::Pods, pod("a3", Some("node-a")))?;
        assert_eq!(events_only(&rec.until("apply a3").await?), ["apply a3"]);
        assert_eq!(rec.names(), ["a0", "a2", "a3"]);
        assert_eq!(server.count(Resource::Pods, Verb::List), 2);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_recovers_from_api_server_restart_and_sees_changes_made_while_down(
) -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let mut rec = Recorder::start(
            api,
            watcher::Config::default().fields("spec.nodeName=node-a"),
        );
        rec.until("init-done").await?;

        server.stop()?;
        assert!(std::net::TcpStream::connect(server.addr()).is_err());
        server.create(Resource::Pods, pod("a2", Some("node-a")))?;
        server.delete_gracefully(Resource::Pods, "default", "a0", Some(5))?;
        server.delete(Resource::Pods, "default", "a1")?;
        // Long enough for the watcher to hit the closed port and back off.
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.restart()?;

        let lines = rec.until("delete a1").await?;
        assert_eq!(
            events_only(&lines),
            ["apply a2", "apply a0 terminating", "delete a1"]
        );
        assert!(
            lines.iter().any(|l| l.starts_with("error")),
            "the outage went unnoticed: {lines:?}"
        );
        assert_eq!(rec.names(), ["a0", "a2"]);
        assert_eq!(server.count(Resource::Pods, Verb::List), 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watcher_relists_after_restart_with_rebuilt_cache() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let mut rec = Recorder::start(
            api,
            watcher::Config::default().fields("spec.nodeName=node-a"),
        );
        rec.until("init-done").await?;

        server.stop()?;
        server.delete(Resource::Pods, "default", "a1")?;
        server.create(Resource::Pods, pod("a2", Some("node-a")))?;
        server.compact();
        server.restart()?;

        // The deletion of a1 is never seen as an event: the relist drops it from the store.
        let lines = rec.until("init-done").await?;
        assert_eq!(
            events_only(&lines),
            ["init", "init-apply a0", "init-apply a2", "init-done"]
        );
        assert!(
            lines.iter().any(|l| l.contains("Expired")),
            "no 410 seen: {lines:?}"
        );
        assert_eq!(rec.names(), ["a0", "a2"]);
        assert_eq!(server.count(Resource::Pods, Verb::List), 2);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unsupported_selectors_get_400_status() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        let client = client(&server).await?;
        let pods = Api::<Pod>::all(client.clone());

        let status = api_status(
            pods.list(&ListParams::default().fields("spec.containers.image=nginx"))
                .await,
        )?;
        assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
        assert!(status
            .message
            .contains("field label not supported: spec.containers.image"));

        let status = api_status(pods.list(&ListParams::default().labels("tier>3")).await)?;
        assert_eq!(status.code, 400);

        let watch = pods
            .watch(
                &WatchParams::default().fields("status.hostIP=10.0.0.1"),
                "0",
            )
            .await;
        assert_eq!(api_status(watch.map(|_| ()))?.code, 400);

        // events.k8s.io field labels are not core/v1 ones.
        let core = Api::<CoreEvent>::all(client);
        let status = api_status(
            core.list(&ListParams::default().fields("regarding.uid=x"))
                .await,
        )?;
        assert_eq!(status.code, 400);
        assert_eq!(server.count(Resource::Pods, Verb::List), 2);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn events_filter_by_involved_object_in_both_apis() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        let client = client(&server).await?;
        let uid = "6b1a3c52-0000-4000-8000-000000000001";
        let core = Api::<CoreEvent>::namespaced(client.clone(), "default");

        let killing: CoreEvent = serde_json::from_value(core_event("web-0.1", uid, "Killing"))?;
        let created = core.create(&PostParams::default(), &killing).await?;
        assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
        server.create(
            Resource::CoreEvents,
            core_event("other.1", "someone-else", "Killing"),
        )?;

        let by_uid = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
        let listed = Api::<CoreEvent>::all(client.clone()).list(&by_uid).await?;
        let names: Vec<String> = listed.items.iter().map(|e| e.name_any()).collect();
        assert_eq!(names, ["web-0.1"]);
        let by_name = ListParams::default()
            .fields("involvedObject.name=web-0,involvedObject.namespace=default");
        assert_eq!(core.list(&by_name).await?.items.len(), 2);

        // The same stored Event through events.k8s.io/v1.
        let v1 = Api::<EventV1>::namespaced(client.clone(), "default");
        let listed = v1
            .list(&ListParams::default().fields(&format!("regarding.uid={uid}")))
            .await?;
        assert_eq!(listed.items.len(), 1);
        let ev = &listed.items[0];
        assert_eq!(ev.note.as_deref(), Some("Killing for web-0"));
        assert_eq!(ev.reporting_controller.as_deref(), Some("kubelet"));
        assert_eq!(
            ev.regarding.as_ref().and_then(|r| r.uid.as_deref()),
            Some(uid)
        );

        // A watch with the selector sees new events for the uid only, whichever API wrote them.
        let rv = listed
            .metadata
            .resource_version
            .context("list without resourceVersion")?;
        let params = WatchParams::default()
            .fields(&format!("involvedObject.uid={uid}"))
            .disable_bookmarks();
        let mut stream = Api::<CoreEvent>::all(client.clone())
            .watch(&params, &rv)
            .await?
            .boxed();
        server.create(
            Resource::CoreEvents,
            core_event("other.2", "someone-else", "Killing"),
        )?;
        server.create(
            Resource::CoreEvents,
            core_event("web-0.2", uid, "FailedPreStopHook"),
        )?;
        match next_event(&mut stream).await? {
            WatchEvent::Added(e) => assert_eq!(e.reason.as_deref(), Some("FailedPreStopHook")),
            other => bail!("expected ADDED FailedPreStopHook, got {other:?}"),
        }
        let v1_event: EventV1 = serde_json::from_value(json!({
            "metadata": { "name": "web-0.3", "namespace": "default" },
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "regarding": { "kind": "Pod", "namespace": "default", "name": "web-0", "uid": uid },
            "reason": "ExceededGracePeriod",
            "note": "Container runtime did not kill the pod within specified grace period.",
            "type": "Warning",
            "action": "Killing",
            "reportingController": "gracewatch",
            "reportingInstance": "node-a",
        }))?;
        v1.create(&PostParams::default(), &v1_event).await?;
        match next_event(&mut stream).await? {
            WatchEvent::Added(e) => {
                assert_eq!(e.reason.as_deref(), Some("ExceededGracePeriod"));
                assert_eq!(e.reporting_component.as_deref(), Some("gracewatch"));
                assert!(e
                    .message
                    .is_some_and(|m| m.starts_with("Container runtime")));
            }
            other => bail!("expected ADDED ExceededGracePeriod, got {other:?}"),
        }

        // kube's event Recorder merge-patches a repeated event's series.
        let patch =
            json!({ "series": { "count": 2, "lastObservedTime": "2025-01-01T00:00:05.000000Z" } });
        v1.patch("web-0.3", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        match next_event(&mut stream).await? {
            WatchEvent::Modified(e) => assert_eq!(e.series.and_then(|s| s.count), Some(2)),
            other => bail!("expected MODIFIED web-0.3, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn watch_turns_selector_transitions_into_added_and_deleted() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("web1", Some("node-a")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let params = WatchParams::default().labels("app=web").disable_bookmarks();
        let mut stream = api.watch(&params, "0").await?.boxed();
        assert!(
            matches!(next_event(&mut stream).await?, WatchEvent::Added(p) if p.name_any() == "web1")
        );

        server.modify(Resource::Pods, "default", "web1", |p| {
            p["metadata"]["labels"]["app"] = "db".into()
        })?;
        match next_event(&mut stream).await? {
            WatchEvent::Deleted(p) => {
                assert_eq!(p.name_any(), "web1");
                assert_eq!(p.metadata.resource_version, Some(server.resource_version()));
            }
            other => bail!("expected DELETED web1, got {other:?}"),
        }
        server.modify(Resource::Pods, "default", "web1", |p| {
            p["metadata"]["labels"]["app"] = "web".into()
        })?;
        assert!(
            matches!(next_event(&mut stream).await?, WatchEvent::Added(p) if p.name_any() == "web1")
        );

        let mut db = pod("db2", Some("node-a"));
        db["metadata"]["labels"]["app"] = "db".into();
        server.create(Resource::Pods, db)?;
        server.create(Resource::Pods, pod("web3", Some("node-a")))?;
        assert!(
            matches!(next_event(&mut stream).await?, WatchEvent::Added(p) if p.name_any() == "web3")
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_end_bookmark() -> anyhow::Result<()> {
    bounded(async {
        let server = ApiServer::start()?;
        server.create(Resource::Pods, pod("a0", Some("node-a")))?;
        server.create(Resource::Pods, pod("b0", Some("node-b")))?;
        let api = Api::<Pod>::all(client(&server).await?);
        let config = watcher::Config::default()
            .fields("spec.nodeName=node-a")
            .streaming_lists();
        let mut rec = Recorder::start(api, config);
        assert_eq!(
            rec.until("init-done").await?,
            ["init", "init-apply a0", "init-done"]
        );
        server.create(Resource::Pods, pod("a1", Some("node-a")))?;
        assert_eq!(rec.until("apply a1").await?, ["apply a1"]);
        assert_eq!(server.count(Resource::Pods, Verb::List), 0);
        let first = server
            .requests()
            .into_iter()
            .find(|r| r.verb == Verb::Watch)
            .context("no watch")?;
        assert_eq!(first.param("sendInitialEvents").as_deref(), Some("true"));
        Ok(())
    })
    .await
}

/// Reads one HTTP/1.1 response from a raw socket: (head, de-chunked body).
fn raw_request(
    server: &ApiServer,
    request_line: &str,
    token: bool,
) -> anyhow::Result<(String, String)> {
    let mut socket = std::net::TcpStream::connect(server.addr())?;
    socket.set_read_timeout(Some(STEP_TIMEOUT))?;
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        socket,
        "{request_line} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    socket.read_to_string(&mut raw)?;
    let (head, mut rest) = raw.split_once("\r\n\r\n").context("no header end")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((head.to_owned(), rest.to_owned()));
    }
    let mut body = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            break;
        }
        body.push_str(tail.get(..size).context("truncated chunk")?);
        rest = tail.get(size + 2..).context("truncated chunk end")?;
    }
    Ok((head.to_owned(), body))
}

#[test]
fn watch_wire_format_is_chunked_json_lines_and_needs_the_token() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    server.create(Resource::Pods, pod("a0", Some("node-a")))?;
    let (head, body) = raw_request(
        &server,
        "GET /api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=2&fieldSelector=spec.nodeName%3Dnode-a",
        true,
    )?;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(
        lower.contains("transfer-encoding: chunked")
            && lower.contains("content-type: application/json")
    );
    let events: Vec<Value> = body
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["kind"], "Pod");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a0");
    assert!(events.len() >= 2, "{body}");
    for bookmark in &events[1..] {
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(
            bookmark["object"]["metadata"]["resourceVersion"],
            server.resource_version()
        );
    }

    let (head, body) = raw_request(&server, "GET /api/v1/pods", false)?;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(401))
    );

    let (head, body) = raw_request(
        &server,
        "GET /api/v1/pods?labelSelector=app%3Dweb&dryRun=All",
        true,
    )?;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["reason"],
        "BadRequest"
    );
    let (head, _) = raw_request(&server, "GET /api/v1/nodes", true)?;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = raw_request(&server, "DELETE /api/v1/namespaces/default/pods/a0", true)?;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    // Lists at an exact resourceVersion, or continued, from before a compaction get
    // HTTP 410.
    server.create(Resource::Pods, pod("a1", Some("node-a")))?;
    let (_, body) = raw_request(&server, "GET /api/v1/pods?limit=1", true)?;
    let page: Value = serde_json::from_str(&body)?;
    let token = page["metadata"]["continue"]
        .as_str()
        .context("no continue token")?;
    let old = server.resource_version();
    server.compact();
    let (head, _) = raw_request(
        &server,
        &format!("GET /api/v1/pods?resourceVersion={old}&resourceVersionMatch=Exact"),
        true,
    )?;
    assert!(head.starts_with("HTTP/1.1 410"), "{head}");
    let (head, _) = raw_request(
        &server,
        &format!("GET /api/v1/pods?limit=1&continue={token}"),
        true,
    )?;
    assert!(head.starts_with("HTTP/1.1 410"), "{head}");
    let (head, _) = raw_request(
        &server,
        "GET /api/v1/pods?limit=1&continue=not-a-token",
        true,
    )?;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    Ok(())
}

#[test]
fn break_watches_cuts_streams_without_the_final_chunk() -> anyhow::Result<()> {
    let server = ApiServer::start_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })?;
    server.create(Resource::Pods, pod("a0", Some("node-a")))?;
    let mut socket = std::net::TcpStream::connect(server.addr())?;
    socket.set_read_timeout(Some(STEP_TIMEOUT))?;
    write!(
        socket,
        "GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"ADDED\"") {
        let n = socket.read(&mut buf)?;
        anyhow::ensure!(n > 0, "connection closed before the first event");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(server.open_watches(Some(Resource::Pods)), 1);
    assert_eq!(server.break_watches(), 1);
    let mut rest = Vec::new();
    // Either a clean EOF or a reset: both are what a client sees of a dying server.
    let _ = socket.read_to_end(&mut rest);
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    assert!(
        !text.contains("\r\n0\r\n\r\n"),
        "the stream ended cleanly: {text}"
    );
    assert_eq!(server.open_watches(None), 0);
    Ok(())
}

#[test]
fn graceful_deletion_follows_api_server_rules() -> anyhow::Result<()> {
    let server = ApiServer::start()?;
    let mut p = pod("a0", Some("node-a"));
    p["spec"]["terminationGracePeriodSeconds"] = 45.into();
    server.create(Resource::Pods, p)?;
    let deleting = server.delete_gracefully(Resource::Pods, "default", "a0", None)?;
    assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], 45);
    let at = deleting["metadata"]["deletionTimestamp"]
        .as_str()
        .context("no deletionTimestamp")?;
    let created = deleting["metadata"]["creationTimestamp"]
        .as_str()
        .context("no creationTimestamp")?;
    assert!(
        at > created,
        "deletionTimestamp is the end of the grace period: {at} vs {created}"
    );
    // A shorter grace wins, a longer one is ignored.
    let shorter = server.delete_gracefully(Resource::Pods, "default", "a0", Some(10))?;
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 10);
    let rv = server.resource_version();
    server.delete_gracefully(Resource::Pods, "default", "a0", Some(60))?;
    assert_eq!(server.resource_version(), rv);

    // An unscheduled pod goes at once.
    server.create(Resource::Pods, pod("pending", None))?;
    server.delete_gracefully(Resource::Pods, "default", "pending", Some(30))?;
    assert!(server.get(Resource::Pods, "default", "pending").is_none());

    // Updates keep deletion fields and check resourceVersion preconditions.
    let mut update = shorter.clone();
    update["metadata"]["labels"]["phase"] = "draining".into();
    update["metadata"]
        .as_object_mut()
        .context("no metadata")?
        .remove("deletionTimestamp");
    let updated = server.update(Resource::Pods, update)?;
    assert_eq!(
        updated["metadata"]["deletionTimestamp"],
        shorter["metadata"]["deletionTimestamp"]
    );
    let mut stale = shorter.clone();
    stale["metadata"]["labels"]["x"] = "y".into();
    let err = server
        .update(Resource::Pods, stale)
        .expect_err("stale update accepted");
    assert_eq!(err.downcast_ref::<ApiError>().map(|e| e.code), Some(409));

    let port = server.addr();
    drop(server);
    assert!(
        std::net::TcpStream::connect(port).is_err(),
        "the server outlived its drop"
    );
    Ok(())
}
