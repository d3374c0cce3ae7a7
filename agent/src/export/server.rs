//! What one HTTP client may cost the agent, and the accept loop that enforces it: a
//! connection limit (over it, new connections are closed at once and counted), a
//! deadline for each request head (which also ends idle keep-alive connections), an idle
//! timeout on the socket (no byte either way), a cap on the request head's size, and a
//! back-off when `accept(2)` fails (out of file descriptors) so the loop never spins.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::http::Router;
use crate::metrics::{HttpMetrics, HttpTimeout};

/// Time a client has to send a whole request head, counted from its first byte or from
/// the end of the previous response on a keep-alive connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moves either way for this long is closed (a client that
/// stops reading its response).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request head (request line and headers) read; larger ones get 431. This is
/// hyper's read buffer, so it also bounds what a half-sent head can hold in memory.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// First pause after a failed accept; it doubles while failures last.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after a failed accept.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this interval for accept failures and for connections
/// turned away at the limit; the line says how many were not logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }
}

/// Where connections come from: a TCP listener, or in tests a source of failures.
pub trait Accept: Send {
    type Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Accept for TcpListener {
    type Conn = TcpStream;
    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts and serves connections until the task is dropped.
pub async fn serve<A: Accept>(mut listener: A, router: Arc<Router>, limits: Limits) {
    let http = router.metrics().http.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    let mut rejections = LogEvery::new(LOG_INTERVAL);
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                http.accept_failed();
                let pause = backoff.failed(&e, Instant::now());
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        backoff.succeeded();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            http.rejected_at_limit();
            if let Some(not_logged) = rejections.hit(Instant::now()) {
                tracing::warn!(
                    limit = limits.max_connections,
                    not_logged,
                    "HTTP connection limit reached; closing new connections"
                );
            }
            drop(conn);
            continue;
        };
        tokio::spawn(connection(conn, slot, router.clone(), limits));
    }
}

async fn connection<C>(conn: C, _slot: OwnedSemaphorePermit, router: Arc<Router>, limits: Limits)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let http = router.metrics().http.clone();
    let _open = Open::new(&http);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: conn,
        activity: activity.clone(),
    });
    let svc = service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.respond(&req)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper panics below its 8 KiB minimum.
        .max_buf_size(limits.max_head_bytes.max(8192));
    let served = builder.serve_connection(io, svc);
    tokio::select! {
        ended = served => match ended {
            Err(e) if e.is_timeout() => http.timed_out(HttpTimeout::Header),
            Err(e) => tracing::debug!(error = %e, "http connection ended with an error"),
            Ok(()) => {}
        },
        () = activity.stalled(limits.idle_timeout) => http.timed_out(HttpTimeout::Idle),
    }
}

/// Counts a connection open for as long as it lives.
struct Open<'a>(&'a HttpMetrics);

impl<'a> Open<'a> {
    fn new(http: &'a HttpMetrics) -> Self {
        http.connection_opened();
        Self(http)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// When a byte last moved on a connection.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn stalled(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection that records each read or write that moved bytes.
struct Tracked<C> {
    inner: C,
    activity: Arc<Activity>,
}

impl<C: AsyncRead + Unpin> AsyncRead for Tracked<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Tracked<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long to pause after a failed accept, and when to say so.
#[derive(Debug)]
struct AcceptBackoff {
    /// The last pause, while failures last.
    pause: Option<Duration>,
    log: LogEvery,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            pause: None,
            log: LogEvery::new(LOG_INTERVAL),
        }
    }
}

impl AcceptBackoff {
    /// A failed accept: logs (at most once per interval) and returns the pause before
    /// the next. A connection that failed on its own (reset or aborted before it was
    /// accepted) needs no pause; anything else (EMFILE, ENFILE, ENOBUFS, ENOMEM) would
    /// fail again at once, so the pause doubles up to [`ACCEPT_BACKOFF_MAX`].
    fn failed(&mut self, e: &io::Error, now: Instant) -> Duration {
        let pause = if per_connection(e) {
            Duration::ZERO
        } else {
            let next = self
                .pause
                .map_or(ACCEPT_BACKOFF_MIN, |p| (p * 2).min(ACCEPT_BACKOFF_MAX));
            self.pause = Some(next);
            next
        };
        if let Some(not_logged) = self.log.hit(now) {
            tracing::warn!(error = %e, not_logged, pause = ?pause, "accepting an HTTP connection failed");
        }
        pause
    }

    fn succeeded(&mut self) {
        self.pause = None;
    }
}

fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Lets one log line through per interval and counts the ones held back.
#[derive(Debug)]
struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogEvery {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(lines held back since the last one)` if this one should be logged.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
