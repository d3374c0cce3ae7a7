//! Traffic that still reaches a terminating pod, as root. First the kernel programs
//! alone (loaded through the agent's library) on network namespaces this test makes:
//! exact counts of connections, payload and resets at a watched address, nothing at
//! another. Then end to end through the node simulator: a pod in a network namespace of
//! its own runs a real HTTP server, and a bounded client drives it across the pod's
//! deletion; the agent's metrics, timeline and diagnoses must show exactly what the
//! client did.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use agent_ebpf::{TrafficCounters, WatchMarks};
use gracewatch::{
    clock::boot_now_ns,
    kernel::{LoadOptions, Probes},
    traffic::addr_of,
};
use gracewatch_tests::{
    agent::{codes, whats, Agent},
    apiserver::ApiServer,
    kubelet::{ContainerDef, DeleteOptions, Hook, Node, PodDef},
    netns::{self, NetNs},
};
use serde_json::Value;

const CONNECT: Duration = Duration::from_secs(2);
const IO: Duration = Duration::from_secs(5);

fn root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (cargo xtask test)"
    );
}

/// A directory with one page for busybox httpd.
struct Docroot(std::path::PathBuf);

impl Docroot {
    fn new(tag: &str) -> Docroot {
        let dir =
            std::env::temp_dir().join(format!("gracewatch-traffic-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("docroot");
        std::fs::write(dir.join("index.html"), "ok\n").expect("page");
        Docroot(dir)
    }
}

impl Drop for Docroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn httpd(ns: &mut NetNs, root: &Docroot, port: u16) {
    ns.spawn(
        "busybox",
        &[
            "httpd",
            "-f",
            "-p",
            &port.to_string(),
            "-h",
            &root.0.to_string_lossy(),
        ],
    )
    .expect("httpd");
    let to: SocketAddr = format!("{}:{port}", ns.addr())
        .parse()
        .expect("socket address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&to, CONNECT).is_err() {
        assert!(Instant::now() < deadline, "httpd never listened on {to}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a new connection; returns the bytes sent (the payload the server's
/// kernel receives) once the answer is read.
fn socket(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("IP address"), port)
}

fn get(addr: &str, port: u16) -> u64 {
    let to = socket(addr, port);
    let mut s = TcpStream::connect_timeout(&to, CONNECT).expect("connect");
    s.set_read_timeout(Some(IO)).expect("timeout");
    s.set_write_timeout(Some(IO)).expect("timeout");
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer");
    assert!(
        answer.starts_with(b"HTTP/1.") && answer.ends_with(b"ok\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    req.len() as u64
}

/// A connection attempt that must be refused.
fn refused(addr: &str, port: u16) {
    let to = socket(addr, port);
    match TcpStream::connect_timeout(&to, CONNECT) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected a refusal from {to}, got {other:?}"),
    }
}

#[test]
fn the_probes_count_exactly_what_reaches_a_watched_address_and_nothing_else() {
    root();
    netns::sweep();
    let (mut probes, _ring) = Probes::load(&LoadOptions::default()).expect("probes");
    let docroot = Docroot::new("probes");
    let mut watched = NetNs::create("kw", "10.246.1").expect("netns");
    let mut healthy = NetNs::create("kh", "10.246.2").expect("netns");
    const PORT: u16 = 8080;
    httpd(&mut watched, &docroot, PORT);
    httpd(&mut healthy, &docroot, PORT);
    let addr = addr_of(&watched.addr()).expect("address");
    let other = addr_of(&healthy.addr()).expect("address");

    // A slow client: connected, half its request sent, before the watch.
    let to: SocketAddr = format!("{}:{PORT}", watched.addr())
        .parse()
        .expect("socket address");
    let mut slow = TcpStream::connect_timeout(&to, CONNECT).expect("connect");
    slow.write_all(b"GET / HTTP/1.0\r\n")
        .expect("half a request");
    std::thread::sleep(Duration::from_millis(50));

    let mut marks = WatchMarks {
        ports: [PORT, 0, 0, 0, 0, 0, 0, 0],
        ..WatchMarks::default()
    };
    probes.watch_addr(addr, &marks).expect("watch");
    // Before the removal: counted nowhere.
    get(&watched.addr(), PORT);
    marks.removal_ns = boot_now_ns();
    probes.watch_addr(addr, &marks).expect("marks");

    const N: u64 = 5;
    const M: u64 = 3;
    const K: u64 = 4;
    let mut sent = 0;
    for _ in 0..N {
        sent += get(&watched.addr(), PORT);
        get(&healthy.addr(), PORT);
    }
    // The slow client's rest, over a connection opened before the removal.
    let rest = b"Host: x\r\n\r\n";
    slow.write_all(rest).expect("the rest");
    let mut answer = Vec::new();
    slow.set_read_timeout(Some(IO)).expect("timeout");
    slow.read_to_end(&mut answer).expect("slow answer");
    sent += rest.len() as u64;

    marks.sigterm_ns = boot_now_ns();
    probes.watch_addr(addr, &marks).expect("marks");
    for _ in 0..M {
        sent += get(&watched.addr(), PORT);
        get(&healthy.addr(), PORT);
    }
    watched.kill_all();
    marks.exit_ns = boot_now_ns();
    probes.watch_addr(addr, &marks).expect("marks");
    for _ in 0..K {
        refused(&watched.addr(), PORT);
    }

    let c: TrafficCounters = probes.traffic(&addr).expect("counters");
    assert_eq!(c.conns_after_removal, N + M, "{c:?}");
    assert_eq!(c.conns_after_sigterm, M, "{c:?}");
    assert_eq!(c.bytes_after_removal, sent, "{c:?}");
    assert_eq!(c.keepalive_bytes, rest.len() as u64, "{c:?}");
    assert_eq!(c.resets_after_exit, K, "{c:?}");
    assert!(c.conn_removal_first_ns >= marks.removal_ns);
    assert!(c.conn_sigterm_first_ns >= marks.sigterm_ns);
    assert!(c.reset_first_ns >= marks.exit_ns && c.reset_last_ns >= c.reset_first_ns);
    assert!(
        probes.traffic(&other).is_none(),
        "the healthy address is not watched"
    );
    probes.unwatch_addr(addr).expect("unwatch");
    assert!(probes.traffic(&addr).is_none());
}

#[test]
fn ipv6_connections_and_resets_are_counted_at_the_pods_ipv6_address() {
    root();
    netns::sweep();
    let (mut probes, _ring) = Probes::load(&LoadOptions::default()).expect("probes");
    let docroot = Docroot::new("probes6");
    let mut pod = NetNs::create("k6", "10.246.3").expect("netns");
    let v6 = pod.add_ipv6("fd00:246:3").expect("ipv6");
    const PORT: u16 = 8080;
    httpd(&mut pod, &docroot, PORT);
    let addr = addr_of(&v6).expect("address");
    let v4 = addr_of(&pod.addr()).expect("address");
    let mut marks = WatchMarks {
        removal_ns: boot_now_ns(),
        ..WatchMarks::default()
    };
    probes.watch_addr(addr, &marks).expect("watch");
    const N: u64 = 3;
    let mut sent = 0;
    for _ in 0..N {
        sent += get(&v6, PORT);
        // The pod's IPv4 address is not watched here: never counted.
        get(&pod.addr(), PORT);
    }
    pod.kill_all();
    marks.exit_ns = boot_now_ns();
    probes.watch_addr(addr, &marks).expect("marks");
    refused(&v6, PORT);
    refused(&v6, PORT);
    let c = probes.traffic(&addr).expect("counters");
    assert_eq!(c.conns_after_removal, N, "{c:?}");
    assert_eq!(c.bytes_after_removal, sent, "{c:?}");
    assert_eq!(c.resets_after_exit, 2, "{c:?}");
    assert!(probes.traffic(&v4).is_none());
}

const NODE: &str = "node-t";
const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 8080;

/// busybox httpd on :8080 behind a shell that, on SIGTERM, keeps serving for
/// `drain_seconds` (a drain period) and then stops it and exits 0.
fn server(drain_seconds: u32) -> String {
    format!(
        "mkdir -p /tmp/www && echo ok > /tmp/www/index.html; \
         httpd -f -p {PORT} -h /tmp/www & pid=$!; \
         trap 'sleep {drain_seconds}; kill $pid; wait $pid; exit 0' TERM; \
         wait $pid"
    )
}

fn pod(name: &str, deployment: &str, script: &str) -> PodDef {
    let mut def = PodDef::new("shop", name, vec![ContainerDef::shell("app", script)]);
    def.deployment = Some(deployment.into());
    def.service = Some(deployment.into());
    def.own_network = true;
    def
}

fn wait_listening(ip: &str) {
    let to: SocketAddr = format!("{ip}:{PORT}").parse().expect("socket address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&to, CONNECT).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {to}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the agent's view of the pod's termination (in progress or completed)
/// has a timeline entry `what` (of the app container, or of the pod).
fn wait_entry(agent: &Agent, pod: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = agent
            .terminations_of_pod("shop", pod)
            .unwrap_or_default()
            .iter()
            .any(|t: &Value| {
                t["timeline"].as_array().is_some_and(|es| {
                    es.iter()
                        .any(|e| e["what"] == what && e["container"] != "POD")
                })
            });
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never showed {what} for {pod}:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn traffic_after_removal_after_sigterm_and_after_exit_is_counted_exactly() {
    root();
    netns::sweep();
    let api = Arc::new(ApiServer::start().expect("api server"));
    let kubeconfig =
        std::env::temp_dir().join(format!("gracewatch-kubeconfig-{}", api.addr().port()));
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let node = Node::new(api.clone(), NODE).expect("node with containerd");
    let agent = Agent::start_kubernetes(&kubeconfig, NODE, &[]).expect("agent");
    let _ = std::fs::remove_file(&kubeconfig);

    let mut busy = pod("busy", "web", &server(3));
    busy.grace_seconds = 15;
    busy.containers[0].prestop = Some(Hook::Sleep(Duration::from_secs(2)));
    let busy = node.run_pod(busy).expect("busy pod");
    let calm = node
        .run_pod(pod("calm", "api", &server(0)))
        .expect("calm pod");
    wait_listening(&busy.ip);
    wait_listening(&calm.ip);

    // A healthy pod of another workload under load the whole time (bounded: at most
    // 1500 requests, one every 10 ms, and only until the test is done).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, ip) = (stop.clone(), calm.ip.clone());
        std::thread::spawn(move || {
            let mut served = 0u32;
            for _ in 0..1500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                get(&ip, PORT);
                served += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            served
        })
    };

    // A slow client: connected and half its request sent before the deletion.
    let to: SocketAddr = format!("{}:{PORT}", busy.ip)
        .parse()
        .expect("socket address");
    let mut slow = TcpStream::connect_timeout(&to, CONNECT).expect("connect");
    slow.set_read_timeout(Some(IO)).expect("timeout");
    slow.write_all(b"GET / HTTP/1.0\r\n")
        .expect("half a request");
    std::thread::sleep(Duration::from_millis(500));

    const N: u64 = 5;
    const M: u64 = 3;
    const K: u64 = 4;
    let mut sent = 0;
    std::thread::scope(|s| {
        let deleting = s.spawn(|| {
            node.delete_pod(
                &busy,
                &DeleteOptions {
                    endpoint_lag: Duration::from_millis(300),
                    sandbox_delay: Duration::from_secs(4),
                    ..Default::default()
                },
            )
        });
        wait_entry(&agent, "busy", "endpoint_terminating");
        for _ in 0..N {
            sent += get(&busy.ip, PORT);
        }
        let rest = b"Host: x\r\n\r\n";
        slow.write_all(rest).expect("the rest");
        let mut answer = Vec::new();
        slow.read_to_end(&mut answer).expect("slow answer");
        assert!(
            answer.ends_with(b"ok\n"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        sent += rest.len() as u64;
        wait_entry(&agent, "busy", "sigterm");
        for _ in 0..M {
            sent += get(&busy.ip, PORT);
        }
        wait_entry(&agent, "busy", "container_exit");
        for _ in 0..K {
            refused(&busy.ip, PORT);
        }
        deleting.join().expect("delete thread").expect("delete");
    });
    stop.store(true, Ordering::Relaxed);
    let served = load.join().expect("load thread");
    assert!(
        served > 50,
        "the healthy pod was under load: {served} requests"
    );

    let t = agent
        .wait_pod_completed("shop", "busy", WAIT)
        .expect("termination");
    let m = agent.metrics().expect("metrics");
    let web = "{namespace=\"shop\",workload=\"deployment/web\"}";
    let value = |name: &str| m.value(&format!("{name}{web}"));
    assert_eq!(
        value("gracewatch_connections_after_removal_total"),
        Some((N + M) as f64),
        "{t:#}"
    );
    assert_eq!(
        value("gracewatch_connections_after_sigterm_total"),
        Some(M as f64)
    );
    assert_eq!(
        value("gracewatch_bytes_after_removal_total"),
        Some(sent as f64)
    );
    assert_eq!(value("gracewatch_resets_after_exit_total"), Some(K as f64));
    // The slow client's connection was the one open at the removal.
    assert_eq!(
        value("gracewatch_keepalive_connections_at_removal_count"),
        Some(1.0)
    );
    assert_eq!(
        value("gracewatch_keepalive_connections_at_removal_sum"),
        Some(1.0)
    );
    assert_eq!(
        value("gracewatch_traffic_after_removal_seconds_count"),
        Some(1.0)
    );
    for name in [
        "gracewatch_connections_after_removal_total",
        "gracewatch_bytes_after_removal_total",
        "gracewatch_resets_after_exit_total",
    ] {
        assert_eq!(
            m.sum(name, &["deployment/api"]),
            0.0,
            "the healthy pod: {name}"
        );
    }

    let w = whats(&t);
    let n = |what: &str| w.iter().filter(|x| *x == what).count();
    for what in [
        "connection_after_removal",
        "data_after_removal",
        "connection_after_sigterm",
        "reset_after_exit",
    ] {
        assert_eq!(n(what), 2, "first and last {what}: {w:?}");
    }
    let explained = agent.explain_target("shop/busy").expect("explain");
    eprintln!("{explained}");
    assert!(explained.contains("RESETS_AFTER_EXIT"), "{explained}");
    let c = codes(&t);
    for code in [
        "TRAFFIC_AFTER_REMOVAL",
        "KEEPALIVE_AFTER_REMOVAL",
        "RESETS_AFTER_EXIT",
    ] {
        assert!(c.iter().any(|x| x == code), "{code} in {c:?}");
    }
    let diag = |code: &str| {
        t["diagnoses"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["code"] == code))
            .and_then(|d| d["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let traffic = diag("TRAFFIC_AFTER_REMOVAL");
    assert!(
        traffic.starts_with(&format!(
            "{} new inbound connections and {sent} payload bytes",
            N + M
        )),
        "{traffic}"
    );
    assert!(traffic.contains("a preStop sleep of "), "{traffic}");
    assert!(diag("RESETS_AFTER_EXIT").starts_with(&format!("{K} connection attempts were refused")));
    assert!(diag("KEEPALIVE_AFTER_REMOVAL").contains("1 connection was open at the removal"));
    drop(node);
    let left: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gwp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "pod veths left behind: {left:?}");
}
