//! The server's bounds, tried as a hostile or unlucky client would: over loopback for
//! what the kernel's sockets decide, and through in-memory connections with tokio's
//! paused clock for what only time decides (back-off, idle sockets).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::watch,
    time::timeout,
};

use super::*;
use crate::{export::http::HttpState, metrics::Metrics, report::Snapshot};

fn router() -> Arc<Router> {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    Arc::new(Router::new(Arc::new(HttpState {
        metrics: Arc::new(Metrics::new("test")),
        snapshot: rx,
        ready: Arc::new(AtomicBool::new(true)),
    })))
}

/// The value of one exported series, as a scraper reads it.
fn metric(router: &Router, series: &str) -> Option<f64> {
    let text = router.metrics().encode().ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A server on an ephemeral loopback port.
async fn loopback(limits: Limits) -> (SocketAddr, Arc<Router>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = router();
    tokio::spawn(serve(listener, r.clone(), limits));
    (addr, r)
}

/// Reads until the server closes the connection (or resets it), within `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(within, read).await.ok()?;
    Some(got)
}

async fn wait_for(router: &Router, series: &str, value: f64) {
    let waited = timeout(Duration::from_secs(5), async {
        while metric(router, series) != Some(value) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{series} never reached {value}: {:?}",
        metric(router, series)
    );
}

const SHORT: Limits = Limits {
    header_read_timeout: Duration::from_millis(300),
    idle_timeout: IDLE_TIMEOUT,
    max_connections: MAX_CONNECTIONS,
    max_head_bytes: MAX_HEAD_BYTES,
};

#[test]
fn default_limits_are_within_the_documented_bounds() {
    let l = Limits::default();
    assert_eq!(l.header_read_timeout, Duration::from_secs(10));
    assert_eq!(l.idle_timeout, Duration::from_secs(30));
    assert_eq!(l.max_connections, 256);
    assert_eq!(l.max_head_bytes, 16 * 1024);
}

#[tokio::test]
async fn a_client_sending_a_byte_at_a_time_is_closed_at_the_header_deadline() {
    let (addr, r) = loopback(SHORT).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed_after = loop {
        assert!(started.elapsed() < Duration::from_secs(3), "still open");
        // A byte every 50 ms: always progress, never a whole head.
        if s.write_all(b"a").await.is_err() {
            break started.elapsed();
        }
        if let Ok(r) = timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "the server answered: {r:?}");
            break started.elapsed();
        }
    };
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    wait_for(
        &r,
        "gracewatch_http_connections_timed_out_total{phase=\"header\"}",
        1.0,
    )
    .await;
    wait_for(&r, "gracewatch_http_connections_open", 0.0).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
    let (addr, _r) = loopback(SHORT).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(3))
        .await
        .expect("closed within 3 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    const N: usize = 4;
    const K: usize = 3;
    let limits = Limits {
        max_connections: N,
        ..Limits::default()
    };
    let (addr, r) = loopback(limits).await;
    let mut held = Vec::new();
    for _ in 0..N {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    wait_for(&r, "gracewatch_http_connections_open", N as f64).await;
    for i in 0..K {
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let got = read_to_close(&mut extra, Duration::from_secs(2)).await;
        assert_eq!(got.as_deref(), Some(&[][..]), "extra connection {i}");
    }
    assert_eq!(
        metric(&r, "gracewatch_http_connections_rejected_total"),
        Some(K as f64)
    );
    // The first N are still served.
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let got = read_to_close(s, Duration::from_secs(2))
            .await
            .expect("answer");
        assert!(got.starts_with(b"HTTP/1.1 200"));
    }
    wait_for(&r, "gracewatch_http_connections_open", 0.0).await;
    // A slot freed is a slot served again.
    let mut again = TcpStream::connect(addr).await.expect("connect");
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut again, Duration::from_secs(2))
        .await
        .expect("answer");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        metric(&r, "gracewatch_http_connections_rejected_total"),
        Some(K as f64)
    );
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let got = read_to_close(&mut s, Duration::from_secs(3))
        .await
        .expect("answer");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn head_is_answered_with_headers_only() {
    let (addr, _r) = loopback(Limits::default()).await;
    let text = exchange(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")?
                .parse::<usize>()
                .ok()
        })
        .expect("content-length");
    assert!(length > 100, "GET's length: {length}");
    assert_eq!(body, "");
}

#[tokio::test]
async fn long_targets_get_414_and_large_heads_431() {
    let (addr, r) = loopback(Limits::default()).await;
    let long = format!(
        "GET /debug/terminations/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(4096)
    );
    let text = exchange(addr, long.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 414"), "{text}");
    // A head over the read buffer never reaches the router: hyper answers 431.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(MAX_HEAD_BYTES)
    );
    let text = exchange(addr, big.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    wait_for(&r, "gracewatch_http_connections_open", 0.0).await;
}

/// In-memory connections handed out in order; then nothing more ever arrives.
struct Scripted {
    conns: VecDeque<DuplexStream>,
}

impl Accept for Scripted {
    type Conn = DuplexStream;
    async fn accept(&mut self) -> io::Result<DuplexStream> {
        match self.conns.pop_front() {
            Some(c) => Ok(c),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    // A 64-byte pipe: the response cannot be written while the client does not read.
    let (mut client, server_end) = tokio::io::duplex(64);
    let r = router();
    tokio::spawn(serve(
        Scripted {
            conns: VecDeque::from([server_end]),
        },
        r.clone(),
        Limits::default(),
    ));
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(metric(&r, "gracewatch_http_connections_open"), Some(1.0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&r, "gracewatch_http_connections_open"), Some(0.0));
    assert_eq!(
        metric(
            &r,
            "gracewatch_http_connections_timed_out_total{phase=\"idle\"}"
        ),
        Some(1.0)
    );
    // The client sees the connection end after what fitted in the pipe.
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

/// An accept that always fails as when the process is out of file descriptors.
struct OutOfFds {
    calls: Arc<AtomicUsize>,
}

impl Accept for OutOfFds {
    type Conn = DuplexStream;
    async fn accept(&mut self) -> io::Result<DuplexStream> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err(io::Error::from(nix::errno::Errno::EMFILE))
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn out_of_file_descriptors_backs_off_and_logs_once_a_second() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let calls = Arc::new(AtomicUsize::new(0));
    let r = router();
    let five_seconds = timeout(
        Duration::from_secs(5),
        serve(
            OutOfFds {
                calls: calls.clone(),
            },
            r.clone(),
            Limits::default(),
        ),
    )
    .await;
    assert!(five_seconds.is_err(), "serve never returns");
    // Pauses 10, 20, … 640 ms, then 1 s: accepts at 0, 0.01, 0.03, 0.07, 0.15, 0.31,
    // 0.63, 1.27, 2.27, 3.27 and 4.27 s.
    let calls = calls.load(Ordering::Relaxed);
    assert_eq!(calls, 11, "accept calls in 5 s");
    assert_eq!(
        metric(&r, "gracewatch_http_accept_errors_total"),
        Some(calls as f64)
    );
    let text = logs.0.lock().map(|v| v.clone()).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("accepting an HTTP connection failed"))
        .collect();
    assert_eq!(lines.len(), 5, "one line per second at most: {text}");
    assert!(lines[0].contains("not_logged=0"), "{}", lines[0]);
    assert!(lines[1].contains("not_logged=6"), "{}", lines[1]);
    assert!(lines[0].contains("Too many open files"), "{}", lines[0]);
}

#[test]
fn accept_backoff_doubles_to_a_second_and_resets_on_success() {
    let now = Instant::now();
    let mut b = AcceptBackoff::default();
    let emfile = io::Error::from(nix::errno::Errno::EMFILE);
    let pauses: Vec<u128> = (0..9).map(|_| b.failed(&emfile, now).as_millis()).collect();
    assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.succeeded();
    assert_eq!(b.failed(&emfile, now), ACCEPT_BACKOFF_MIN);
    let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
    assert_eq!(b.failed(&aborted, now), Duration::ZERO);
}

#[test]
fn log_every_lets_one_line_through_per_interval() {
    let t0 = Instant::now();
    let mut log = LogEvery::new(Duration::from_secs(1));
    let at = |ms| t0 + Duration::from_millis(ms);
    assert_eq!(log.hit(at(0)), Some(0));
    assert_eq!(log.hit(at(1)), None);
    assert_eq!(log.hit(at(999)), None);
    assert_eq!(log.hit(at(1000)), Some(2));
    assert_eq!(log.hit(at(1500)), None);
    assert_eq!(log.hit(at(5000)), Some(1));
}
