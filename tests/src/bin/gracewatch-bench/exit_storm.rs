//! Measurements 1 and 2: the exit storm without (A) and with (B) the agent, interleaved
//! A, B, A, B, ..., and the kernel's run time of each BPF program during the B runs. When
//! bpftrace is installed each round also runs C: the storm under a count-only bpftrace
//! script (see `bpftrace`), the baseline B is compared with.
//!
//! Each B run gets a freshly started agent (default flags, default ring), so an A run
//! really has none of our probes attached. The agent's figures cover a window from just
//! before the storm starts to after the agent has drained its ring and exported its
//! once-a-second gauges; that window includes about 2 s of idle agent time, so the CPU
//! per event is an upper bound.
//!
//! On a shared machine another process (another agent under test) may hold probes on the
//! same tracepoints; its programs then run on every exit of the storm, A or B. Before each
//! run the bench waits for such probes to go (within [`FOREIGN_WAIT_BUDGET`] for the whole
//! bench) and records any it still sees, so the report can set those runs apart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::agent_proc::{AgentProc, RunStats, Snapshot};
use crate::bpftrace;
use crate::host::{foreign_probes, HostCpu, Interrupts};
use crate::storm::{self, StormResult, Target};
use crate::sys::sleep_checked;

/// How long, over the whole exit storm, the bench waits for other processes' probes on
/// the agent's tracepoints to go away before running anyway.
pub const FOREIGN_WAIT_BUDGET: Duration = Duration::from_secs(30);

/// The agent's side of one B run.
#[derive(Debug, Clone, Copy)]
pub struct AgentWindow {
    pub cpu_s: f64,
    /// The same from schedstat, as a cross-check with nanosecond resolution.
    pub on_cpu_s: f64,
    pub events: f64,
    pub exit_events: f64,
    pub lost: f64,
    /// Voluntary context switches of the agent's threads: how often it went to sleep on
    /// the ring buffer and was woken again.
    pub wakeups: u64,
}

/// One storm and what the host did meanwhile.
#[derive(Debug, Clone)]
pub struct Run {
    pub storm: StormResult,
    pub irqs: Interrupts,
    pub host: HostCpu,
    /// Other processes with probes on the agent's tracepoints, at the start or the end.
    pub foreign: Vec<String>,
}

pub struct ExitStorm {
    pub a: Vec<Run>,
    pub b: Vec<Run>,
    /// Under the count-only bpftrace; empty when bpftrace is not installed.
    pub c: Vec<Run>,
    pub agent: Vec<AgentWindow>,
    /// Summed over the B runs, by program.
    pub programs: BTreeMap<String, RunStats>,
}

impl ExitStorm {
    /// Whether round `i` ran with no other process's probes on our tracepoints.
    pub fn clean(&self, i: usize) -> bool {
        self.a[i].foreign.is_empty() && self.b[i].foreign.is_empty()
    }
}

pub fn run(bin: &Path, target: &Target, rounds: u32, exits: u64) -> Result<ExitStorm> {
    let mut wait_budget = FOREIGN_WAIT_BUDGET;
    // Untimed: the first storm pays for cold caches and page tables the others find warm.
    println!("  warm-up storm ({} exits, not counted)", exits / 10);
    storm::run(target, exits / 10)?;
    let baseline = bpftrace::available();
    if !baseline {
        println!("  bpftrace not installed: no count-only baseline (C) runs");
    }
    let mut out = ExitStorm {
        a: Vec::new(),
        b: Vec::new(),
        c: Vec::new(),
        agent: Vec::new(),
        programs: BTreeMap::new(),
    };
    for round in 1..=rounds {
        wait_for_quiet(None, &mut wait_budget)?;
        let a = measured_storm(target, exits, None)?;
        print_run(&format!("round {round}/{rounds} A (no agent)"), &a, None);
        out.a.push(a);
        let agent = AgentProc::start(bin)?;
        wait_for_quiet(Some(agent.pid()), &mut wait_budget)?;
        let (b, window, programs) = run_with_agent(&agent, target, exits)?;
        drop(agent);
        print_run(
            &format!("round {round}/{rounds} B (agent)   "),
            &b,
            Some(&window),
        );
        out.b.push(b);
        out.agent.push(window);
        for (name, stats) in programs {
            out.programs.entry(name).or_default().add(stats);
        }
        if baseline {
            let counter = bpftrace::CountOnly::start()?;
            wait_for_quiet(Some(counter.pid()), &mut wait_budget)?;
            let c = measured_storm(target, exits, Some(counter.pid()))?;
            drop(counter);
            print_run(&format!("round {round}/{rounds} C (bpftrace)"), &c, None);
            out.c.push(c);
        }
    }
    Ok(out)
}

fn print_run(label: &str, run: &Run, agent: Option<&AgentWindow>) {
    let s = &run.storm;
    let mut line = format!(
        "  {label}: cpu {:.3} s  wall {:.3} s  {:>6.0} exits/s  irq_work {:>7}  host busy {:.2} s (steal {:.2} s)",
        s.cpu_s(),
        s.wall_s,
        s.exits_per_s(),
        run.irqs.irq_work,
        run.host.busy_s,
        run.host.steal_s,
    );
    if let Some(w) = agent {
        line += &format!(
            "\n      agent: cpu {:.2} s, {} events ({} exit), {} lost, {} wake-ups",
            w.cpu_s, w.events, w.exit_events, w.lost, w.wakeups
        );
    }
    if !run.foreign.is_empty() {
        line += &format!(
            "\n      NOTE: other processes had probes on the same tracepoints: {}",
            run.foreign.join(", ")
        );
    }
    println!("{line}");
}

/// Waits, within what is left of `budget`, until no other process holds probes on the
/// agent's tracepoints.
fn wait_for_quiet(own: Option<u32>, budget: &mut Duration) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    while !foreign_probes(own).is_empty() && start.elapsed() < *budget {
        if !told {
            println!(
                "  waiting (at most {:.0} s) for other processes' probes on the same tracepoints to go: {}",
                budget.as_secs_f64(),
                foreign_probes(own).join(", ")
            );
            told = true;
        }
        sleep_checked(Duration::from_millis(500))?;
    }
    *budget = budget.saturating_sub(start.elapsed());
    Ok(())
}

fn measured_storm(target: &Target, exits: u64, own: Option<u32>) -> Result<Run> {
    let mut foreign = foreign_probes(own);
    let irqs_before = Interrupts::read()?;
    let host_before = HostCpu::read()?;
    let storm = storm::run(target, exits)?;
    let host = HostCpu::read()?.since(host_before);
    let irqs = Interrupts::read()?.since(irqs_before);
    for p in foreign_probes(own) {
        if !foreign.contains(&p) {
            foreign.push(p);
        }
    }
    Ok(Run {
        storm,
        irqs,
        host,
        foreign,
    })
}

type BRun = (Run, AgentWindow, BTreeMap<String, RunStats>);

fn run_with_agent(agent: &AgentProc, target: &Target, exits: u64) -> Result<BRun> {
    // The agent exports the kernel's run statistics once a second: after this wait the
    // "before" values are at most a second old, and only idle host activity happened in it.
    sleep_checked(Duration::from_millis(1200))?;
    let before = agent.snapshot()?;
    let wakeups_before = agent.voluntary_switches()?;
    let result = measured_storm(target, exits, Some(agent.pid()))?;
    // Past the next once-a-second export of lost counts and run statistics.
    sleep_checked(Duration::from_millis(1500))?;
    agent.wait_drained()?;
    let after: Snapshot = agent.snapshot()?;
    let window = AgentWindow {
        cpu_s: after.cpu_s - before.cpu_s,
        on_cpu_s: after.on_cpu_s - before.on_cpu_s,
        events: after.events - before.events,
        exit_events: after.exit_events - before.exit_events,
        lost: after.lost - before.lost,
        wakeups: agent.voluntary_switches()?.saturating_sub(wakeups_before),
    };
    Ok((result, window, after.programs_since(&before)))
}

/// A diagnostic B run in which the agent is stopped (SIGSTOP) for the storm: its ring
/// fills after a few thousand records and the rest are dropped, so the kernel programs run
/// without ever waking a reader. Comparing their run time with the B runs' separates what
/// the programs cost from what waking the agent costs. Its lost events are expected and
/// are not part of the B figures.
pub struct PausedReader {
    pub run: Run,
    pub written: f64,
    pub lost: f64,
    /// The agent's time on CPU (schedstat) over the window: mostly draining the full ring
    /// at once, which takes less than one 10 ms tick of `stat`.
    pub agent_on_cpu_s: f64,
    pub programs: BTreeMap<String, RunStats>,
}

pub fn paused_reader(bin: &Path, target: &Target, exits: u64) -> Result<PausedReader> {
    let agent = AgentProc::start(bin)?;
    sleep_checked(Duration::from_millis(1200))?;
    let before = agent.snapshot()?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.pid())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let run = measured_storm(target, exits, Some(agent.pid()));
    // Resumed whatever the storm did: a stopped agent would not stop on SIGTERM either.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let run = run?;
    sleep_checked(Duration::from_millis(1500))?;
    agent.wait_drained()?;
    let after = agent.snapshot()?;
    Ok(PausedReader {
        run,
        written: after.events - before.events,
        lost: after.lost - before.lost,
        agent_on_cpu_s: after.on_cpu_s - before.on_cpu_s,
        programs: after.programs_since(&before),
    })
}
