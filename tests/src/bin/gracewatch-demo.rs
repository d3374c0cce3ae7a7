//! `cargo xtask demo`: Gracewatch on this host, watching real runc containers end in the
//! ways the seeds describe, then `gracewatch explain` for each and the key metrics:
//! first standalone (cgroups alone), then in Kubernetes mode against the node simulator
//! (fake API server + kubelet emulator running pods on a private containerd through CRI).
//! Everything it starts is removed when it ends, also on failure.

use std::time::Duration;

use anyhow::Context;
use gracewatch_tests::{
    agent::Agent,
    apiserver::ApiServer,
    kubelet::{ContainerDef, DeleteOptions, Hook, Node, PodDef},
    runc::{sweep_stale, Container, ContainerSpec},
};

struct Scenario {
    title: &'static str,
    name: &'static str,
    script: &'static str,
    /// `Some(grace)`: stopped like kubelet does; `None`: left to exit by itself.
    grace: Option<Duration>,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        title: "A well-behaved app: PID 1 handles SIGTERM and exits",
        name: "graceful",
        script: "trap 'echo draining; exit 0' TERM; while true; do sleep 0.1; done",
        grace: Some(Duration::from_secs(5)),
    },
    Scenario {
        title: "PID 1 has no SIGTERM handler (sh -c 'sleep 1000' becomes sleep)",
        name: "no-handler",
        script: "sleep 1000",
        grace: Some(Duration::from_secs(2)),
    },
    Scenario {
        title: "A shell entrypoint that never passes SIGTERM to its app",
        name: "shell-entrypoint",
        script: "sleep 1000; echo never reached",
        grace: Some(Duration::from_secs(2)),
    },
    Scenario {
        title: "An app that handles SIGTERM but drains longer than the grace period",
        name: "slow-drain",
        script: "trap 'sleep 5; exit 0' TERM; while true; do sleep 0.1; done",
        grace: Some(Duration::from_secs(2)),
    },
    Scenario {
        title: "A job that exits by itself with code 3",
        name: "exit-3",
        script: "sleep 0.5; exit 3",
        grace: None,
    },
];

fn main() -> anyhow::Result<()> {
    sweep_stale().context("removing leftovers of an earlier run")?;
    standalone()?;
    kubernetes()
}

fn standalone() -> anyhow::Result<()> {
    println!("#### Part 1: standalone mode (attribution by cgroup alone)\n");
    let agent = Agent::start_standalone(&[]).context("starting the agent")?;
    println!(
        "Gracewatch is running on this host (standalone mode), serving http://{}",
        agent.addr
    );
    println!("Each scenario runs a real runc container in a kubelet-style cgroup and stops it as kubelet would.\n");
    for s in &SCENARIOS {
        run(&agent, s).with_context(|| format!("scenario {}", s.name))?;
    }
    println!("== Key metrics (curl http://{}/metrics)", agent.addr);
    let metrics = agent.metrics()?;
    for line in metrics.0.lines().filter(|l| shown(l)) {
        println!("  {line}");
    }
    println!();
    Ok(())
}

struct PodScenario {
    title: &'static str,
    pod: PodDef,
    delete: DeleteOptions,
}

fn pod(name: &str, grace: i64, script: &str, prestop: Option<Hook>, service: bool) -> PodDef {
    let mut c = ContainerDef::shell("app", script);
    c.prestop = prestop;
    let mut def = PodDef::new("shop", name, vec![c]);
    def.deployment = Some(
        name.trim_end_matches(char::is_numeric)
            .trim_end_matches('-')
            .to_string(),
    );
    def.grace_seconds = grace;
    def.service = service.then(|| "web".to_string());
    def
}

fn kubernetes() -> anyhow::Result<()> {
    println!("#### Part 2: Kubernetes mode, against the node simulator\n");
    let api = std::sync::Arc::new(ApiServer::start()?);
    let kubeconfig =
        std::env::temp_dir().join(format!("gracewatch-demo-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig)?;
    let node = Node::new(api.clone(), "node-a").context("starting containerd for the node")?;
    let agent = Agent::start_kubernetes(&kubeconfig, "node-a", &[]);
    let _ = std::fs::remove_file(&kubeconfig);
    let agent = agent.context("starting the agent in Kubernetes mode")?;
    println!(
        "Fake API server at {}; gracewatch run --node-name node-a serving http://{}\n",
        api.url(),
        agent.addr
    );
    let trap = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
    let scenarios = [
        PodScenario {
            title: "Deployment web: preStop sleep 2 covers the 1 s endpoint lag, then a clean exit",
            pod: pod(
                "web-1",
                10,
                trap,
                Some(Hook::Sleep(Duration::from_secs(2))),
                true,
            ),
            delete: DeleteOptions {
                endpoint_lag: Duration::from_secs(1),
                ..Default::default()
            },
        },
        PodScenario {
            title: "Deployment api: no preStop, the endpoint leaves its Service 2 s after SIGTERM",
            pod: pod(
                "api-1",
                10,
                "trap 'sleep 3; exit 0' TERM; while true; do sleep 0.1; done",
                None,
                true,
            ),
            delete: DeleteOptions {
                endpoint_lag: Duration::from_secs(2),
                ..Default::default()
            },
        },
        PodScenario {
            title: "Deployment worker: a shell entrypoint that never passes SIGTERM on",
            pod: pod("worker-1", 2, "sleep 1000; echo never", None, false),
            delete: DeleteOptions::default(),
        },
        PodScenario {
            title: "Deployment batch: preStop sleep 5 in a 3 s grace period",
            pod: pod(
                "batch-1",
                3,
                "sleep 1000",
                Some(Hook::Sleep(Duration::from_secs(5))),
                false,
            ),
            delete: DeleteOptions::default(),
        },
    ];
    for s in scenarios {
        println!("== {}", s.title);
        let (ns, name) = (s.pod.namespace.clone(), s.pod.name.clone());
        let running = node.run_pod(s.pod)?;
        std::thread::sleep(Duration::from_millis(500));
        println!("   $ kubectl delete pod -n {ns} {name}   (emulated: kubelet's kill sequence through containerd's CRI)");
        node.delete_pod(&running, &s.delete)?;
        agent.wait_pod_completed(&ns, &name, Duration::from_secs(30))?;
        println!("   $ gracewatch explain {ns}/{name}");
        for line in agent.explain_target(&format!("{ns}/{name}"))?.lines() {
            println!("   {line}");
        }
    }
    println!("== Kubernetes-mode metrics (labelled by namespace, workload, container)");
    for line in agent
        .metrics()?
        .0
        .lines()
        .filter(|l| shown(l) && l.contains("namespace=\"shop\""))
    {
        println!("  {line}");
    }
    println!("\nDone: pods, containers, cgroups, the API server and the agents are being removed.");
    Ok(())
}

fn run(agent: &Agent, s: &Scenario) -> anyhow::Result<()> {
    println!("== {}", s.title);
    let c = Container::start(ContainerSpec::shell(s.name, s.script)?)?;
    std::thread::sleep(Duration::from_millis(300));
    match s.grace {
        Some(grace) => {
            let report = c.stop_like_kubelet(grace)?;
            let how = if report.kill_needed() {
                "SIGTERM, then SIGKILL"
            } else {
                "SIGTERM"
            };
            println!("   runc kill {} (grace {:?}): {how}", &c.id()[..12], grace);
        }
        None => {
            c.wait_exit(Duration::from_secs(10))?;
        }
    }
    agent.wait_completed(c.id(), Duration::from_secs(15))?;
    println!("   $ gracewatch explain container/{}", &c.id()[..12]);
    for line in agent.explain(&c.id()[..12])?.lines() {
        println!("   {line}");
    }
    Ok(())
}

/// The metric lines worth showing a person: non-zero counters, no histogram buckets.
fn shown(line: &str) -> bool {
    !line.starts_with('#')
        && !line.contains("_bucket{")
        && !line.ends_with(" 0")
        && (line.contains("_total") || line.contains("_count") || line.contains("_sum"))
}
