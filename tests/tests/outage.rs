//! End-to-end, as root: the API server gone for minutes while the node lives on. The
//! kubelet emulator writes to the fake API server's store directly, so pods are deleted,
//! restarted and created while no client can reach it, as on a node whose kubelet still
//! runs while the control plane is unreachable. The agent keeps what the kernel saw,
//! bounded, and joins it with the API's word when the watches relist.
//!
//! What `/readyz` says meanwhile: ready. Readiness is about the kernel side (the probes
//! are attached and recording); an unreachable API server is counted
//! (`gracewatch_kube_watch_errors_total`) and logged, and the records that need its word
//! wait for it (`gracewatch_terminations_waiting_for_api`). Turning every agent of a
//! cluster NotReady would take them out of their Service, and their metrics out of
//! Prometheus, exactly while they keep the only account of what happened.

use std::time::{Duration, Instant};

use gracewatch_tests::{
    agent::{whats, Agent, Metrics},
    apiserver::{Resource, Verb},
    cluster::Cluster,
    kubelet::{ContainerDef, DeleteOptions, PodDef},
};
use serde_json::Value;

const NODE: &str = "node-a";
const OUTAGE: Duration = Duration::from_secs(120);
/// The watches retry at most 30 s apart (less a quarter of jitter). After the return,
/// the pause under way ends (up to 30 s), the watch resumes from its old version and gets
/// 410 Gone (history compacted), on which it relists at once. Runs here: 16 s.
const AFTER_RETURN: Duration = Duration::from_secs(45);
/// The agent's resident memory may grow this much over the outage and the relist (a
/// debug build, at about 58 MiB here; it grew by under 1 MiB).
const RSS_GROWTH_MAX: u64 = 8 << 20;

fn def(name: &str, deployment: &str, script: &str) -> PodDef {
    let mut def = PodDef::new("shop", name, vec![ContainerDef::shell("app", script)]);
    def.deployment = Some(deployment.into());
    def.service = Some(deployment.into());
    def.grace_seconds = 5;
    def
}

fn count(t: &Value, what: &str) -> usize {
    whats(t).iter().filter(|w| *w == what).count()
}

fn entry<'a>(t: &'a Value, what: &str) -> Option<&'a Value> {
    t["timeline"].as_array()?.iter().find(|e| e["what"] == what)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn answers(agent: &Agent, path: &str) -> (u16, String) {
    agent.get(path).unwrap_or_else(|e| panic!("{path}: {e:#}"))
}

#[test]
fn api_server_gone_for_minutes_keeps_kernel_facts_and_joins_them_after_the_relist() {
    let k = Cluster::new(NODE);
    let mut agent = k.agent();
    // Deleted during the outage: a graceful drain of about a second.
    let gone = k
        .node
        .run_pod(def(
            "gone-1",
            "gone",
            "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.1; done",
        ))
        .expect("pod");
    // Crashes (exit 3) 6 s after its start, during the outage; its next run, started
    // after the back-off, past `until`, lives on.
    let until = unix_now() + 7;
    let mut crashy = k
        .node
        .run_pod(def(
            "crashy-1",
            "crashy",
            &format!(
                "if [ $(date +%s) -lt {until} ]; then sleep 6; exit 3; fi; while true; do sleep 0.1; done"
            ),
        ))
        .expect("pod");
    std::thread::sleep(Duration::from_millis(1000));
    let lists_before = k.api.count(Resource::Pods, Verb::List);
    let rss_before = agent.rss_bytes().expect("rss");

    k.api.stop().expect("stop");
    k.api.compact();
    let down_at = Instant::now();
    let (new_pod, waiting_mid) = std::thread::scope(|s| {
        let deleting = s.spawn(|| {
            k.node.delete_pod(
                &gone,
                &DeleteOptions {
                    endpoint_lag: Duration::from_millis(100),
                    ..Default::default()
                },
            )
        });
        let restarting = s.spawn(|| {
            k.node
                .restart_after_exit(&mut crashy, "app", Duration::from_secs(3))
        });
        let deleted = deleting.join().expect("thread").expect("delete");
        assert!(deleted.duration() < Duration::from_secs(3), "{deleted:?}");
        let restart = restarting.join().expect("thread").expect("restart");
        assert_eq!((restart.exit_code, restart.restart_count), (3, 1));
        // Created while the API server is unreachable.
        let new_pod = k
            .node
            .run_pod(def(
                "new-1",
                "fresh",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ))
            .expect("pod");
        // Half way: the agent is up, answers, and holds both records for the API.
        std::thread::sleep((OUTAGE / 2).saturating_sub(down_at.elapsed()));
        assert!(agent.running(), "{}", agent.log_text());
        assert_eq!(answers(&agent, "/readyz"), (200, "ready\n".to_string()));
        let m = agent
            .metrics()
            .expect("metrics while the API server is down");
        let waiting = m.value("gracewatch_terminations_waiting_for_api");
        let gone_now = agent.terminations_of_pod("shop", "gone-1").expect("list");
        assert!(
            !gone_now.is_empty() && gone_now.iter().all(|t| t["state"] == "in_progress"),
            "nothing completed without the API's word: {gone_now:#?}"
        );
        (new_pod, waiting)
    });
    assert_eq!(
        waiting_mid,
        Some(2.0),
        "gone-1's stop and crashy-1's crash wait"
    );
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    assert!(agent.running(), "{}", agent.log_text());
    assert_eq!(answers(&agent, "/readyz").0, 200);
    let rss_during = agent.rss_bytes().expect("rss");
    let log = agent.log_text();
    let failed_lines = log.lines().filter(|l| l.contains("watch failed")).count();
    let m = agent.metrics().expect("metrics");
    let pod_errors = m.sum("gracewatch_kube_watch_errors_total", &["resource=\"pods\""]);
    let all_errors = m.sum("gracewatch_kube_watch_errors_total", &[]);
    eprintln!(
        "outage {:?}: RSS {} KiB before, {} KiB at the end; {failed_lines} 'watch failed' lines; watch errors: pods {pod_errors}, all {all_errors}",
        down_at.elapsed(),
        rss_before / 1024,
        rss_during / 1024
    );
    // Backing off 1, 2, 4 … 30 s: about 9 attempts per watch in 120 s (two watches: pods
    // and EndpointSlices), each failure logged once, not a flood.
    assert!(
        (4.0..=14.0).contains(&pod_errors),
        "pods watch errors: {pod_errors}"
    );
    assert!(
        (2..=30).contains(&failed_lines),
        "{failed_lines} 'watch failed' lines:\n{log}"
    );
    assert_eq!(failed_lines as f64, all_errors, "each failure logged once");
    assert!(
        rss_during <= rss_before + RSS_GROWTH_MAX,
        "RSS {rss_before} → {rss_during}"
    );

    k.api.restart().expect("restart");
    let back_at = Instant::now();
    let t = agent
        .wait_pod_completed("shop", "gone-1", AFTER_RETURN)
        .expect("gone-1's termination");
    eprintln!("gone-1 completed {:?} after the return", back_at.elapsed());
    assert!(
        k.api.count(Resource::Pods, Verb::List) > lists_before,
        "the agent relisted pods"
    );
    // Joined with what the agent knew of the pod before the outage.
    assert_eq!(
        (&t["namespace"], &t["pod"], &t["uid"]),
        (
            &Value::from("shop"),
            &Value::from("gone-1"),
            &Value::from(gone.uid.clone())
        ),
        "{t:#}"
    );
    assert_eq!(t["grace_period_seconds"], 5.0, "{t:#}");
    assert!(t["restarted_container"].is_null(), "not a restart: {t:#}");
    assert_eq!(t["cause"], "delete", "{t:#}");
    let app = &t["containers"][0];
    assert_eq!(t["containers"].as_array().map(Vec::len), Some(1), "{t:#}");
    assert_eq!(app["name"], "app", "{t:#}");
    assert_eq!(app["outcome"], "graceful", "{t:#}");
    let drain = app["sigterm_to_exit_seconds"]
        .as_f64()
        .expect("sigterm_to_exit");
    assert!((0.9..2.0).contains(&drain), "drained in {drain}s: {t:#}");
    for what in [
        "sigterm",
        "container_exit",
        "pod_removed",
        "api_unreachable",
    ] {
        assert_eq!(count(&t, what), 1, "{what} in {:?}", whats(&t));
    }
    // Nothing it never saw: no deletion time, no Killing Event, no status.
    for what in ["deletion_requested", "event_killing", "terminated_status"] {
        assert_eq!(count(&t, what), 0, "{what} in {:?}", whats(&t));
    }
    let said = entry(&t, "api_unreachable").expect("the outage")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.contains("API server unreachable from")
            && said.contains("its deletion (when, with what grace period) and removal")
            && said.contains("not observed"),
        "{said}"
    );
    assert_eq!(
        agent
            .terminations_of_pod("shop", "gone-1")
            .expect("list")
            .len(),
        1,
        "one termination, not a restart beside it"
    );

    // The crash: its run's record, with the status the relist brought.
    let run = agent
        .wait_restart("shop", "crashy-1", "app", 1, Duration::from_secs(15))
        .expect("crashy-1's restart");
    assert_eq!(run["cause"], "crash", "{run:#}");
    assert_eq!(run["restarted_container"], "app", "{run:#}");
    assert_eq!(run["containers"][0]["exit_code"], 3, "{run:#}");
    assert_eq!(count(&run, "restarted_status"), 1, "{run:#}");
    let crashy_records = agent.terminations_of_pod("shop", "crashy-1").expect("list");
    assert_eq!(crashy_records.len(), 1, "{crashy_records:#?}");

    // The pod created during the outage is known: its deletion now is told in full.
    k.node
        .delete_pod(&new_pod, &DeleteOptions::default())
        .expect("delete new-1");
    let fresh = agent
        .wait_pod_completed("shop", "new-1", Duration::from_secs(30))
        .expect("new-1's termination");
    assert_eq!(fresh["containers"][0]["name"], "app", "{fresh:#}");
    assert_eq!(count(&fresh, "deletion_requested"), 1, "{fresh:#}");
    assert_eq!(fresh["cause"], "delete", "{fresh:#}");

    // Each termination counted once, under its workload.
    let m: Metrics = agent.metrics().expect("metrics");
    let series = |s: &str| m.value(s).unwrap_or(0.0);
    assert_eq!(
        series("gracewatch_pod_terminations_total{namespace=\"shop\",workload=\"deployment/gone\",cause=\"delete\",outcome=\"graceful\"}"),
        1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum(
            "gracewatch_pod_terminations_total",
            &["workload=\"deployment/gone\""]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "gracewatch_container_restarts_total",
            &["workload=\"deployment/gone\""]
        ),
        0.0,
        "the deletion is no restart"
    );
    assert_eq!(
        m.sum(
            "gracewatch_termination_duration_seconds_count",
            &["workload=\"deployment/gone\""]
        ),
        0.0,
        "no duration: the deletion it starts from was not seen"
    );
    assert_eq!(
        m.sum(
            "gracewatch_termination_duration_seconds_count",
            &["workload=\"deployment/fresh\""]
        ),
        1.0,
        "the pod deleted after the outage has its duration"
    );
    assert_eq!(
        series("gracewatch_container_restarts_total{namespace=\"shop\",workload=\"deployment/crashy\",container=\"app\",cause=\"crash\"}"),
        1.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.sum(
            "gracewatch_container_restarts_total",
            &["workload=\"deployment/crashy\""]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "gracewatch_pod_terminations_total",
            &["workload=\"deployment/fresh\""]
        ),
        1.0
    );
    assert_eq!(
        m.value("gracewatch_terminations_waiting_for_api"),
        Some(0.0)
    );
    let rss_after = agent.rss_bytes().expect("rss");
    eprintln!("RSS after the relist: {} KiB", rss_after / 1024);
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX,
        "RSS {rss_before} → {rss_after}"
    );
}

/// A blip: the API server stops for a few seconds and comes back with its history, and
/// nothing about the node's pods changes meanwhile, so the watch resumes where it was and
/// stays silent. During the blip a pod's PID 1 gets SIGTERM from a host process (not
/// kubelet, which writes nothing: no deletion, no status) and exits. Its record (a run's,
/// since no deletion is known) needs the API's word on why the run ended, so after the
/// usual 10 s for the status it waits for the API server; once the server is back it must
/// get that word and complete, not wait its longest (10 min) and then claim the API
/// server was still unreachable.
#[test]
fn after_a_quiet_blip_the_records_waiting_for_the_api_complete() {
    const BLIP: Duration = Duration::from_secs(16);
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let pod = k
        .node
        .run_pod(def(
            "quiet-1",
            "quiet",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ))
        .expect("pod");
    let pid1 = pod.container("app").expect("app").pid();
    std::thread::sleep(Duration::from_millis(1000));

    k.api.stop().expect("stop");
    let down_at = Instant::now();
    // Let the watch notice first: a record is held only while the watch is known down.
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1 as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to PID 1");
    // The run's record waits 10 s for a status, then for the API server.
    let deadline = Instant::now() + Duration::from_secs(13);
    let waiting = loop {
        let w = agent
            .metrics()
            .expect("metrics")
            .value("gracewatch_terminations_waiting_for_api");
        if w == Some(1.0) || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        waiting,
        Some(1.0),
        "{:#?}\n{}",
        agent.terminations_of_pod("shop", "quiet-1"),
        agent.log_text()
    );
    std::thread::sleep(BLIP.saturating_sub(down_at.elapsed()));
    let lists_before = k.api.count(Resource::Pods, Verb::List);

    k.api.restart().expect("restart");
    let back_at = Instant::now();
    // The watch's pause under way (≤ 16 s after this blip), 10 s of silence, a relist.
    let t = agent
        .wait_pod_completed("shop", "quiet-1", Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    eprintln!("quiet-1 completed {:?} after the return", back_at.elapsed());
    assert!(
        k.api.count(Resource::Pods, Verb::List) > lists_before,
        "the silent watch was relisted"
    );
    assert_eq!(t["uid"], Value::from(pod.uid.clone()), "{t:#}");
    assert_eq!(t["containers"][0]["outcome"], "graceful", "{t:#}");
    assert_eq!(count(&t, "sigterm"), 1, "{:?}", whats(&t));
    assert_eq!(
        count(&t, "api_unreachable"),
        0,
        "the API server was back when it completed: {t:#}"
    );
    assert_eq!(
        agent
            .metrics()
            .expect("metrics")
            .value("gracewatch_terminations_waiting_for_api"),
        Some(0.0)
    );
}
