//! `cargo xtask demo`: Gracewatch on this host, watching real runc containers end in the
//! ways the seeds describe, then `gracewatch explain` for each and the key metrics.
//! Everything it starts is removed when it ends, also on failure or Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use gracewatch_tests::{
    agent::Agent,
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
    println!("\nDone: containers, cgroups and the agent are being removed.");
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
