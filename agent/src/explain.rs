//! `gracewatch explain`: fetches a termination from a running agent and prints it for
//! the on-call engineer: outcome per container, the timeline, and what to do.
//!
//! What the agent sends is treated as untrusted: the exchange is bounded in time and size,
//! and every string from it (process names come from the containers themselves) is
//! escaped before it reaches a terminal.

use std::{borrow::Cow, fmt::Write as _, io::Write as _, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::{cli::ExplainArgs, report::Termination};

/// Largest answer read from the agent. A full `/debug/terminations` of the default
/// history is a few MiB; one pod's or container's is a few KiB.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot explain {0:?}: give <namespace>/<pod> (Kubernetes names: lowercase letters, digits, '-' and '.') or container/<id-prefix> (1-64 lowercase hex characters)")]
    Target(String),
    #[error("bad --agent URL: {0}")]
    AgentUrl(&'static str),
    #[error("cannot connect to the agent at {agent} within {seconds} s (is `gracewatch run` running there?)")]
    ConnectTimeout { agent: String, seconds: u64 },
    #[error("cannot reach the agent at {agent} (is `gracewatch run` running there?)")]
    Connect {
        agent: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {agent} did not answer within {seconds} s (--timeout-seconds)")]
    Timeout { agent: String, seconds: u64 },
    #[error("the agent at {agent} does not speak HTTP as expected")]
    Http {
        agent: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent's answer is larger than {limit} bytes; not reading it")]
    TooLarge { limit: usize },
    #[error("the agent answered {status} with something that is not a termination list")]
    NotTerminations {
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
    #[error("no termination recorded for {target} (agent answered {status})")]
    NotFound { target: String, status: StatusCode },
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
}

/// How long and how much `explain` waits for and reads from the agent.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub connect: Duration,
    pub total: Duration,
    pub max_bytes: usize,
}

impl Bounds {
    fn of(args: &ExplainArgs) -> Self {
        Self {
            connect: Duration::from_secs(args.connect_timeout_seconds),
            total: Duration::from_secs(args.timeout_seconds),
            max_bytes: MAX_ANSWER_BYTES,
        }
    }
}

#[derive(Deserialize)]
struct Body {
    terminations: Vec<Termination>,
}

/// Where `target` is answered on the agent. Only names Kubernetes allows and hex id
/// prefixes are accepted, so a target cannot change the request's path or query.
pub fn endpoint(target: &str) -> Result<String, ExplainError> {
    let valid = match target.split_once('/') {
        Some(("container", prefix)) => {
            (1..=64).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some((ns, pod)) => {
            kube_name(ns, 63) && !ns.contains('.') && kube_name(pod, 253) && !pod.contains('/')
        }
        None => false,
    };
    if !valid {
        return Err(ExplainError::Target(target.to_string()));
    }
    Ok(match target.split_once('/') {
        Some(("container", prefix)) => format!("/debug/terminations/container/{prefix}"),
        _ => format!("/debug/terminations/{target}"),
    })
}

/// A DNS-1123 name: lowercase letters, digits, '-' and '.', alphanumeric at both ends.
fn kube_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    (1..=max).contains(&b.len())
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

pub async fn explain(args: ExplainArgs) -> Result<(), ExplainError> {
    let text = answer(&args, Bounds::of(&args)).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ExplainError::Stdout)
}

/// What `explain` prints.
async fn answer(args: &ExplainArgs, bounds: Bounds) -> Result<String, ExplainError> {
    let path = endpoint(&args.target)?;
    let (status, body) = fetch(&args.agent, &path, bounds).await?;
    let form = if args.json {
        Form::Json
    } else {
        Form::Text(Palette::PLAIN)
    };
    format_answer(&args.target, status, &body, form)
}

/// How an answer is printed.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    /// The agent's JSON, pretty-printed and made safe for a terminal.
    Json,
    /// [`render`]ed text, coloured by the palette.
    Text(Palette),
}

/// The agent's answer for `target` (HTTP `status`, `body`), as `form` prints it. Shared by
/// `gracewatch explain` and `kubectl gracewatch explain`, which fetch it differently.
pub fn format_answer(
    target: &str,
    status: StatusCode,
    body: &[u8],
    form: Form,
) -> Result<String, ExplainError> {
    let palette = match form {
        Form::Json => {
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|source| ExplainError::NotTerminations { status, source })?;
            let text = serde_json::to_string_pretty(&value)
                .map_err(|source| ExplainError::NotTerminations { status, source })?;
            return Ok(format!("{}\n", json_printable(&text)));
        }
        Form::Text(palette) => palette,
    };
    let parsed: Body = serde_json::from_slice(body)
        .map_err(|source| ExplainError::NotTerminations { status, source })?;
    if parsed.terminations.is_empty() {
        return Err(ExplainError::NotFound {
            target: target.to_string(),
            status,
        });
    }
    Ok(parsed
        .terminations
        .iter()
        .map(|t| render_with(t, palette))
        .collect())
}

/// ANSI styles for the parts of [`render`]'s text a reader scans for; all empty when
/// plain. Only constant escape sequences are added, never anything from the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Palette {
    pub heading: &'static str,
    /// Outcomes that cut work off (forced kills, kills without SIGTERM, OOM).
    pub bad: &'static str,
    pub good: &'static str,
    pub code: &'static str,
    pub reset: &'static str,
}

impl Palette {
    pub const PLAIN: Palette = Palette {
        heading: "",
        bad: "",
        good: "",
        code: "",
        reset: "",
    };
    pub const ANSI: Palette = Palette {
        heading: "\x1b[1m",
        bad: "\x1b[31m",
        good: "\x1b[32m",
        code: "\x1b[33m",
        reset: "\x1b[0m",
    };

    fn paint(&self, style: &str, text: &str) -> String {
        if style.is_empty() {
            text.to_string()
        } else {
            format!("{style}{text}{}", self.reset)
        }
    }

    fn outcome(&self, outcome: &str) -> String {
        let style = match outcome {
            "graceful" | "self_exit" => self.good,
            "forced_kill" | "killed_without_sigterm" | "oom_killed" | "crashed" => self.bad,
            _ => "",
        };
        self.paint(style, outcome)
    }
}

/// GET `path` from the agent at base URL `agent`: the status and at most
/// `bounds.max_bytes` of body, within `bounds.total` (connection included).
pub async fn fetch(
    agent: &str,
    path: &str,
    bounds: Bounds,
) -> Result<(StatusCode, Bytes), ExplainError> {
    let bad = ExplainError::AgentUrl;
    let base: Uri = agent.parse().map_err(|_| bad("not a URL"))?;
    if base.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let authority = base.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let prefix = base.path().trim_end_matches('/');
    let exchange = async {
        let stream = tokio::time::timeout(bounds.connect, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ExplainError::ConnectTimeout {
                agent: agent.to_string(),
                seconds: bounds.connect.as_secs(),
            })?
            .map_err(|source| ExplainError::Connect {
                agent: agent.to_string(),
                source,
            })?;
        let http = |source| ExplainError::Http {
            agent: agent.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(64 << 10)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // Ends with the exchange: the connection is dropped when this future is.
        let conn = async move {
            let _ = conn.await;
        };
        let request = async {
            let req = Request::get(format!("{prefix}{path}"))
                .header(header::HOST, authority.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|_| bad("cannot form a request from it"))?;
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let declared = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > bounds.max_bytes as u64) {
                return Err(ExplainError::TooLarge {
                    limit: bounds.max_bytes,
                });
            }
            let body = Limited::new(resp.into_body(), bounds.max_bytes)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => http(*e),
                    Err(_) => ExplainError::TooLarge {
                        limit: bounds.max_bytes,
                    },
                })?;
            Ok((status, body.to_bytes()))
        };
        tokio::pin!(request, conn);
        tokio::select! {
            answered = &mut request => answered,
            // The connection ended: the request fails or finishes with what it got.
            () = &mut conn => request.await,
        }
    };
    tokio::time::timeout(bounds.total, exchange)
        .await
        .map_err(|_| ExplainError::Timeout {
            agent: agent.to_string(),
            seconds: bounds.total.as_secs(),
        })?
}

/// The text form of one termination, every string from the agent made [`printable`].
pub fn render(t: &Termination) -> String {
    render_with(t, Palette::PLAIN)
}

/// [`render`], with the palette's styles on headings, outcomes and diagnosis codes.
pub fn render_with(t: &Termination, palette: Palette) -> String {
    fn p(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(printable)
    }
    let mut out = String::new();
    let who = match (p(&t.namespace), p(&t.pod), p(&t.uid)) {
        (Some(ns), Some(pod), _) => format!("pod {ns}/{pod}"),
        (_, _, Some(uid)) => format!("pod uid {uid}"),
        _ => "container".to_string(),
    };
    let state = match t.state {
        crate::report::State::InProgress => "in progress",
        crate::report::State::Completed => "completed",
    };
    let grace = t
        .grace_period_seconds
        .map(|g| format!(", grace period {g}s"))
        .unwrap_or_default();
    let heading = match p(&t.restarted_container) {
        Some(c) => {
            let count = t
                .restart_count
                .map(|n| format!(", restartCount {n}"))
                .unwrap_or_default();
            format!("Container {c} of {who} ended ({state}{count})")
        }
        None => format!("Termination of {who} ({state}{grace})"),
    };
    let _ = writeln!(out, "{}", palette.paint(palette.heading, &heading));
    if let Some(cause) = p(&t.cause) {
        let _ = writeln!(out, "  cause    {cause}");
    }
    let _ = writeln!(
        out,
        "  started  {}\n  finished {}",
        p(&t.started_at).unwrap_or(Cow::Borrowed("-")),
        p(&t.finished_at).unwrap_or(Cow::Borrowed("-"))
    );
    for c in &t.containers {
        let exit = match (c.exit_code, p(&c.exit_signal)) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by {sig}"),
            _ => "exit not seen".into(),
        };
        let term = c
            .sigterm_to_exit_seconds
            .map(|s| format!(", SIGTERM→exit {s:.3}s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  container {} {}PID 1 {}: {} ({exit}{term})",
            printable(short_id(&c.container_id)),
            p(&c.name).map(|n| format!("{n} ")).unwrap_or_default(),
            p(&c.pid1_comm).unwrap_or(Cow::Borrowed("?")),
            p(&c.outcome)
                .map(|o| palette.outcome(&o))
                .unwrap_or_else(|| "still terminating".to_string()),
        );
    }
    let _ = writeln!(out, "{}", palette.paint(palette.heading, "Timeline"));
    for e in &t.timeline {
        let _ = writeln!(
            out,
            "  {}  {:<16} {}",
            printable(&e.at),
            printable(&e.what),
            printable(&e.detail)
        );
    }
    let _ = writeln!(out, "{}", palette.paint(palette.heading, "Diagnosis"));
    if t.diagnoses.is_empty() {
        let _ = writeln!(out, "  nothing went wrong");
    } else {
        for d in &t.diagnoses {
            let _ = writeln!(
                out,
                "  {}: {}",
                palette.paint(palette.code, &printable(&d.code)),
                printable(&d.message)
            );
        }
    }
    out.push('\n');
    out
}

/// The first 12 characters of a container id (characters, not bytes: an id from the
/// agent is not trusted to be hex).
fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(at, _)| &id[..at])
}

/// `s`, safe to print on a terminal: control characters (C0 including ESC and newline,
/// DEL, C1) and the invisible characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width characters) are shown as escapes such as `\x1b`,
/// `\n` or `\u{202e}`; a backslash is doubled, so no escape can be forged.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || unsafe_on_terminal(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_on_terminal(c) && c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if unsafe_on_terminal(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text from serde_json made safe for a terminal without changing what it encodes:
/// serde_json escapes C0 controls in strings and writes only newlines and spaces between
/// tokens; the rest (DEL, C1, invisible formatting characters) can only be inside
/// strings, where `\uXXXX` means the same character.
fn json_printable(text: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\n' && unsafe_on_terminal(c);
    if !text.chars().any(escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ContainerReport, DiagnosisEntry, State, TimelineEntry};
    use std::net::SocketAddr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    #[test]
    fn targets_map_to_endpoints() {
        assert_eq!(
            endpoint("container/abc123").expect("ok"),
            "/debug/terminations/container/abc123"
        );
        assert_eq!(
            endpoint("shop/web-1").expect("ok"),
            "/debug/terminations/shop/web-1"
        );
        assert_eq!(
            endpoint("kube-system/coredns-5d78c9869d-abc12.x").expect("ok"),
            "/debug/terminations/kube-system/coredns-5d78c9869d-abc12.x"
        );
        for bad in [
            "pod",
            "a/b/c",
            "container/",
            "container/XYZ",
            "shop/web-1?x=1",
            "shop/web 1",
            "shop/../../metrics",
            "Shop/web",
            "shop/-web",
            "a.b/web",
            "shop/\u{1b}[2J",
        ] {
            let e = endpoint(bad).expect_err(bad).to_string();
            assert!(e.starts_with("cannot explain"), "{e}");
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    fn termination(comm: &str, id: &str, detail: &str, message: &str) -> Termination {
        Termination {
            namespace: None,
            pod: None,
            uid: Some("6f1c2d3e-1111-2222-3333-444455556666".into()),
            state: State::Completed,
            started_at: Some("2026-11-22T10:00:00.000000001Z".into()),
            finished_at: Some("2026-11-22T10:00:02.000000001Z".into()),
            grace_period_seconds: None,
            containers: vec![ContainerReport {
                name: None,
                container_id: id.into(),
                pid1_comm: Some(comm.into()),
                outcome: Some("forced_kill".into()),
                exit_code: None,
                exit_signal: Some("SIGKILL".into()),
                sigterm_to_exit_seconds: Some(2.0),
            }],
            timeline: vec![TimelineEntry {
                at: "2026-11-22T10:00:00.000000001Z".into(),
                what: "sigterm".into(),
                container: Some("0123456789ab".into()),
                detail: detail.into(),
                at_ns: 0,
            }],
            diagnoses: vec![DiagnosisEntry {
                code: "FORCED_KILL".into(),
                container: Some("0123456789ab".into()),
                message: message.into(),
            }],
            cause: None,
            restarted_container: None,
            restart_count: None,
        }
    }

    #[test]
    fn a_restarts_record_names_the_container_and_the_cause() {
        let mut t = termination("sh", "0123456789abcdef", "SIGTERM", "restarted");
        t.namespace = Some("shop".into());
        t.pod = Some("web-1".into());
        t.restarted_container = Some("app".into());
        t.restart_count = Some(3);
        t.cause = Some("liveness_probe".into());
        let text = render(&t);
        assert!(
            text.starts_with("Container app of pod shop/web-1 ended (completed, restartCount 3)\n  cause    liveness_probe\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_what_a_person_needs() {
        let text = render(&termination(
            "sh",
            "0123456789abcdef",
            "SIGTERM from runc to sh (PID 1): ignored",
            "SIGKILLed by runc",
        ));
        assert!(text
            .contains("Termination of pod uid 6f1c2d3e-1111-2222-3333-444455556666 (completed)"));
        assert!(text.contains("container 0123456789ab PID 1 sh: forced_kill (killed by SIGKILL, SIGTERM→exit 2.000s)"), "{text}");
        assert!(
            text.contains("sigterm          SIGTERM from runc to sh (PID 1): ignored"),
            "{text}"
        );
        assert!(text.contains("FORCED_KILL: SIGKILLed by runc"));
    }

    #[test]
    fn terminal_controls_are_shown_escaped() {
        let cases = [
            ("sh", "sh"),
            ("\u{1b}[2J\u{1b}[Hall good", "\\x1b[2J\\x1b[Hall good"),
            ("a\nDiagnosis\r\tb", "a\\nDiagnosis\\r\\tb"),
            ("bell\u{7}del\u{7f}", "bell\\x07del\\x7f"),
            ("csi\u{9b}2J", "csi\\u{9b}2J"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("a\\x1b", "a\\\\x1b"),
            ("naïve 名前", "naïve 名前"),
        ];
        for (raw, shown) in cases {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn a_hostile_comm_and_a_non_ascii_id_cannot_hide_the_diagnosis() {
        let comm = "\u{1b}[2J\u{1b}[1;1Hall good\u{1b}[8m";
        let id = "é".repeat(20);
        let text = render(&termination(
            comm,
            &id,
            "to \u{1b}]0;title\u{7}x",
            "SIGKILLed\u{202e}",
        ));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("PID 1 \\x1b[2J\\x1b[1;1Hall good\\x1b[8m: forced_kill"),
            "{text}"
        );
        assert!(
            text.contains(&format!("container {} PID 1", "é".repeat(12))),
            "{text}"
        );
        assert!(text.contains("to \\x1b]0;title\\x07x"), "{text}");
        assert!(text.contains("FORCED_KILL: SIGKILLed\\u{202e}"), "{text}");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(&"ab".repeat(32)), "abababababab");
    }

    fn args(addr: SocketAddr, target: &str, json: bool) -> ExplainArgs {
        ExplainArgs {
            target: target.into(),
            agent: format!("http://{addr}"),
            json,
            connect_timeout_seconds: 1,
            timeout_seconds: 1,
        }
    }

    const QUICK: Bounds = Bounds {
        connect: Duration::from_millis(500),
        total: Duration::from_millis(500),
        max_bytes: 1 << 20,
    };

    /// A loopback "agent" that reads the request, then runs `then` on the connection.
    async fn agent<F, Fut>(then: F) -> SocketAddr
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            then(s).await;
        });
        addr
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_times_out() {
        let addr = agent(|s| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
        .await;
        let started = std::time::Instant::now();
        let e = answer(&args(addr, "shop/web-1", false), QUICK)
            .await
            .expect_err("no answer");
        assert!(matches!(e, ExplainError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(e.to_string().contains("did not answer within"), "{e}");
    }

    #[tokio::test]
    async fn an_endless_answer_stops_at_the_size_cap() {
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = sent.clone();
        let addr = agent(move |mut s| async move {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            // Bounded: 64 MiB at most, or until the client hangs up.
            for _ in 0..1024 {
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                counted.fetch_add(64 << 10, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
        let bounds = Bounds {
            total: Duration::from_secs(10),
            ..QUICK
        };
        let e = answer(&args(addr, "shop/web-1", false), bounds)
            .await
            .expect_err("too large");
        assert!(
            matches!(e, ExplainError::TooLarge { limit } if limit == 1 << 20),
            "{e:?}"
        );
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 16 << 20, "the server could push {sent} bytes");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_unread() {
        let addr = agent(|mut s| async move {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{";
            let _ = s.write_all(head).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        })
        .await;
        let e = answer(&args(addr, "shop/web-1", false), QUICK)
            .await
            .expect_err("too large");
        assert!(matches!(e, ExplainError::TooLarge { .. }), "{e:?}");
    }

    async fn answering(body: String) -> SocketAddr {
        agent(move |mut s| async move {
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        })
        .await
    }

    fn hostile_body() -> (Termination, String) {
        let t = termination(
            "\u{1b}[2J\u{1b}[Hall good",
            &"日本".repeat(10),
            "SIGTERM to \u{9b}31m",
            "fine\u{202e}",
        );
        let body = serde_json::json!({ "terminations": [&t] }).to_string();
        (t, body)
    }

    #[tokio::test]
    async fn escape_codes_and_non_ascii_ids_from_the_agent_are_escaped() {
        let (_, body) = hostile_body();
        assert!(body.contains("\\u001b[2J"), "JSON escapes ESC: {body}");
        let addr = answering(body).await;
        let text = answer(&args(addr, "container/abc", false), QUICK)
            .await
            .expect("answer");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("PID 1 \\x1b[2J\\x1b[Hall good:"), "{text}");
        assert!(
            text.contains(&format!("container {} PID 1", "日本".repeat(6))),
            "{text}"
        );
        assert!(text.contains("SIGTERM to \\u{9b}31m"), "{text}");
        assert!(text.contains("FORCED_KILL: fine\\u{202e}"), "{text}");
    }

    #[tokio::test]
    async fn json_output_is_the_same_json_with_nothing_a_terminal_obeys() {
        let (t, body) = hostile_body();
        let addr = answering(body).await;
        let text = answer(&args(addr, "shop/web-1", true), QUICK)
            .await
            .expect("answer");
        assert!(
            !text.chars().any(|c| unsafe_on_terminal(c) && c != '\n'),
            "{text:?}"
        );
        let back: Body = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back.terminations, [t]);
    }

    #[tokio::test]
    async fn a_refused_connection_and_bad_urls_say_what_is_wrong() {
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = unused.local_addr().expect("addr");
        drop(unused);
        let e = answer(&args(addr, "shop/web-1", false), QUICK)
            .await
            .expect_err("refused");
        assert!(matches!(e, ExplainError::Connect { .. }), "{e:?}");
        for (url, why) in [
            ("https://127.0.0.1:9610", "only http://"),
            ("http://user:secret@127.0.0.1:9610", "credentials"),
            ("127.0.0.1:9610", "only http://"),
        ] {
            let e = fetch(url, "/healthz", QUICK)
                .await
                .expect_err(url)
                .to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
