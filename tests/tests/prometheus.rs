//! Root tier against a real Prometheus server (Debian's package): it scrapes the real
//! agent every second while real runc containers end (one gracefully, one by a forced
//! kill), and loads deploy/prometheus/rules.yaml. PromQL over what it scraped must count
//! exactly those terminations; every expression of the rules and of the Grafana dashboard
//! must evaluate without error, and every rule must be healthy; `promtool check metrics`
//! must find nothing to say about the live `/metrics`.

use std::{io::Write as _, process::Command, time::Duration};

use gracewatch_tests::{
    agent::Agent,
    deploy::{deploy, read_documents},
    prometheus::{dashboard_expressions, rule_expressions, Prometheus, PROMTOOL},
    runc::{sweep_stale, Container, ContainerSpec},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn prometheus_scrapes_counts_and_evaluates_every_rule_and_panel() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo xtask test)"
    );
    sweep_stale().expect("sweep leftovers of an earlier run");
    let agent = Agent::start_standalone(&[]).expect("agent");
    let rules_file = deploy("prometheus/rules.yaml");
    let prometheus = Prometheus::start(&[agent.addr], &[&rules_file]).expect("prometheus");
    prometheus
        .wait_value("up{job=\"gracewatch\"}", 1.0, WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", prometheus.log()));
    let scraped_since = std::time::Instant::now();

    let graceful = Container::start(
        ContainerSpec::shell(
            "graceful",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        )
        .expect("spec"),
    )
    .expect("container");
    let ignorer = Container::start(ContainerSpec::shell("ignorer", "sleep 1000").expect("spec"))
        .expect("container");
    std::thread::sleep(Duration::from_millis(300));
    graceful
        .stop_like_kubelet(Duration::from_secs(5))
        .expect("stop");
    ignorer
        .stop_like_kubelet(Duration::from_secs(1))
        .expect("stop");
    agent
        .wait_completed(graceful.id(), WAIT)
        .expect("graceful recorded");
    agent
        .wait_completed(ignorer.id(), WAIT)
        .expect("forced kill recorded");

    let (g, i) = (&graceful.id()[..12], &ignorer.id()[..12]);
    let both = format!("container=~\"{g}|{i}\"");
    let checks = [
        (
            format!("gracewatch_forced_kills_total{{container=\"{i}\"}}"),
            1.0,
        ),
        (
            format!("gracewatch_sigterm_ignored_total{{container=\"{i}\"}}"),
            1.0,
        ),
        (format!("sum(gracewatch_forced_kills_total{{{both}}})"), 1.0),
        (
            format!(
                "sum(gracewatch_container_terminations_total{{{both},outcome=\"forced_kill\"}})"
            ),
            1.0,
        ),
        (
            format!("sum(gracewatch_container_terminations_total{{{both},outcome=\"graceful\"}})"),
            1.0,
        ),
        (
            format!("sum(gracewatch_sigterm_to_exit_seconds_count{{{both}}})"),
            2.0,
        ),
        (
            format!(
                "sum(gracewatch_signals_total{{{both},signal=\"SIGTERM\",result=\"ignored\"}})"
            ),
            1.0,
        ),
        // The forced kill waited out its 1 s grace: its SIGTERM → exit is over a second.
        (
            format!(
                "sum(gracewatch_sigterm_to_exit_seconds_bucket{{container=\"{i}\",le=\"1.0\"}})"
            ),
            0.0,
        ),
    ];
    for (expr, want) in &checks {
        prometheus
            .wait_value(expr, *want, WAIT)
            .unwrap_or_else(|e| {
                panic!(
                    "{e:#}\nagent's /metrics:\n{}",
                    agent.metrics().map(|m| m.0).unwrap_or_default()
                )
            });
    }

    // Every expression a user's Prometheus and Grafana will run, against real data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/gracewatch.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard_expressions(&dashboard);
    let rules = rule_expressions(&read_documents(&rules_file).expect("rules")[0]);
    assert!(
        panels.len() >= 20 && rules.len() >= 10,
        "{} panel and {} rule expressions",
        panels.len(),
        rules.len()
    );
    let failures: Vec<String> = panels
        .iter()
        .chain(&rules)
        .filter_map(|expr| prometheus.query(expr).err().map(|e| format!("{e:#}")))
        .collect();
    assert!(
        failures.is_empty(),
        "expressions that do not evaluate:\n{}",
        failures.join("\n")
    );
    // The "Forced kills" stat panel over a range that starts after Prometheus began to
    // scrape the agent and before the kill: the kill's series is born inside the range,
    // where a plain increase() would show 0; the panel counts it, as the rules do.
    let forced_panel = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Forced kills")
        .and_then(|p| p["targets"][0]["expr"].as_str())
        .expect("Forced kills panel")
        .to_string();
    let range = format!(
        "{}s",
        scraped_since.elapsed().as_secs().saturating_sub(1).max(2)
    );
    let forced = forced_panel
        .replace("$__range", &range)
        .replace("\"$namespace\"", "\".*\"")
        .replace("\"$workload\"", "\".*\"");
    prometheus
        .wait_value(&forced, 1.0, WAIT)
        .unwrap_or_else(|e| panic!("dashboard \"Forced kills\" over {range}: {e:#}"));

    // The rule groups as Prometheus loaded them: every rule evaluated, none unhealthy.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let groups = prometheus.api("/api/v1/rules").expect("rules API");
        let loaded: Vec<&Value> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(
            loaded.len(),
            rules.len(),
            "Prometheus loaded another number of rules"
        );
        let pending: Vec<&&Value> = loaded
            .iter()
            .filter(|r| {
                r["health"] != "ok"
                    || r["lastEvaluation"]
                        .as_str()
                        .is_none_or(|t| t.starts_with("0001"))
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rules not healthy: {pending:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The live exposition, as promtool reads it (the text format: no Accept header).
    let (status, text) = agent.get("/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(
            "gracewatch_forced_kills_total{{namespace=\"\",workload=\"\",container=\"{i}\"}} 1"
        )),
        "{text}"
    );
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}
