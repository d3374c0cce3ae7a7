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
    time::{Duration, Instant},
};

use agent_ebpf::{TrafficCounters, WatchMarks};
use gracewatch::{
    clock::boot_now_ns,
    kernel::{LoadOptions, Probes},
    traffic::addr_of,
};
use gracewatch_tests::netns::{self, NetNs};

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
    let to: SocketAddr = format!("{}:{port}", ns.addr()).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&to, CONNECT).is_err() {
        assert!(Instant::now() < deadline, "httpd never listened on {to}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a new connection; returns the bytes sent (the payload the server's
/// kernel receives) once the answer is read.
fn get(addr: &str, port: u16) -> u64 {
    let to: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&to, CONNECT).expect("connect");
    s.set_read_timeout(Some(IO)).unwrap();
    s.set_write_timeout(Some(IO)).unwrap();
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
    let to: SocketAddr = format!("{addr}:{port}").parse().unwrap();
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
    let addr = addr_of(&watched.addr()).unwrap();
    let other = addr_of(&healthy.addr()).unwrap();

    // A slow client: connected, half its request sent, before the watch.
    let to: SocketAddr = format!("{}:{PORT}", watched.addr()).parse().unwrap();
    let mut slow = TcpStream::connect_timeout(&to, CONNECT).expect("connect");
    slow.write_all(b"GET / HTTP/1.0\r\n").unwrap();
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
    slow.write_all(rest).unwrap();
    let mut answer = Vec::new();
    slow.set_read_timeout(Some(IO)).unwrap();
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
