//! Root tier against real container engines: the real `gracewatch run --standalone`
//! binary watching containers that a private Docker daemon and Podman run and stop the
//! way users do (`docker stop`, `docker kill`, `--init`, an image's STOPSIGNAL, a restart
//! policy, a memory limit). Each test asserts what a user reads: the record at
//! `/debug/terminations/container/<id>`, its timeline and diagnoses, `gracewatch
//! explain`, and `/metrics`.
//!
//! Run as root, one test at a time (`--test-threads=1`): the tests read node-wide
//! counters. An engine that cannot start here fails its tests with the engine's error.

use std::time::{Duration, Instant};

use gracewatch_tests::{
    agent::{codes, whats, Agent},
    engines::{sweep_stale, Engine, Window, BUSYBOX_IMAGE},
};
use serde_json::Value;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// How long the agent may take to complete a record once the container is gone.
const WAIT: Duration = Duration::from_secs(15);
/// How long a container may take to reach its entrypoint's steady state.
const READY: Duration = Duration::from_secs(15);
/// The agent's kernel times against the harness's clock, as in the runc suite.
const SLACK: f64 = 0.05;
/// Grace given to `docker stop` / `podman stop` (`-t`).
const GRACE: u32 = 2;
/// A PID 1 that handles SIGTERM, says so, and exits 0 on it.
const TRAP_TERM: &str = "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done";
/// An image whose STOPSIGNAL is SIGQUIT and whose command ignores it (as a namespace init
/// without a handler, `sleep` ignores every signal but SIGKILL).
const QUIT_IMAGE: &str = "local/busybox-quit:1";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the engine tier loads BPF programs and runs dockerd and podman: run it as root"
    );
    sweep_stale().expect("sweep leftovers of an earlier run");
}

fn short(id: &str) -> &str {
    &id[..12]
}

/// A standalone series of the container: `name{namespace="",workload="",container="<12>"<extra>}`.
fn series(name: &str, id: &str, extra: &str) -> String {
    format!(
        "{name}{{namespace=\"\",workload=\"\",container=\"{}\"{extra}}}",
        short(id)
    )
}

/// Waits until a [`TRAP_TERM`] container's PID 1 has set its trap.
fn trap_set(engine: &Engine, id: &str) {
    engine
        .wait_ready(id, "sh", Some("ready"), READY)
        .expect("trap set");
}

/// The first timeline entry of kind `what` (`sigterm`, `sigkill`, `stop_signal`, ...).
fn entry<'a>(t: &'a Value, what: &str) -> &'a Value {
    t["timeline"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["what"] == what))
        .unwrap_or_else(|| panic!("no {what} entry in the timeline: {t:#}"))
}

fn detail(e: &Value) -> &str {
    e["detail"].as_str().unwrap_or_default()
}

fn at(e: &Value) -> OffsetDateTime {
    let text = e["at"].as_str().unwrap_or_default();
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|err| panic!("bad time {text:?}: {err}"))
}

fn seconds_between(from: &Value, to: &Value) -> f64 {
    (at(to) - at(from)).as_seconds_f64()
}

/// Every detail line of the timeline.
fn details(t: &Value) -> Vec<&str> {
    t["timeline"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["detail"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The diagnosis message of `code`.
fn message<'a>(t: &'a Value, code: &str) -> &'a str {
    t["diagnoses"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["code"] == code))
        .and_then(|d| d["message"].as_str())
        .unwrap_or_else(|| panic!("no {code} diagnosis: {t:#}"))
}

/// The kernel's stop-signal→exit time lies inside the harness's window around the stop
/// command, and, after a forced kill, covers the grace.
fn assert_stop_to_exit(t: &Value, stop: &Window, forced: bool) {
    let measured = t["containers"][0]["sigterm_to_exit_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no sigterm_to_exit_seconds: {t:#}"));
    let lo = if forced {
        f64::from(GRACE) - SLACK
    } else {
        0.0
    };
    assert!(
        measured > lo && measured <= stop.seconds() + SLACK,
        "stop signal→exit {measured}s: not in ({lo}, {}] (the stop command's window)",
        stop.seconds() + SLACK
    );
}

/// SIGKILL came the grace period after the stop signal (`stop_entry`), within the
/// stop command's window.
fn assert_kill_after_grace(t: &Value, stop_entry: &str, stop: &Window) {
    let gap = seconds_between(entry(t, stop_entry), entry(t, "sigkill"));
    assert!(
        gap >= f64::from(GRACE) - SLACK && gap <= (f64::from(GRACE) + 0.5).min(stop.seconds()),
        "{stop_entry}→SIGKILL {gap}s for a {GRACE}s grace (stop took {}s)",
        stop.seconds()
    );
}

#[test]
fn docker_stop_of_a_pid1_that_traps_sigterm_is_graceful() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    let id = docker
        .run(&[BUSYBOX_IMAGE, "sh", "-c", TRAP_TERM])
        .expect("docker run");
    trap_set(&docker, &id);
    let stop = docker.stop(&id, GRACE).expect("docker stop");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 0);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["container_id"], id.as_str());
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(c["exit_code"], 0);
    assert_eq!(c["exit_signal"], Value::Null);
    assert_eq!(c["pid1_comm"], "sh");
    assert_eq!(t["uid"], Value::Null, "a Docker container has no pod");
    assert!(codes(&t).is_empty(), "no diagnosis for a clean stop: {t:#}");
    assert_stop_to_exit(&t, &stop, false);
    let term = detail(entry(&t, "sigterm"));
    assert!(
        term.starts_with("SIGTERM from runc (host pid ")
            && term.ends_with("outside the container) to sh (PID 1): delivered"),
        "{term}"
    );
    assert!(!whats(&t).contains(&"sigkill".to_string()), "{t:#}");

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"graceful\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_to_exit_seconds_count", &id, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &id,
            ",signal=\"SIGTERM\",result=\"delivered\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &id, "")),
        None
    );
}

#[test]
fn docker_stop_of_a_pid1_that_ignores_sigterm_kills_it_after_the_grace() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    // busybox sh execs a lone command, so PID 1 is `sleep`, with no SIGTERM handler.
    let id = docker
        .run(&[BUSYBOX_IMAGE, "sh", "-c", "sleep 1000"])
        .expect("docker run");
    docker
        .wait_ready(&id, "sleep", None, READY)
        .expect("sleep running");
    let stop = docker.stop(&id, GRACE).expect("docker stop");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 137);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "forced_kill", "{t:#}");
    assert_eq!(c["exit_signal"], "SIGKILL");
    assert_eq!(c["exit_code"], Value::Null);
    assert_eq!(c["pid1_comm"], "sleep");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    assert_stop_to_exit(&t, &stop, true);
    assert_kill_after_grace(&t, "sigterm", &stop);
    let term = detail(entry(&t, "sigterm"));
    assert!(
        term.starts_with("SIGTERM from runc") && term.ends_with("to sleep (PID 1): ignored"),
        "{term}"
    );
    let kill = detail(entry(&t, "sigkill"));
    assert!(
        kill.starts_with("SIGKILL from runc") && kill.ends_with("to sleep (PID 1): delivered"),
        "{kill}"
    );
    let forced = message(&t, "FORCED_KILL");
    assert!(
        forced.starts_with("SIGKILLed by runc 2.") && forced.contains("s after SIGTERM"),
        "{forced}"
    );

    let text = agent.explain(short(&id)).expect("explain");
    assert!(
        text.contains(&format!(
            "container {} PID 1 sleep: forced_kill (killed by SIGKILL",
            short(&id)
        )),
        "{text}"
    );
    assert!(
        text.contains("SIGTERM_IGNORED: PID 1 (sleep) has no SIGTERM handler"),
        "{text}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &id, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_ignored_total", &id, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &id,
            ",signal=\"SIGTERM\",result=\"ignored\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"forced_kill\""
        )),
        Some(1.0)
    );
}

#[test]
fn docker_kill_is_a_kill_without_sigterm() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    let id = docker
        .run(&[BUSYBOX_IMAGE, "sleep", "1000"])
        .expect("docker run");
    docker
        .wait_ready(&id, "sleep", None, READY)
        .expect("sleep running");
    docker.kill(&id).expect("docker kill");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 137);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "killed_without_sigterm", "{t:#}");
    assert_eq!(c["exit_signal"], "SIGKILL");
    assert_eq!(c["sigterm_to_exit_seconds"], Value::Null);
    assert!(!whats(&t).contains(&"sigterm".to_string()), "{t:#}");
    let kill = detail(entry(&t, "sigkill"));
    assert!(
        kill.starts_with("SIGKILL from runc") && kill.ends_with("to sleep (PID 1): delivered"),
        "{kill}"
    );
    let found = codes(&t);
    assert!(
        !found
            .iter()
            .any(|c| c == "FORCED_KILL" || c == "SIGTERM_IGNORED"),
        "no SIGTERM was sent, so none was ignored and no grace ran out: {found:?}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"killed_without_sigterm\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &id,
            ",signal=\"SIGKILL\",result=\"delivered\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_to_exit_seconds_count", &id, "")),
        None
    );
}

#[test]
fn docker_init_forwards_sigterm_to_the_app_and_the_stop_is_graceful() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    let id = docker
        .run(&["--init", BUSYBOX_IMAGE, "sleep", "1000"])
        .expect("docker run --init");
    docker
        .wait_ready(&id, "docker-init", None, READY)
        .expect("docker-init is PID 1");
    let deadline = Instant::now() + READY;
    while !docker
        .processes(&id)
        .expect("processes")
        .contains(&"sleep".to_string())
    {
        assert!(Instant::now() < deadline, "the app never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = docker.stop(&id, GRACE).expect("docker stop");
    // tini exits with 128 + the signal that ended its child.
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 143);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["pid1_comm"], "docker-init", "{t:#}");
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(c["exit_code"], 143);
    assert!(
        codes(&t).is_empty(),
        "an init that forwards SIGTERM is no shell that keeps it: {t:#}"
    );
    assert_stop_to_exit(&t, &stop, false);
    let lines = details(&t);
    assert!(
        lines.iter().any(|d| d.starts_with("SIGTERM from runc")
            && d.ends_with("to docker-init (PID 1): delivered")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|d| d.starts_with("SIGTERM from docker-init (host pid ")
                && d.contains("inside the container) to sleep (pid ")
                && d.ends_with("): delivered")),
        "the app got SIGTERM from the init: {lines:#?}"
    );
    assert!(!whats(&t).contains(&"sigkill".to_string()), "{t:#}");

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"graceful\""
        )),
        Some(1.0)
    );
}

#[test]
fn docker_stopsignal_sigquit_handled_by_pid1_is_graceful_and_timed_from_sigquit() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    docker
        .build_image(
            QUIT_IMAGE,
            &["STOPSIGNAL SIGQUIT", r#"CMD ["sh", "-c", "sleep 1000"]"#],
        )
        .expect("docker build");
    let id = docker
        .run(&[
            QUIT_IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' QUIT; echo ready; while true; do sleep 0.1; done",
        ])
        .expect("docker run");
    assert_eq!(
        docker
            .inspect(&id, "{{.Config.StopSignal}}")
            .expect("inspect"),
        "SIGQUIT"
    );
    docker
        .wait_ready(&id, "sh", Some("ready"), READY)
        .expect("trap set");
    let stop = docker.stop(&id, GRACE).expect("docker stop");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 0);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(c["exit_code"], 0);
    assert!(codes(&t).is_empty(), "{t:#}");
    assert_stop_to_exit(&t, &stop, false);
    let stop_signal = detail(entry(&t, "stop_signal"));
    assert!(
        stop_signal.starts_with("SIGQUIT from runc")
            && stop_signal
                .contains("to sh (PID 1): delivered; taken as the container's stop signal"),
        "{stop_signal}"
    );
    let kinds = whats(&t);
    assert!(
        !kinds.iter().any(|w| w == "sigterm" || w == "sigkill"),
        "docker sent SIGQUIT only: {kinds:?}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &id,
            ",signal=\"SIGQUIT\",result=\"delivered\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"graceful\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_to_exit_seconds_count", &id, "")),
        Some(1.0)
    );
}

#[test]
fn docker_stopsignal_sigquit_ignored_by_pid1_is_a_forced_kill_naming_sigquit() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    docker
        .build_image(
            QUIT_IMAGE,
            &["STOPSIGNAL SIGQUIT", r#"CMD ["sleep", "1000"]"#],
        )
        .expect("docker build");
    let id = docker.run(&[QUIT_IMAGE]).expect("docker run");
    docker
        .wait_ready(&id, "sleep", None, READY)
        .expect("sleep running");
    let stop = docker.stop(&id, GRACE).expect("docker stop");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 137);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "forced_kill", "{t:#}");
    assert_eq!(c["pid1_comm"], "sleep");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    let ignored = message(&t, "SIGTERM_IGNORED");
    assert!(
        ignored.starts_with("PID 1 (sleep) has no SIGQUIT handler")
            && ignored.contains("dropped SIGQUIT (its stop signal)"),
        "{ignored}"
    );
    let forced = message(&t, "FORCED_KILL");
    assert!(forced.contains("after SIGQUIT"), "{forced}");
    let stop_signal = detail(entry(&t, "stop_signal"));
    assert!(
        stop_signal.starts_with("SIGQUIT from runc") && stop_signal.contains("(PID 1): ignored"),
        "{stop_signal}"
    );
    assert_stop_to_exit(&t, &stop, true);
    assert_kill_after_grace(&t, "stop_signal", &stop);
    assert!(
        !whats(&t).contains(&"sigterm".to_string()),
        "docker sent no SIGTERM: {t:#}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &id, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &id,
            ",signal=\"SIGQUIT\",result=\"ignored\""
        )),
        Some(1.0)
    );
}

#[test]
fn the_engines_name_for_a_container_names_its_record_and_series() {
    require_root();
    let docker = Engine::docker().expect("docker engine");
    let socket = docker.docker_socket();
    let socket = socket.to_str().expect("UTF-8 socket path");
    let agent = Agent::start_standalone(&["--engine-socket", socket]).expect("agent");
    let name = "gw-named-web";
    let id = docker
        .run(&[
            "--name",
            name,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "sleep 0.5; exit 4",
        ])
        .expect("docker run");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 4);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["container_id"], id.as_str());
    assert_eq!(c["name"], name, "the engine's name: {t:#}");
    assert_eq!(c["outcome"], "self_exit", "{t:#}");
    let exit = entry(&t, "container_exit");
    assert_eq!(exit["container"], name, "{t:#}");
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&format!(
            "gracewatch_container_terminations_total{{namespace=\"\",workload=\"\",container=\"{name}\",outcome=\"self_exit\"}}"
        )),
        Some(1.0),
        "series labelled by the name"
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"self_exit\""
        )),
        None,
        "not by the id"
    );
    let text = agent.explain(&id).expect("explain");
    assert!(text.contains(name), "{text}");
}

#[test]
fn docker_containers_that_exit_at_start_are_each_recorded_with_their_code() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    // A crash loop as a supervisor that replaces the container runs it: a new container
    // each time, whose PID 1 exits with 3 within milliseconds.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = docker
            .run(&[BUSYBOX_IMAGE, "sh", "-c", "exit 3"])
            .expect("docker run");
        assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 3);
        ids.push(id);
    }
    for id in &ids {
        let t = agent.wait_completed(id, WAIT).expect("termination");
        assert_eq!(t["containers"].as_array().map(Vec::len), Some(1), "{t:#}");
        let c = &t["containers"][0];
        assert_eq!(c["container_id"], id.as_str());
        assert_eq!(c["outcome"], "self_exit", "{t:#}");
        assert_eq!(c["exit_code"], 3, "{t:#}");
        assert_eq!(c["pid1_comm"], "sh", "{t:#}");
        assert_eq!(c["sigterm_to_exit_seconds"], Value::Null);
        assert!(codes(&t).is_empty(), "{t:#}");
    }
    let m = agent.metrics().expect("metrics");
    for id in &ids {
        assert_eq!(
            m.value(&series(
                "gracewatch_container_terminations_total",
                id,
                ",outcome=\"self_exit\""
            )),
            Some(1.0)
        );
    }
}

#[test]
fn docker_crash_loop_under_a_restart_policy_records_every_exit() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    let unknown = "gracewatch_unattributed_events_total{reason=\"unknown_cgroup\"}";
    let before = agent.metrics().expect("metrics").value(unknown);
    // Exits at once with 3; Docker starts it twice more (100 ms, then 200 ms later).
    let id = docker
        .run(&[
            "--restart",
            "on-failure:2",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "exit 3",
        ])
        .expect("docker run");
    let deadline = Instant::now() + READY;
    loop {
        let state = docker
            .inspect(
                &id,
                "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}",
            )
            .expect("inspect");
        if state == "2 exited 3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "docker never gave up restarting: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let deadline = Instant::now() + WAIT;
    let records = loop {
        let all = agent.terminations_of(&id).expect("terminations");
        let done: Vec<Value> = all
            .iter()
            .filter(|t| t["state"] == "completed")
            .cloned()
            .collect();
        if done.len() >= 3 || Instant::now() > deadline {
            break done;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        records.len(),
        3,
        "one record per run of the container: {records:#?}"
    );
    for t in &records {
        assert_eq!(t["containers"].as_array().map(Vec::len), Some(1), "{t:#}");
        let c = &t["containers"][0];
        assert_eq!(c["container_id"], id.as_str());
        assert_eq!(c["outcome"], "self_exit", "{t:#}");
        assert_eq!(c["exit_code"], 3, "{t:#}");
        assert_eq!(c["pid1_comm"], "sh", "{t:#}");
    }
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"self_exit\""
        )),
        Some(3.0)
    );
    assert_eq!(
        m.value(unknown),
        before,
        "every event of the short-lived runs was attributed"
    );
}

#[test]
fn docker_memory_limit_oom_kill_of_pid1_is_reported() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let docker = Engine::docker().expect("docker engine");
    // The shell doubles a string until the cgroup's 32 MiB are gone: the OOM killer
    // picks PID 1 itself, from its own allocation.
    let id = docker
        .run(&[
            "--memory",
            "32m",
            "--memory-swap",
            "32m",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            "x=a; while true; do x=$x$x; done",
        ])
        .expect("docker run");
    assert_eq!(docker.wait_exited(&id, WAIT).expect("exit code"), 137);
    assert_eq!(
        docker
            .inspect(&id, "{{.State.OOMKilled}}")
            .expect("inspect"),
        "true",
        "docker saw an OOM kill"
    );

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "oom_killed", "{t:#}");
    assert_eq!(c["exit_signal"], "SIGKILL");
    assert_eq!(c["pid1_comm"], "sh");
    assert_eq!(codes(&t), ["OOM_KILLED"], "{t:#}");
    let oom = message(&t, "OOM_KILLED");
    assert!(
        oom.starts_with("the kernel's OOM killer SIGKILLed sh"),
        "{oom}"
    );
    let kill = detail(entry(&t, "sigkill"));
    assert!(
        kill.starts_with("SIGKILL from the kernel's OOM killer")
            && kill.ends_with("to sh (PID 1): delivered"),
        "{kill}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"oom_killed\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &id, "")),
        None
    );
}

#[test]
fn podman_stop_of_a_pid1_that_traps_sigterm_is_graceful() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let podman = Engine::podman().expect("podman engine");
    let id = podman
        .run(&[BUSYBOX_IMAGE, "sh", "-c", TRAP_TERM])
        .expect("podman run");
    trap_set(&podman, &id);
    let stop = podman.stop(&id, GRACE).expect("podman stop");
    assert_eq!(podman.wait_exited(&id, WAIT).expect("exit code"), 0);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["container_id"], id.as_str());
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(c["exit_code"], 0);
    assert_eq!(c["pid1_comm"], "sh");
    assert!(codes(&t).is_empty(), "{t:#}");
    assert_stop_to_exit(&t, &stop, false);
    let term = detail(entry(&t, "sigterm"));
    assert!(
        term.starts_with("SIGTERM from runc") && term.ends_with("to sh (PID 1): delivered"),
        "{term}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"graceful\""
        )),
        Some(1.0)
    );
}

/// `podman exec <id> kill 1` (as `kubectl exec … kill 1` restarts a container): the
/// SIGTERM comes from inside the container's cgroup, from a process that entered from
/// outside. It is the container's stop, told as such.
#[test]
fn sigterm_to_pid1_from_an_exec_session_is_the_containers_stop() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let podman = Engine::podman().expect("podman engine");
    let id = podman
        .run(&[BUSYBOX_IMAGE, "sh", "-c", TRAP_TERM])
        .expect("podman run");
    trap_set(&podman, &id);
    podman
        .run_cli(&["exec", &id, "kill", "1"])
        .expect("podman exec kill 1");
    assert_eq!(podman.wait_exited(&id, WAIT).expect("exit code"), 0);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "graceful", "{t:#}");
    assert_eq!(c["exit_code"], 0, "{t:#}");
    let drain = c["sigterm_to_exit_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("SIGTERM → exit measured: {t:#}"));
    assert!((0.0..1.0).contains(&drain), "{drain}");
    assert!(codes(&t).is_empty(), "{t:#}");
    let term = detail(entry(&t, "sigterm"));
    assert!(
        term.starts_with("SIGTERM from kill")
            && term.contains("inside the container, in an exec session")
            && term.ends_with("to sh (PID 1): delivered"),
        "{term}"
    );
    assert!(
        whats(&t).contains(&"exec_session_started".to_string()),
        "{t:#}"
    );
}

#[test]
fn podman_stop_of_a_pid1_that_ignores_sigterm_kills_it_after_the_grace() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let podman = Engine::podman().expect("podman engine");
    let id = podman
        .run(&[BUSYBOX_IMAGE, "sleep", "1000"])
        .expect("podman run");
    podman
        .wait_ready(&id, "sleep", None, READY)
        .expect("sleep running");
    let stop = podman.stop(&id, GRACE).expect("podman stop");
    assert_eq!(podman.wait_exited(&id, WAIT).expect("exit code"), 137);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "forced_kill", "{t:#}");
    assert_eq!(c["exit_signal"], "SIGKILL");
    assert_eq!(c["pid1_comm"], "sleep");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");
    assert_stop_to_exit(&t, &stop, true);
    assert_kill_after_grace(&t, "sigterm", &stop);
    let kill = detail(entry(&t, "sigkill"));
    assert!(
        kill.starts_with("SIGKILL from runc") && kill.ends_with("to sleep (PID 1): delivered"),
        "{kill}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &id, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &id,
            ",outcome=\"forced_kill\""
        )),
        Some(1.0)
    );
}

/// Set in the child process that plays a crashed run (see `crash_helper`).
const CRASH_HELPER_ENV: &str = "GRACEWATCH_ENGINES_CRASH_HELPER_OUT";

#[test]
#[ignore = "helper process for sweep_stale_removes_what_a_crashed_run_left"]
fn crash_helper() {
    let Ok(out) = std::env::var(CRASH_HELPER_ENV) else {
        return;
    };
    let docker = Engine::docker().expect("docker engine");
    let id = docker
        .run(&[BUSYBOX_IMAGE, "sleep", "1000"])
        .expect("docker run");
    docker
        .wait_ready(&id, "sleep", None, READY)
        .expect("sleep running");
    let pid = docker.pid1(&id).expect("pid");
    let record = format!("{}\n{id}\n{pid}\n", docker.dir().display());
    std::fs::write(out, record).expect("write record");
    // Gone without a word: no Drop runs, dockerd and the container live on.
    std::process::exit(0);
}

#[test]
fn sweep_stale_removes_what_a_crashed_run_left() {
    require_root();
    let docker_dirs_before = std::path::Path::new("/run/docker").exists();
    let out = std::env::temp_dir().join(format!("gracewatch-engines-crash-{}", std::process::id()));
    let helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_helper", "--ignored", "--test-threads=1"])
        .env(CRASH_HELPER_ENV, &out)
        .output()
        .expect("crash helper");
    assert!(helper.status.success(), "crash helper failed: {helper:?}");
    let record = std::fs::read_to_string(&out).expect("crash helper record");
    std::fs::remove_file(&out).expect("remove record");
    let mut lines = record.lines();
    let dir = std::path::PathBuf::from(lines.next().expect("dir"));
    let id = lines.next().expect("id").to_owned();
    let pid: u32 = lines.next().expect("pid").parse().expect("pid number");
    let cgroup = gracewatch_tests::runc::cgroup_v2_mount()
        .expect("cgroup v2")
        .join(format!("docker/{id}"));
    let naming = |dir: &std::path::Path| -> Vec<u32> {
        let needle = dir.as_os_str().as_encoded_bytes().to_vec();
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect()
    };
    let mounts_under = |dir: &std::path::Path| -> usize {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| std::path::Path::new(m).starts_with(dir))
            .count()
    };
    assert!(dir.exists(), "the crashed run left no run directory");
    assert!(!naming(&dir).is_empty(), "the crashed run left no dockerd");
    assert!(cgroup.exists(), "the crashed run left no container");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(mounts_under(&dir) > 0, "the crashed run left no mounts");
    // The shim's socket is in containerd's fixed directory, named in the task's state.
    let address = dir.join(format!(
        "exec/containerd/daemon/io.containerd.runtime.v2.task/moby/{id}/address"
    ));
    let address = std::fs::read_to_string(&address).expect("the shim's address file");
    let socket = std::path::PathBuf::from(
        address
            .trim()
            .strip_prefix("unix://")
            .expect("a unix socket address"),
    );
    assert!(socket.exists(), "{} is not there", socket.display());

    sweep_stale().expect("sweep");

    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(naming(&dir), Vec::<u32>::new(), "processes left");
    assert_eq!(mounts_under(&dir), 0, "mounts left");
    assert!(
        !socket.exists(),
        "the killed shim's {} is left",
        socket.display()
    );
    for mount in gracewatch_tests::runc::cgroup_mounts().expect("cgroup mounts") {
        let leaf = mount.join(format!("docker/{id}"));
        assert!(!leaf.exists(), "{} is left", leaf.display());
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z')),
        "the container's PID 1 {pid} still runs: {stat}"
    );
    if !docker_dirs_before {
        assert!(
            !std::path::Path::new("/run/docker").exists(),
            "dockerd's /run/docker is left"
        );
    }
}
