//! Real OCI containers for the root tests, run by `runc` the way a container runtime
//! runs them for kubelet.
//!
//! This module owns everything a harness container leaves on the node: its runc state
//! (under the dedicated runc root [`RUNC_ROOT`]), its bundle directory, the shared busybox
//! rootfs, and the kubelet-style cgroups (`/kubepods/<qos>/pod<uid>/<id>`, cgroupfs
//! driver) in the v2 hierarchy and in every v1 controller. [`Container`]'s `Drop` and
//! [`sweep_stale`] are the two ways all of it is removed again.
//!
//! Like a containerd shim, the process that starts containers makes itself a child
//! subreaper, so that when `runc run --detach` exits, each container's PID 1 is
//! re-parented to this process and its real wait status (exit code or signal) can be
//! collected with `waitpid`. The caller needs to do nothing for this, but no other code in
//! the process may reap arbitrary children (`waitpid(-1)`).
//!
//! On-disk layout, all under [`STATE_DIR`]:
//! - `runc/`: the runc root, used by no other tool;
//! - `bundles/<owner-pid>-<owner-start-time>-<id>/`: `config.json`, `container.log`
//!   (the container's stdout and stderr), `runc.log`, `init.pid`;
//! - `rootfs/<owner-pid>-<owner-start-time>-<n>/`: the busybox rootfs, shared read-only
//!   by the owner's containers and removed when the last of them is dropped;
//! - `owned-cgroups/<hex of a path>`: one marker per cgroup directory that did not exist
//!   before a harness container was put under it; cleanup removes only those, so it
//!   never takes away a `kubepods` tree that a real kubelet made;
//! - `cgroups.lock`: `flock`ed shared while containers are created and exclusive while
//!   cgroup directories are removed, across threads and processes.
//!
//! The owner's pid and start time in directory names let [`sweep_stale`] tell the
//! leftovers of a crashed run from the containers of a run still in progress.
//!
//! The CRI harness (`crate::cri`) puts its pod cgroups under the same markers and lock,
//! through `cgroups`, so neither removes a parent directory the other is about to use.
//!
//! The private modules at the end each own one concern: `oci` (config.json), `rootfs`,
//! `cmd` (running runc), `cgroups` and `state` (directories and ownership).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

use cgroups::CgroupLock;
use cmd::{run_captured, run_checked, runc};
use state::{lock, state_dir};

/// Where the harness keeps all its state; a tmpfs, so a reboot clears it too.
pub const STATE_DIR: &str = "/run/gracewatch-test";
/// The runc root (`runc --root`) that only this harness uses.
pub const RUNC_ROOT: &str = "/run/gracewatch-test/runc";
/// Busybox from Debian's `busybox-static`; it must be static to run in an empty rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

const LOG_FILE: &str = "container.log";
/// What runc's init process calls itself until it has exec'd the container's program.
const RUNC_INIT_COMM: &str = "runc:[2:INIT]";
const POLL: Duration = Duration::from_millis(5);

/// Kubernetes QoS class; it decides the cgroup parent of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    BestEffort,
    Burstable,
    Guaranteed,
}

/// The pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's `metadata.uid`, a UUID.
    pub uid: String,
    pub qos: Qos,
}

impl PodRef {
    /// A new pod with a fresh random UUID v4.
    pub fn new(qos: Qos) -> Result<PodRef> {
        Ok(PodRef {
            uid: uuid_v4()?,
            qos,
        })
    }
}

/// What to run. `name` becomes the hostname, so it must be a DNS label.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// `process.args`: the container's PID 1 and its arguments.
    pub args: Vec<String>,
    /// `KEY=value` entries added after the default `PATH` and `HOSTNAME`.
    pub env: Vec<String>,
    /// `Some`: cgroup `/kubepods[/<qos>]/pod<uid>/<id>`, as kubelet's cgroupfs driver
    /// places it. `None`: `/docker/<id>`, as on a plain Docker host.
    pub pod: Option<PodRef>,
}

impl ContainerSpec {
    /// A container running `args` in a new BestEffort pod of its own.
    pub fn new(name: &str, args: &[&str]) -> Result<ContainerSpec> {
        Ok(ContainerSpec {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            pod: Some(PodRef::new(Qos::BestEffort)?),
        })
    }

    /// A container whose PID 1 is `sh -c <script>`, the shell-entrypoint shape.
    pub fn shell(name: &str, script: &str) -> Result<ContainerSpec> {
        ContainerSpec::new(name, &["sh", "-c", script])
    }
}

/// How a container's PID 1 ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Code(i32),
    /// A signal killed it.
    Signal(Signal),
}

impl ExitStatus {
    /// The number kubelet shows as `state.terminated.exitCode` (128 + signal for a kill).
    pub fn kubelet_exit_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal as i32,
        }
    }
}

/// One instant on the two clocks the agent's events are compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `CLOCK_REALTIME`, ns since the Unix epoch.
    pub realtime_ns: u64,
    /// `CLOCK_BOOTTIME`, ns since boot (`bpf_ktime_get_boot_ns()`).
    pub boottime_ns: u64,
}

impl Stamp {
    pub fn now() -> Stamp {
        // Both clocks always exist on Linux; a zero would be an obviously wrong stamp.
        let ns = |clock| {
            clock_gettime(clock)
                .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                .unwrap_or(0)
        };
        Stamp {
            realtime_ns: ns(ClockId::CLOCK_REALTIME),
            boottime_ns: ns(ClockId::CLOCK_BOOTTIME),
        }
    }
}

/// A `runc kill`: the kernel raised the signal between `before` and `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalSent {
    /// As passed to `runc kill`, e.g. `TERM`.
    pub signal: String,
    /// Taken just before `runc kill` was spawned.
    pub before: Stamp,
    /// Taken just after `runc kill` exited.
    pub after: Stamp,
}

/// What [`Container::stop_like_kubelet`] did and saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    pub grace: Duration,
    pub term: SignalSent,
    /// `Some` when PID 1 outlived the grace period and was sent SIGKILL.
    pub kill: Option<SignalSent>,
    /// When the harness saw PID 1 gone (it polls every 5 ms).
    pub exited: Stamp,
    pub status: ExitStatus,
}

impl StopReport {
    pub fn kill_needed(&self) -> bool {
        self.kill.is_some()
    }
}

/// A runc container, running or exited but not yet deleted. Dropping it removes it.
#[derive(Debug)]
pub struct Container {
    id: String,
    pod_uid: Option<String>,
    cgroups_path: String,
    bundle: PathBuf,
    v2_dir: PathBuf,
    init: Option<Pid>,
    /// Set once PID 1 has been reaped; after that its pid may belong to anyone.
    reaped: Mutex<Option<ExitStatus>>,
    rootfs: Arc<rootfs::Rootfs>,
}

impl Container {
    /// `runc run --detach` the spec and wait until PID 1 has exec'd the spec's program.
    /// Makes this process a child subreaper (see the module doc).
    pub fn start(spec: ContainerSpec) -> Result<Container> {
        oci::validate(&spec)?;
        state::prepare_process()?;
        let id = state::hex(&state::random_bytes::<32>()?);
        let cgroups_path = oci::cgroups_path(spec.pod.as_ref(), &id);
        let v2_dir = cgroup_v2_mount()?.join(cgroups_path.trim_start_matches('/'));
        let rootfs = rootfs::shared()?;
        let bundle = state_dir(state::BUNDLES).join(format!("{}-{id}", state::owner_tag()?));
        fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
        // From here on, Drop cleans up whatever the rest of start manages to create.
        let mut container = Container {
            id,
            pod_uid: spec.pod.as_ref().map(|p| p.uid.clone()),
            cgroups_path,
            bundle,
            v2_dir,
            init: None,
            reaped: Mutex::new(None),
            rootfs,
        };
        container.launch(&spec)?;
        Ok(container)
    }

    fn launch(&mut self, spec: &ContainerSpec) -> Result<()> {
        let config = oci::config(spec, self.rootfs.dir(), &self.cgroups_path);
        let config_path = self.bundle.join("config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.bundle.join(LOG_FILE))
            .context("opening the container log")?;
        let pid_file = self.bundle.join("init.pid");
        let runc_log = self.bundle.join("runc.log");
        let mut run = runc();
        run.arg("--log")
            .arg(&runc_log)
            .args(["run", "--detach", "--bundle"])
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&self.id)
            // Files, not pipes: the container inherits these, and a pipe it holds open
            // would keep a reader waiting for EOF as long as the container lives.
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = {
            let _creating = CgroupLock::shared()?;
            cgroups::mark_new_ancestors(&self.cgroups_path)?;
            cmd::run_with_timeout(&mut run)?
        };
        if !status.success() {
            bail!(
                "`{}` failed with {status}: {} {}",
                cmd::render(&run),
                state::read_lossy(&runc_log).trim(),
                self.log().unwrap_or_default().trim()
            );
        }
        let pid = fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let pid: i32 = pid
            .trim()
            .parse()
            .with_context(|| format!("bad pid {pid:?} in {}", pid_file.display()))?;
        self.init = Some(Pid::from_raw(pid));
        self.wait_exec()
    }

    /// `runc run --detach` returns once it has let PID 1 go, which may still be runc's
    /// init: until it has exec'd, the spec's program and its signal handlers are not there.
    fn wait_exec(&self) -> Result<()> {
        let comm_path = format!("/proc/{}/comm", self.init_pid()?);
        let deadline = Instant::now() + cmd::RUNC_TIMEOUT;
        loop {
            let comm = fs::read_to_string(&comm_path).unwrap_or_default();
            if comm.trim_end() != RUNC_INIT_COMM || self.wait_exit(Duration::ZERO)?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("container {} PID 1 never exec'd its program", self.id);
            }
            sleep(Duration::from_millis(1));
        }
    }

    /// The 64-hex-digit container id (`containerd://<id>` in a pod status).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pod's uid, `None` for a `/docker/<id>` container.
    pub fn pod_uid(&self) -> Option<&str> {
        self.pod_uid.as_deref()
    }

    /// The OCI `linux.cgroupsPath`, e.g. `/kubepods/besteffort/pod<uid>/<id>`; it is
    /// also the path `/proc/<pid>/cgroup` shows for the container's processes.
    pub fn cgroups_path(&self) -> &str {
        &self.cgroups_path
    }

    /// The bundle directory (config.json, container.log).
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// Host pid of the container's PID 1, from runc's `--pid-file`. Fails once the
    /// harness has reaped it, because from then on the number may be reused.
    pub fn init_pid(&self) -> Result<u32> {
        let pid = self.init.context("container has no init process")?;
        if let Some(status) = *lock(&self.reaped) {
            bail!("container {} PID 1 has exited ({status:?})", self.id);
        }
        Ok(pid.as_raw().unsigned_abs())
    }

    /// `runc kill <id> <signal>` (e.g. `TERM`, `KILL`): a kill(2) of PID 1 from a
    /// process whose comm is `runc`, as a runtime sends it.
    pub fn kill(&self, signal: &str) -> Result<()> {
        run_checked(runc().args(["kill", &self.id, signal])).map(drop)
    }

    /// `runc exec <id> <args>`; the output is returned whatever the exit status
    /// (a failure of runc itself shows there too, in stderr).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        run_captured(runc().args(["exec", &self.id]).args(args))
    }

    /// `runc exec`, requiring success; returns stdout.
    pub fn exec_stdout(&self, args: &[&str]) -> Result<String> {
        let output = run_checked(runc().args(["exec", &self.id]).args(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Everything the container wrote to stdout and stderr so far.
    pub fn log(&self) -> Result<String> {
        let path = self.bundle.join(LOG_FILE);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Waits until the container's output contains `needle`, e.g. a line the
    /// entrypoint prints once its signal handlers are installed.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // Looked at before the log, so output written just before exiting still counts.
            let gone = Instant::now() > deadline || self.wait_exit(Duration::ZERO)?.is_some();
            let log = self.log()?;
            if log.contains(needle) {
                return Ok(());
            }
            if gone {
                bail!(
                    "container {} never printed {needle:?}; log: {log:?}",
                    self.id
                );
            }
            sleep(POLL);
        }
    }

    /// Reaps PID 1 if it exits within `timeout`: `Some(status)`, or `None` if it still
    /// runs. Once reaped, the status is kept and returned again on every call.
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let pid = self.init.context("container has no init process")?;
        let deadline = Instant::now() + timeout;
        loop {
            {
                // Held across waitpid so two threads never reap the same pid.
                let mut reaped = lock(&self.reaped);
                if reaped.is_some() {
                    return Ok(*reaped);
                }
                let status = waitpid(pid, Some(WaitPidFlag::WNOHANG))
                    .with_context(|| format!("waitpid({pid}) for container {} PID 1", self.id))?;
                *reaped = match status {
                    WaitStatus::Exited(_, code) => Some(ExitStatus::Code(code)),
                    WaitStatus::Signaled(_, signal, _) => Some(ExitStatus::Signal(signal)),
                    _ => None,
                };
                if reaped.is_some() {
                    return Ok(*reaped);
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            sleep(POLL);
        }
    }

    /// True if PID 1 has exited within `timeout`.
    pub fn wait_stopped(&self, timeout: Duration) -> Result<bool> {
        Ok(self.wait_exit(timeout)?.is_some())
    }

    /// What kubelet's `StopContainer(id, grace)` makes the runtime do: `runc kill TERM`,
    /// wait up to `grace`, then `runc kill KILL` if PID 1 still runs; then wait (10 s at
    /// most) for PID 1 to be gone. Fails if PID 1 had already exited (runc refuses TERM).
    pub fn stop_like_kubelet(&self, grace: Duration) -> Result<StopReport> {
        let term = self.signal_stamped("TERM")?;
        let mut kill = None;
        if self.wait_exit(grace)?.is_none() {
            match self.signal_stamped("KILL") {
                Ok(sent) => kill = Some(sent),
                // PID 1 may exit between the end of the wait and runc's look at it.
                Err(_) if self.wait_exit(Duration::ZERO)?.is_some() => {}
                Err(err) => return Err(err),
            }
        }
        let status = self
            .wait_exit(Duration::from_secs(10))?
            .with_context(|| format!("container {} survived SIGKILL for 10 s", self.id))?;
        Ok(StopReport {
            grace,
            term,
            kill,
            exited: Stamp::now(),
            status,
        })
    }

    fn signal_stamped(&self, signal: &str) -> Result<SignalSent> {
        let before = Stamp::now();
        self.kill(signal)?;
        Ok(SignalSent {
            signal: signal.to_owned(),
            before,
            after: Stamp::now(),
        })
    }

    /// The container's directory in the cgroup v2 hierarchy.
    pub fn cgroup_v2_dir(&self) -> PathBuf {
        self.v2_dir.clone()
    }

    /// Its directories in every mounted hierarchy (v2 and each v1 controller).
    pub fn cgroup_dirs(&self) -> Result<Vec<PathBuf>> {
        let rel = self.cgroups_path.trim_start_matches('/');
        Ok(cgroup_mounts()?.iter().map(|m| m.join(rel)).collect())
    }

    /// The v2 cgroup id: the inode number of [`Container::cgroup_v2_dir`], which is what
    /// `bpf_get_current_cgroup_id()` returns for the container's processes.
    pub fn cgroup_id(&self) -> Result<u64> {
        let meta = fs::metadata(&self.v2_dir)
            .with_context(|| format!("stat {}", self.v2_dir.display()))?;
        Ok(meta.ino())
    }

    /// Kill, reap, `runc delete`, cgroups, bundle: each step runs whatever the earlier
    /// ones did, and every failure is reported.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(pid) = self.init {
            if let Ok(None) = self.wait_exit(Duration::ZERO) {
                if let Err(err) = self.kill("KILL") {
                    // runc may have lost its state; PID 1 is still ours (unreaped) to kill.
                    problems.push(format!("{err:#}"));
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
            // Reap first: `runc delete --force` waits for the pid to vanish, which a
            // zombie of this process never does.
            match self.wait_exit(Duration::from_secs(10)) {
                Ok(Some(_)) => {}
                Ok(None) => problems.push(format!("PID 1 ({pid}) survived SIGKILL")),
                Err(err) => problems.push(format!("{err:#}")),
            }
        }
        let steps = [
            cmd::delete_container(&self.id),
            cgroups::release(Some(&self.cgroups_path)),
            state::remove_dir_all_if_exists(&self.bundle),
        ];
        problems.extend(
            steps
                .into_iter()
                .filter_map(|r| r.err().map(|e| format!("{e:#}"))),
        );
        problems
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!(
                "gracewatch-tests: cleaning up container {}: {problem}",
                self.id
            );
        }
    }
}

/// Removes what earlier, crashed runs of this harness left: containers in [`RUNC_ROOT`],
/// bundles and rootfs copies whose owner process is gone, and empty cgroup directories
/// the harness created. Live runs (this one included) are left alone. Call it before
/// starting containers; it is cheap and safe to call from every test.
pub fn sweep_stale() -> Result<()> {
    static SWEEPING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = lock(&SWEEPING);
    state::ensure_dirs()?;
    let _exclusive = CgroupLock::exclusive()?;
    let mut problems = Vec::new();
    for (id, bundle, pid) in cmd::runc_list()? {
        if state::owner_alive(&bundle) {
            continue;
        }
        let _ = run_captured(runc().args(["kill", &id, "KILL"]));
        if let Some(pid) = pid {
            state::wait_gone(pid);
        }
        if let Err(err) = cmd::delete_container(&id) {
            problems.push(format!("{err:#}"));
        }
    }
    for dir in [state_dir(state::BUNDLES), state_dir(state::ROOTFS)] {
        let entries = fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if state::owner_alive(&path) {
                continue;
            }
            // runc forgets a container whose state it lost; its bundle still names the cgroup.
            if let Some(cgroups_path) = oci::bundle_cgroups_path(&path) {
                if let Err(err) = cgroups::remove_leaf(&cgroups_path) {
                    problems.push(format!("{err:#}"));
                }
            }
            if let Err(err) = state::remove_dir_all_if_exists(&path) {
                problems.push(format!("{err:#}"));
            }
        }
    }
    if let Err(err) = cgroups::release_owned() {
        problems.push(format!("{err:#}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("sweeping stale harness state: {}", problems.join("; "))
    }
}

/// Ids of the containers in the harness's runc root (`runc --root RUNC_ROOT list`).
pub fn runc_list_ids() -> Result<Vec<String>> {
    Ok(cmd::runc_list()?.into_iter().map(|(id, _, _)| id).collect())
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup_v2_mount() -> Result<PathBuf> {
    cgroups::mountinfo()?
        .into_iter()
        .find_map(|(path, v2)| v2.then_some(path))
        .context("no cgroup2 file system is mounted")
}

/// Mount points of every cgroup hierarchy: v2 and each v1 controller.
pub fn cgroup_mounts() -> Result<Vec<PathBuf>> {
    Ok(cgroups::mountinfo()?.into_iter().map(|(p, _)| p).collect())
}

/// Builds the harness's busybox rootfs at `dir` (created if missing): the tree its
/// containers run in, and the one the engine tests import as an image.
pub fn build_busybox_rootfs(dir: &Path) -> Result<()> {
    rootfs::build(dir).with_context(|| format!("building {}", dir.display()))
}

/// A random (version 4, RFC 4122 variant) UUID, the shape of a pod's `metadata.uid`.
pub fn uuid_v4() -> Result<String> {
    let mut b = state::random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = state::hex(&b);
    Ok([&h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]].join("-"))
}

mod oci {
    //! The OCI bundle's config.json, written by hand rather than taken from `runc spec`
    //! (whose output changes across versions), shaped like what a CRI runtime generates
    //! for a plain pod container.

    use std::fs;
    use std::path::Path;

    use anyhow::{bail, Result};
    use serde_json::{json, Value};

    use super::{ContainerSpec, PodRef, Qos};

    pub(super) fn validate(spec: &ContainerSpec) -> Result<()> {
        let is_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !is_label(&spec.name) {
            bail!("container name {:?} is not a DNS label", spec.name);
        }
        if spec.args.is_empty() {
            bail!("container {:?} has no args", spec.name);
        }
        if let Some(bad) = spec.env.iter().find(|e| !e.contains('=')) {
            bail!(
                "env entry {bad:?} of container {:?} is not KEY=value",
                spec.name
            );
        }
        if let Some(PodRef { uid, .. }) = &spec.pod {
            // The uid becomes a path component.
            if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                bail!("pod uid {uid:?} is not a UUID");
            }
        }
        Ok(())
    }

    /// kubelet's cgroupfs-driver path for the pod's QoS class, or Docker's.
    pub(super) fn cgroups_path(pod: Option<&PodRef>, id: &str) -> String {
        let Some(PodRef { uid, qos }) = pod else {
            return format!("/docker/{id}");
        };
        match qos {
            Qos::Guaranteed => format!("/kubepods/pod{uid}/{id}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}/{id}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}/{id}"),
        }
    }

    pub(super) fn bundle_cgroups_path(bundle: &Path) -> Option<String> {
        let config = fs::read(bundle.join("config.json")).ok()?;
        let config: Value = serde_json::from_slice(&config).ok()?;
        config["linux"]["cgroupsPath"].as_str().map(str::to_owned)
    }

    fn tmpfs(dest: &str, options: &[&str]) -> Value {
        json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": options})
    }

    pub(super) fn config(spec: &ContainerSpec, rootfs: &Path, cgroups_path: &str) -> Value {
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            format!("HOSTNAME={}", spec.name),
        ];
        env.extend(spec.env.iter().cloned());
        // Docker's and containerd's default capability set.
        #[rustfmt::skip]
        let caps = [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
            "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
        ];
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": spec.args,
                "env": env,
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            },
            // Shared by all containers of this process: it must stay read-only.
            "root": {"path": rootfs, "readonly": true},
            "hostname": spec.name,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                tmpfs("/dev", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                tmpfs("/dev/shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                // sysfs, not a bind of the host's /sys, so /sys/class/net shows the
                // container's own network namespace.
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                tmpfs("/tmp", &["nosuid", "nodev", "mode=1777", "size=65536k"]),
            ],
            "linux": {
                "cgroupsPath": cgroups_path,
                // A new network namespace without a path: runc sets up loopback only.
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                  "/proc/sysrq-trigger"],
            },
        })
    }
}

pub(crate) mod rootfs {
    //! The busybox rootfs: built once and shared read-only by all live containers of this
    //! process; removed when the last of them is dropped.

    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Weak};

    use anyhow::{bail, Context, Result};

    use super::cmd::run_checked;
    use super::state::{self, lock, state_dir};
    use super::BUSYBOX;

    #[derive(Debug)]
    pub(super) struct Rootfs {
        dir: PathBuf,
    }

    impl Rootfs {
        pub(super) fn dir(&self) -> &Path {
            &self.dir
        }
    }

    impl Drop for Rootfs {
        fn drop(&mut self) {
            if let Err(err) = state::remove_dir_all_if_exists(&self.dir) {
                eprintln!("gracewatch-tests: {err:#}");
            }
        }
    }

    /// The rootfs of the live containers, or a new one if there are none.
    pub(super) fn shared() -> Result<Arc<Rootfs>> {
        static CACHE: Mutex<Weak<Rootfs>> = Mutex::new(Weak::new());
        // A new rootfs never reuses the name of one still being removed.
        static GENERATION: AtomicU64 = AtomicU64::new(0);
        let mut cache = lock(&CACHE);
        if let Some(rootfs) = cache.upgrade() {
            return Ok(rootfs);
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{generation}", state::owner_tag()?);
        let rootfs = Arc::new(Rootfs {
            dir: state_dir(state::ROOTFS).join(name),
        });
        build(&rootfs.dir).with_context(|| format!("building {}", rootfs.dir.display()))?;
        *cache = Arc::downgrade(&rootfs);
        Ok(rootfs)
    }

    pub(super) fn build(dir: &Path) -> Result<()> {
        ensure_static(Path::new(BUSYBOX))?;
        // Mount points exist up front: runc would otherwise create them in the shared
        // directory, from several containers at once.
        for sub in ["proc", "dev", "sys", "tmp", "etc", "root", "bin"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
        fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(dir.join("etc/group"), "root:x:0:\n")?;
        // `--list-full` gives each applet's install path, e.g. `bin/sh`, `usr/bin/env`.
        let applets = run_checked(Command::new(BUSYBOX).arg("--list-full"))?;
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            let applet = applet.trim().trim_start_matches('/');
            let link = dir.join(applet);
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            symlink("/bin/busybox", &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(())
    }

    /// A dynamically linked busybox would fail in the empty rootfs with a baffling
    /// ENOENT; look for a PT_INTERP program header to say so up front.
    pub(crate) fn ensure_static(path: &Path) -> Result<()> {
        let elf = fs::read(path).with_context(|| {
            format!(
                "reading {} (apt-get install busybox-static)",
                path.display()
            )
        })?;
        let field = |offset: usize, len: usize| -> Option<usize> {
            let bytes = elf.get(offset..offset + len)?;
            Some(
                bytes
                    .iter()
                    .rev()
                    .fold(0, |acc, &b| (acc << 8) | usize::from(b)),
            )
        };
        let header = (elf.get(..5) == Some(b"\x7fELF\x02".as_slice()))
            .then(|| Some((field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?)))
            .flatten();
        let (phoff, phentsize, phnum) =
            header.with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
        const PT_INTERP: usize = 3;
        if (0..phnum).any(|i| field(phoff + i * phentsize, 4) == Some(PT_INTERP)) {
            bail!(
                "{} is dynamically linked; install busybox-static",
                path.display()
            );
        }
        Ok(())
    }
}

pub(crate) mod cmd {
    //! Running runc (and busybox) to completion with a time limit and captured output.

    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::PathBuf;
    use std::process::{Command, Output, Stdio};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::unistd::Pid;
    use serde_json::Value;

    use super::{POLL, RUNC_ROOT};

    /// How long one runc invocation may take before the harness gives up on it.
    pub(super) const RUNC_TIMEOUT: Duration = Duration::from_secs(30);

    pub(super) fn runc() -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(RUNC_ROOT);
        cmd
    }

    pub(super) fn render(cmd: &Command) -> String {
        let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
        words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    }

    /// (id, bundle, PID 1 if running) of each container in the harness's runc root.
    pub(super) fn runc_list() -> Result<Vec<(String, PathBuf, Option<Pid>)>> {
        let output = run_checked(runc().args(["list", "--format", "json"]))?;
        // runc prints `null`, not `[]`, when there are no containers.
        let list: Value =
            serde_json::from_slice(&output.stdout).context("parsing `runc list` output")?;
        let entries = list.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(entries
            .iter()
            .filter_map(|c| {
                let pid = c["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                Some((
                    c["id"].as_str()?.to_owned(),
                    PathBuf::from(c["bundle"].as_str()?),
                    pid.filter(|&p| p > 0).map(Pid::from_raw),
                ))
            })
            .collect())
    }

    /// `runc delete --force`; a container runc no longer knows counts as deleted.
    pub(super) fn delete_container(id: &str) -> Result<()> {
        let mut delete = runc();
        delete.args(["delete", "--force", id]);
        let output = run_captured(&mut delete)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || stderr.contains("does not exist") {
            return Ok(());
        }
        bail!(
            "`{}` failed with {}: {}",
            render(&delete),
            output.status,
            stderr.trim()
        )
    }

    pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output> {
        let output = run_captured(cmd)?;
        if !output.status.success() {
            bail!(
                "`{}` failed with {}: {}",
                render(cmd),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// Runs to completion with stdout and stderr captured in memfds: unlike pipes, a
    /// process that keeps them open (a container, a daemon) cannot make the harness hang.
    pub(crate) fn run_captured(cmd: &mut Command) -> Result<Output> {
        let out = File::from(memfd_create("stdout", MFdFlags::MFD_CLOEXEC)?);
        let err = File::from(memfd_create("stderr", MFdFlags::MFD_CLOEXEC)?);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(err.try_clone()?);
        let status = run_with_timeout(cmd)?;
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

    pub(super) fn run_with_timeout(cmd: &mut Command) -> Result<std::process::ExitStatus> {
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning `{}`", render(cmd)))?;
        let deadline = Instant::now() + RUNC_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{}` did not finish within {RUNC_TIMEOUT:?}", render(cmd));
            }
            sleep(POLL);
        }
    }
}

pub(crate) mod cgroups {
    //! The container cgroups in every hierarchy, and the parents the harness created
    //! above them (marked in `owned-cgroups/`, removed only when empty).

    use std::cmp::Reverse;
    use std::ffi::OsString;
    use std::fs::{self, File, OpenOptions};
    use std::io::ErrorKind;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, Context, Result};
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};

    use super::state::{self, state_dir};
    use super::{cgroup_mounts, STATE_DIR};

    /// (mount point, is v2) of each cgroup hierarchy in `/proc/self/mountinfo`.
    pub(super) fn mountinfo() -> Result<Vec<(PathBuf, bool)>> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        Ok(mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mount_point = left.split(' ').nth(4)?;
                let v2 = match right.split(' ').next()? {
                    "cgroup2" => true,
                    "cgroup" => false,
                    _ => return None,
                };
                Some((PathBuf::from(unescape(mount_point)), v2))
            })
            .collect())
    }

    /// mountinfo writes space, tab, newline and backslash as `\ooo`.
    pub(crate) fn unescape(field: &str) -> OsString {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok());
            match (bytes[i], octal.and_then(|o| u8::from_str_radix(o, 8).ok())) {
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
        OsString::from_vec(out)
    }

    /// Held shared while creating containers and exclusive while removing parent
    /// cgroups, so no parent goes between a start's check of it and runc's use of it.
    pub(crate) struct CgroupLock {
        _flock: Flock<File>,
    }

    impl CgroupLock {
        pub(crate) fn shared() -> Result<CgroupLock> {
            CgroupLock::take(FlockArg::LockShared)
        }

        pub(super) fn exclusive() -> Result<CgroupLock> {
            CgroupLock::take(FlockArg::LockExclusive)
        }

        fn take(arg: FlockArg) -> Result<CgroupLock> {
            let path = Path::new(STATE_DIR).join("cgroups.lock");
            // A fresh open file description per taker, so flock excludes threads too.
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let flock = Flock::lock(file, arg)
                .map_err(|(_, e)| anyhow!("flock {}: {e}", path.display()))?;
            Ok(CgroupLock { _flock: flock })
        }
    }

    /// Marks every parent of `cgroups_path` that does not exist yet in some hierarchy:
    /// runc is about to create it, so it is the harness's to remove later.
    pub(crate) fn mark_new_ancestors(cgroups_path: &str) -> Result<()> {
        let parts: Vec<&str> = cgroups_path.trim_matches('/').split('/').collect();
        for mount in cgroup_mounts()? {
            for depth in 1..parts.len() {
                let dir = mount.join(parts[..depth].join("/"));
                if !dir.exists() {
                    let name = state::hex(dir.as_os_str().as_encoded_bytes());
                    let marker = state_dir(state::OWNED_CGROUPS).join(name);
                    File::create(&marker)
                        .with_context(|| format!("creating {}", marker.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Removes a container's own cgroup (if given) and every empty marked parent.
    pub(crate) fn release(leaf: Option<&str>) -> Result<()> {
        let _exclusive = CgroupLock::exclusive()?;
        if let Some(leaf) = leaf {
            remove_leaf(leaf)?;
        }
        release_owned()
    }

    /// Removes a container's cgroup from every hierarchy (runc delete does that too,
    /// unless it failed or never ran).
    pub(crate) fn remove_leaf(cgroups_path: &str) -> Result<()> {
        let rel = cgroups_path.trim_start_matches('/');
        for mount in cgroup_mounts()? {
            rmdir_patiently(&mount.join(rel))?;
        }
        Ok(())
    }

    /// Removes, deepest first, the marked directories that no longer have children.
    /// The caller holds the exclusive [`CgroupLock`].
    pub(super) fn release_owned() -> Result<()> {
        let markers = state_dir(state::OWNED_CGROUPS);
        let mut owned = Vec::new();
        let entries =
            fs::read_dir(&markers).with_context(|| format!("listing {}", markers.display()))?;
        for entry in entries {
            let marker = entry?.path();
            let name = marker.file_name().unwrap_or_default().to_string_lossy();
            match state::unhex(&name) {
                Some(dir) => owned.push((PathBuf::from(OsString::from_vec(dir)), marker)),
                None => fs::remove_file(&marker)?,
            }
        }
        owned.sort_by_key(|(dir, _)| Reverse(dir.components().count()));
        let mut problems = Vec::new();
        for (dir, marker) in owned {
            let has_children = match fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir())),
                Err(err) if err.kind() == ErrorKind::NotFound => false,
                Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
            };
            if has_children {
                continue;
            }
            match rmdir_patiently(&dir) {
                Ok(()) => fs::remove_file(&marker)?,
                Err(err) => problems.push(format!("{err:#}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    /// rmdir that waits out EBUSY (a cgroup's last tasks take a moment to leave it)
    /// and treats an already removed directory as success.
    pub(crate) fn rmdir_patiently(dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
                Err(err)
                    if err.raw_os_error() == Some(Errno::EBUSY as i32)
                        && Instant::now() < deadline =>
                {
                    sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err).with_context(|| format!("rmdir {}", dir.display())),
            }
        }
    }
}

pub(crate) mod state {
    //! The harness's directories under `STATE_DIR`, which process owns what in them,
    //! and small helpers.

    use std::fs::{self, File};
    use std::io::{ErrorKind, Read};
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, MutexGuard};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;

    use super::{POLL, STATE_DIR};

    pub(super) const BUNDLES: &str = "bundles";
    pub(super) const ROOTFS: &str = "rootfs";
    pub(super) const OWNED_CGROUPS: &str = "owned-cgroups";

    pub(super) fn state_dir(sub: &str) -> PathBuf {
        Path::new(STATE_DIR).join(sub)
    }

    pub(crate) fn ensure_dirs() -> Result<()> {
        for sub in [BUNDLES, ROOTFS, OWNED_CGROUPS, "runc"] {
            let dir = state_dir(sub);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Creates the state directories and makes this process the reaper of its
    /// containers' PID 1 (see the module doc of `runc`).
    pub(super) fn prepare_process() -> Result<()> {
        static SUBREAPER: Mutex<bool> = Mutex::new(false);
        ensure_dirs()?;
        let mut done = lock(&SUBREAPER);
        if !*done {
            nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
            *done = true;
        }
        Ok(())
    }

    /// `<pid>-<start time>` of this process: unique even if the pid is later reused.
    pub(crate) fn owner_tag() -> Result<String> {
        let pid = std::process::id();
        let start = start_time(pid).context("reading this process's start time")?;
        Ok(format!("{pid}-{start}"))
    }

    pub(crate) fn start_time(pid: u32) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22; the comm before it may hold spaces, so count from the last ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()
    }

    /// Whether the process named by a `<pid>-<start>-…` harness directory still runs.
    pub(crate) fn owner_alive(dir: &Path) -> bool {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let mut parts = name.splitn(3, '-');
        let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
            return false;
        };
        match (pid.parse(), start.parse::<u64>()) {
            (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
            _ => false,
        }
    }

    /// Waits up to 2 s for a killed process to go away. If it was re-parented to this
    /// process (its crashed owner was our child), reaps it: `runc delete` waits for the
    /// pid to vanish, and a zombie of ours never would.
    pub(crate) fn wait_gone(pid: Pid) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(_) => return,
                Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => return,
                Err(_) => {}
            }
            sleep(POLL);
        }
    }

    pub(crate) fn remove_dir_all_if_exists(dir: &Path) -> Result<()> {
        match fs::remove_dir_all(dir) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn read_lossy(path: &Path) -> String {
        let bytes = fs::read(path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A poisoned lock only means a test panicked while holding it; the data is fine.
    pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
        let mut bytes = [0u8; N];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom")?;
        Ok(bytes)
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(s.get(i..i + 2)?, 16).ok();
        (0..s.len()).step_by(2).map(byte).collect()
    }
}
