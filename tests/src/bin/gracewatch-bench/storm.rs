//! The exit storm: a process that joins a runc container's cgroups and PID namespace the
//! way `runc exec` does (without its mount namespace, so this binary stays reachable), then
//! creates and reaps short-lived children as fast as it can.
//!
//! It is this binary re-executed with the hidden subcommand [`SUBCOMMAND`], so that it
//! starts single-threaded (it forks) and its CPU time is its own. The storm is two
//! processes:
//! - the *driver*, in the host PID namespace and the bench's cgroup: it enters the
//!   container's PID namespace for its children only (`setns`), forks the *looper*, waits
//!   for it, and prints one JSON line with the looper's CPU time (user + system, its own
//!   and its children's, from `getrusage(RUSAGE_CHILDREN)`) and wall time;
//! - the *looper*, in the container's PID namespace (level 1) and cgroups: `count` times,
//!   a `clone(CLONE_VM | CLONE_VFORK)` child that calls `_exit(0)` at once, reaped with
//!   `waitpid`. That is what `vfork(); _exit(0)` does, without Rust having to survive a
//!   function that returns twice.
//!
//! Exits the agent can see: `count` children plus the looper itself. The looper may be
//! pinned to one CPU (see `default_storm_cpu` in `main.rs` for why).
//!
//! Why join a real runc container rather than a cgroup made by hand plus
//! `unshare(CLONE_NEWPID)`: its cgroups exist in every hierarchy just as runc makes them
//! for kubelet, the test harness removes them with the container (on drop, or with
//! `sweep_stale` after a crash), so the bench creates no cgroup of its own to clean up,
//! and the agent attributes the storm to a real container, as it would on a node.

use std::ffi::c_void;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::Signal;
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::sys::check_interrupted;

/// The hidden first argument that makes this binary a storm driver.
pub const SUBCOMMAND: &str = "__exit-storm";

/// What one storm did and cost.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct StormResult {
    /// Processes that exited inside the container: the children and the looper.
    pub exits: u64,
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
}

impl StormResult {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn exits_per_s(&self) -> f64 {
        self.exits as f64 / self.wall_s
    }
}

/// Where a storm runs.
pub struct Target<'a> {
    /// Host pid of the container's PID 1: the storm joins its PID namespace.
    pub init_pid: u32,
    /// The container's cgroup directories, in every hierarchy.
    pub cgroup_dirs: &'a [PathBuf],
    /// The CPU the looper and its children are pinned to, if any.
    pub cpu: Option<usize>,
}

/// Runs one storm of `count` exits in `target`.
pub fn run(target: &Target, count: u64) -> Result<StormResult> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let cpu = target.cpu.map_or_else(|| "-".to_owned(), |c| c.to_string());
    let mut child = Command::new(&exe)
        .arg(SUBCOMMAND)
        .arg(target.init_pid.to_string())
        .arg(count.to_string())
        .arg(cpu)
        .args(target.cgroup_dirs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the storm ({})", exe.display()))?;
    // Polled rather than blocked on, so a stop signal to the bench alone ends the storm.
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if let Err(err) = check_interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    // A Ctrl-C reaches the storm too (same process group): say so rather than "failed".
    check_interrupted()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the storm failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("the storm printed {stdout:?}, not its result"))
}

/// Entry point of the driver: `SUBCOMMAND <init pid> <count> <cpu or -> <cgroup dir>...`.
pub fn driver_main(args: &[String]) -> Result<()> {
    let [init_pid, count, cpu, dirs @ ..] = args else {
        bail!("usage: {SUBCOMMAND} <container init pid> <exits> <cpu or -> <cgroup dir>...");
    };
    let count: u64 = count.parse().context("exit count")?;
    let cpu: Option<usize> = match cpu.as_str() {
        "-" => None,
        n => Some(n.parse().context("cpu")?),
    };
    let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
    let ns_path = format!("/proc/{init_pid}/ns/pid");
    let ns = File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
    // SAFETY: setns on an open namespace fd; for CLONE_NEWPID it only changes the PID
    // namespace this process's future children are born in.
    Errno::result(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) })
        .with_context(|| format!("setns({ns_path})"))?;
    drop(ns);
    let start = Instant::now();
    // SAFETY: this process is single-threaded (a fresh exec that started no threads), so
    // the child may do anything the parent could.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = match looper(&dirs, cpu, count) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("storm looper: {err:#}");
                    1
                }
            };
            // SAFETY: ends the looper without running the driver's exit handlers twice.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).context("waiting for the looper")?;
            let wall_s = start.elapsed().as_secs_f64();
            if status != WaitStatus::Exited(child, 0) {
                bail!("the storm looper ended with {status:?}");
            }
            let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
            let result = StormResult {
                exits: count + 1,
                user_s: seconds(usage.user_time()),
                sys_s: seconds(usage.system_time()),
                wall_s,
            };
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
    }
}

fn seconds(t: TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// Pins this process (and so the children it creates) to one CPU.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("cpu {cpu} is out of range");
    }
    // SAFETY: CPU_SET writes one bit inside `set`; `cpu` was checked against its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t of the size passed, for this process (pid 0).
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    Errno::result(rc).with_context(|| format!("pinning the storm to CPU {cpu}"))?;
    Ok(())
}

const STACK_BYTES: usize = 64 * 1024;

extern "C" fn exit_at_once(_: *mut c_void) -> libc::c_int {
    // SAFETY: _exit touches nothing the parent shares (no atexit handlers, no buffers).
    unsafe { libc::_exit(0) }
}

fn looper(cgroup_dirs: &[PathBuf], cpu: Option<usize>, count: u64) -> Result<()> {
    // If the driver is killed, the looper (now in another PID namespace) must not go on.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    for dir in cgroup_dirs {
        let procs = dir.join("cgroup.procs");
        // "0" means the writing process, in v1 and v2 alike.
        fs::write(&procs, "0").with_context(|| format!("joining {}", procs.display()))?;
    }
    // One stack, reused: CLONE_VFORK keeps this process stopped until the child is gone.
    let mut stack = vec![0u8; STACK_BYTES];
    let top = stack.as_mut_ptr().wrapping_add(STACK_BYTES);
    let top = top.wrapping_sub(top as usize % 16).cast::<c_void>();
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    for _ in 0..count {
        // SAFETY: the child runs only `exit_at_once` on its own stack, which nothing else
        // uses while it lives, and the parent resumes only after it has exited.
        let pid = unsafe { libc::clone(exit_at_once, top, flags, std::ptr::null_mut()) };
        let pid = Errno::result(pid).context("clone(CLONE_VM | CLONE_VFORK)")?;
        waitpid(Pid::from_raw(pid), None).context("waitpid")?;
    }
    drop(stack);
    Ok(())
}
