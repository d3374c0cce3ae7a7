//! End-to-end, as root: the termination picture (`/ui/<ns>/<pod>`) of a real termination,
//! rendered by a real browser. The agent runs in Kubernetes mode against the fake API server
//! while the kubelet emulator deletes a pod whose app ignores SIGTERM after a preStop sleep;
//! headless Chromium loads the page from the agent on loopback, the test reads the DOM it
//! built, and the screenshot is kept under target/test-artifacts/ for a person to look at.

use std::{path::PathBuf, sync::Arc, time::Duration};

use gracewatch_tests::{
    agent::{codes, Agent},
    apiserver::ApiServer,
    browser,
    deploy::root,
    kubelet::{ContainerDef, DeleteOptions, Hook, Node, PodDef},
};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn chromium_draws_the_two_timelines_spans_and_diagnoses() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo xtask test)"
    );
    let api = Arc::new(ApiServer::start().expect("api server"));
    let kubeconfig: PathBuf = std::env::temp_dir().join(format!(
        "gracewatch-picture-kubeconfig-{}",
        api.addr().port()
    ));
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let node = Node::new(api.clone(), NODE).expect("node with containerd");
    let agent = Agent::start_kubernetes(&kubeconfig, NODE, &[]).expect("agent");

    let mut def = PodDef::new(
        "shop",
        "picture-1",
        vec![ContainerDef::shell(
            "app",
            "trap '' TERM; while true; do sleep 0.1; done",
        )],
    );
    def.deployment = Some("web".into());
    def.grace_seconds = 3;
    def.containers[0].prestop = Some(Hook::Sleep(Duration::from_secs(1)));
    let pod = node.run_pod(def).expect("pod");
    std::thread::sleep(Duration::from_millis(500));
    node.delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let t = agent
        .wait_pod_completed("shop", "picture-1", WAIT)
        .expect("termination");
    let _ = std::fs::remove_file(&kubeconfig);
    let diagnosed = codes(&t);
    assert!(diagnosed.contains(&"FORCED_KILL".to_string()), "{t:#}");

    let url = format!("http://{}/ui/shop/picture-1", agent.addr);
    let dom = browser::dump_dom(&url).expect("chromium --dump-dom");
    for want in [
        "<h1>Termination of pod shop/picture-1</h1>",
        "data-lane=\"API · endpoints · kubelet\"",
        "data-lane=\"app\"",
        "grace period 3s",
        "class=\"span prestop\"",
        "preStop 1.",
        "SIGTERM → exit 2.0",
        "data-what=\"deletion_requested\"",
        "data-what=\"sigterm\"",
        "data-what=\"sigkill\"",
        "data-what=\"container_exit\"",
        "app: <b>forced_kill</b>",
    ] {
        assert!(
            dom.contains(want),
            "{want:?} not in the page Chromium rendered:\n{dom}"
        );
    }
    for code in &diagnosed {
        assert!(
            dom.contains(&format!("<b class=\"code\">{code}</b>")),
            "{code} not shown:\n{dom}"
        );
    }
    // Chromium parsed it as SVG, not text: the lanes are elements of the DOM it serialised.
    assert!(dom.contains("<line class=\"lane-line\""), "{dom}");

    let png = root().join("target/test-artifacts/timeline-shop-picture-1.png");
    browser::screenshot(&url, &png, 1440, 420).expect("chromium --screenshot");
    eprintln!("screenshot: {}", png.display());
}
