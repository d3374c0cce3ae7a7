//! Turns the measurements into the printed report and the final `BENCH_JSON {...}` line.
//! Every figure printed here is computed from this run's measurements; the targets are
//! the issue's, and a missed one is printed as MISSED, never hidden.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::agent_proc::RunStats;
use crate::exit_storm::{ExitStorm, PausedReader, Run};
use crate::host::Interrupts;
use crate::signal_storm::{rate_label, SignalStorm};
use crate::storm::StormResult;

pub const CPU_RATIO_TARGET: f64 = 1.03;
pub const AGENT_NS_PER_EVENT_TARGET: f64 = 2_000.0;
pub const BPF_NS_PER_RUN_TARGET: f64 = 150.0;
pub const LOSSLESS_SIGNAL_RATE_TARGET: f64 = 50_000.0;
pub const STORM_RATE_FLOOR: f64 = 20_000.0;

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The exit storm's derived figures, over the rounds that ran with no other process's
/// probes on our tracepoints, or over all rounds when none did.
pub struct ExitFigures {
    /// Indices of the rounds the figures are computed over.
    pub rounds_used: Vec<usize>,
    pub clean_rounds: usize,
    pub cpu_ratios: Vec<f64>,
    pub cpu_ratio_median: f64,
    pub cpu_ratio_of_medians: f64,
    /// Over every round, clean or not, for comparison.
    pub cpu_ratio_median_all: f64,
    /// Storm CPU C/A (count-only bpftrace), median of per-round ratios; None without C runs.
    pub bpftrace_cpu_ratio_median: Option<f64>,
    pub wall_ratios: Vec<f64>,
    /// Slowest storm without the agent: does the storm reach the rate floor at all?
    pub min_rate_a: f64,
    pub min_rate_b: f64,
    pub exits_performed_b: u64,
    pub events_b: f64,
    pub exit_events_b: f64,
    pub lost_b: f64,
    pub agent_cpu_s: f64,
    pub agent_ns_per_event: f64,
    /// The same from schedstat (live threads only, ns resolution).
    pub agent_on_cpu_s: f64,
    /// Host-wide interrupts per exit performed, [A, B].
    pub irq_work_per_exit: [f64; 2],
    pub resched_per_exit: [f64; 2],
    pub call_per_exit: [f64; 2],
    pub agent_wakeups_per_event: f64,
    /// Host CPU busy beyond the storm, in cores, median [A, B]; B includes the agent.
    pub busy_beyond_storm_cores: [f64; 2],
}

impl ExitFigures {
    pub fn from(s: &ExitStorm) -> ExitFigures {
        let all: Vec<usize> = (0..s.a.len()).collect();
        let clean: Vec<usize> = all.iter().copied().filter(|&i| s.clean(i)).collect();
        let used = if clean.is_empty() {
            all.clone()
        } else {
            clean.clone()
        };
        let pick =
            |runs: &[Run]| -> Vec<StormResult> { used.iter().map(|&i| runs[i].storm).collect() };
        let (a, b) = (pick(&s.a), pick(&s.b));
        let ratio = |i: usize| s.b[i].storm.cpu_s() / s.a[i].storm.cpu_s();
        let a_cpu: Vec<f64> = a.iter().map(StormResult::cpu_s).collect();
        let b_cpu: Vec<f64> = b.iter().map(StormResult::cpu_s).collect();
        let cpu_ratios: Vec<f64> = used.iter().map(|&i| ratio(i)).collect();
        let all_ratios: Vec<f64> = all.iter().map(|&i| ratio(i)).collect();
        let wall_ratios = a.iter().zip(&b).map(|(a, b)| b.wall_s / a.wall_s).collect();
        let rates = |runs: &[StormResult]| {
            min(&runs
                .iter()
                .map(StormResult::exits_per_s)
                .collect::<Vec<_>>())
        };
        let exits_a: u64 = a.iter().map(|r| r.exits).sum();
        let exits_b: u64 = b.iter().map(|r| r.exits).sum();
        let windows: Vec<_> = used.iter().map(|&i| s.agent[i]).collect();
        let agent_cpu_s: f64 = windows.iter().map(|w| w.cpu_s).sum();
        let events_b: f64 = windows.iter().map(|w| w.events).sum();
        let per_exit = |runs: &[Run], exits: u64, irq: fn(&Interrupts) -> u64| {
            used.iter().map(|&i| irq(&runs[i].irqs)).sum::<u64>() as f64 / exits as f64
        };
        // Host busy time beyond the storm's own, in cores; in B it includes the agent.
        let other = |runs: &[Run]| {
            let loads: Vec<f64> = used
                .iter()
                .map(|&i| (runs[i].host.busy_s - runs[i].storm.cpu_s()) / runs[i].storm.wall_s)
                .collect();
            median(&loads)
        };
        ExitFigures {
            clean_rounds: clean.len(),
            cpu_ratio_median: median(&cpu_ratios),
            cpu_ratios,
            cpu_ratio_of_medians: median(&b_cpu) / median(&a_cpu),
            cpu_ratio_median_all: median(&all_ratios),
            bpftrace_cpu_ratio_median: (s.c.len() == s.a.len()).then(|| {
                let ratios: Vec<f64> = used
                    .iter()
                    .map(|&i| s.c[i].storm.cpu_s() / s.a[i].storm.cpu_s())
                    .collect();
                median(&ratios)
            }),
            wall_ratios,
            min_rate_a: rates(&a),
            min_rate_b: rates(&b),
            exits_performed_b: exits_b,
            events_b,
            exit_events_b: windows.iter().map(|w| w.exit_events).sum(),
            lost_b: windows.iter().map(|w| w.lost).sum(),
            agent_cpu_s,
            agent_ns_per_event: agent_cpu_s * 1e9 / events_b,
            agent_on_cpu_s: windows.iter().map(|w| w.on_cpu_s).sum(),
            irq_work_per_exit: [
                per_exit(&s.a, exits_a, |i| i.irq_work),
                per_exit(&s.b, exits_b, |i| i.irq_work),
            ],
            resched_per_exit: [
                per_exit(&s.a, exits_a, |i| i.resched),
                per_exit(&s.b, exits_b, |i| i.resched),
            ],
            call_per_exit: [
                per_exit(&s.a, exits_a, |i| i.call),
                per_exit(&s.b, exits_b, |i| i.call),
            ],
            agent_wakeups_per_event: windows.iter().map(|w| w.wakeups).sum::<u64>() as f64
                / events_b,
            busy_beyond_storm_cores: [other(&s.a), other(&s.b)],
            rounds_used: used,
        }
    }
}

pub fn print_exit_storm(s: &ExitStorm, f: &ExitFigures) {
    let exits = s.a.first().map(|r| r.storm.exits).unwrap_or(0);
    println!();
    println!("  Exit storm summary ({exits} exits per run):");
    if f.clean_rounds == s.a.len() {
        println!(
            "    all {} rounds ran with no other process's probes on these tracepoints",
            f.clean_rounds
        );
    } else if f.clean_rounds > 0 {
        println!(
            "    figures below are over the {} of {} rounds with no other process's probes on these tracepoints (rounds {})",
            f.clean_rounds,
            s.a.len(),
            rounds_list(&f.rounds_used)
        );
    } else {
        println!(
            "    WARNING: in every round another process had probes on these tracepoints; figures are over all {} rounds and overstate the cost",
            s.a.len()
        );
    }
    println!(
        "    host CPU busy beyond the storm itself, median: A {:.2} cores (other load), B {:.2} cores (the agent and other load)",
        f.busy_beyond_storm_cores[0], f.busy_beyond_storm_cores[1]
    );
    println!(
        "    storm rate: slowest A run {:.0} exits/s (floor {:.0}/s: {}); slowest B run {:.0} exits/s",
        f.min_rate_a,
        STORM_RATE_FLOOR,
        verdict(f.min_rate_a >= STORM_RATE_FLOOR),
        f.min_rate_b
    );
    println!(
        "    storm CPU time B/A, median of per-round ratios: {:.4} (target <= {CPU_RATIO_TARGET}: {})",
        f.cpu_ratio_median,
        verdict(f.cpu_ratio_median <= CPU_RATIO_TARGET)
    );
    println!(
        "      per-round ratios: {}; ratio of medians: {:.4}; median over all {} rounds: {:.4}",
        list(&f.cpu_ratios),
        f.cpu_ratio_of_medians,
        s.a.len(),
        f.cpu_ratio_median_all
    );
    match f.bpftrace_cpu_ratio_median {
        Some(c) => println!(
            "    storm CPU time C/A under a count-only bpftrace, median: {c:.4}; B no worse than C: {}",
            verdict(f.cpu_ratio_median <= c)
        ),
        None => println!("    no count-only bpftrace baseline (bpftrace not installed)"),
    }
    println!(
        "    storm wall time B/A (not gated): median {:.4}, min {:.4}, max {:.4}",
        median(&f.wall_ratios),
        min(&f.wall_ratios),
        max(&f.wall_ratios)
    );
    println!(
        "    agent CPU per event: {:.2} s / {} events = {:.0} ns = {:.3} us (target <= 2 us: {})",
        f.agent_cpu_s,
        f.events_b,
        f.agent_ns_per_event,
        f.agent_ns_per_event / 1000.0,
        verdict(f.agent_ns_per_event <= AGENT_NS_PER_EVENT_TARGET)
    );
    println!(
        "      cross-check, on-CPU time of its threads (schedstat): {:.2} s = {:.0} ns per event",
        f.agent_on_cpu_s,
        f.agent_on_cpu_s * 1e9 / f.events_b
    );
    println!(
        "    exits performed in B runs: {}; exit events received: {} ({:.4} of them); all events received: {}",
        f.exits_performed_b,
        f.exit_events_b,
        f.exit_events_b / f.exits_performed_b as f64,
        f.events_b
    );
    println!(
        "    events lost in B runs: {} (target 0: {})",
        f.lost_b,
        verdict(f.lost_b == 0.0)
    );
    println!(
        "    host interrupts per exit, A -> B: irq_work {:.3} -> {:.3}, rescheduling IPIs {:.3} -> {:.3}, function-call IPIs {:.3} -> {:.3}",
        f.irq_work_per_exit[0],
        f.irq_work_per_exit[1],
        f.resched_per_exit[0],
        f.resched_per_exit[1],
        f.call_per_exit[0],
        f.call_per_exit[1]
    );
    println!(
        "    agent wake-ups (voluntary context switches) per event received: {:.3}",
        f.agent_wakeups_per_event
    );
}

fn rounds_list(indices: &[usize]) -> String {
    let items: Vec<String> = indices.iter().map(|i| (i + 1).to_string()).collect();
    items.join(", ")
}

fn list(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
    items.join(" ")
}

pub fn print_programs(title: &str, programs: &BTreeMap<String, RunStats>) {
    println!("  {title}");
    println!(
        "    {:<20} {:>12} {:>14} {:>8}  target <= {BPF_NS_PER_RUN_TARGET} ns",
        "program", "runs", "run ns", "ns/run"
    );
    for (name, stats) in programs {
        let (per_run, v) = match stats.ns_per_run() {
            Some(ns) => (format!("{ns:.1}"), verdict(ns <= BPF_NS_PER_RUN_TARGET)),
            None => ("n/a".to_owned(), "no runs"),
        };
        println!(
            "    {name:<20} {:>12} {:>14} {per_run:>8}  {v}",
            stats.runs, stats.ns
        );
    }
}

pub fn print_signal_storm(s: &SignalStorm) {
    match s.max_lossless_rate() {
        Some(rate) => println!(
            "  highest achieved SIGUSR1 rate with zero lost: {rate:.0}/s (target >= {LOSSLESS_SIGNAL_RATE_TARGET:.0}/s: {})",
            verdict(rate >= LOSSLESS_SIGNAL_RATE_TARGET)
        ),
        None => println!("  every step lost events (target >= {LOSSLESS_SIGNAL_RATE_TARGET:.0}/s: MISSED)"),
    }
}

pub fn print_paused_reader(p: &PausedReader, b_runs: &BTreeMap<String, RunStats>) {
    let s = &p.run.storm;
    println!(
        "  diagnostic, agent stopped (SIGSTOP) during one storm: its ring took {} records and dropped {} (expected here), so no wake-ups",
        p.written, p.lost
    );
    println!(
        "    storm: cpu {:.3} s  wall {:.3} s  {:.0} exits/s  irq_work {}",
        s.cpu_s(),
        s.wall_s,
        s.exits_per_s(),
        p.run.irqs.irq_work
    );
    println!(
        "    agent on-CPU time (schedstat) draining that full ring at once after SIGCONT: {:.4} s for {} records = {:.0} ns per record (window includes ~3 s idle)",
        p.agent_on_cpu_s,
        p.written,
        p.agent_on_cpu_s * 1e9 / p.written
    );
    for (name, stats) in &p.programs {
        let running = b_runs.get(name).and_then(|r| r.ns_per_run());
        if let (Some(paused), Some(running)) = (stats.ns_per_run(), running) {
            println!(
                "    {name:<20} {paused:>9.1} ns/run with the reader stopped vs {running:>9.1} with it running"
            );
        }
    }
}

fn programs_json(programs: &BTreeMap<String, RunStats>) -> Value {
    programs
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({"runs": s.runs, "run_ns": s.ns, "ns_per_run": s.ns_per_run()}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Idle CPU above this share of one core, in percent, misses the target.
pub const IDLE_CORE_PERCENT_TARGET: f64 = 0.1;

pub fn print_idle(i: &crate::idle::Idle) {
    println!(
        "   {} cgroups; agent CPU {:.3} s in {:.1} s = {:.3} % of one core (target < {IDLE_CORE_PERCENT_TARGET} %)",
        i.cgroups,
        i.agent_cpu_s,
        i.window_s,
        i.core_percent()
    );
}

pub fn idle_json(doc: &mut Value, i: &crate::idle::Idle) {
    doc["idle"] = json!({
        "cgroups": i.cgroups,
        "window_s": i.window_s,
        "agent_cpu_s": i.agent_cpu_s,
        "core_percent": i.core_percent(),
    });
    doc["targets"]["idle_core_percent_met"] = json!(i.core_percent() < IDLE_CORE_PERCENT_TARGET);
}

/// One line per target in the JSON's `targets` object.
pub fn print_targets(doc: &Value) {
    println!("Targets:");
    if let Some(targets) = doc["targets"].as_object() {
        for (name, met) in targets {
            let met = met.as_bool().unwrap_or(false);
            println!("  {:<40} {}", name.trim_end_matches("_met"), verdict(met));
        }
    }
}

/// The `BENCH_JSON` document.
pub fn json(
    header: Value,
    (s, f): (&ExitStorm, &ExitFigures),
    paused: Option<&PausedReader>,
    signal: Option<&SignalStorm>,
) -> Value {
    let mut doc = header;
    if let Some(p) = paused {
        doc["diagnostic_agent_stopped"] = json!({
            "storm": {
                "exits": p.run.storm.exits, "cpu_s": p.run.storm.cpu_s(),
                "wall_s": p.run.storm.wall_s, "irq_work": p.run.irqs.irq_work,
            },
            "records_written": p.written,
            "agent_on_cpu_s": p.agent_on_cpu_s,
            "records_dropped": p.lost,
            "bpf_programs": programs_json(&p.programs),
        });
    }
    let run = |r: &Run| {
        json!({
            "exits": r.storm.exits, "user_s": r.storm.user_s, "sys_s": r.storm.sys_s,
            "wall_s": r.storm.wall_s, "irq_work": r.irqs.irq_work,
            "resched_ipis": r.irqs.resched, "call_ipis": r.irqs.call,
            "host_busy_s": r.host.busy_s, "host_steal_s": r.host.steal_s,
            "foreign_probes": r.foreign,
        })
    };
    let bpf_ok = s
        .programs
        .values()
        .filter_map(|p| p.ns_per_run())
        .all(|ns| ns <= BPF_NS_PER_RUN_TARGET);
    doc["exit_storm"] = json!({
        "a": s.a.iter().map(run).collect::<Vec<_>>(),
        "b": s.b.iter().map(run).collect::<Vec<_>>(),
        "agent_windows": s.agent.iter().map(|w| json!({
            "cpu_s": w.cpu_s, "on_cpu_s": w.on_cpu_s, "events": w.events, "exit_events": w.exit_events,
            "lost": w.lost, "wakeups": w.wakeups,
        })).collect::<Vec<_>>(),
        "rounds_used": f.rounds_used.iter().map(|i| i + 1).collect::<Vec<_>>(),
        "clean_rounds": f.clean_rounds,
        "min_exits_per_s_a": f.min_rate_a,
        "min_exits_per_s_b": f.min_rate_b,
        "cpu_ratio_median_all_rounds": f.cpu_ratio_median_all,
        "c_bpftrace_count_only": s.c.iter().map(run).collect::<Vec<_>>(),
        "bpftrace_cpu_ratio_median": f.bpftrace_cpu_ratio_median,
        "host_busy_beyond_storm_cores_a_b": f.busy_beyond_storm_cores,
        "cpu_ratio_median_of_ratios": f.cpu_ratio_median,
        "cpu_ratio_of_medians": f.cpu_ratio_of_medians,
        "cpu_ratios": f.cpu_ratios,
        "wall_ratio_median": median(&f.wall_ratios),
        "wall_ratio_min": min(&f.wall_ratios),
        "wall_ratio_max": max(&f.wall_ratios),
        "agent_cpu_s": f.agent_cpu_s,
        "agent_ns_per_event": f.agent_ns_per_event,
        "agent_on_cpu_s_schedstat": f.agent_on_cpu_s,
        "exits_performed_b": f.exits_performed_b,
        "exit_events_received_b": f.exit_events_b,
        "events_received_b": f.events_b,
        "events_lost_b": f.lost_b,
        "irq_work_per_exit_a_b": f.irq_work_per_exit,
        "resched_ipis_per_exit_a_b": f.resched_per_exit,
        "call_ipis_per_exit_a_b": f.call_per_exit,
        "agent_wakeups_per_event": f.agent_wakeups_per_event,
    });
    doc["bpf_programs_exit_storm"] = programs_json(&s.programs);
    doc["targets"]["storm_rate_floor_met"] = json!(f.min_rate_a >= STORM_RATE_FLOOR);
    doc["targets"]["cpu_ratio_met"] = json!(f.cpu_ratio_median <= CPU_RATIO_TARGET);
    doc["targets"]["agent_ns_per_event_met"] =
        json!(f.agent_ns_per_event <= AGENT_NS_PER_EVENT_TARGET);
    doc["targets"]["exit_storm_no_loss_met"] = json!(f.lost_b == 0.0);
    doc["targets"]["bpf_ns_per_run_exit_storm_met"] = json!(bpf_ok);
    if let Some(c) = f.bpftrace_cpu_ratio_median {
        doc["targets"]["cpu_ratio_no_worse_than_bpftrace_met"] = json!(f.cpu_ratio_median <= c);
    }
    if let Some(s) = signal {
        doc["signal_storm"] = json!({
            "steps": s.steps.iter().map(|st| json!({
                "target": rate_label(st.target_rate),
                "target_rate": st.target_rate,
                "sent": st.sent,
                "secs": st.secs,
                "achieved_rate": st.achieved_rate(),
                "received": st.received,
                "lost": st.lost,
                "foreign_probes": st.foreign,
            })).collect::<Vec<_>>(),
            "max_lossless_rate": s.max_lossless_rate(),
        });
        doc["bpf_programs_signal_storm"] = programs_json(&s.programs);
        doc["targets"]["lossless_signal_rate_met"] = json!(s
            .max_lossless_rate()
            .is_some_and(|r| r >= LOSSLESS_SIGNAL_RATE_TARGET));
    }
    doc
}
