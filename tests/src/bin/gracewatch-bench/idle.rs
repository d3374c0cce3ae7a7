//! Idle cost: the agent's CPU time while nothing happens, on a host with at least
//! [`CGROUPS`] cgroups (empty ones are added under a directory of the bench's own, and
//! removed after). The agent learns cgroups from the kernel as they come and go, so an
//! idle host should cost it next to nothing, however many cgroups it has.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gracewatch_tests::runc::cgroup_v2_mount;

use crate::agent_proc::AgentProc;
use crate::sys::sleep_checked;

/// Cgroups the host has during the measurement, at least.
pub const CGROUPS: usize = 1000;
/// How long the idle agent is watched.
pub const WINDOW: Duration = Duration::from_secs(30);

pub struct Idle {
    pub cgroups: usize,
    pub window_s: f64,
    pub agent_cpu_s: f64,
}

impl Idle {
    /// Share of one core, in percent.
    pub fn core_percent(&self) -> f64 {
        self.agent_cpu_s / self.window_s * 100.0
    }
}

/// Empty cgroups the bench made; removed when dropped.
struct ExtraCgroups {
    dir: PathBuf,
    made: Vec<PathBuf>,
}

impl Drop for ExtraCgroups {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn count_cgroups(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += 1;
                stack.push(e.path());
            }
        }
    }
    n
}

pub fn run(bin: &std::path::Path) -> Result<Idle> {
    let root = cgroup_v2_mount()?;
    let mut extra = ExtraCgroups {
        dir: root.join("gracewatch-bench-idle"),
        made: Vec::new(),
    };
    let have = count_cgroups(&root);
    if have < CGROUPS {
        std::fs::create_dir_all(&extra.dir)
            .with_context(|| format!("creating {}", extra.dir.display()))?;
        for i in 0..CGROUPS - have {
            let d = extra.dir.join(format!("c{i}"));
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            extra.made.push(d);
        }
    }
    let cgroups = count_cgroups(&root);
    let agent = AgentProc::start(bin)?;
    // Start-up (the first walk) is not idle time.
    sleep_checked(Duration::from_secs(2))?;
    let before = agent.on_cpu_seconds()?;
    let started = Instant::now();
    sleep_checked(WINDOW)?;
    let agent_cpu_s = agent.on_cpu_seconds()? - before;
    let window_s = started.elapsed().as_secs_f64();
    drop(agent);
    drop(extra);
    Ok(Idle {
        cgroups,
        window_s,
        agent_cpu_s,
    })
}
