//! The kubelet emulator on containerd, as root, without the agent: pods have the shape
//! kubelet gives them (cgroup, PID 1, the sandbox), the kill sequence does what the CRI
//! promises, and dropping the node leaves nothing behind.

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use gracewatch_tests::{
    apiserver::{ApiServer, Resource},
    cri::{self, Containerd, RUNS_DIR},
    kubelet::{ContainerDef, DeleteOptions, Hook, Node, PodDef},
    runc::cgroup_mounts,
};

fn node() -> Node {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    let api = Arc::new(ApiServer::start().expect("api server"));
    Node::new(api, "node-a").expect("node with containerd")
}

fn pod_cgroup_dirs(uid: &str) -> Vec<std::path::PathBuf> {
    let rel = format!("kubepods/besteffort/pod{uid}");
    cgroup_mounts()
        .expect("cgroup mounts")
        .into_iter()
        .map(|m| m.join(&rel))
        .filter(|d| d.exists())
        .collect()
}

#[test]
fn pods_run_as_kubelet_places_them_and_stop_as_the_cri_promises() {
    let node = node();
    let mut def = PodDef::new(
        "shop",
        "cri-1",
        vec![
            ContainerDef::shell("app", "trap '' TERM; while true; do sleep 0.1; done")
                .with_prestop(Hook::Exec(vec!["sh".into(), "-c".into(), "exit 3".into()])),
            ContainerDef::shell("side", "trap 'exit 0' TERM; while true; do sleep 0.1; done"),
        ],
    );
    def.grace_seconds = 2;
    let pod = node.run_pod(def).expect("pod");
    let app = pod.container("app").expect("app");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", app.pid())).expect("cgroup");
    let expected = format!("/kubepods/besteffort/pod{}/{}", pod.uid, app.id());
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&expected)),
        "v2 cgroup of PID 1 is {expected}: {cgroup}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid())).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(
        nspid.ends_with("\t1"),
        "PID 1 in its own namespace: {nspid}"
    );
    let exec = node
        .runtime()
        .cri()
        .expect("cri")
        .exec_sync(
            app.id(),
            &["cat".into(), "/proc/1/comm".into()],
            Duration::from_secs(5),
        )
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "sh");
    let api_pod = node
        .api
        .get(Resource::Pods, "shop", "cri-1")
        .expect("pod in API");
    assert_eq!(
        api_pod["status"]["containerStatuses"][0]["containerID"],
        format!("containerd://{}", app.id()).as_str()
    );
    assert_eq!(
        pod_cgroup_dirs(&pod.uid).len(),
        cgroup_mounts().expect("mounts").len()
    );

    let report = node
        .delete_pod(&pod, &DeleteOptions::default())
        .expect("delete");
    let app = report.container("app").expect("app report");
    // The failed exec hook took no time: the 2 s grace is left whole, SIGKILL at its end.
    assert_eq!(app.stop.grace, Duration::from_secs(2));
    assert!(app.stop.kill_needed(), "{:?}", app.stop);
    assert_eq!(app.stop.exit_code, 137);
    let (least, most) = app.stop.sigterm_to_exit();
    assert_eq!(least, Duration::from_secs(2));
    assert!(
        most < Duration::from_millis(2500),
        "SIGTERM → exit {most:?}"
    );
    let side = report.container("side").expect("side report");
    assert!(!side.stop.kill_needed(), "{:?}", side.stop);
    assert_eq!(
        (side.stop.exit_code, side.stop.reason.as_str()),
        (0, "Completed")
    );
    assert!(side.stop.sigterm_to_exit().1 < Duration::from_secs(1));
    let events = node.api.list(Resource::CoreEvents);
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"FailedPreStopHook"), "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| **r == "Killing").count(), 2);
    assert!(node.api.get(Resource::Pods, "shop", "cri-1").is_none());
    assert!(
        pod_cgroup_dirs(&pod.uid).is_empty(),
        "kubelet removes the pod cgroup"
    );
    assert!(node
        .runtime()
        .cri()
        .expect("cri")
        .list_pod_sandboxes()
        .expect("list")
        .is_empty());
}

#[test]
fn dropping_the_node_removes_running_pods_and_the_daemon() {
    let node = node();
    let pod = node
        .run_pod(PodDef::new(
            "shop",
            "left-1",
            vec![ContainerDef::shell("app", "sleep 1000")],
        ))
        .expect("pod");
    let pid = pod.container("app").expect("app").pid();
    let socket = node.runtime().socket();
    let run_dir = socket.parent().expect("run dir").to_path_buf();
    assert!(!cri::leftover_processes().expect("list").is_empty());
    // The stale sweep finds a killed shim's socket by this name.
    let key = socket.join("k8s.io").join(&pod.sandbox_id);
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_os_str().as_encoded_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let shim_socket = Path::new("/run/containerd/s").join(hex);
    assert!(shim_socket.exists(), "{} exists", shim_socket.display());
    drop(node);
    assert!(!shim_socket.exists(), "shim socket removed");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the container's PID 1 is gone"
    );
    assert!(
        cri::leftover_processes().expect("list").is_empty(),
        "no daemon or shim"
    );
    assert!(!run_dir.exists(), "{} removed", run_dir.display());
    assert!(pod_cgroup_dirs(&pod.uid).is_empty(), "pod cgroup removed");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(run_dir.to_string_lossy().as_ref()),
        "nothing mounted under the run directory"
    );
    assert!(Path::new(RUNS_DIR).exists());
}

#[test]
fn a_second_daemon_runs_beside_the_first() {
    let first = Containerd::start().expect("first");
    let second = Containerd::start().expect("second");
    assert_ne!(first.socket(), second.socket());
    assert!(second.cri().expect("cri").version().is_ok());
}

/// Set in the child process of [`a_crashed_run_is_swept_by_the_next`].
const CRASH_CHILD: &str = "GRACEWATCH_TEST_CRASH_CHILD";

#[test]
fn a_crashed_run_is_swept_by_the_next() {
    if std::env::var_os(CRASH_CHILD).is_some() {
        // The child: a node with a running pod, then a crash that runs no destructor.
        let node = node();
        let pod = node
            .run_pod(PodDef::new(
                "shop",
                "crash-1",
                vec![ContainerDef::shell("app", "sleep 1000")],
            ))
            .expect("pod");
        let pid = pod.container("app").expect("app").pid();
        let run_dir = node.runtime().socket().parent().expect("dir").to_path_buf();
        println!("CRASHED-RUN {} {pid} {}", pod.uid, run_dir.display());
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        unreachable!("SIGKILL");
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "a_crashed_run_is_swept_by_the_next",
            "--nocapture",
        ])
        .env(CRASH_CHILD, "1")
        .output()
        .expect("child run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CRASHED-RUN "))
        .unwrap_or_else(|| {
            panic!(
                "child output: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut fields = line.split(' ');
    let (uid, pid, run_dir) = (
        fields.next().expect("uid").to_string(),
        fields.next().expect("pid").to_string(),
        std::path::PathBuf::from(fields.next().expect("run dir")),
    );
    assert!(!out.status.success(), "the child crashed");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "its container outlived it"
    );
    assert!(run_dir.exists());

    cri::sweep_stale().expect("sweep");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "container killed"
    );
    assert!(!run_dir.exists(), "{} removed", run_dir.display());
    assert!(pod_cgroup_dirs(&uid).is_empty(), "pod cgroup removed");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(run_dir.to_string_lossy().as_ref()),
        "nothing mounted"
    );
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(run_dir.to_string_lossy().as_ref()))
        .collect();
    assert!(alive.is_empty(), "daemon and shims killed: {alive:?}");
}
