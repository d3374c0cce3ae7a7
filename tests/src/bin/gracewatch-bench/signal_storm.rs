//! Measurement 3: the highest rate of SIGUSR1 to a container's PID 1 that the agent
//! takes with zero lost events at its default ring size.
//!
//! The sender is this process calling kill(2) on the container's PID 1 (host pid), paced
//! in batches against the monotonic clock: every ~200 µs it sends as many signals as the
//! target rate says are due by now. The last step is unpaced. After each step the bench
//! waits past the agent's once-a-second export of the lost counters before reading them.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent_proc::{AgentProc, RunStats};
use crate::host::foreign_probes;
use crate::sys::{check_interrupted, sleep_checked};

/// Target rates in signals per second; `None` is as fast as one sender can go.
pub const RATES: [Option<u64>; 6] = [
    Some(10_000),
    Some(25_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    None,
];
pub const STEP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Step {
    pub target_rate: Option<u64>,
    pub sent: u64,
    pub secs: f64,
    /// signal_generate records the agent received during the step.
    pub received: f64,
    /// signal_generate records lost during the step.
    pub lost: f64,
    /// Other processes with probes on the agent's tracepoints, at the start or the end:
    /// their programs slow every kill(2) down too.
    pub foreign: Vec<String>,
}

impl Step {
    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

pub struct SignalStorm {
    pub steps: Vec<Step>,
    /// Over all steps, by program.
    pub programs: BTreeMap<String, RunStats>,
}

impl SignalStorm {
    /// The highest achieved rate of a step that lost nothing.
    pub fn max_lossless_rate(&self) -> Option<f64> {
        self.steps
            .iter()
            .filter(|s| s.lost == 0.0)
            .map(Step::achieved_rate)
            .max_by(f64::total_cmp)
    }
}

pub fn run(bin: &Path, init_pid: u32) -> Result<SignalStorm> {
    let agent = AgentProc::start(bin)?;
    sleep_checked(Duration::from_millis(1200))?;
    let pid = Pid::from_raw(i32::try_from(init_pid).context("pid")?);
    let first = agent.snapshot()?;
    let mut before = first.clone();
    let mut steps = Vec::new();
    for target_rate in RATES {
        let mut foreign = foreign_probes(Some(agent.pid()));
        let (sent, secs) = send(pid, target_rate, STEP)?;
        for p in foreign_probes(Some(agent.pid())) {
            if !foreign.contains(&p) {
                foreign.push(p);
            }
        }
        sleep_checked(Duration::from_millis(1600))?;
        agent.wait_drained()?;
        let after = agent.snapshot()?;
        let step = Step {
            target_rate,
            sent,
            secs,
            received: after.signal_generate_events - before.signal_generate_events,
            lost: after.signal_generate_lost - before.signal_generate_lost,
            foreign,
        };
        println!(
            "  {:>9}: sent {:>8} in {:.2} s = {:>9.0}/s, received {:>8}, lost {:>8}",
            rate_label(target_rate),
            step.sent,
            step.secs,
            step.achieved_rate(),
            step.received,
            step.lost
        );
        if !step.foreign.is_empty() {
            println!(
                "      NOTE: other processes had probes on the same tracepoints: {}",
                step.foreign.join(", ")
            );
        }
        steps.push(step);
        before = after;
    }
    Ok(SignalStorm {
        steps,
        programs: before.programs_since(&first),
    })
}

pub fn rate_label(rate: Option<u64>) -> String {
    match rate {
        Some(r) => format!("{}k/s", r / 1000),
        None => "unpaced".to_owned(),
    }
}

/// Sends SIGUSR1 to `pid` at `rate` for `duration`: (signals sent, seconds taken).
fn send(pid: Pid, rate: Option<u64>, duration: Duration) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = match rate {
            Some(rate) => (elapsed.as_secs_f64() * rate as f64) as u64,
            None => sent + 4096,
        };
        while sent < due {
            kill(pid, Signal::SIGUSR1).context("kill(SIGUSR1) to the container's PID 1")?;
            sent += 1;
        }
        check_interrupted()?;
        if rate.is_some() {
            sleep(Duration::from_micros(200));
        }
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}
