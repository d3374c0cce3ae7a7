//! A private containerd 1.6 with its CRI plugin, the runtime kubelet talks to, started
//! and removed by the harness.
//!
//! Each [`Containerd`] owns one run directory, `RUNS_DIR/<owner-pid>-<owner-start>-<n>/`:
//! `config.toml`, `containerd.log`, `containerd.pid`, the socket (`containerd.sock`,
//! plus `.ttrpc`), the daemon's `root/` and `state/`, runc's root `runc/` (shims use
//! `runc/k8s.io`), empty CNI directories, `pods/` (container logs, as kubelet's
//! `/var/log/pods`), `images.tar` and `pod-cgroups` (each pod cgroup a sandbox was put
//! under, one per line: containerd leaves them, kubelet removes them).
//!
//! Images come from Debian's static busybox, imported with `ctr` (no registry); pods use
//! the node's network namespace (no CNI) and the cgroupfs driver, so containers land at
//! `/kubepods/<qos>/pod<uid>/<64-hex id>`. Pod cgroups and their new parents are marked
//! and locked with the runc harness's protocol (`runc::cgroups`), so the two never remove
//! a directory the other is about to use.
//!
//! Dropping a [`Containerd`] stops and removes every sandbox through CRI, stops the
//! daemon by its pid, then removes what is left (module `leftovers`). [`sweep_stale`]
//! does the same for runs whose owner process is gone; [`Containerd::start`] calls it.

mod client;
mod config;
mod image;
mod leftovers;
mod network;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::PodSandboxConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use client::{Cri, Status};

use crate::runc::{cgroups, state};

/// Where run directories live (under the runc harness's `STATE_DIR`, whose lock file
/// guards the cgroup directories both harnesses create).
pub const RUNS_DIR: &str = "/run/gracewatch-test/containerd";
/// The image every pod container runs (busybox; `sh -c <script>`).
pub const APP_IMAGE: &str = "localhost/gracewatch/busybox:test";
/// The CRI plugin's `sandbox_image`: the same busybox, sleeping.
pub const PAUSE_IMAGE: &str = "localhost/gracewatch/pause:test";

/// Present while `/run/containerd` exists only because a harness run made it (shims
/// create `/run/containerd/s` whatever the daemon's state directory is).
const RUN_CONTAINERD_MARKER: &str = "made-run-containerd";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The paths of one run directory.
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    fn cni(&self) -> PathBuf {
        self.dir.join("cni")
    }
    fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
    fn pod_cgroups(&self) -> PathBuf {
        self.dir.join("pod-cgroups")
    }
    fn pods(&self) -> PathBuf {
        self.dir.join("pods")
    }
    fn images(&self) -> PathBuf {
        self.dir.join("images.tar")
    }
}

/// A running private containerd; dropping it removes it and everything it made.
pub struct Containerd {
    layout: Layout,
    child: Option<Child>,
    cri: Option<Cri>,
}

impl Containerd {
    /// Sweeps stale runs, starts the daemon, waits until its CRI service answers and
    /// imports the images.
    pub fn start() -> Result<Containerd> {
        sweep_stale()?;
        static RUN: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}",
            state::owner_tag()?,
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let layout = Layout {
            dir: Path::new(RUNS_DIR).join(name),
        };
        for dir in [
            layout.root(),
            layout.state(),
            layout.runc_root(),
            layout.cni().join("bin"),
            layout.cni().join("conf"),
            layout.pods(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if !Path::new("/run/containerd").exists() {
            File::create(Path::new(RUNS_DIR).join(RUN_CONTAINERD_MARKER))?;
        }
        // From here on, Drop removes whatever the rest of start manages to create.
        let mut daemon = Containerd {
            layout,
            child: None,
            cri: None,
        };
        daemon.launch()?;
        Ok(daemon)
    }

    fn launch(&mut self) -> Result<()> {
        let layout = &self.layout;
        fs::write(layout.config(), config::render(layout))?;
        network::install(layout)?;
        image::write_archive(&layout.images())?;
        let log = File::create(layout.log())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(layout.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd, or cargo xtask setup)")?;
        fs::write(layout.pid_file(), child.id().to_string())?;
        self.child = Some(child);
        self.cri = Some(self.wait_ready()?);
        image::import(&self.layout.socket(), &self.layout.images())?;
        self.wait_images()
    }

    /// Until the socket accepts and the CRI plugin answers `Version` (it refuses every
    /// call until it has initialised).
    fn wait_ready(&mut self) -> Result<Cri> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited with {status}:\n{}", self.log_tail());
                }
            }
            let last = match Cri::connect(&self.layout.socket()) {
                Ok(cri) => match cri.version() {
                    Ok(_) => return Ok(cri),
                    Err(err) => err,
                },
                Err(err) => err,
            };
            if Instant::now() > deadline {
                bail!(
                    "containerd's CRI service not ready after {READY_TIMEOUT:?}: {last:#}\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The CRI plugin learns of imported images from containerd's events, a moment later.
    fn wait_images(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for image in [APP_IMAGE, PAUSE_IMAGE] {
            while !self.cri()?.image_present(image)? {
                if Instant::now() > deadline {
                    bail!("the CRI plugin never listed {image}:\n{}", self.log_tail());
                }
                sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The CRI connection.
    pub fn cri(&self) -> Result<&Cri> {
        self.cri.as_ref().context("containerd is not running")
    }

    /// The daemon's socket, for `ctr --address`.
    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    /// The pod's log directory (kubelet's `/var/log/pods/<ns>_<name>_<uid>`), created.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> Result<PathBuf> {
        let dir = self.layout.pods().join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// `RunPodSandbox`, with the pod cgroup (`linux.cgroup_parent`, which must be under
    /// `/kubepods/`) recorded for cleanup and its new parents marked as the harness's.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        if !parent.starts_with("/kubepods/") || parent.contains("..") {
            bail!("pod cgroup {parent:?} is not under /kubepods/");
        }
        let mut recorded = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.layout.pod_cgroups())?;
        writeln!(recorded, "{parent}")?;
        let _creating = cgroups::CgroupLock::shared()?;
        cgroups::mark_new_ancestors(&format!("{parent}/sandbox"))?;
        self.cri()?.run_pod_sandbox(config)
    }

    /// The address a pod whose sandbox gets a network namespace of its own is given there
    /// (`<a.b.c>.2`; the host end is `<a.b.c>.1`), set before `RunPodSandbox`.
    pub fn assign_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<()> {
        network::assign(&self.layout, namespace, name, ip)
    }

    /// What kubelet does once a pod's sandbox is gone: removes the pod cgroup
    /// (`/kubepods/<qos>/pod<uid>`) from every hierarchy, and the parents the harness made.
    pub fn remove_pod_cgroup(&self, parent: &str) -> Result<()> {
        leftovers::remove_pod_cgroup(parent)
    }

    /// The end of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = state::read_lossy(&self.layout.log());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Sandboxes through CRI (which stops and removes their containers), the daemon by
    /// its pid, then whatever is left; every failure is reported.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(cri) = self.cri.take() {
            match cri.list_pod_sandboxes() {
                Ok(ids) => {
                    for id in ids {
                        let stopped = cri.stop_pod_sandbox(&id);
                        if let Err(err) = stopped.and_then(|()| cri.remove_pod_sandbox(&id)) {
                            problems.push(format!("{err:#}"));
                        }
                    }
                }
                Err(err) => problems.push(format!("{err:#}")),
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Err(err) = stop_child(&mut child) {
                problems.push(format!("{err:#}"));
            }
        }
        problems.extend(leftovers::remove_all(&self.layout));
        if other_runs(&self.layout.dir).is_empty() {
            leftovers::remove_run_containerd(&Path::new(RUNS_DIR).join(RUN_CONTAINERD_MARKER));
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("gracewatch-tests: cleaning up containerd: {problem}");
        }
    }
}

/// SIGTERM (containerd shuts down cleanly), then SIGKILL if it takes too long.
fn stop_child(child: &mut Child) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    bail!("containerd ignored SIGTERM for {STOP_TIMEOUT:?}; killed")
}

/// Run directories other than `except`.
fn other_runs(except: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(RUNS_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p != except)
        .collect()
}

/// Removes what runs whose owner process is gone left behind: their daemon (only if
/// its command line still names the run's config), containers, shims, mounts, pod
/// cgroups and directory. Runs of live processes, this one included, are left alone.
pub fn sweep_stale() -> Result<()> {
    static SWEEPING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = state::lock(&SWEEPING);
    state::ensure_dirs()?;
    fs::create_dir_all(RUNS_DIR).with_context(|| format!("creating {RUNS_DIR}"))?;
    let mut problems = Vec::new();
    for dir in other_runs(Path::new("")) {
        if state::owner_alive(&dir) {
            continue;
        }
        let layout = Layout { dir };
        kill_stale_daemon(&layout);
        problems.extend(leftovers::remove_all(&layout));
    }
    if other_runs(Path::new("")).is_empty() {
        leftovers::remove_run_containerd(&Path::new(RUNS_DIR).join(RUN_CONTAINERD_MARKER));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("sweeping stale containerd runs: {}", problems.join("; "))
    }
}

fn kill_stale_daemon(layout: &Layout) {
    let Some(pid) = fs::read_to_string(layout.pid_file())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    // The pid may have been reused since: only a process started with this run's config.
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let config = layout.config();
    let ours = cmdline
        .split(|&b| b == 0)
        .any(|arg| Path::new(&*String::from_utf8_lossy(arg)) == config);
    if ours {
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGKILL);
        state::wait_gone(pid);
    }
}

/// Daemons and shims of this process's runs that are still alive (none once every
/// [`Containerd`] is dropped), for tests that check nothing is left behind.
pub fn leftover_processes() -> Result<Vec<Pid>> {
    let prefix = format!("{RUNS_DIR}/{}-", state::owner_tag()?);
    Ok(leftovers::processes()
        .into_iter()
        .filter(|(_, args)| {
            let daemon_or_shim = args
                .first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd"));
            daemon_or_shim && args.iter().any(|a| a.starts_with(&prefix))
        })
        .map(|(pid, _)| pid)
        .collect())
}
