//! The host state the bench changes and must give back, and how it stops: the
//! `kernel.bpf_stats_enabled` sysctl (restored by a guard), and Ctrl-C / SIGTERM / SIGHUP,
//! which become an error at the next check so that every guard (agent, container,
//! sysctl) runs its `Drop` on the way out.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag that [`check_interrupted`] reports.
pub fn install_stop_handler() -> Result<()> {
    // No SA_RESTART: a sleep or wait in progress returns early, so the stop is prompt.
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

/// Fails once a stop signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up and stopping");
    }
    Ok(())
}

/// A sleep that a stop signal cuts short (with an error).
pub fn sleep_checked(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// A sysctl set for the lifetime of the guard; the old value is written back on drop,
/// whatever happened in between.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// `name` in dotted form, e.g. `kernel.bpf_stats_enabled`.
    pub fn set(name: &str, value: &str) -> Result<Sysctl> {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let old = fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        let guard = Sysctl { path, old };
        fs::write(&guard.path, value)
            .with_context(|| format!("writing {value} to {}", guard.path.display()))?;
        Ok(guard)
    }

    pub fn old(&self) -> &str {
        &self.old
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = fs::write(&self.path, &self.old) {
            eprintln!(
                "gracewatch-bench: could not restore {} to {}: {err}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// What the report says about the machine: online CPUs, kernel release, load average.
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let nproc = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine { nproc, kernel }
    }
}

/// The 1-minute load average: other work on the machine skews every figure, so the
/// report shows it before and after.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.split_whitespace().take(3).collect();
            (f.len() == 3).then(|| f.join(" "))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
