//! The agent under test: the real `gracewatch run --standalone` binary, started with the
//! default ring size, and what the bench reads from it: its CPU time from
//! `/proc/<pid>/stat` and its counters and gauges from `/metrics`.
//!
//! The test harness's `Agent` does not expose the child's pid, which the CPU figure
//! needs, so this keeps its own small launcher and reuses the harness's HTTP reader.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gracewatch_tests::agent::{get, Metrics};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sysconf, Pid, SysconfVar};

use crate::sys::check_interrupted;

/// The agent binary: `GRACEWATCH_BIN`, else the release build `cargo xtask bench` makes
/// (`$CARGO_TARGET_DIR` or `<workspace>/target`, then `release/gracewatch`).
pub fn binary() -> PathBuf {
    gracewatch_tests::agent::binary_of("release")
}

/// A running agent; SIGTERM (then SIGKILL after 5 s) when dropped.
pub struct AgentProc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl AgentProc {
    pub fn start(bin: &Path) -> Result<AgentProc> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::env::temp_dir().join(format!("gracewatch-bench-agent-{}.log", addr.port()));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(["run", "--standalone", "--listen", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = AgentProc { child, addr, log };
        agent.wait_ready(Duration::from_secs(30))?;
        Ok(agent)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if matches!(get(self.addr, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready after {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// utime + stime of the whole agent process (every thread, live or gone), in seconds;
    /// the kernel counts it in clock ticks, so the resolution is 1/CLK_TCK (10 ms).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the comm, which may hold spaces: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("bad {path}: {stat}"))
        };
        let ticks = tick(11)? + tick(12)?;
        let hz = sysconf(SysconfVar::CLK_TCK)?.context("CLK_TCK")?;
        Ok(ticks as f64 / hz as f64)
    }

    /// Time on CPU of the agent's live threads, in seconds, from `/proc/<pid>/task/*/schedstat`
    /// (nanoseconds, unlike the 10 ms ticks of `stat`); a thread that ended is missing.
    pub fn on_cpu_seconds(&self) -> Result<f64> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut ns = 0u64;
        for task in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            let Ok(stat) = fs::read_to_string(task?.path().join("schedstat")) else {
                continue;
            };
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(ns as f64 / 1e9)
    }

    /// Voluntary context switches summed over the agent's live threads.
    pub fn voluntary_switches(&self) -> Result<u64> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut total = 0;
        for task in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            // A thread may end between the listing and the read; it no longer counts.
            let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Everything the bench reads at one instant.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let cpu_s = self.cpu_seconds()?;
        let on_cpu_s = self.on_cpu_seconds()?;
        let (status, body) = get(self.addr, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Snapshot::parse(cpu_s, on_cpu_s, &Metrics(body)))
    }

    /// Waits until the agent has handled everything the kernel handed it: its received
    /// counter stops moving (two reads 250 ms apart agree).
    pub fn wait_drained(&self) -> Result<()> {
        let mut last = self.snapshot()?.events;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            crate::sys::sleep_checked(Duration::from_millis(250))?;
            let now = self.snapshot()?.events;
            if now == last {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent was still receiving events after 15 s");
            }
            last = now;
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = fs::remove_file(&self.log);
                return;
            }
            sleep(Duration::from_millis(20));
        }
        eprintln!("gracewatch-bench: the agent ignored SIGTERM for 5 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// The kernel's run statistics of one BPF program, as the agent exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    pub runs: f64,
    pub ns: f64,
}

impl RunStats {
    pub fn since(self, before: RunStats) -> RunStats {
        RunStats {
            runs: self.runs - before.runs,
            ns: self.ns - before.ns,
        }
    }

    pub fn add(&mut self, other: RunStats) {
        self.runs += other.runs;
        self.ns += other.ns;
    }

    pub fn ns_per_run(self) -> Option<f64> {
        (self.runs > 0.0).then(|| self.ns / self.runs)
    }
}

/// The agent's CPU time and the counters the bench needs, at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// utime + stime (10 ms resolution).
    pub cpu_s: f64,
    /// Sum of the live threads' schedstat run time (ns resolution).
    pub on_cpu_s: f64,
    /// Records received, all kinds.
    pub events: f64,
    pub exit_events: f64,
    pub signal_generate_events: f64,
    /// Records lost because the ring was full, all kinds.
    pub lost: f64,
    pub signal_generate_lost: f64,
    /// By program name.
    pub programs: BTreeMap<String, RunStats>,
}

const EVENTS: &str = "gracewatch_bpf_events_total";
const LOST: &str = "gracewatch_bpf_events_lost_total";
const RUNS: &str = "gracewatch_bpf_program_runs";
const RUN_SECONDS: &str = "gracewatch_bpf_program_run_seconds";

impl Snapshot {
    fn parse(cpu_s: f64, on_cpu_s: f64, m: &Metrics) -> Snapshot {
        let mut programs = BTreeMap::<String, RunStats>::new();
        for line in m.0.lines() {
            for (metric, is_seconds) in [(RUNS, false), (RUN_SECONDS, true)] {
                let Some(rest) = line.strip_prefix(metric) else {
                    continue;
                };
                let Some((labels, value)) = rest.rsplit_once(' ') else {
                    continue;
                };
                let (Some(name), Ok(value)) = (
                    labels
                        .strip_prefix("{program=\"")
                        .and_then(|l| l.strip_suffix("\"}")),
                    value.parse::<f64>(),
                ) else {
                    continue;
                };
                let entry = programs.entry(name.to_owned()).or_default();
                if is_seconds {
                    entry.ns = value * 1e9;
                } else {
                    entry.runs = value;
                }
            }
        }
        Snapshot {
            cpu_s,
            on_cpu_s,
            events: m.sum(EVENTS, &[]),
            exit_events: m.sum(EVENTS, &["kind=\"exit\""]),
            signal_generate_events: m.sum(EVENTS, &["kind=\"signal_generate\""]),
            lost: m.sum(LOST, &[]),
            signal_generate_lost: m.sum(LOST, &["kind=\"signal_generate\""]),
            programs,
        }
    }

    /// Per-program run statistics accumulated between `before` and `self`.
    pub fn programs_since(&self, before: &Snapshot) -> BTreeMap<String, RunStats> {
        self.programs
            .iter()
            .map(|(name, now)| {
                let then = before.programs.get(name).copied().unwrap_or_default();
                (name.clone(), now.since(then))
            })
            .collect()
    }
}
