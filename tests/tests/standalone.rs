//! Root tier: the real `gracewatch run --standalone` binary, real BPF programs, real runc
//! containers in kubelet-style cgroups. Each test asserts what a user reads: the JSON
//! timeline and diagnoses, `gracewatch explain`, and `/metrics`.
//!
//! Run as root, one test at a time (`cargo xtask test` does both): the tests read
//! node-wide counters.

use std::time::Duration;

use gracewatch_tests::{
    agent::{codes, whats, Agent},
    runc::{sweep_stale, Container, ContainerSpec},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the root tier loads BPF programs and runs containers: run it as root (cargo xtask test)"
    );
    sweep_stale().expect("sweep leftovers of an earlier run");
}

fn short(c: &Container) -> &str {
    &c.id()[..12]
}

fn series(name: &str, c: &Container, extra: &str) -> String {
    format!(
        "{name}{{namespace=\"\",workload=\"\",container=\"{}\"{extra}}}",
        short(c)
    )
}

#[test]
fn trapping_pid1_terminates_gracefully_with_measured_time() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let c = Container::start(
        ContainerSpec::shell(
            "graceful",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        )
        .expect("spec"),
    )
    .expect("container");
    std::thread::sleep(Duration::from_millis(300));
    let report = c.stop_like_kubelet(Duration::from_secs(5)).expect("stop");
    assert!(
        !report.kill_needed(),
        "the trap should end it within the grace"
    );

    let t = agent.wait_completed(c.id(), WAIT).expect("termination");
    let ct = &t["containers"][0];
    assert_eq!(ct["outcome"], "graceful", "{t:#}");
    assert_eq!(ct["exit_code"], 0);
    assert_eq!(ct["pid1_comm"], "sh");
    assert_eq!(t["uid"].as_str(), c.pod_uid());
    assert!(codes(&t).is_empty(), "no diagnosis for a clean stop: {t:#}");
    // SIGTERM→exit as the kernel saw it fits inside what the harness measured around it.
    let measured = ct["sigterm_to_exit_seconds"].as_f64().expect("measured");
    let outer = (report.exited.boottime_ns - report.term.before.boottime_ns) as f64 / 1e9;
    assert!(
        measured > 0.0 && measured <= outer + 0.05,
        "kernel {measured}s vs harness {outer}s"
    );
    let timeline = t["timeline"].as_array().expect("timeline");
    let sigterm = timeline
        .iter()
        .find(|e| e["what"] == "sigterm")
        .expect("sigterm entry");
    let detail = sigterm["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("to sh (PID 1): delivered"), "{detail}");
    let handled = timeline
        .iter()
        .find(|e| e["what"] == "signal_delivered")
        .expect("delivery entry");
    assert!(
        handled["detail"]
            .as_str()
            .unwrap_or_default()
            .ends_with("handled by the process's own handler"),
        "{handled}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &c,
            ",outcome=\"graceful\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_to_exit_seconds_count", &c, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &c,
            ",signal=\"SIGTERM\",result=\"delivered\""
        )),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &c, "")),
        None
    );
}

#[test]
fn pid1_without_handler_ignores_sigterm_and_is_force_killed() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    // busybox sh execs a lone command, so PID 1 ends up being `sleep` itself.
    let c = Container::start(ContainerSpec::shell("ignorer", "sleep 1000").expect("spec"))
        .expect("container");
    std::thread::sleep(Duration::from_millis(300));
    let report = c.stop_like_kubelet(Duration::from_secs(1)).expect("stop");
    assert!(report.kill_needed());

    let t = agent.wait_completed(c.id(), WAIT).expect("termination");
    let ct = &t["containers"][0];
    assert_eq!(ct["outcome"], "forced_kill", "{t:#}");
    assert_eq!(ct["exit_signal"], "SIGKILL");
    assert_eq!(ct["pid1_comm"], "sleep");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"]);
    // The kernel's SIGTERM→exit time covers the harness's grace, within 50 ms of its clock.
    let measured = ct["sigterm_to_exit_seconds"].as_f64().expect("measured");
    let kill = report.kill.as_ref().expect("kill sent");
    let lo = (kill.before.boottime_ns - report.term.after.boottime_ns) as f64 / 1e9;
    let hi = (report.exited.boottime_ns - report.term.before.boottime_ns) as f64 / 1e9;
    assert!(
        measured >= lo - 0.05 && measured <= hi + 0.05,
        "{measured} not in [{lo}, {hi}]"
    );
    let timeline = whats(&t);
    let term = timeline
        .iter()
        .position(|w| w == "sigterm")
        .expect("sigterm entry");
    let kill_at = timeline
        .iter()
        .position(|w| w == "sigkill")
        .expect("sigkill entry");
    let exit = timeline
        .iter()
        .position(|w| w == "container_exit")
        .expect("exit entry");
    assert!(term < kill_at && kill_at < exit, "{timeline:?}");
    let detail = t["timeline"][term]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("from runc") && detail.ends_with("ignored"),
        "{detail}"
    );

    let text = agent.explain(&c.id()[..8]).expect("explain");
    assert!(
        text.contains(&format!(
            "container {} PID 1 sleep: forced_kill (killed by SIGKILL",
            short(&c)
        )),
        "{text}"
    );
    assert!(
        text.contains("SIGTERM_IGNORED: PID 1 (sleep) has no SIGTERM handler"),
        "{text}"
    );

    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series("gracewatch_forced_kills_total", &c, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series("gracewatch_sigterm_ignored_total", &c, "")),
        Some(1.0)
    );
    assert_eq!(
        m.value(&series(
            "gracewatch_signals_total",
            &c,
            ",signal=\"SIGTERM\",result=\"ignored\""
        )),
        Some(1.0)
    );
    assert_eq!(m.value("gracewatch_termination_duration_seconds_count{namespace=\"\",workload=\"\",outcome=\"forced_kill\"}"), Some(1.0));
}

#[test]
fn shell_pid1_that_keeps_sigterm_from_its_child_is_diagnosed() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let c =
        Container::start(ContainerSpec::shell("shellwrap", "sleep 1000; echo done").expect("spec"))
            .expect("container");
    std::thread::sleep(Duration::from_millis(300));
    c.stop_like_kubelet(Duration::from_secs(1)).expect("stop");

    let t = agent.wait_completed(c.id(), WAIT).expect("termination");
    assert_eq!(t["containers"][0]["pid1_comm"], "sh");
    assert_eq!(t["containers"][0]["outcome"], "forced_kill");
    assert_eq!(
        codes(&t),
        [
            "SHELL_DID_NOT_FORWARD_SIGTERM",
            "SIGTERM_IGNORED",
            "FORCED_KILL"
        ]
    );
    let msg = t["diagnoses"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("PID 1 is /bin/sh and did not forward SIGTERM to 1 child process (sleep)"),
        "{msg}"
    );
    // The child only ever got the kernel's teardown SIGKILL, after PID 1 died.
    let details: Vec<&str> = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("SIGKILL from the kernel (PID 1 exited")
                && d.contains("to sleep")),
        "{details:#?}"
    );
    assert!(
        !details
            .iter()
            .any(|d| d.starts_with("SIGTERM") && d.contains("to sleep")),
        "{details:#?}"
    );
}

#[test]
fn exit_code_of_a_self_exiting_pid1_is_reported() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let c = Container::start(ContainerSpec::shell("exit3", "sleep 0.5; exit 3").expect("spec"))
        .expect("container");
    let t = agent.wait_completed(c.id(), WAIT).expect("termination");
    let ct = &t["containers"][0];
    assert_eq!(ct["outcome"], "self_exit", "{t:#}");
    assert_eq!(ct["exit_code"], 3);
    assert_eq!(ct["exit_signal"], Value::Null);
    assert_eq!(ct["sigterm_to_exit_seconds"], Value::Null);
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        m.value(&series(
            "gracewatch_container_terminations_total",
            &c,
            ",outcome=\"self_exit\""
        )),
        Some(1.0)
    );
    // A process that exits by itself was not terminated: no termination duration.
    assert_eq!(
        m.sum("gracewatch_termination_duration_seconds_count", &[]),
        0.0
    );
}

#[test]
fn a_crash_loop_of_containers_that_die_at_start_is_recorded_every_time() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let before = agent.metrics().expect("metrics");
    // PID 1 dies within milliseconds and its cgroup is removed at once, as a runtime
    // restarting a crash-looping container does: the exit reaches the agent after the
    // cgroup is gone, so only what the kernel said at mkdir can name the container.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let c = Container::start(ContainerSpec::shell("crashloop", "exit 7").expect("spec"))
            .expect("container");
        c.wait_exit(WAIT).expect("wait").expect("exited");
        ids.push(c.id().to_string());
        // runc delete: the cgroup goes right after the exit.
        drop(c);
    }
    for id in &ids {
        let t = agent.wait_completed(id, WAIT).expect("termination");
        let ct = &t["containers"][0];
        assert_eq!(ct["outcome"], "self_exit", "{t:#}");
        assert_eq!(ct["exit_code"], 7, "{t:#}");
        assert_eq!(ct["pid1_comm"], "sh", "{t:#}");
    }
    let after = agent.metrics().expect("metrics");
    let unknown = "gracewatch_unattributed_events_total{reason=\"unknown_cgroup\"}";
    assert_eq!(
        after.value(unknown),
        before.value(unknown),
        "every event of the dead containers was attributed"
    );
    assert_eq!(
        after.sum(
            "gracewatch_container_terminations_total",
            &["outcome=\"self_exit\""]
        ),
        5.0
    );
}

#[test]
fn host_processes_never_reach_user_space() {
    require_root();
    let agent = Agent::start_standalone(&[]).expect("agent");
    let before = agent.metrics().expect("metrics");
    for _ in 0..20 {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("host sleep");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        child.wait().expect("reap");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after = agent.metrics().expect("metrics");
    for kind in ["signal_generate", "signal_deliver", "exit", "exec"] {
        let series = format!("gracewatch_bpf_events_total{{kind=\"{kind}\"}}");
        assert_eq!(
            before.value(&series),
            after.value(&series),
            "{kind} events from host processes reached user space"
        );
    }
    assert_eq!(after.sum("gracewatch_unattributed_events_total", &[]), 0.0);
}

#[test]
fn tiny_ring_under_a_signal_storm_exports_exactly_what_it_lost() {
    require_root();
    let agent = Agent::start_standalone(&["--ring-buffer-bytes", "4096"]).expect("agent");
    let c = Container::start(
        ContainerSpec::shell("storm", "trap 'true' USR1; while true; do sleep 1; done")
            .expect("spec"),
    )
    .expect("container");
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(c.init_pid().expect("pid") as i32);
    let sent: u64 = 50_000;
    for _ in 0..sent {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).expect("kill");
    }
    // Lost counters are read from the kernel every 5 s: wait until they are in, then
    // check them exactly.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (received, lost, got) = loop {
        let m = agent.metrics().expect("metrics");
        let received = m.sum(
            "gracewatch_signals_total",
            &[
                &format!("container=\"{}\"", short(&c)),
                "signal=\"SIGUSR1\"",
            ],
        );
        let lost = m
            .value("gracewatch_bpf_events_lost_total{kind=\"signal_generate\"}")
            .expect("lost series");
        let got = m
            .value("gracewatch_bpf_events_total{kind=\"signal_generate\"}")
            .expect("events series");
        if received + lost >= sent as f64 || std::time::Instant::now() > deadline {
            break (received, lost, got);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        lost > 0.0,
        "a 4 KiB ring should overflow under {sent} signals (received {received})"
    );
    assert_eq!(
        received + lost,
        sent as f64,
        "every signal is either received or counted lost"
    );
    assert_eq!(
        got, received,
        "every received signal_generate event was attributed to the container"
    );
}
