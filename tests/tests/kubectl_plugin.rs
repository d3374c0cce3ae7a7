//! End-to-end, as root: `kubectl-gracewatch` (the kubectl plugin) against the fake API
//! server, with the real agent in Kubernetes mode watching pods the kubelet emulator runs
//! on a private containerd. The plugin finds pods and agent pods through the API and reads
//! the agent only through the API server's pod proxy; the tests check what the on-call
//! engineer reads and that the agent was reached that way.

use std::{process::Command, time::Duration};

use gracewatch_tests::{
    agent::{plugin_binary, Agent},
    apiserver::{Resource, Verb},
    cluster::Cluster,
    kubelet::{ContainerDef, DeleteOptions, PodDef},
};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(30);
const AGENT_POD: &str = "gracewatch-n8x2k";

/// The shared one-node cluster, its agent, and the agent's pod object as the DaemonSet
/// would create it (its IP is loopback, where the agent listens).
struct Setup {
    k: Cluster,
    agent: Agent,
}

impl std::ops::Deref for Setup {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.k
    }
}

impl Setup {
    fn new() -> Setup {
        let k = Cluster::new(NODE);
        let agent = k.agent();
        k.api.create(
            Resource::Pods,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "namespace": "gracewatch",
                    "name": AGENT_POD,
                    "labels": {"app.kubernetes.io/name": "gracewatch"},
                },
                "spec": {"nodeName": NODE, "containers": [{"name": "gracewatch", "image": "gracewatch"}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            }),
        )
        .expect("agent pod object");
        Setup { k, agent }
    }

    /// Runs the plugin with the kubeconfig and the agent's port: (success, stdout, stderr).
    fn plugin(&self, args: &[&str]) -> (bool, String, String) {
        self.plugin_with(args, &[])
    }

    fn plugin_with(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new(plugin_binary())
            .envs(env.iter().copied())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--agent-port", &self.agent.addr.port().to_string()])
            .args(args)
            .env_remove("NO_COLOR")
            .output()
            .expect("run kubectl-gracewatch (cargo build -p agent --bins)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.plugin(args);
        assert!(ok, "kubectl-gracewatch {args:?} failed: {err}");
        out
    }

    fn proxied(&self, path_end: &str) -> usize {
        let prefix = format!(
            "/api/v1/namespaces/gracewatch/pods/{AGENT_POD}:{}/proxy",
            self.agent.addr.port()
        );
        self.api
            .requests()
            .iter()
            .filter(|r| {
                r.verb == Verb::Proxy && r.path.starts_with(&prefix) && r.path.ends_with(path_end)
            })
            .count()
    }
}

fn pod(name: &str, script: &str, grace: i64) -> PodDef {
    let mut def = PodDef::new("shop", name, vec![ContainerDef::shell("app", script)]);
    def.deployment = Some("web".into());
    def.grace_seconds = grace;
    def
}

#[test]
fn explain_reads_the_agent_through_the_pod_proxy() {
    let k = Setup::new();
    let running = k
        .node
        .run_pod(pod(
            "ignorer-1",
            "trap '' TERM; while true; do sleep 0.1; done",
            2,
        ))
        .expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    k.node
        .delete_pod(&running, &DeleteOptions::default())
        .expect("delete");
    k.agent
        .wait_pod_completed("shop", "ignorer-1", WAIT)
        .expect("termination");

    // Not a terminal: plain text, the agent's explanation.
    let text = k.ok(&["explain", "shop/ignorer-1"]);
    assert!(
        text.contains("Termination of pod shop/ignorer-1 (completed, grace period 2s)"),
        "{text}"
    );
    assert!(text.contains("app PID 1 sh: forced_kill"), "{text}");
    assert!(
        text.contains("SIGTERM_IGNORED: PID 1 (sh) has no SIGTERM handler"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colours off the terminal: {text:?}"
    );
    assert!(
        k.proxied("/debug/terminations/shop/ignorer-1") >= 1,
        "read through the pod proxy"
    );

    let coloured = k.ok(&["explain", "shop/ignorer-1", "--color", "always"]);
    assert!(
        coloured.contains("\u{1b}[31mforced_kill\u{1b}[0m"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("\u{1b}[33mSIGTERM_IGNORED\u{1b}[0m"),
        "{coloured:?}"
    );

    let parsed: Value =
        serde_json::from_str(&k.ok(&["--json", "explain", "shop/ignorer-1"])).expect("JSON");
    assert_eq!(parsed["terminations"][0]["pod"], "ignorer-1");
    assert_eq!(
        parsed["terminations"][0]["containers"][0]["outcome"],
        "forced_kill"
    );

    // --open saves the agent's picture page and hands it to $BROWSER.
    let dir = std::env::temp_dir().join(format!("gracewatch-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let browser = dir.join("browser.sh");
    let opened = dir.join("opened.html");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\ncp \"$1\" {}\n", opened.display()),
    )
    .expect("script");
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (ok, out, err) = k.plugin_with(
        &["explain", "shop/ignorer-1", "--open"],
        &[("BROWSER", browser.to_str().expect("utf-8"))],
    );
    let page = std::fs::read_to_string(&opened).unwrap_or_default();
    let saved = std::env::temp_dir().join("gracewatch-shop-ignorer-1.html");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&saved);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("Picture: {}", saved.display())),
        "{out}"
    );
    assert!(
        page.contains("<h1>Termination of pod shop/ignorer-1</h1>"),
        "{page}"
    );
    assert!(
        page.contains("data-lane=\"app\"") && page.contains("FORCED_KILL"),
        "{page}"
    );
    assert!(k.proxied("/ui/shop/ignorer-1") == 1);

    // What goes wrong is said plainly.
    let (ok, _, err) = k.plugin(&["explain", "shop/never-was"]);
    assert!(
        !ok && err.contains("none of the 1 agents recorded its termination"),
        "{err}"
    );
    let (ok, _, err) = k.plugin(&["explain", "container/abc"]);
    assert!(!ok && err.contains("explains pods"), "{err}");
    let (ok, _, err) = k.plugin(&[
        "--agent-namespace",
        "elsewhere",
        "explain",
        "shop/ignorer-1",
    ]);
    assert!(
        !ok && err.contains("no Gracewatch agent pods in namespace elsewhere"),
        "{err}"
    );
}

#[test]
fn stuck_lists_the_pod_with_what_holds_it() {
    let k = Setup::new();
    let running = k
        .node
        .run_pod(pod("stuck-1", "sleep 1000", 1))
        .expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    k.node.delete_without_kubelet(&running, 1).expect("delete");

    // Grace 1 s, then the agent's margin of 2 s: its diagnosis appears after ~3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let parsed: Value =
            serde_json::from_str(&k.ok(&["stuck", "--margin-seconds", "2", "--json"]))
                .expect("JSON");
        let entry = parsed["stuck"]
            .as_array()
            .and_then(|s| s.iter().find(|e| e["pod"] == "stuck-1").cloned());
        if let Some(e) = entry.filter(|e| e["source"] == "agent") {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never listed with the agent's reason: {parsed:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(listed["namespace"], "shop");
    assert_eq!(listed["node"], NODE);
    let reason = listed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("processes still alive: sleep (pid "),
        "{reason}"
    );
    assert!(
        reason.contains("containers never reported terminated: app"),
        "{reason}"
    );
    assert!(
        listed["overdue_seconds"].as_i64().is_some_and(|s| s >= 2),
        "{listed}"
    );

    let table = k.ok(&["stuck", "--margin-seconds", "2"]);
    assert!(table.starts_with("POD"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop/stuck-1") && l.contains(NODE)),
        "{table}"
    );

    // The pod still exists: its node comes from the API, then that node's agent answers.
    k.api.clear_requests();
    let text = k.ok(&["explain", "shop/stuck-1"]);
    assert!(text.contains("STUCK_TERMINATING"), "{text}");
    let requests = k.api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.verb == Verb::Get && r.path == "/api/v1/namespaces/shop/pods/stuck-1"),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.verb == Verb::List
            && r.param("fieldSelector").as_deref() == Some("spec.nodeName=node-a")),
        "{requests:?}"
    );
    assert_eq!(k.proxied("/debug/terminations/shop/stuck-1"), 1);

    // Nothing stuck once kubelet finishes the pod.
    k.node
        .delete_pod(&running, &DeleteOptions::default())
        .expect("kubelet acts");
    k.agent
        .wait_pod_completed("shop", "stuck-1", WAIT)
        .expect("completed");
    assert_eq!(
        k.ok(&["stuck", "--margin-seconds", "2"]),
        "No pods stuck in Terminating.\n"
    );
}
