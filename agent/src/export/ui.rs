//! The termination picture at `/ui/<namespace>/<pod>` and `/ui/container/<id-prefix>`:
//! one self-contained HTML page (no scripts, no external assets) with an SVG that draws
//! the two timelines a termination has: the pod's (API deletion, endpoints, kubelet
//! Events) on the first lane and each container's (preStop, signals, exit) on its own,
//! the grace period, preStop and SIGTERM → exit as spans, and the diagnoses beside them.
//! Every string from the termination (process names come from the containers) is escaped.

use std::fmt::Write as _;

use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::report::{Termination, TimelineEntry};

const WIDTH: f64 = 1000.0;
const PLOT_X0: f64 = 210.0;
const PLOT_X1: f64 = 980.0;
const TOP: f64 = 40.0;
const LANE: f64 = 80.0;
/// Entries drawn without a label: other processes of a container starting and ending.
const MINOR: &[&str] = &["exec", "exit"];
/// The lane of pod-level entries.
pub const API_LANE: &str = "API · endpoints · kubelet";

/// The whole page for `title` and the terminations found for it.
pub fn page(title: &str, terminations: &[&Termination]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Gracewatch: {t}</title>\
         <style>{STYLE}</style></head><body><h1>Termination of {t}</h1>",
        t = esc(title)
    );
    if terminations.is_empty() {
        out.push_str("<p class=\"none\">No termination recorded for it (yet).</p>\n");
    }
    for t in terminations {
        section(&mut out, t);
    }
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font:14px sans-serif;margin:20px;color:#222}\
.termination{display:flex;gap:24px;align-items:flex-start;margin-bottom:32px}\
svg{background:#fafafa;border:1px solid #ddd}text{font:11px sans-serif}\
.lane-label{font-weight:bold;font-size:12px}.axis{fill:#666}.lane-line{stroke:#bbb}\
.grace{fill:#fde9c8;stroke:#e5a443}.prestop{fill:#d6e6fb;stroke:#5b8fd6}.drain{fill:#f7d4d4;stroke:#d65b5b}\
.minor circle{fill:#aaa}.api circle{fill:#3d6fb6}.signal circle{fill:#d2691e}.kill circle{fill:#c0392b}.exit circle{fill:#222}\
.diagnoses{max-width:380px}.code{color:#b03a2e}.ok{color:#2e7d32}";

/// The SVG and the diagnoses of one termination.
fn section(out: &mut String, t: &Termination) {
    let entries: Vec<(f64, &TimelineEntry)> = t
        .timeline
        .iter()
        .filter_map(|e| seconds(&e.at).map(|s| (s, e)))
        .collect();
    let lanes = lanes(t);
    let t0 = entries
        .iter()
        .map(|(s, _)| *s)
        .fold(f64::INFINITY, f64::min);
    let t0 = if t0.is_finite() { t0 } else { 0.0 };
    let deletion = entries
        .iter()
        .find(|(_, e)| e.what == "deletion_requested" || e.what == "sigterm")
        .map(|(s, _)| *s);
    let grace_end = deletion.zip(t.grace_period_seconds).map(|(d, g)| d + g);
    let t1 = entries
        .iter()
        .map(|(s, _)| *s)
        .chain(grace_end)
        .fold(t0, f64::max);
    let span = (t1 - t0).max(0.001);
    let x = |s: f64| PLOT_X0 + (s - t0) / span * (PLOT_X1 - PLOT_X0);
    let height = TOP + LANE * lanes.len() as f64 + 30.0;
    let state = match t.state {
        crate::report::State::InProgress => "in progress",
        crate::report::State::Completed => "completed",
    };
    // A pod holds several records once kubelet restarted one of its containers.
    let what = match (&t.restarted_container, t.restart_count) {
        (Some(c), Some(n)) => format!("Container {} ended, restartCount {n}", esc(c)),
        (Some(c), None) => format!("Container {} ended", esc(c)),
        (None, _) => "Pod termination".to_string(),
    };
    let cause = t
        .cause
        .as_deref()
        .map(|c| format!(" · cause {}", esc(c)))
        .unwrap_or_default();
    let _ = writeln!(out, "<h2 class=\"record\">{what} ({state}){cause}</h2>");
    let _ = writeln!(
        out,
        "<section class=\"termination\" data-state=\"{state}\"><svg xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\">"
    );
    // Time axis.
    let step = nice_step(span);
    let mut tick = 0.0;
    while tick <= span + 1e-9 {
        let _ = writeln!(
            out,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">+{}</text>",
            x(t0 + tick),
            height - 10.0,
            seconds_label(tick)
        );
        tick += step;
    }
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64 + LANE / 2.0;
        let _ = writeln!(
            out,
            "<g class=\"lane\" data-lane=\"{l}\"><text class=\"lane-label\" x=\"10\" y=\"{y:.1}\">{l}</text>\
             <line class=\"lane-line\" x1=\"{PLOT_X0}\" x2=\"{PLOT_X1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>",
            l = esc(lane)
        );
        let on_lane: Vec<&(f64, &TimelineEntry)> = entries
            .iter()
            .filter(|(_, e)| lane_of(e) == lane.as_str())
            .collect();
        if i == 0 {
            if let (Some(d), Some(end), Some(g)) = (deletion, grace_end, t.grace_period_seconds) {
                span_rect(
                    out,
                    "grace",
                    x(d),
                    x(end),
                    y,
                    &format!("grace period {}", seconds_label(g)),
                );
            }
        }
        let at = |what: &str| {
            on_lane
                .iter()
                .find(|(_, e)| e.what == what)
                .map(|(s, _)| *s)
        };
        if let (Some(a), Some(b)) = (at("prestop_started"), at("prestop_finished")) {
            span_rect(
                out,
                "prestop",
                x(a),
                x(b),
                y - 14.0,
                &format!("preStop {}", seconds_label(b - a)),
            );
        }
        if let (Some(a), Some(b)) = (at("sigterm"), at("container_exit")) {
            span_rect(
                out,
                "drain",
                x(a),
                x(b),
                y + 14.0,
                &format!("SIGTERM → exit {}", seconds_label(b - a)),
            );
        }
        let mut labelled = 0;
        for (s, e) in &on_lane {
            let cx = x(*s);
            let (w, at, d) = (esc(&e.what), esc(&e.at), esc(&e.detail));
            // Processes other than PID 1 starting and ending (a shell loop's children):
            // small dots with their detail on hover, no label to crowd out the rest.
            if MINOR.contains(&e.what.as_str()) {
                let _ = writeln!(
                    out,
                    "<g class=\"event minor\" data-what=\"{w}\"><title>{at}  {d}</title>\
                     <circle cx=\"{cx:.1}\" cy=\"{y:.1}\" r=\"2.5\"/></g>"
                );
                continue;
            }
            let class = match e.what.as_str() {
                "sigkill" => "kill",
                "sigterm" | "signal" | "stop_signal" | "signal_delivered" => "signal",
                "container_exit" => "exit",
                _ if i == 0 => "api",
                _ => "signal",
            };
            let ly = y - 26.0 - 11.0 * (labelled % 3) as f64;
            labelled += 1;
            // Labels near an edge grow inwards, so none is cut off.
            let anchor = if cx > PLOT_X1 - 70.0 {
                "end"
            } else if cx < PLOT_X0 + 40.0 {
                "start"
            } else {
                "middle"
            };
            let _ = writeln!(
                out,
                "<g class=\"event {class}\" data-what=\"{w}\"><title>{at}  {d}</title>\
                 <circle cx=\"{cx:.1}\" cy=\"{y:.1}\" r=\"5\"/><text x=\"{cx:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\">{w}</text></g>"
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n<div class=\"diagnoses\"><h2>Diagnosis</h2>\n");
    if t.diagnoses.is_empty() {
        out.push_str("<p class=\"ok\">nothing went wrong</p>\n");
    } else {
        out.push_str("<ul>\n");
        for d in &t.diagnoses {
            let _ = writeln!(
                out,
                "<li><b class=\"code\">{}</b> {}</li>",
                esc(&d.code),
                esc(&d.message)
            );
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Containers</h2><ul>\n");
    for c in &t.containers {
        let _ = writeln!(
            out,
            "<li>{}: <b>{}</b></li>",
            esc(c.name.as_deref().unwrap_or(short(&c.container_id))),
            esc(c.outcome.as_deref().unwrap_or("still terminating"))
        );
    }
    out.push_str("</ul></div></section>\n");
}

fn span_rect(out: &mut String, class: &str, xa: f64, xb: f64, y: f64, label: &str) {
    let w = (xb - xa).max(2.0);
    let _ = writeln!(
        out,
        "<g class=\"span {class}\"><rect class=\"{class}\" x=\"{xa:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"10\" rx=\"3\"/>\
         <text class=\"span-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
        y - 5.0,
        xa + 3.0,
        y + 17.0,
        esc(label)
    );
}

/// The API lane, then one lane per container (in the record's order, then any other
/// container the timeline names).
fn lanes(t: &Termination) -> Vec<String> {
    let mut lanes = vec![API_LANE.to_string()];
    let names = t
        .containers
        .iter()
        .map(|c| {
            c.name
                .clone()
                .unwrap_or_else(|| short(&c.container_id).to_string())
        })
        .chain(t.timeline.iter().filter_map(|e| e.container.clone()));
    for name in names {
        if !lanes.contains(&name) {
            lanes.push(name);
        }
    }
    lanes
}

fn lane_of(e: &TimelineEntry) -> &str {
    e.container.as_deref().unwrap_or(API_LANE)
}

fn short(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(at, _)| &id[..at])
}

/// Unix seconds of an RFC 3339 time.
fn seconds(at: &str) -> Option<f64> {
    let t = OffsetDateTime::parse(at, &Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

fn seconds_label(s: f64) -> String {
    let s = (s * 1000.0).round() / 1000.0;
    if s >= 10.0 || s == s.trunc() {
        format!("{s:.0}s")
    } else {
        format!("{s:.3}s")
    }
}

/// An axis step of 1, 2 or 5 times a power of ten giving at most ~8 ticks.
fn nice_step(span: f64) -> f64 {
    let raw = span / 8.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(raw)
}

/// `s` safe inside HTML text and attribute values; control characters become visible
/// escapes so that nothing can hide in the page.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ContainerReport, DiagnosisEntry, State};

    fn entry(at: &str, what: &str, container: Option<&str>, detail: &str) -> TimelineEntry {
        TimelineEntry {
            at: at.into(),
            what: what.into(),
            container: container.map(str::to_owned),
            detail: detail.into(),
            at_ns: 0,
        }
    }

    fn termination() -> Termination {
        Termination {
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            uid: None,
            state: State::Completed,
            started_at: None,
            finished_at: None,
            grace_period_seconds: Some(3.0),
            cause: None,
            restarted_container: None,
            restart_count: None,
            containers: vec![ContainerReport {
                name: Some("app".into()),
                container_id: "0123456789abcdef".into(),
                pid1_comm: Some("sh".into()),
                outcome: Some("forced_kill".into()),
                exit_code: None,
                exit_signal: Some("SIGKILL".into()),
                sigterm_to_exit_seconds: Some(2.0),
            }],
            timeline: vec![
                entry(
                    "2026-01-01T00:00:00Z",
                    "deletion_requested",
                    None,
                    "kubectl <delete>",
                ),
                entry(
                    "2026-01-01T00:00:00.1Z",
                    "prestop_started",
                    Some("app"),
                    "preStop",
                ),
                entry(
                    "2026-01-01T00:00:01.1Z",
                    "prestop_finished",
                    Some("app"),
                    "done",
                ),
                entry(
                    "2026-01-01T00:00:01.1Z",
                    "sigterm",
                    Some("app"),
                    "SIGTERM to <script>",
                ),
                entry("2026-01-01T00:00:03.1Z", "sigkill", Some("app"), "SIGKILL"),
                entry(
                    "2026-01-01T00:00:02Z",
                    "exit",
                    Some("app"),
                    "sleep (pid 7 in container) exited",
                ),
                entry(
                    "2026-01-01T00:00:03.1Z",
                    "container_exit",
                    Some("app"),
                    "PID 1 sh killed",
                ),
            ],
            diagnoses: vec![DiagnosisEntry {
                code: "FORCED_KILL".into(),
                container: Some("app".into()),
                message: "SIGKILLed \"after\" 2s & more".into(),
            }],
        }
    }

    #[test]
    fn draws_lanes_spans_and_diagnoses() {
        let html = page("pod shop/web-1", &[&termination()]);
        for want in [
            "data-lane=\"API · endpoints · kubelet\"",
            "data-lane=\"app\"",
            "grace period 3s",
            "preStop 1s",
            "SIGTERM → exit 2s",
            "data-what=\"sigkill\"",
            "<g class=\"event minor\" data-what=\"exit\"><title>2026-01-01T00:00:02Z  sleep (pid 7 in container) exited</title>",
            "<b class=\"code\">FORCED_KILL</b> SIGKILLed &quot;after&quot; 2s &amp; more",
            "app: <b>forced_kill</b>",
        ] {
            assert!(html.contains(want), "{want} missing from {html}");
        }
        assert!(!html.contains("<script>"), "escaped");
        assert!(html.contains("SIGTERM to &lt;script&gt;"));
        // Axis: 3.1 s of events, grace ends at +3 s.
        assert!(html.contains(">+0s<") && html.contains(">+3s<"), "{html}");
    }

    #[test]
    fn a_pods_records_say_which_is_a_restart_and_why() {
        let pod = termination();
        let mut restart = termination();
        restart.restarted_container = Some("app<1>".into());
        restart.restart_count = Some(3);
        restart.cause = Some("liveness_probe".into());
        let html = page("pod shop/web-1", &[&restart, &pod]);
        let first = html.find(
            "Container app&lt;1&gt; ended, restartCount 3 (completed) · cause liveness_probe",
        );
        let second = html.find("Pod termination (completed)</h2>");
        assert!(
            first.is_some() && second.is_some() && first < second,
            "newest first, each named: {html}"
        );
    }

    #[test]
    fn escapes_everything_from_the_agent() {
        let cases = [
            ("plain", "plain"),
            (
                "<img src=x onerror=alert(1)>",
                "&lt;img src=x onerror=alert(1)&gt;",
            ),
            ("a\"b'c&d", "a&quot;b&#39;c&amp;d"),
            ("esc\u{1b}[2J", "esc\\u{1b}[2J"),
        ];
        for (raw, want) in cases {
            assert_eq!(esc(raw), want);
        }
        let mut t = termination();
        t.containers[0].name = Some("<svg onload=x>".into());
        let html = page("<title>", &[&t]);
        assert!(
            !html.contains("<svg onload") && !html.contains("<title><"),
            "{html}"
        );
    }

    #[test]
    fn empty_and_axis_steps() {
        assert!(page("pod a/b", &[]).contains("No termination recorded"));
        for (s, label) in [(1.0000000000000002, "1s"), (0.25, "0.250s"), (12.4, "12s")] {
            assert_eq!(seconds_label(s), label);
        }
        for (span, step) in [(3.1, 0.5), (30.0, 5.0), (0.05, 0.01), (100.0, 20.0)] {
            assert!(
                (nice_step(span) - step).abs() < 1e-9,
                "{span}: {}",
                nice_step(span)
            );
        }
    }
}
