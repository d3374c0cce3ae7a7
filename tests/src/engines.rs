//! Real container engines for the root tests: a private Docker daemon and Podman with
//! private storage, both from Debian's packages, running the harness's busybox rootfs
//! imported as an image. The agent is then watched against what users really run.
//!
//! Each [`Engine`] owns one run directory under [`RUNS_DIR`], named
//! `<owner pid>-<owner start time>-<n><d|p>` (numbers in hex, `d` Docker, `p` Podman:
//! Podman refuses a run root longer than 50 characters), holding everything of its own:
//! - Docker: `dockerd --iptables=false --ip6tables=false --bridge=none --ip-forward=false`
//!   with its own `--data-root`, `--exec-root`, `--pidfile`, socket and config file (the
//!   config moves the daemon key out of `/etc/docker`), and the client's config
//!   directory; the daemon is this process's child and starts its own containerd.
//! - Podman: `--root`, `--runroot`, `--tmpdir` and `--network-config-dir`, the
//!   `cgroupfs` cgroup manager and the `runc` runtime; containers run as root here only
//!   with `--ulimit nofile=N:N --ulimit nproc=M:M` within what conmon may set.
//!
//! Containers run with `--network none`: the engines touch no firewall and send nothing.
//! Their cgroups are `/docker/<id>` and `/libpod_parent/libpod-<id>` (cgroupfs driver).
//!
//! What the engines create outside their run directory no flag moves: `/run/docker/plugins`
//! (dockerd), `/run/containerd/s` (containerd's shim sockets), `/run/runc` (runc's state
//! root under Podman), `/var/lib/containers/cache` (Podman's blob-info cache) and the
//! parent cgroups `docker`, `libpod_parent` and `libpod_parent/conmon` in every hierarchy.
//! Those that did not exist before an engine started are marked in [`OWNED_DIR`] and
//! removed once empty, when no run is left; anything that existed before is never touched.
//!
//! [`Engine`]'s `Drop` stops the engine (remove every container; SIGTERM the daemon, then
//! SIGKILL) and then purges the run directory whatever state it is in: processes whose
//! command line names it (given time to exit first), container cgroups, the sockets of
//! shims that were killed, mounts, files. [`sweep_stale`] purges the run
//! directories of owners that are gone (a crashed or killed test run).

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runc::{build_busybox_rootfs, cgroup_mounts, cgroup_v2_mount, Stamp};

/// The engines' run directories; a tmpfs, so a reboot clears them too.
pub const RUNS_DIR: &str = "/run/gracewatch-test/eng";
/// Markers of the outside paths the engines created (module doc).
pub const OWNED_DIR: &str = "/run/gracewatch-test/eng-owned";
/// The busybox rootfs as an image, in every engine.
pub const BUSYBOX_IMAGE: &str = "local/busybox:1";

/// Debian's `docker.io` client: the one that matches its daemon (another `docker` may
/// come first on PATH).
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const PODMAN: &str = "/usr/bin/podman";

/// How long one engine command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to answer `docker version`, and to exit on SIGTERM.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Outside paths an engine may create (see the module doc).
const DOCKER_OUTSIDE: &[&str] = &[
    "/run/docker",
    "/run/docker/plugins",
    "/run/containerd",
    "/run/containerd/s",
];
const PODMAN_OUTSIDE: &[&str] = &[
    "/run/runc",
    "/var/lib/containers",
    "/var/lib/containers/cache",
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
];
const DOCKER_CGROUPS: &[&str] = &["docker"];
/// Where every containerd shim puts its socket, whatever its daemon's state directory.
const SHIM_SOCKETS: &str = "/run/containerd/s";
const PODMAN_CGROUPS: &[&str] = &["libpod_parent", "libpod_parent/conmon"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Docker,
    Podman,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }

    /// The last character of its run directories' names.
    fn letter(self) -> char {
        match self {
            Kind::Docker => 'd',
            Kind::Podman => 'p',
        }
    }

    fn from_letter(letter: char) -> Option<Kind> {
        [Kind::Docker, Kind::Podman]
            .into_iter()
            .find(|k| k.letter() == letter)
    }

    /// The cgroup of a container, relative to a hierarchy's mount (cgroupfs driver).
    pub fn cgroup_of(self, id: &str) -> String {
        match self {
            Kind::Docker => format!("docker/{id}"),
            Kind::Podman => format!("libpod_parent/libpod-{id}"),
        }
    }
}

/// Two stamps around an engine command: what it made happen happened between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub before: Stamp,
    pub after: Stamp,
}

impl Window {
    /// Its length in seconds (boot clock, as the agent's times).
    pub fn seconds(&self) -> f64 {
        self.after
            .boottime_ns
            .saturating_sub(self.before.boottime_ns) as f64
            / 1e9
    }
}

/// A running engine with the busybox image imported. Dropping it removes everything it
/// made (see the module doc).
pub struct Engine {
    kind: Kind,
    dir: PathBuf,
    /// dockerd; Podman has no daemon.
    daemon: Option<Child>,
    /// Podman's `--ulimit` arguments.
    ulimits: Vec<String>,
}

impl Engine {
    /// A private dockerd, ready, with [`BUSYBOX_IMAGE`] imported.
    pub fn docker() -> Result<Engine> {
        let mut engine = Engine::prepare(Kind::Docker)?;
        engine.start_dockerd()?;
        engine.import_busybox()?;
        Ok(engine)
    }

    /// Podman on private storage, with [`BUSYBOX_IMAGE`] imported.
    pub fn podman() -> Result<Engine> {
        let mut engine = Engine::prepare(Kind::Podman)?;
        engine.ulimits = podman_ulimits()?;
        for sub in ["root", "rr", "tmp", "net"] {
            create_dir(&engine.dir.join(sub))?;
        }
        engine.import_busybox()?;
        Ok(engine)
    }

    /// Sweeps stale runs, marks the outside paths this engine may create, and makes the
    /// run directory. From here on, Drop cleans up.
    fn prepare(kind: Kind) -> Result<Engine> {
        sweep_stale()?;
        let _serial = serial();
        let (outside, cgroups) = match kind {
            Kind::Docker => (DOCKER_OUTSIDE, DOCKER_CGROUPS),
            Kind::Podman => (PODMAN_OUTSIDE, PODMAN_CGROUPS),
        };
        let mut candidates: Vec<PathBuf> = outside.iter().map(PathBuf::from).collect();
        for mount in cgroup_mounts()? {
            candidates.extend(cgroups.iter().map(|c| mount.join(c)));
        }
        owned::mark_absent(&candidates)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{:x}{}",
            owner_tag()?,
            NEXT.fetch_add(1, Ordering::Relaxed),
            kind.letter()
        );
        let dir = Path::new(RUNS_DIR).join(name);
        create_dir(&dir)?;
        Ok(Engine {
            kind,
            dir,
            daemon: None,
            ulimits: Vec::new(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The run directory (module doc).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private dockerd's API socket (`-H unix://...`).
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("run/docker.sock")
    }

    fn start_dockerd(&mut self) -> Result<()> {
        for sub in ["data", "exec", "run", "client"] {
            create_dir(&self.dir.join(sub))?;
        }
        // The daemon's identity key goes to /etc/docker unless the config file says
        // otherwise; there is no command-line flag for it.
        let config = self.dir.join("daemon.json");
        let key = self.dir.join("key.json");
        fs::write(
            &config,
            serde_json::to_vec(&serde_json::json!({ "deprecated-key-path": key }))?,
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log_path = self.dir.join("dockerd.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut dockerd = Command::new(DOCKERD);
        dockerd
            .arg("--config-file")
            .arg(&config)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-forward=false",
            ])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("run/dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.docker_socket().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = dockerd
            .spawn()
            .with_context(|| format!("starting {DOCKERD} (apt-get install docker.io)"))?;
        self.daemon = Some(child);

        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            let answer = output(
                self.cli()
                    .args(["version", "--format", "{{.Server.Version}}"]),
            );
            if let Ok(out) = &answer {
                if out.status.success() {
                    return Ok(());
                }
            }
            if let Some(daemon) = self.daemon.as_mut() {
                if let Some(status) = daemon.try_wait()? {
                    bail!(
                        "dockerd exited with {status} before it answered; its log:\n{}",
                        tail(&read_lossy(&log_path), 40)
                    );
                }
            }
            if Instant::now() > deadline {
                let said = match answer {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(err) => format!("{err:#}"),
                };
                bail!(
                    "dockerd did not answer `docker version` within {DAEMON_TIMEOUT:?} ({said}); its log:\n{}",
                    tail(&read_lossy(&log_path), 40)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The engine's client with its private flags; add a subcommand and its arguments.
    pub fn cli(&self) -> Command {
        match self.kind {
            Kind::Docker => {
                let mut cmd = Command::new(DOCKER);
                cmd.arg("-H")
                    .arg(format!("unix://{}", self.docker_socket().display()))
                    .env_remove("DOCKER_HOST")
                    .env_remove("DOCKER_CONTEXT")
                    .env("DOCKER_CONFIG", self.dir.join("client"))
                    .env("DOCKER_BUILDKIT", "0");
                cmd
            }
            Kind::Podman => {
                let mut cmd = Command::new(PODMAN);
                for (flag, sub) in [
                    ("--root", "root"),
                    ("--runroot", "rr"),
                    ("--tmpdir", "tmp"),
                    ("--network-config-dir", "net"),
                ] {
                    cmd.arg(flag).arg(self.dir.join(sub));
                }
                cmd.args([
                    "--cgroup-manager",
                    "cgroupfs",
                    "--runtime",
                    "runc",
                    "--events-backend",
                    "file",
                ]);
                cmd
            }
        }
    }

    /// Runs the client with `args`, requiring success; returns stdout, trimmed.
    pub fn run_cli(&self, args: &[&str]) -> Result<String> {
        checked(self.cli().args(args))
    }

    /// The engine's version, as `docker version` / `podman version` print it.
    pub fn version(&self) -> Result<String> {
        match self.kind {
            Kind::Docker => self.run_cli(&["version", "--format", "{{.Server.Version}}"]),
            Kind::Podman => self.run_cli(&["version", "--format", "{{.Client.Version}}"]),
        }
    }

    /// `tar -C <busybox rootfs> -c .` imported as [`BUSYBOX_IMAGE`].
    fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        build_busybox_rootfs(&rootfs)?;
        let tarball = self.dir.join("busybox.tar");
        checked(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
        )?;
        let tarball = tarball.to_str().context("run directory is not UTF-8")?;
        self.run_cli(&["import", tarball, BUSYBOX_IMAGE])?;
        Ok(())
    }

    /// `docker build` (classic builder) of an image from [`BUSYBOX_IMAGE`] with the given
    /// Dockerfile instructions after its `FROM`, e.g. `STOPSIGNAL SIGQUIT`.
    pub fn build_image(&self, tag: &str, instructions: &[&str]) -> Result<()> {
        let context = self.dir.join("build").join(tag.replace(['/', ':'], "_"));
        create_dir(&context)?;
        let mut dockerfile = format!("FROM {BUSYBOX_IMAGE}\n");
        for line in instructions {
            dockerfile.push_str(line);
            dockerfile.push('\n');
        }
        fs::write(context.join("Dockerfile"), dockerfile)?;
        let context = context.to_str().context("run directory is not UTF-8")?;
        self.run_cli(&["build", "-q", "-t", tag, context])?;
        Ok(())
    }

    /// `run -d --network none [podman's ulimits] <args>`: the full container id.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.cli();
        cmd.args(["run", "-d", "--network", "none"])
            .args(&self.ulimits)
            .args(args);
        let id = checked(&mut cmd)?;
        let id = id.lines().last().unwrap_or_default().trim().to_owned();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("`{}` printed no container id: {id:?}", render(&cmd));
        }
        Ok(id)
    }

    /// `run --network <network> [podman's ulimits]`, for a caller that adds its own flags,
    /// the image and its arguments (and runs it in the foreground or with `-d`).
    pub fn run_command(&self, network: &str) -> Command {
        let mut cmd = self.cli();
        cmd.args(["run", "--network", network]).args(&self.ulimits);
        cmd
    }

    /// `inspect --format <format> <id>`.
    pub fn inspect(&self, id: &str, format: &str) -> Result<String> {
        self.run_cli(&["inspect", "--format", format, id])
    }

    /// Host pid of the container's PID 1 (0 when it is not running).
    pub fn pid1(&self, id: &str) -> Result<u32> {
        let pid = self.inspect(id, "{{.State.Pid}}")?;
        pid.parse()
            .with_context(|| format!("bad pid {pid:?} for container {id}"))
    }

    /// The comm of every process in the container's cgroup (empty once it is gone).
    pub fn processes(&self, id: &str) -> Result<Vec<String>> {
        let procs = cgroup_v2_mount()?
            .join(self.kind.cgroup_of(id))
            .join("cgroup.procs");
        let pids = fs::read_to_string(&procs).unwrap_or_default();
        Ok(pids
            .split_whitespace()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map(|comm| comm.trim_end().to_owned())
            .collect())
    }

    /// Everything the container wrote so far (stdout and stderr).
    pub fn logs(&self, id: &str) -> Result<String> {
        let out = output(self.cli().args(["logs", id]))?;
        if !out.status.success() {
            bail!(
                "logs of {id} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }

    /// Waits until PID 1 has exec'd `comm` (the runtime's init is gone, so the program's
    /// signal dispositions are in place) and, if given, the output contains `needle`
    /// (a line the entrypoint prints once its traps are set).
    pub fn wait_ready(
        &self,
        id: &str,
        comm: &str,
        needle: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pid = self.pid1(id)?;
            let seen = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let exec_done = pid != 0 && seen.trim_end() == comm;
            let logged = match needle {
                Some(needle) => self.logs(id)?.contains(needle),
                None => true,
            };
            if exec_done && logged {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} not ready after {timeout:?}: PID 1 {pid} is {:?} (want {comm:?}), log {:?}",
                    seen.trim_end(),
                    self.logs(id).unwrap_or_default()
                );
            }
            sleep(POLL);
        }
    }

    /// `stop -t <grace> <id>`: the stop signal, up to `grace` seconds, then SIGKILL.
    /// Returns when the container has exited.
    pub fn stop(&self, id: &str, grace_seconds: u32) -> Result<Window> {
        self.timed(&["stop", "-t", &grace_seconds.to_string(), id])
    }

    /// `kill <id>`: SIGKILL, no stop signal first.
    pub fn kill(&self, id: &str) -> Result<Window> {
        self.timed(&["kill", id])
    }

    fn timed(&self, args: &[&str]) -> Result<Window> {
        let before = Stamp::now();
        self.run_cli(args)?;
        let after = Stamp::now();
        Ok(Window { before, after })
    }

    /// Waits until the container is no longer running; returns its exit code.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.inspect(id, "{{.State.Status}} {{.State.ExitCode}}")?;
            if let Some(("exited", code)) = state.split_once(' ') {
                return code
                    .parse()
                    .with_context(|| format!("bad exit code in {state:?}"));
            }
            if Instant::now() > deadline {
                bail!("container {id} still {state:?} after {timeout:?}");
            }
            sleep(POLL);
        }
    }

    /// Removes every container the engine has, running or not (and, for Podman, all
    /// of its storage).
    fn remove_containers(&mut self) -> Result<()> {
        match self.kind {
            Kind::Docker => {
                let running = match self.daemon.as_mut() {
                    Some(daemon) => daemon.try_wait()?.is_none(),
                    None => false,
                };
                if !running {
                    return Ok(());
                }
                let ids = self.run_cli(&["ps", "--all", "--quiet", "--no-trunc"])?;
                if !ids.is_empty() {
                    let mut rm = self.cli();
                    rm.args(["rm", "--force"]).args(ids.split_whitespace());
                    checked(&mut rm)?;
                }
            }
            Kind::Podman => {
                if !self.dir.join("root").exists() {
                    return Ok(());
                }
                self.run_cli(&["rm", "--all", "--force", "--time", "0"])?;
                self.run_cli(&["system", "reset", "--force"])?;
            }
        }
        Ok(())
    }

    /// Stops the engine gracefully: every container removed, then the daemon stopped.
    fn shut_down(&mut self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .remove_containers()
            .err()
            .map(|err| format!("{err:#}"))
            .into_iter()
            .collect();
        if let Some(mut daemon) = self.daemon.take() {
            let pid = Pid::from_raw(daemon.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + DAEMON_TIMEOUT;
            loop {
                match daemon.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => sleep(POLL),
                    _ => {
                        problems.push(format!(
                            "dockerd ({pid}) ignored SIGTERM for {DAEMON_TIMEOUT:?}; killed"
                        ));
                        let _ = daemon.kill();
                        let _ = daemon.wait();
                        break;
                    }
                }
            }
        }
        problems
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let mut problems = self.shut_down();
        {
            let _serial = serial();
            problems.extend(purge(self.kind, &self.dir, Duration::from_secs(10)));
            if let Err(err) = owned::release_when_idle() {
                problems.push(format!("{err:#}"));
            }
        }
        for problem in problems {
            eprintln!(
                "gracewatch-tests: cleaning up {} in {}: {problem}",
                self.kind.name(),
                self.dir.display()
            );
        }
    }
}

/// Removes what earlier, crashed runs left: run directories whose owner process is gone
/// (their processes, containers, mounts and files), then the outside paths marked as
/// created by an engine, once no run is left. Live runs are left alone.
pub fn sweep_stale() -> Result<()> {
    let _serial = serial();
    let runs = Path::new(RUNS_DIR);
    create_dir(runs)?;
    let mut problems = Vec::new();
    for entry in fs::read_dir(runs).with_context(|| format!("listing {}", runs.display()))? {
        let dir = entry?.path();
        if owner_alive(&dir) {
            continue;
        }
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let kind = name.chars().last().and_then(Kind::from_letter);
        match kind {
            Some(kind) => problems.extend(purge(kind, &dir, Duration::ZERO)),
            None => problems.push(format!("unknown run directory {}", dir.display())),
        }
    }
    if let Err(err) = owned::release_when_idle() {
        problems.push(format!("{err:#}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("sweeping stale engine state: {}", problems.join("; "))
    }
}

/// One engine start, stop or sweep at a time in this process.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes a run directory whatever state it is in: processes naming it (given
/// `patience` to exit by themselves first), container cgroups, the sockets of shims that
/// could not remove their own, mounts under it, then its files. Returns what could not
/// be done.
fn purge(kind: Kind, dir: &Path, patience: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    if !dir.exists() {
        return problems;
    }
    let sockets = shim_sockets(dir);
    // dockerd, containerd, its shims, conmon, podman's exit commands: all carry a path
    // of the run directory on their command line.
    if let Err(err) = kill_processes_naming(dir, patience) {
        problems.push(format!("{err:#}"));
    }
    for socket in sockets {
        match fs::remove_file(&socket) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                problems.push(format!("removing {}: {err}", socket.display()));
            }
            _ => {}
        }
    }
    let ids = container_ids(kind, dir);
    for id in &ids {
        if let Err(err) = remove_container_cgroup(&kind.cgroup_of(id)) {
            problems.push(format!("{err:#}"));
        }
    }
    if let Err(err) = unmount_under(dir) {
        problems.push(format!("{err:#}"));
        // Removing files through a mount still there would reach into what it shows.
        return problems;
    }
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            problems.push(format!("removing {}: {err}", dir.display()));
        }
        _ => {}
    }
    problems
}

/// The sockets of the containerd shims of a run, from the `address` file each shim
/// leaves in its task directory. They live in containerd's fixed `/run/containerd/s`
/// (named by a hash of the run's containerd address, namespace and container id, so no
/// other containerd uses them); a shim that is SIGKILLed cannot remove its own.
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    let tasks = dir.join("exec/containerd/daemon/io.containerd.runtime.v2.task");
    let namespaces = fs::read_dir(tasks).into_iter().flatten().flatten();
    let task_dirs =
        namespaces.flat_map(|ns| fs::read_dir(ns.path()).into_iter().flatten().flatten());
    task_dirs
        .filter_map(|task| fs::read_to_string(task.path().join("address")).ok())
        .filter_map(|address| {
            let path = PathBuf::from(address.trim().strip_prefix("unix://")?);
            path.starts_with(SHIM_SOCKETS).then_some(path)
        })
        .collect()
}

/// Ids of the containers an engine's storage knows.
fn container_ids(kind: Kind, dir: &Path) -> Vec<String> {
    let store = match kind {
        Kind::Docker => dir.join("data/containers"),
        Kind::Podman => dir.join("root/overlay-containers"),
    };
    let Ok(entries) = fs::read_dir(store) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Waits up to `patience` for every process (but this one) whose command line contains
/// `dir` to exit (Podman's exit command, for one, runs `runc delete` after the container
/// is gone), then SIGKILLs those left, until none is (10 s more at most).
fn kill_processes_naming(dir: &Path, patience: Duration) -> Result<()> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    let patient_until = Instant::now() + patience;
    let deadline = patient_until + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || is_zombie(pid) {
                continue;
            }
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                if Instant::now() >= patient_until {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                left.push(pid);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "processes naming {} outlived SIGKILL: {left:?}",
                dir.display()
            );
        }
        sleep(POLL);
    }
}

/// A zombie has released everything but its pid; its parent (or init) will reap it.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// Kills what is left in a container's cgroup (`cgroup.kill` in the v2 hierarchy) and
/// removes the cgroup from every hierarchy.
fn remove_container_cgroup(rel: &str) -> Result<()> {
    let v2 = cgroup_v2_mount()?.join(rel);
    if v2.exists() {
        let _ = fs::write(v2.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(v2.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
            if Instant::now() > deadline {
                bail!("processes in {} survived cgroup.kill", v2.display());
            }
            sleep(POLL);
        }
    }
    for mount in cgroup_mounts()? {
        owned::rmdir_patiently(&mount.join(rel))?;
    }
    Ok(())
}

/// Lazily unmounts, deepest first, every mount at or under `dir`; fails if any is left.
fn unmount_under(dir: &Path) -> Result<()> {
    let under = |mounts: &[PathBuf]| -> Vec<PathBuf> {
        mounts
            .iter()
            .filter(|m| m.starts_with(dir))
            .cloned()
            .collect()
    };
    let mut mine = under(&mount_points()?);
    mine.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in &mine {
        match nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(err) => bail!("umount {}: {err}", mount.display()),
        }
    }
    let left = under(&mount_points()?);
    if !left.is_empty() {
        bail!("mounts left under {}: {left:?}", dir.display());
    }
    Ok(())
}

/// Mount points in this mount namespace (`/proc/self/mountinfo`, octal escapes undone).
fn mount_points() -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsString::from_vec(unescape(field))))
        .collect())
}

fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

mod owned {
    //! Outside paths an engine created: a marker per path in `owned/` (the path in hex),
    //! written before the engine starts for each candidate that does not exist yet.

    use std::ffi::OsString;
    use std::fs::{self, File};
    use std::io::ErrorKind;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    use anyhow::{Context, Result};

    use super::{create_dir, OWNED_DIR, RUNS_DIR};
    use crate::runc::state::hex;

    fn markers() -> PathBuf {
        PathBuf::from(OWNED_DIR)
    }

    pub(super) fn mark_absent(candidates: &[PathBuf]) -> Result<()> {
        create_dir(&markers())?;
        for path in candidates {
            if !path.exists() {
                let marker = markers().join(hex(path.as_os_str().as_encoded_bytes()));
                File::create(&marker).with_context(|| format!("creating {}", marker.display()))?;
            }
        }
        Ok(())
    }

    /// Removes, deepest first, the marked paths that are no longer in use (files, and
    /// directories without subdirectories or, outside cgroupfs, without entries), but
    /// only when no run directory is left: a live engine may still need them.
    pub(super) fn release_when_idle() -> Result<()> {
        if fs::read_dir(RUNS_DIR).is_ok_and(|mut entries| entries.next().is_some()) {
            return Ok(());
        }
        let Ok(entries) = fs::read_dir(markers()) else {
            return Ok(());
        };
        let mut owned = Vec::new();
        for entry in entries.flatten() {
            let marker = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            match unhex(&name) {
                Some(path) => owned.push((PathBuf::from(OsString::from_vec(path)), marker)),
                None => fs::remove_file(&marker)?,
            }
        }
        owned.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        let mut problems = Vec::new();
        for (path, marker) in owned {
            let removed = match fs::symlink_metadata(&path) {
                Err(err) if err.kind() == ErrorKind::NotFound => true,
                Err(err) => {
                    problems.push(format!("stat {}: {err}", path.display()));
                    false
                }
                Ok(meta) if !meta.is_dir() => fs::remove_file(&path).is_ok(),
                Ok(_) if path.starts_with("/sys/fs/cgroup") => {
                    let busy = fs::read_dir(&path).is_ok_and(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    });
                    if busy {
                        false
                    } else {
                        match rmdir_patiently(&path) {
                            Ok(()) => true,
                            Err(err) => {
                                problems.push(format!("{err:#}"));
                                false
                            }
                        }
                    }
                }
                Ok(_) => fs::remove_dir(&path).is_ok(),
            };
            if removed {
                fs::remove_file(&marker)?;
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }

    pub(super) use crate::runc::cgroups::rmdir_patiently;

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(s.get(i..i + 2)?, 16).ok();
        (0..s.len()).step_by(2).map(byte).collect()
    }
}

/// `--ulimit` arguments Podman needs as root here: without them it raises RLIMIT_NOFILE
/// and RLIMIT_NPROC past the hard limits, which root cannot do without CAP_SYS_RESOURCE.
/// The values stay within this process's hard limits and within what conmon runs with
/// (it caps RLIMIT_NPROC at 32768, so larger values fail in runc).
fn podman_ulimits() -> Result<Vec<String>> {
    let hard = |resource, cap: u64| -> Result<u64> {
        let (_, hard) = getrlimit(resource).with_context(|| format!("getrlimit {resource:?}"))?;
        Ok(if hard == RLIM_INFINITY {
            cap
        } else {
            hard.min(cap)
        })
    };
    let nofile = hard(Resource::RLIMIT_NOFILE, 1024)?;
    let nproc = hard(Resource::RLIMIT_NPROC, 4096)?;
    Ok(vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ])
}

/// `<pid>-<start time>` of this process, in hex: unique even if the pid is later reused.
fn owner_tag() -> Result<String> {
    let pid = std::process::id();
    let start = start_time(pid).context("reading this process's start time")?;
    Ok(format!("{pid:x}-{start:x}"))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the comm before it may hold spaces, so count from the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process named by a `<pid>-<start>-…` run directory still runs.
fn owner_alive(dir: &Path) -> bool {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let mut parts = name.splitn(3, '-');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    match (u32::from_str_radix(pid, 16), u64::from_str_radix(start, 16)) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start) && !is_zombie(pid),
        _ => false,
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn render(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` to completion, requiring success; returns stdout, trimmed. The error
/// names the command and carries its stderr, the engine's own words.
fn checked(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed with {}: {}",
            render(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `cmd` with stdout and stderr in memfds (a daemon or container that inherits
/// them cannot keep a reader waiting) and a time limit of [`COMMAND_TIMEOUT`].
fn output(cmd: &mut Command) -> Result<Output> {
    let out = File::from(memfd_create("stdout", MFdFlags::MFD_CLOEXEC)?);
    let err = File::from(memfd_create("stderr", MFdFlags::MFD_CLOEXEC)?);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning `{}`", render(cmd)))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {COMMAND_TIMEOUT:?}",
                render(cmd)
            );
        }
        sleep(Duration::from_millis(5));
    };
    let read = |mut f: File| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    Ok(Output {
        status,
        stdout: read(out)?,
        stderr: read(err)?,
    })
}
