//! End-to-end, as root, on containerd's CRI: why pods and containers were stopped. The
//! real `gracewatch run --emit-events` against the fake API server while the kubelet
//! emulator restarts containers (a failed liveness probe, a crash loop, an OOM kill) and
//! deletes pods for a rolling update, a scale-down and an eviction. Each test asserts
//! the record's cause and diagnosis at `/debug/terminations/<ns>/<pod>`, the metric, and
//! the Event object the API server received from the agent.

use std::time::{Duration, Instant};

use gracewatch_tests::{
    agent::{codes, whats, Agent, Metrics},
    apiserver::{ApiServer, Resource, Verb},
    cluster::Cluster,
    kubelet::{ContainerDef, DeleteOptions, PodDef, Probe},
};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(30);

/// The Event the agent wrote with `reason` about pod `uid`, waiting for it.
fn agent_event(k: &Cluster, uid: &str, reason: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = k.api.events().into_iter().find(|e| {
            e["reportingController"] == "gracewatch.io/agent"
                && e["regarding"]["uid"] == uid
                && e["reason"] == reason
        });
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event from the agent; the API server has {:#}",
            Value::Array(k.api.events())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Event's fields a user reads in `kubectl describe pod`.
fn assert_event(e: &Value, pod: &str, container: Option<&str>, note_starts: &str) {
    assert_eq!(e["apiVersion"], "events.k8s.io/v1", "{e:#}");
    assert_eq!(e["reportingInstance"], NODE, "{e:#}");
    assert_eq!(e["type"], "Warning", "{e:#}");
    assert_eq!(e["regarding"]["kind"], "Pod", "{e:#}");
    assert_eq!(e["regarding"]["name"], pod, "{e:#}");
    if let Some(c) = container {
        assert_eq!(
            e["regarding"]["fieldPath"],
            format!("spec.containers{{{c}}}"),
            "{e:#}"
        );
    }
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.starts_with(note_starts), "{note}");
}

/// The completed record of run `n` (restartCount `n` after it) of `container`.
/// The detail of a record's `cause` timeline entry ("<cause>: <evidence>").
fn cause_detail(t: &Value) -> String {
    t["timeline"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["what"] == "cause"))
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn wait_run(agent: &Agent, pod: &str, container: &str, n: i64) -> Value {
    agent
        .wait_restart("shop", pod, container, n, WAIT)
        .expect("restart record")
}

fn message<'a>(t: &'a Value, code: &str) -> &'a str {
    t["diagnoses"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["code"] == code))
        .and_then(|d| d["message"].as_str())
        .unwrap_or_default()
}

fn counter(m: &Metrics, series: &str) -> Option<f64> {
    m.value(series)
}

fn pod(name: &str, script: &str) -> PodDef {
    let mut def = PodDef::new("shop", name, vec![ContainerDef::shell("app", script)]);
    def.deployment = Some("web".into());
    def.grace_seconds = 2;
    def
}

const TRAPPING: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
const IGNORING: &str = "trap '' TERM; while true; do sleep 0.1; done";

#[test]
fn liveness_probe_failure_restarts_the_container() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut p = k.node.run_pod(pod("live-1", TRAPPING)).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    let r = k
        .node
        .fail_liveness(&mut p, "app", 3, Duration::from_millis(400))
        .expect("restart");
    let t = wait_run(&agent, "live-1", "app", 1);
    assert_eq!(t["cause"], "liveness_probe", "{t:#}");
    assert_eq!(t["uid"], p.uid.as_str());
    let c = &t["containers"][0];
    assert_eq!(c["container_id"], r.old_id.as_str(), "{t:#}");
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(codes(&t), ["LIVENESS_KILLED"], "{t:#}");
    let msg = message(&t, "LIVENESS_KILLED");
    assert!(
        msg.starts_with("kubelet restarted app because its liveness probe failed (Liveness probe failed: HTTP probe failed with statuscode: 500)"),
        "{msg}"
    );
    eprintln!("LIVENESS_KILLED: {msg}");
    assert!(
        msg.contains("from the first failure seen to the kill"),
        "{msg}"
    );
    assert!(msg.contains("the app then shut down gracefully"), "{msg}");
    let order = whats(&t);
    for what in [
        "event_unhealthy",
        "event_killing",
        "sigterm",
        "container_exit",
        "restarted_status",
        "cause",
    ] {
        assert!(order.iter().any(|w| w == what), "{what} in {order:?}");
    }
    let pos = |w: &str| order.iter().position(|x| x == w).expect("entry");
    assert!(pos("event_unhealthy") < pos("event_killing"), "{order:?}");
    assert!(pos("event_killing") < pos("sigterm"), "{order:?}");
    // The pod is not deleted: no pod termination was recorded.
    let all = agent.terminations_of_pod("shop", "live-1").expect("all");
    assert!(
        all.iter().all(|t| t["restarted_container"] == "app"),
        "{all:#?}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_container_restarts_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\",cause=\"liveness_probe\"}"),
        Some(1.0)
    );
    let e = agent_event(&k, &p.uid, "LivenessKilled");
    assert_event(&e, "live-1", Some("app"), "kubelet restarted app because");
    let text = agent.explain_target("shop/live-1").expect("explain");
    assert!(
        text.starts_with("Container app of pod shop/live-1 ended (completed, restartCount 1)\n  cause    liveness_probe\n"),
        "{text}"
    );
    assert!(
        text.contains("LIVENESS_KILLED: kubelet restarted app"),
        "{text}"
    );
}

#[test]
fn startup_probe_failure_restarts_the_container() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut p = k.node.run_pod(pod("start-1", IGNORING)).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    k.node
        .fail_probe(&mut p, "app", Probe::Startup, 2, Duration::from_millis(200))
        .expect("restart");
    let t = wait_run(&agent, "start-1", "app", 1);
    assert_eq!(t["cause"], "startup_probe", "{t:#}");
    assert_eq!(t["containers"][0]["outcome"], "forced_kill", "{t:#}");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_container_restarts_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\",cause=\"startup_probe\"}"),
        Some(1.0)
    );
    let e = agent_event(&k, &p.uid, "ForcedKill");
    assert_event(&e, "start-1", Some("app"), "SIGKILLed by");
}

#[test]
fn a_crash_loop_is_diagnosed_at_the_third_restart() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut p = k
        .node
        .run_pod(pod("loop-1", "sleep 0.3; exit 3"))
        .expect("pod");
    for (i, ms) in [100u64, 200, 400].into_iter().enumerate() {
        let r = k
            .node
            .restart_after_exit(&mut p, "app", Duration::from_millis(ms))
            .expect("restart");
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.restart_count, i as i64 + 1);
    }
    let first = wait_run(&agent, "loop-1", "app", 1);
    assert_eq!(first["cause"], "crash", "{first:#}");
    assert_eq!(first["containers"][0]["exit_code"], 3, "{first:#}");
    assert!(codes(&first).is_empty(), "{first:#}");
    let third = wait_run(&agent, "loop-1", "app", 3);
    assert_eq!(third["cause"], "crash", "{third:#}");
    assert_eq!(codes(&third), ["CRASH_LOOP"], "{third:#}");
    let msg = message(&third, "CRASH_LOOP");
    assert!(
        msg.starts_with("app was restarted 3 times within "),
        "{msg}"
    );
    assert!(
        msg.contains("(last exits, newest first: exit code 3, exit code 3, exit code 3)"),
        "{msg}"
    );
    assert!(
        msg.ends_with("back-off between restarts is now 400ms"),
        "{msg}"
    );
    assert!(
        whats(&third).iter().any(|w| w == "event_backoff"),
        "{third:#}"
    );
    // Newest first.
    let all = agent.terminations_of_pod("shop", "loop-1").expect("all");
    let counts: Vec<i64> = all
        .iter()
        .filter(|t| t["state"] == "completed")
        .filter_map(|t| t["restart_count"].as_i64())
        .collect();
    assert!(counts.starts_with(&[3, 2, 1]), "{counts:?}");
    // Each run's record holds the status of its own end, whatever order the records
    // completed in (a record waits for kubelet's status and Events).
    for t in all.iter().filter(|t| t["state"] == "completed") {
        let n = t["restart_count"].as_i64().expect("restart count");
        // Kubelet shows the ended run as lastState before it counts the restart.
        let own = format!("(restartCount {}) (watch)", n - 1);
        assert!(
            t["timeline"]
                .as_array()
                .expect("timeline")
                .iter()
                .any(|e| e["what"] == "restarted_status"
                    && e["detail"].as_str().is_some_and(|d| d.ends_with(&own))),
            "run {n}: {t:#}"
        );
    }

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_container_restarts_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\",cause=\"crash\"}"),
        Some(3.0)
    );
    let e = agent_event(&k, &p.uid, "CrashLoop");
    assert_event(&e, "loop-1", Some("app"), "app was restarted 3 times");
    assert!(e["series"].is_null(), "a first Event: {e:#}");

    // A fourth restart: the same diagnosis again is the Event's series, not a new Event.
    k.node
        .restart_after_exit(&mut p, "app", Duration::from_millis(800))
        .expect("restart");
    let fourth = wait_run(&agent, "loop-1", "app", 4);
    assert!(
        message(&fourth, "CRASH_LOOP").starts_with("app was restarted 4 times within "),
        "{fourth:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let series = loop {
        let e = agent_event(&k, &p.uid, "CrashLoop");
        if e["series"]["count"] == 2 {
            break e;
        }
        assert!(Instant::now() < deadline, "no series update: {e:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ours: Vec<Value> = k
        .api
        .events()
        .into_iter()
        .filter(|e| e["reportingController"] == "gracewatch.io/agent")
        .collect();
    assert_eq!(ours.len(), 1, "one Event, its series counting: {ours:#?}");
    assert!(
        series["series"]["lastObservedTime"].is_string(),
        "{series:#}"
    );
    assert!(k.api.count(Resource::Events, Verb::Patch) >= 1);
}

#[test]
fn an_oom_kill_restarts_the_container() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = pod("oom-1", "sleep 0.5; x=a; while true; do x=$x$x; done");
    def.containers[0].memory_limit = Some(32 << 20);
    let mut p = k.node.run_pod(def).expect("pod");
    let r = k
        .node
        .restart_after_exit(&mut p, "app", Duration::from_millis(200))
        .expect("restart");
    assert_eq!(r.reason, "OOMKilled", "{r:?}");
    let t = wait_run(&agent, "oom-1", "app", 1);
    assert_eq!(t["cause"], "oom", "{t:#}");
    assert_eq!(t["containers"][0]["outcome"], "oom_killed", "{t:#}");
    assert_eq!(codes(&t), ["OOM_KILLED"], "{t:#}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_container_restarts_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\",cause=\"oom\"}"),
        Some(1.0)
    );
    let e = agent_event(&k, &p.uid, "OomKilled");
    assert_event(&e, "oom-1", Some("app"), "the kernel's OOM killer");
}

/// `kubectl exec web-1 -- kill 1`: PID 1 handles SIGTERM and exits 0, kubelet restarts it.
/// Neither an Event nor the status says why; the kernel saw who sent the SIGTERM, and the
/// run's record says so.
#[test]
fn a_run_ended_by_kill_1_from_an_exec_names_the_sender() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut p = k
        .node
        .run_pod(pod(
            "exec-1",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ))
        .expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let id = p.container("app").expect("app").id().to_string();
    let cmd = ["kill".to_string(), "1".to_string()];
    k.node
        .runtime()
        .cri()
        .expect("cri")
        .exec_sync(&id, &cmd, Duration::from_secs(5))
        .expect("exec kill 1");
    k.node
        .restart_after_exit(&mut p, "app", Duration::from_millis(200))
        .expect("restart");
    let t = wait_run(&agent, "exec-1", "app", 1);
    assert_eq!(t["cause"], "unknown", "{t:#}");
    assert_eq!(t["containers"][0]["outcome"], "graceful", "{t:#}");
    assert!(
        t["containers"][0]["sigterm_to_exit_seconds"]
            .as_f64()
            .is_some(),
        "{t:#}"
    );
    let said = cause_detail(&t);
    assert!(
        said.starts_with("unknown: SIGTERM from kill")
            && said.contains("in an exec session")
            && said.ends_with("nothing from the API says why"),
        "{said}"
    );
}

/// A Deployment at `revision` and its ReplicaSet `<name>-7d4b9c8f6` at `rs_revision`
/// with `replicas` wanted and `had` counted; `scaled_now`: the controller wrote the
/// ReplicaSet's replicas just now (its managedFields entry, as the API server keeps it).
fn deployment(
    api: &ApiServer,
    name: &str,
    (revision, rs_revision): (&str, &str),
    (replicas, had): (i32, i32),
    scaled_now: bool,
) {
    let ann = |r: &str| json!({"deployment.kubernetes.io/revision": r});
    api.create(
        Resource::Deployments,
        json!({"metadata": {"name": name, "namespace": "shop", "annotations": ann(revision)},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}}),
    )
    .expect("deployment");
    let written = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let managed = if scaled_now {
        json!([{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                "time": written, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {}}, "f:spec": {"f:replicas": {}}}}])
    } else {
        json!([])
    };
    api.create(
        Resource::ReplicaSets,
        json!({"metadata": {"name": format!("{name}-7d4b9c8f6"), "namespace": "shop",
                            "annotations": ann(rs_revision), "managedFields": managed,
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                "name": name, "uid": "00000000-0000-4000-8000-0000000000d0", "controller": true}]},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
               "status": {"replicas": had}}),
    )
    .expect("replicaset");
}

fn pod_termination(agent: &Agent, name: &str) -> Value {
    agent
        .wait_pod_completed("shop", name, WAIT)
        .expect("termination")
}

#[test]
fn rolling_update_and_scale_down_are_told_apart() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    // web: the Deployment moved to revision 2; the pod's ReplicaSet is revision 1.
    deployment(&k.api, "web", ("2", "1"), (1, 1), false);
    // api: current ReplicaSet, scaled from 2 to 1 just now; its controller has already
    // counted the pod it deletes out of its status.
    deployment(&k.api, "api", ("1", "1"), (1, 1), true);
    let old = k.node.run_pod(pod("web-old", IGNORING)).expect("pod");
    let mut def = pod("api-2", TRAPPING);
    def.deployment = Some("api".into());
    let extra = k.node.run_pod(def).expect("pod");
    // db: a StatefulSet updating from revision db-1 to db-2.
    k.api
        .create(
            Resource::StatefulSets,
            json!({"metadata": {"name": "db", "namespace": "shop"},
                   "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": []}}},
                   "status": {"replicas": 3, "currentRevision": "db-1", "updateRevision": "db-2"}}),
        )
        .expect("statefulset");
    let mut def = pod("db-0", TRAPPING);
    def.deployment = None;
    def.statefulset = Some("db".into());
    def.template_hash = "db-1".into();
    let member = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    k.node
        .delete_pod(&old, &DeleteOptions::default())
        .expect("delete");
    k.node
        .delete_pod(&extra, &DeleteOptions::default())
        .expect("delete");
    k.node
        .delete_pod(&member, &DeleteOptions::default())
        .expect("delete");

    let t = pod_termination(&agent, "web-old");
    assert_eq!(t["cause"], "rollout", "{t:#}");
    let evidence = cause_detail(&t);
    assert_eq!(
        evidence,
        "rollout: ReplicaSet web-7d4b9c8f6 is revision 1 of Deployment web, which is at revision 2: a rolling update replaced the pod"
    );
    let s = pod_termination(&agent, "api-2");
    assert_eq!(s["cause"], "scale_down", "{s:#}");
    let evidence = cause_detail(&s);
    assert!(
        evidence.starts_with("scale_down: ReplicaSet api-7d4b9c8f6's replicas were set to 1 at "),
        "{evidence}"
    );
    let db = pod_termination(&agent, "db-0");
    assert_eq!(db["cause"], "rollout", "{db:#}");
    assert!(
        db["timeline"].as_array().is_some_and(|es| es.iter().any(|e| e["detail"]
            == "rollout: the pod is at revision db-1; StatefulSet db is updating to db-2: a rolling update replaced it")),
        "{db:#}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_pod_terminations_total{namespace=\"shop\",workload=\"deployment/web\",cause=\"rollout\",outcome=\"forced_kill\"}"),
        Some(1.0)
    );
    assert_eq!(
        counter(&m, "gracewatch_pod_terminations_total{namespace=\"shop\",workload=\"deployment/api\",cause=\"scale_down\",outcome=\"graceful\"}"),
        Some(1.0)
    );
    // Two pods, each read its ReplicaSet and Deployment: four reads at most.
    let reads: f64 = ["replicaset", "deployment"]
        .iter()
        .filter_map(|k| {
            counter(
                &m,
                &format!("gracewatch_kube_owner_requests_total{{kind=\"{k}\",result=\"ok\"}}"),
            )
        })
        .sum();
    assert!((2.0..=4.0).contains(&reads), "{reads} owner reads");
    assert_eq!(
        counter(
            &m,
            "gracewatch_kube_owner_requests_total{kind=\"statefulset\",result=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(k.api.count(Resource::StatefulSets, Verb::Get), 1);
    let e = agent_event(&k, &old.uid, "SigtermIgnored");
    assert_event(
        &e,
        "web-old",
        Some("app"),
        "PID 1 (sh) has no SIGTERM handler",
    );
    let forced = agent_event(&k, &old.uid, "ForcedKill");
    assert_event(&forced, "web-old", Some("app"), "SIGKILLed by");
}

#[test]
fn an_eviction_is_named_from_the_disruption_condition() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let p = k.node.run_pod(pod("evicted-1", IGNORING)).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    // The Eviction API marks the pod before it deletes it.
    k.api
        .modify(Resource::Pods, "shop", "evicted-1", |p| {
            p["status"]["conditions"] = json!([
                {"type": "Ready", "status": "True"},
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                 "message": "Eviction API: evicting"}]);
        })
        .expect("condition");
    k.node
        .delete_pod(&p, &DeleteOptions::default())
        .expect("delete");
    let t = pod_termination(&agent, "evicted-1");
    assert_eq!(t["cause"], "eviction", "{t:#}");
    assert!(
        t["timeline"].as_array().is_some_and(|es| es.iter().any(|e| e["what"] == "cause"
            && e["detail"]
                == "eviction: pod condition DisruptionTarget, reason EvictionByEvictionAPI: Eviction API: evicting")),
        "{t:#}"
    );
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        counter(&m, "gracewatch_pod_terminations_total{namespace=\"shop\",workload=\"deployment/web\",cause=\"eviction\",outcome=\"forced_kill\"}"),
        Some(1.0)
    );
    // No owner was read: the condition says enough.
    assert_eq!(
        counter(
            &m,
            "gracewatch_kube_owner_requests_total{kind=\"replicaset\",result=\"ok\"}"
        ),
        None
    );
    for owner in [Resource::ReplicaSets, Resource::Deployments] {
        assert_eq!(k.api.count(owner, Verb::Get), 0, "{owner:?} read");
    }
    let e = agent_event(&k, &p.uid, "ForcedKill");
    assert_event(&e, "evicted-1", Some("app"), "SIGKILLed by");
}
