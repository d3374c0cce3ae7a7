//! End-to-end, as root: the real `gracewatch run` in Kubernetes mode, talking through
//! the real kube client to the fake API server, while the kubelet emulator runs pods on a
//! private containerd through its CRI API and deletes them the way kubelet does. Each test asserts what a
//! user reads: `/debug/terminations/<ns>/<pod>`, `gracewatch explain`, `/metrics`.

use std::time::{Duration, Instant};

use gracewatch_tests::{
    agent::{codes, whats, Metrics},
    apiserver::{Resource, Verb},
    cluster::Cluster,
    kubelet::{ContainerDef, DeleteOptions, DeleteReport, Hook, PodDef},
};
use serde_json::Value;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(30);
/// The agent's times must match the emulator's own clock (or the window it bounds a
/// runtime signal to) this closely.
const TOLERANCE: f64 = 0.05;

fn web(name: &str, script: &str) -> PodDef {
    let mut def = PodDef::new("shop", name, vec![ContainerDef::shell("app", script)]);
    def.deployment = Some("web".into());
    def.service = Some("web".into());
    def.grace_seconds = 3;
    def
}

/// The container name the agent gives a pod's sandbox (kubelet's own name for it).
const SANDBOX: &str = "POD";

/// Timeline entries of one kind about the pod's containers. The sandbox's own (its
/// SIGKILL and exit at StopPodSandbox, after the containers) are not counted here.
fn count(t: &Value, what: &str) -> usize {
    t["timeline"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["what"] == what && e["container"] != SANDBOX)
                .count()
        })
        .unwrap_or(0)
}

/// The `what` of each of the sandbox's timeline entries, in order.
fn sandbox_whats(t: &Value) -> Vec<String> {
    t["timeline"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["container"] == SANDBOX)
                .filter_map(|e| e["what"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Wall-clock time (Unix seconds) of the first timeline entry of a kind.
fn entry_time(t: &Value, what: &str) -> Option<f64> {
    let e = t["timeline"]
        .as_array()?
        .iter()
        .find(|e| e["what"] == what)?;
    let at = time::OffsetDateTime::parse(
        e["at"].as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e9)
}

fn container<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The histogram's sum for one series (a single observation: the value itself).
fn observed(m: &Metrics, name: &str, labels: &str) -> Option<f64> {
    m.value(&format!("{name}_sum{{{labels}}}"))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn near(agent: f64, emulator: f64, what: &str) {
    eprintln!("{what}: agent {agent:.4}s, emulator {emulator:.4}s");
    assert!(
        (agent - emulator).abs() <= TOLERANCE,
        "{what}: agent {agent:.4}s vs emulator {emulator:.4}s"
    );
}

/// The runtime, not the emulator, sends the signals: the emulator knows them only within
/// a window (see `StopReport`), which the agent's figure must fall in, give or take the
/// tolerance. On an idle machine the window is 10-40 ms wide.
fn within(agent: f64, (least, most): (f64, f64), what: &str) {
    eprintln!("{what}: agent {agent:.4}s, emulator between {least:.4}s and {most:.4}s");
    assert!(
        agent >= least - TOLERANCE && agent <= most + TOLERANCE,
        "{what}: agent {agent:.4}s, emulator between {least:.4}s and {most:.4}s"
    );
}

/// SIGTERM → the exit SIGKILL caused, as the emulator bounds it: at least the grace
/// passed to StopContainer, at most StopContainer sent → PID 1 gone.
fn sigterm_to_kill(r: &DeleteReport, c: &str) -> (f64, f64) {
    let s = &r.container(c).expect("container report").stop;
    assert!(s.kill_needed(), "SIGKILL needed: {s:?}");
    let (least, most) = s.sigterm_to_exit();
    (secs(least), secs(most))
}

fn since(r: &DeleteReport, stamp_ns: u64) -> f64 {
    (stamp_ns - r.requested.boottime_ns) as f64 / 1e9
}

/// Deletion → SIGTERM, as the emulator bounds it (SIGTERM went out after StopContainer
/// was sent, before PID 1 was gone).
fn deletion_to_sigterm(r: &DeleteReport, c: &str) -> (f64, f64) {
    let (first, last) = r
        .container(c)
        .expect("container report")
        .stop
        .sigterm_sent();
    (since(r, first), since(r, last))
}

#[test]
fn graceful_pod_with_prestop_covering_the_endpoint_lag() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web(
        "web-1",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    );
    def.grace_seconds = 5;
    def.containers[0].prestop = Some(Hook::Sleep(Duration::from_secs(1)));
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(
            &pod,
            &DeleteOptions {
                endpoint_lag: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .expect("delete");

    let t = agent
        .wait_pod_completed("shop", "web-1", WAIT)
        .expect("termination");
    assert_eq!(t["uid"], pod.uid.as_str());
    assert_eq!(t["grace_period_seconds"], 5.0);
    let app = container(&t, "app");
    assert_eq!(app["outcome"], "graceful", "{t:#}");
    assert_eq!(app["exit_code"], 0);
    assert!(
        codes(&t).is_empty(),
        "the preStop sleep covers the endpoint lag: {t:#}"
    );
    for what in [
        "deletion_requested",
        "event_killing",
        "prestop_started",
        "prestop_finished",
        "sigterm",
        "container_exit",
        "terminated_status",
        "endpoint_terminating",
        "endpoint_removed",
        "pod_removed",
    ] {
        assert_eq!(count(&t, what), 1, "{what} in {:?}", whats(&t));
    }
    let order = whats(&t);
    let pos = |w: &str| order.iter().position(|x| x == w).expect("entry");
    assert!(
        pos("deletion_requested") < pos("endpoint_terminating"),
        "{order:?}"
    );
    assert!(
        pos("endpoint_terminating") < pos("sigterm") && pos("sigterm") < pos("container_exit"),
        "{order:?}"
    );
    assert!(pos("container_exit") < pos("pod_removed"), "{order:?}");
    // StopPodSandbox, once the app has stopped: the runtime SIGKILLs the pause process.
    let sandbox = sandbox_whats(&t);
    assert!(
        sandbox.contains(&"sigkill".to_string()) && sandbox.contains(&"container_exit".to_string()),
        "the sandbox's end is in the timeline: {t:#}"
    );
    let sandbox_kill = t["timeline"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .position(|e| e["container"] == SANDBOX && e["what"] == "sigkill")
        })
        .expect("sandbox sigkill");
    assert!(pos("terminated_status") < sandbox_kill, "{order:?}");
    assert!(sandbox_kill < pos("pod_removed"), "{order:?}");

    let m = agent.metrics().expect("metrics");
    let wl = "namespace=\"shop\",workload=\"deployment/web\"";
    let duration = observed(
        &m,
        "gracewatch_termination_duration_seconds",
        &format!("{wl},outcome=\"graceful\""),
    )
    .expect("termination duration");
    near(duration, secs(report.duration()), "deletion → last exit");
    let lag = observed(&m, "gracewatch_endpoint_removal_lag_seconds", wl).expect("lag");
    near(
        lag,
        since(
            &report,
            report.endpoint_terminating.expect("marked").boottime_ns,
        ),
        "endpoint removal lag",
    );
    let prestop = observed(
        &m,
        "gracewatch_prestop_duration_seconds",
        &format!("{wl},container=\"app\""),
    )
    .expect("prestop");
    within(
        prestop,
        deletion_to_sigterm(&report, "app"),
        "preStop duration",
    );
    let ratio = observed(&m, "gracewatch_grace_period_used_ratio", wl).expect("ratio");
    near(ratio * 5.0, secs(report.duration()), "grace used");
    assert_eq!(m.value(&format!("gracewatch_container_terminations_total{{{wl},container=\"app\",outcome=\"graceful\"}}")), Some(1.0));
    assert_eq!(
        m.value(&format!(
            "gracewatch_sigterm_before_endpoint_removal_total{{{wl}}}"
        )),
        None
    );
    assert_eq!(
        m.value("gracewatch_terminating_pods{namespace=\"shop\"}"),
        Some(0.0)
    );

    let text = agent.explain_target("shop/web-1").expect("explain");
    assert!(
        text.contains("Termination of pod shop/web-1 (completed, grace period 5s)"),
        "{text}"
    );
    assert!(
        text.contains(" app PID 1 sh: graceful (exit code 0"),
        "{text}"
    );
    assert!(text.contains("Diagnosis\n  nothing went wrong"), "{text}");
}

#[test]
fn shell_entrypoint_that_keeps_sigterm_from_the_app() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web("shell-1", "sleep 1000; echo never");
    def.service = None;
    def.grace_seconds = 2;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "shell-1", WAIT)
        .expect("termination");
    assert_eq!(container(&t, "app")["outcome"], "forced_kill", "{t:#}");
    assert_eq!(
        codes(&t),
        [
            "SHELL_DID_NOT_FORWARD_SIGTERM",
            "SIGTERM_IGNORED",
            "FORCED_KILL"
        ]
    );
    assert_eq!(t["diagnoses"][0]["container"], "app");
    let measured = container(&t, "app")["sigterm_to_exit_seconds"]
        .as_f64()
        .expect("measured");
    within(
        measured,
        sigterm_to_kill(&report, "app"),
        "SIGTERM → SIGKILL",
    );
    let m = agent.metrics().expect("metrics");
    assert_eq!(m.value("gracewatch_forced_kills_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\"}"), Some(1.0));
    assert_eq!(m.value("gracewatch_sigterm_ignored_total{namespace=\"shop\",workload=\"deployment/web\",container=\"app\"}"), Some(1.0));
}

#[test]
fn app_that_ignores_sigterm_is_killed_at_the_end_of_grace() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web("ignorer-1", "trap '' TERM; while true; do sleep 0.1; done");
    def.service = None;
    def.grace_seconds = 2;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "ignorer-1", WAIT)
        .expect("termination");
    assert_eq!(container(&t, "app")["outcome"], "forced_kill", "{t:#}");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    let detail = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["what"] == "sigterm")
        .expect("sigterm")["detail"]
        .clone();
    assert!(
        detail
            .as_str()
            .unwrap_or_default()
            .ends_with("to sh (PID 1): ignored"),
        "{detail}"
    );
    within(
        container(&t, "app")["sigterm_to_exit_seconds"]
            .as_f64()
            .expect("measured"),
        sigterm_to_kill(&report, "app"),
        "SIGTERM → SIGKILL",
    );
}

#[test]
fn prestop_sleep_longer_than_the_grace_period() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web("prestop-1", "sleep 1000");
    def.service = None;
    def.grace_seconds = 3;
    def.containers[0].prestop = Some(Hook::Sleep(Duration::from_secs(5)));
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "prestop-1", WAIT)
        .expect("termination");
    assert!(
        codes(&t).contains(&"PRESTOP_EXCEEDED_GRACE".to_string()),
        "{t:#}"
    );
    let d = t["diagnoses"]
        .as_array()
        .expect("diagnoses")
        .iter()
        .find(|d| d["code"] == "PRESTOP_EXCEEDED_GRACE")
        .expect("diagnosis")
        .clone();
    let msg = d["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("preStop sleep took 3.0")
            && msg.contains("of the 3s grace period, leaving only 2.0"),
        "{msg}"
    );
    assert_eq!(d["container"], "app");
    let m = agent.metrics().expect("metrics");
    let prestop = observed(
        &m,
        "gracewatch_prestop_duration_seconds",
        "namespace=\"shop\",workload=\"deployment/web\",container=\"app\"",
    )
    .expect("prestop");
    within(
        prestop,
        deletion_to_sigterm(&report, "app"),
        "preStop duration",
    );
}

#[test]
fn exec_prestop_cut_at_the_grace_is_found_and_its_leftovers_blame_nobody() {
    // kubelet runs the hook through the runtime's exec with the grace as timeout, kills
    // it at 2 s, then gives the app its 2 s minimum; the app traps SIGTERM and exits 0.
    // The hook's own `sleep` is still there when PID 1 exits: not PID 1's child.
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web(
        "exechook-1",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    );
    def.service = None;
    def.grace_seconds = 2;
    def.containers[0].prestop = Some(Hook::Exec(vec!["sh".into(), "-c".into(), "sleep 3".into()]));
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    k.node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "exechook-1", WAIT)
        .expect("termination");
    assert_eq!(container(&t, "app")["outcome"], "graceful", "{t:#}");
    let codes = codes(&t);
    assert!(
        codes.contains(&"PRESTOP_EXCEEDED_GRACE".to_string()),
        "the hook used the whole grace: {t:#}"
    );
    assert!(
        !codes.contains(&"SHELL_DID_NOT_FORWARD_SIGTERM".to_string()),
        "the hook's sleep is not PID 1's child: {t:#}"
    );
    assert!(
        count(&t, "exec_session_started") >= 1,
        "the hook entered from outside: {:?}",
        whats(&t)
    );
    let started = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["what"] == "prestop_started")
        .expect("prestop_started");
    assert!(
        started["detail"]
            .as_str()
            .unwrap_or_default()
            .ends_with("entered the container (kernel)"),
        "the hook's start comes from the kernel: {started}"
    );
}

#[test]
fn endpoint_removed_three_seconds_after_sigterm() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web(
        "racy-1",
        "trap 'sleep 4; exit 0' TERM; while true; do sleep 0.1; done",
    );
    def.grace_seconds = 10;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(
            &pod,
            &DeleteOptions {
                endpoint_lag: Duration::from_secs(3),
                ..Default::default()
            },
        )
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "racy-1", WAIT)
        .expect("termination");
    assert_eq!(container(&t, "app")["outcome"], "graceful", "{t:#}");
    assert_eq!(codes(&t), ["ENDPOINT_REMOVED_AFTER_SIGTERM"], "{t:#}");
    let msg = t["diagnoses"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.starts_with("SIGTERM arrived 3.0") || msg.starts_with("SIGTERM arrived 2.9"),
        "{msg}"
    );
    assert!(msg.contains("add `preStop: sleep: seconds: 4`"), "{msg}");
    let m = agent.metrics().expect("metrics");
    let wl = "namespace=\"shop\",workload=\"deployment/web\"";
    assert_eq!(
        m.value(&format!(
            "gracewatch_sigterm_before_endpoint_removal_total{{{wl}}}"
        )),
        Some(1.0)
    );
    let lag = observed(&m, "gracewatch_endpoint_removal_lag_seconds", wl).expect("lag");
    near(
        lag,
        since(
            &report,
            report.endpoint_terminating.expect("marked").boottime_ns,
        ),
        "endpoint removal lag",
    );
}

#[test]
fn force_delete_with_zero_grace() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web("forced-1", "sleep 1000");
    def.service = None;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(
            &pod,
            &DeleteOptions {
                force: true,
                ..Default::default()
            },
        )
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "forced-1", WAIT)
        .expect("termination");
    let order = whats(&t);
    // The API forgot the pod at once; the agent saw that within the tolerance (it times
    // the removal at watch arrival, which may land just after kubelet's SIGTERM).
    let removed = entry_time(&t, "pod_removed").expect("pod_removed entry");
    let forced = report.requested.realtime_ns as f64 / 1e9;
    assert!(
        removed - forced >= 0.0 && removed - forced <= TOLERANCE,
        "pod removal seen {:.4}s after the forced delete: {order:?}",
        removed - forced
    );
    assert_eq!(
        count(&t, "deletion_requested"),
        0,
        "a forced delete skips the graceful phase: {order:?}"
    );
    assert_eq!(container(&t, "app")["outcome"], "forced_kill", "{t:#}");
    // kubelet's 2 s minimum between SIGTERM and SIGKILL.
    within(
        container(&t, "app")["sigterm_to_exit_seconds"]
            .as_f64()
            .expect("measured"),
        sigterm_to_kill(&report, "app"),
        "SIGTERM → SIGKILL",
    );
    assert!(
        sigterm_to_kill(&report, "app").0 >= 2.0,
        "StopContainer(grace ≥ 2)"
    );
}

#[test]
fn two_containers_stopping_at_different_speeds() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = PodDef::new(
        "shop",
        "duo-1",
        vec![
            ContainerDef::shell("fast", "trap 'exit 0' TERM; while true; do sleep 0.1; done"),
            ContainerDef::shell(
                "slow",
                "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.1; done",
            ),
        ],
    );
    def.grace_seconds = 5;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let report = k
        .node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "duo-1", WAIT)
        .expect("termination");
    assert_eq!(t["containers"].as_array().map(Vec::len), Some(2), "{t:#}");
    assert_eq!(container(&t, "fast")["outcome"], "graceful");
    assert_eq!(container(&t, "slow")["outcome"], "graceful");
    let fast = container(&t, "fast")["sigterm_to_exit_seconds"]
        .as_f64()
        .expect("fast");
    let slow = container(&t, "slow")["sigterm_to_exit_seconds"]
        .as_f64()
        .expect("slow");
    assert!(slow > fast + 0.8, "slow {slow} vs fast {fast}");
    let m = agent.metrics().expect("metrics");
    let duration = observed(
        &m,
        "gracewatch_termination_duration_seconds",
        "namespace=\"shop\",workload=\"\",outcome=\"graceful\"",
    )
    .expect("duration");
    near(duration, secs(report.duration()), "deletion → last exit");
    assert_eq!(count(&t, "sigterm"), 2);
    assert_eq!(count(&t, "event_killing"), 2);
}

#[test]
fn agent_started_while_the_pod_is_terminating() {
    let k = Cluster::new(NODE);
    let mut def = web("late-1", "sleep 1000");
    def.service = None;
    def.grace_seconds = 4;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    let agent = std::thread::scope(|s| {
        let deleting = s.spawn(|| k.node.delete_pod(&pod, &DeleteOptions::default()));
        std::thread::sleep(Duration::from_millis(1500));
        let agent = k.agent();
        deleting.join().expect("thread").expect("delete");
        agent
    });
    let t = agent
        .wait_pod_completed("shop", "late-1", WAIT)
        .expect("termination");
    let app = container(&t, "app");
    assert_eq!(
        app["outcome"], "unknown",
        "the SIGTERM happened before the agent watched: {t:#}"
    );
    assert_eq!(app["exit_signal"], "SIGKILL");
    assert_eq!(count(&t, "sigterm"), 0);
    assert_eq!(count(&t, "sigkill"), 1);
    let deletion = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["what"] == "deletion_requested")
        .expect("deletion")
        .clone();
    assert!(
        deletion["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("before the agent started"),
        "{deletion}"
    );
    assert!(
        !codes(&t).contains(&"FORCED_KILL".to_string()),
        "nothing invented: {t:#}"
    );
}

#[test]
fn agent_killed_mid_termination_and_restarted_invents_nothing() {
    let k = Cluster::new(NODE);
    let first = k.agent();
    let mut def = web("crashy-1", "trap '' TERM; while true; do sleep 0.1; done");
    def.service = None;
    def.grace_seconds = 3;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(300));
    let (second, restart, restarted_at) = std::thread::scope(|s| {
        let deleting = s.spawn(|| k.node.delete_pod(&pod, &DeleteOptions::default()));
        // The first agent sees the deletion and the SIGTERM, then dies (an OOM kill, a
        // node-level crash) and its DaemonSet restarts it at once.
        let seen = first.wait_for_timeline("shop", "crashy-1", "sigterm", WAIT);
        let _ = first.kill_hard();
        seen.expect("the first agent saw the SIGTERM");
        let started = Instant::now();
        let restarted_at = unix_now();
        let second = k.agent();
        let restart = started.elapsed();
        eprintln!("restarted agent ready after {restart:?}");
        deleting.join().expect("thread").expect("delete");
        (second, restart, restarted_at)
    });
    assert!(
        restart < Duration::from_secs(10),
        "the restarted agent was ready after {restart:?}"
    );
    let t = second
        .wait_pod_completed("shop", "crashy-1", WAIT)
        .expect("termination");
    let app = container(&t, "app");
    assert_eq!(
        app["outcome"], "unknown",
        "the SIGTERM came before this agent started: {t:#}"
    );
    assert_eq!(app["exit_signal"], "SIGKILL");
    assert_eq!(count(&t, "sigterm"), 0, "nothing invented: {t:#}");
    let kills_from_outside = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| {
            e["what"] == "sigkill"
                && e["container"] == "app"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("outside the container"))
        })
        .count();
    assert_eq!(kills_from_outside, 1, "runc's SIGKILL at the grace: {t:#}");
    assert!(
        !codes(&t).contains(&"FORCED_KILL".to_string()),
        "nothing invented: {t:#}"
    );
    let detail = |what: &str| {
        t["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .find(|e| e["what"] == what)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
    };
    assert!(
        detail("deletion_requested")
            .expect("deletion in the timeline")
            .contains("before the agent started"),
        "{t:#}"
    );
    let m = second.metrics().expect("metrics");
    assert_eq!(
        m.sum(
            "gracewatch_container_terminations_total",
            &["outcome=\"killed_without_sigterm\""]
        ),
        0.0,
        "the restarted agent counts no kill without SIGTERM"
    );
    assert_eq!(
        m.sum(
            "gracewatch_container_terminations_total",
            &[
                "namespace=\"shop\"",
                "container=\"app\"",
                "outcome=\"unknown\""
            ]
        ),
        1.0,
        "it counts the end it saw, as of unknown outcome: {}",
        m.0
    );
    let start = m
        .value("gracewatch_agent_start_time_seconds")
        .expect("agent start time");
    let now = unix_now();
    assert!(
        now - start < 60.0 && now >= start,
        "the start time shows the restart: {start} vs now {now}"
    );
    // The second agent's own start, not the first's (whole-second resolution).
    assert!(
        start >= restarted_at.floor() - 1.0,
        "start time {start} is from before the restart at {restarted_at}"
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[test]
fn api_server_restart_mid_watch_loses_and_duplicates_nothing() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    // The app drains for 12 s: the outage ends, and the watches relist (kube's backoff:
    // 0.8 s, 1.6 s, then 3.2 s after the 410, each up to twice that with jitter), before
    // it is done. With 8 s the relist sometimes came after the pod was gone.
    let mut def = web(
        "restart-1",
        "trap 'sleep 12; exit 0' TERM; while true; do sleep 0.1; done",
    );
    def.grace_seconds = 20;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    let lists_before = k.api.count(Resource::Pods, Verb::List);
    std::thread::scope(|s| {
        let deleting = s.spawn(|| {
            k.node.delete_pod(
                &pod,
                &DeleteOptions {
                    endpoint_lag: Duration::from_millis(100),
                    ..Default::default()
                },
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        // Down while the containers stop; history compacted, so watches must relist.
        k.api.stop().expect("stop");
        k.api.compact();
        std::thread::sleep(Duration::from_millis(1000));
        k.api.restart().expect("restart");
        deleting.join().expect("thread").expect("delete");
    });
    let t = agent
        .wait_pod_completed("shop", "restart-1", WAIT)
        .expect("termination");
    for what in [
        "deletion_requested",
        "event_killing",
        "sigterm",
        "container_exit",
        "terminated_status",
        "endpoint_terminating",
        "pod_removed",
    ] {
        assert_eq!(count(&t, what), 1, "{what} in {:?}", whats(&t));
    }
    assert_eq!(container(&t, "app")["outcome"], "graceful", "{t:#}");
    assert!(
        k.api.count(Resource::Pods, Verb::List) > lists_before,
        "the agent relisted pods"
    );
    let m = agent.metrics().expect("metrics");
    assert!(
        m.sum("gracewatch_kube_watch_errors_total", &[]) >= 1.0,
        "the outage is counted"
    );
    assert_eq!(
        agent
            .terminations_of_pod("shop", "restart-1")
            .expect("list")
            .len(),
        1,
        "one termination, not two"
    );
}

#[test]
fn stuck_terminating_pod_is_reported_with_what_holds_it() {
    let k = Cluster::new(NODE);
    let agent = k.agent();
    let mut def = web("stuck-1", "sleep 1000");
    def.service = None;
    let pod = k.node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    k.node.delete_without_kubelet(&pod, 1).expect("delete");
    // Grace 1 s + --stuck-margin-seconds 2: stuck after 3 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stuck = loop {
        let ts = agent.terminations_of_pod("shop", "stuck-1").expect("list");
        if let Some(t) = ts
            .iter()
            .find(|t| codes(t).contains(&"STUCK_TERMINATING".to_string()))
        {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "never reported stuck: {ts:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stuck["state"], "in_progress");
    let msg = stuck["diagnoses"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains(
            "past deletion + grace period and still present: processes still alive: sleep (pid "
        ),
        "{msg}"
    );
    assert!(
        msg.contains("containers never reported terminated: app"),
        "{msg}"
    );
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("gracewatch_stuck_terminating_pods{namespace=\"shop\"}"),
        Some(1.0)
    );
    assert_eq!(
        m.value("gracewatch_terminating_pods{namespace=\"shop\"}"),
        Some(1.0)
    );
    // `kubectl describe pod` shows it: the agent's Event on the pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let event = loop {
        let found = k.api.events().into_iter().find(|e| {
            e["reportingController"] == "gracewatch.io/agent" && e["reason"] == "StuckTerminating"
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no StuckTerminating Event"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["regarding"]["uid"], pod.uid.as_str(), "{event:#}");
    assert_eq!(event["reportingInstance"], NODE, "{event:#}");
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("past deletion + grace period and still present")),
        "{event:#}"
    );

    // kubelet finally acts: the pod completes and the gauges return to zero.
    k.node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("kubelet acts");
    let t = agent
        .wait_pod_completed("shop", "stuck-1", WAIT)
        .expect("completed");
    assert_eq!(count(&t, "deletion_requested"), 1);
    std::thread::sleep(Duration::from_millis(600));
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value("gracewatch_stuck_terminating_pods{namespace=\"shop\"}"),
        Some(0.0)
    );
    assert_eq!(
        m.value("gracewatch_terminating_pods{namespace=\"shop\"}"),
        Some(0.0)
    );
}
