//! The baseline the exit storm is compared with in the same run: a bpftrace script that
//! only counts exits per cgroup in the kernel (one map update per exit, nothing sent to
//! user space). Whatever Gracewatch costs beyond it is what it pays for sending a record
//! of every container exit to user space. Skipped when `bpftrace` is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::sys::sleep_checked;

/// Counts exits per cgroup, in the kernel only.
pub const SCRIPT: &str = "tracepoint:sched:sched_process_exit { @exits[cgroup] = count(); }";

/// A running count-only bpftrace; stopped (SIGINT, then SIGKILL) on drop, and tracefs
/// unmounted again if it had to be mounted for it.
pub struct CountOnly {
    child: Child,
    _tracefs: Tracefs,
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// bpftrace reads a tracepoint's format from tracefs, which not every host mounts (the
/// agent's raw tracepoints do not need it). Mounted for the baseline if missing, and
/// unmounted on drop.
struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    fn ensure() -> Result<Tracefs> {
        if std::path::Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Tracefs {
                mounted_here: false,
            });
        }
        nix::mount::mount(
            Some("tracefs"),
            TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting tracefs at {TRACEFS} for bpftrace"))?;
        Ok(Tracefs { mounted_here: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            if let Err(e) = nix::mount::umount(TRACEFS) {
                eprintln!("could not unmount {TRACEFS}: {e}");
            }
        }
    }
}

/// Whether `bpftrace` is on the PATH.
pub fn available() -> bool {
    Command::new("bpftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl CountOnly {
    /// Starts the script and waits until its probe is attached.
    pub fn start() -> Result<CountOnly> {
        let tracefs = Tracefs::ensure()?;
        let mut child = Command::new("bpftrace")
            // Line-buffered: its "Attaching" line must arrive through the pipe.
            .args(["-B", "line", "-e", SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let stdout = child.stdout.take().context("bpftrace stdout")?;
        let (tx, rx) = mpsc::channel();
        // bpftrace prints "Attaching 1 probe..." once the program is loaded and attached.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Attaching") {
                    let _ = tx.send(());
                }
            }
        });
        let counter = CountOnly {
            child,
            _tracefs: tracefs,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!("bpftrace did not attach its probe within 30 s");
        }
        // "Attaching" comes just before the attach itself.
        sleep_checked(Duration::from_millis(500))?;
        Ok(counter)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CountOnly {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
