//! What else happens on the host while a storm runs, read from `/proc`: interrupt counts
//! (the cost of waking a ring-buffer reader shows there), CPU time used by everything
//! (so other load on a shared machine is visible), and BPF programs that other processes
//! attached to the agent's tracepoints (another agent makes an A run a B run).

use std::fs;

use anyhow::{Context, Result};

/// Host-wide interrupt counts, summed over CPUs: `IWI` (irq_work, which a ring-buffer
/// submit raises to wake a reader), `RES` (rescheduling IPIs, cross-CPU wake-ups) and
/// `CAL` (function-call IPIs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Interrupts {
    pub irq_work: u64,
    pub resched: u64,
    pub call: u64,
}

impl Interrupts {
    pub fn read() -> Result<Interrupts> {
        let text = fs::read_to_string("/proc/interrupts").context("reading /proc/interrupts")?;
        let cpus = text
            .lines()
            .next()
            .map(|l| l.split_whitespace().count())
            .unwrap_or(0);
        let sum = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(name)?.strip_prefix(':'))
                .map(|rest| {
                    rest.split_whitespace()
                        .take(cpus)
                        .filter_map(|n| n.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0)
        };
        Ok(Interrupts {
            irq_work: sum("IWI"),
            resched: sum("RES"),
            call: sum("CAL"),
        })
    }

    pub fn since(self, before: Interrupts) -> Interrupts {
        Interrupts {
            irq_work: self.irq_work.saturating_sub(before.irq_work),
            resched: self.resched.saturating_sub(before.resched),
            call: self.call.saturating_sub(before.call),
        }
    }
}

/// CPU time of the whole host from the `cpu` line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCpu {
    /// Everything but idle and iowait, all CPUs together.
    pub busy_s: f64,
    /// Time the hypervisor ran something else while a vCPU wanted to run.
    pub steal_s: f64,
}

impl HostCpu {
    pub fn read() -> Result<HostCpu> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let ticks: Vec<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")?;
        Ok(HostCpu {
            busy_s: busy as f64 / hz as f64,
            steal_s: field(7) as f64 / hz as f64,
        })
    }

    pub fn since(self, before: HostCpu) -> HostCpu {
        HostCpu {
            busy_s: self.busy_s - before.busy_s,
            steal_s: self.steal_s - before.steal_s,
        }
    }
}

/// The tracepoints the agent attaches to.
const AGENT_TRACEPOINTS: [&str; 4] = [
    "signal_generate",
    "signal_deliver",
    "sched_process_exit",
    "sched_process_exec",
];

/// Processes other than `own` holding a BPF raw-tracepoint link on one of the agent's
/// tracepoints (from `/proc/*/fdinfo`), as "pid (comm)". Their programs run on every
/// exit and signal of the storm too. Links pinned in bpffs with no process holding them
/// are not seen.
pub fn foreign_probes(own: Option<u32>) -> Vec<String> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if Some(pid) == own || pid == std::process::id() {
            continue;
        }
        if holds_agent_link(pid) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", comm.trim()));
        }
    }
    found
}

fn holds_agent_link(pid: u32) -> bool {
    // Processes come and go while this runs: an unreadable one holds nothing we can see.
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        let is_link = fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link");
        if !is_link {
            return false;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        field("link_type") == Some("raw_tracepoint")
            && field("tp_name").is_some_and(|tp| AGENT_TRACEPOINTS.contains(&tp))
    })
}
