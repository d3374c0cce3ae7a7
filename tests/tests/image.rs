//! Root tier: the agent's container image (`cargo xtask image`) run by a real engine
//! (Podman on private storage) with exactly the DaemonSet's privileges, read from
//! deploy/kustomize/base/daemonset.yaml: every capability dropped but the ones it adds, a
//! read-only root file system, no privilege escalation, the host's PID namespace, the
//! host's cgroup tree and BTF mounted read-only, its memory limit and seccomp/AppArmor
//! settings. The agent runs standalone (no API server) and must explain a real container's
//! termination; with one capability fewer it must refuse to start, naming it.
//!
//! The DaemonSet does not use the host network; the test does (`--network host`) only so
//! that it can reach the agent on loopback. Run as root, one test at a time.

use std::time::Duration;

use gracewatch_tests::{
    agent::{codes, free_port, Agent},
    engines::{sweep_stale, Engine, BUSYBOX_IMAGE},
    image::{
        added_capabilities, agent_container, arg_value, daemonset, engine_flags, fresh_archive,
        IMAGE,
    },
};
use k8s_openapi::api::apps::v1::DaemonSet;

const WAIT: Duration = Duration::from_secs(15);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the image tier runs podman and loads BPF programs: run it as root"
    );
    sweep_stale().expect("sweep leftovers of an earlier run");
}

/// Podman on private storage with the agent image loaded. Not Docker: Debian 12's
/// docker.io (20.10) rejects `--cap-add BPF` and `PERFMON` as unknown capabilities.
fn engine_with_image() -> Engine {
    let archive = fresh_archive().expect("image archive");
    let engine = Engine::podman().expect("podman");
    let archive = archive.to_str().expect("UTF-8 path");
    engine
        .run_cli(&["load", "-q", "-i", archive])
        .expect("podman load");
    engine
}

/// `podman run --rm` of the agent image in the foreground, as the DaemonSet would run it
/// (less `without`), in standalone mode, listening on a free loopback port.
fn start_agent(engine: &Engine, ds: &DaemonSet, without: Option<&str>) -> anyhow::Result<Agent> {
    let addr = free_port()?;
    let container = agent_container(ds)?;
    let cgroup_root = arg_value(container, "--cgroup-root").expect("--cgroup-root in the manifest");
    let mut cmd = engine.run_command("host");
    // Podman mounts tmpfs on /tmp, /var/tmp and /run of a --read-only container unless
    // told not to; Kubernetes does not.
    cmd.args(["--rm", "--read-only-tmpfs=false", "--env", "RUST_LOG=info"])
        .args(engine_flags(ds, without)?)
        .arg(IMAGE)
        .args(["run", "--standalone", "--listen", &addr.to_string()])
        .args(["--cgroup-root", cgroup_root]);
    Agent::spawn(cmd, addr)
}

#[test]
fn image_with_the_daemonsets_privileges_explains_a_real_termination() {
    require_root();
    let ds = daemonset().expect("manifest");
    let engine = engine_with_image();
    let agent = start_agent(&engine, &ds, None).expect("the agent becomes ready in its image");

    // busybox sh execs a lone command: PID 1 is `sleep`, which ignores SIGTERM.
    let id = engine
        .run(&[BUSYBOX_IMAGE, "sh", "-c", "sleep 1000"])
        .expect("podman run");
    engine
        .wait_ready(&id, "sleep", None, WAIT)
        .expect("sleep running");
    engine.stop(&id, 2).expect("podman stop");
    assert_eq!(engine.wait_exited(&id, WAIT).expect("exit code"), 137);

    let t = agent.wait_completed(&id, WAIT).expect("termination");
    let c = &t["containers"][0];
    assert_eq!(c["outcome"], "forced_kill", "{t:#}");
    assert_eq!(c["pid1_comm"], "sleep", "{t:#}");
    assert_eq!(codes(&t), ["SIGTERM_IGNORED", "FORCED_KILL"], "{t:#}");

    let text = agent.explain(&id[..12]).expect("explain");
    assert!(
        text.contains("SIGTERM_IGNORED: PID 1 (sleep) has no SIGTERM handler"),
        "{text}"
    );
    let metrics = agent.metrics().expect("metrics");
    assert!(
        metrics.sum("gracewatch_forced_kills_total", &[&id[..12]]) == 1.0,
        "{}",
        metrics.0
    );
}

#[test]
fn image_with_one_capability_fewer_fails_naming_it() {
    require_root();
    let ds = daemonset().expect("manifest");
    let caps = added_capabilities(&ds).expect("capabilities");
    let engine = engine_with_image();
    // The two the kernel checks when the programs load; SYS_RESOURCE only matters on
    // kernels before 5.11 and DAC_READ_SEARCH only for files of other users, so their
    // absence does not stop the agent at start.
    for cap in ["BPF", "PERFMON"] {
        assert!(
            caps.iter().any(|c| c == cap),
            "{cap} not in the manifest's {caps:?}"
        );
        let err = match start_agent(&engine, &ds, Some(cap)) {
            Ok(_) => panic!("the agent became ready without CAP_{cap}"),
            Err(err) => format!("{err:#}"),
        };
        // Only that one is listed as missing: "lacks CAP_BPF (tracing programs need ...".
        assert!(
            err.contains(&format!("lacks CAP_{cap} (")),
            "without {cap}: {err}"
        );
    }
}
