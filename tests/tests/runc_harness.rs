//! Root tests of the runc harness itself: the facts the agent's root and end-to-end
//! tests build on (who PID 1 is, which signals are needed, which cgroup and cgroup id a
//! container gets, how its exit status is seen) and that nothing is left on the node.
//!
//! They need root and `runc`; run as another user each test says so and passes.
//! The tests take one lock so that "nothing left behind" can be asserted on the whole
//! node; the harness's own concurrency is exercised inside one test instead.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gracewatch_tests::runc::{
    cgroup_mounts, cgroup_v2_mount, runc_list_ids, sweep_stale, Container, ContainerSpec,
    ExitStatus, PodRef, Qos, STATE_DIR,
};
use nix::sys::signal::Signal;

static SERIAL: Mutex<()> = Mutex::new(());

/// Set in the child process that plays a crashed run (see `crash_helper`).
const CRASH_HELPER_ENV: &str = "GRACEWATCH_CRASH_HELPER_OUT";

/// `None` when not root: the test then prints why and passes.
fn root_only(test: &str) -> Result<Option<MutexGuard<'static, ()>>> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{test}: skipped: starting runc containers needs root");
        return Ok(None);
    }
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    sweep_stale()?;
    Ok(Some(guard))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    let dash = |i: usize| [8, 13, 18, 23].contains(&i);
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| {
            if dash(i) {
                c == b'-'
            } else {
                c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
            }
        })
        && b[14] == b'4'
        && b"89ab".contains(&b[19])
}

#[test]
fn term_trapping_pid1_exits_within_a_second_without_kill() -> Result<()> {
    let Some(_serial) = root_only("term_trapping_pid1_exits_within_a_second_without_kill")? else {
        return Ok(());
    };
    let script = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let container = Container::start(ContainerSpec::shell("trapper", script)?)?;
    // Until the trap is installed, TERM would be dropped like any default-action
    // signal sent to a namespace init.
    container.wait_for_log("ready", Duration::from_secs(5))?;

    let report = container.stop_like_kubelet(Duration::from_secs(5))?;

    assert_eq!(report.term.signal, "TERM");
    assert_eq!(report.kill, None, "KILL was sent: {report:?}");
    assert!(!report.kill_needed());
    assert_eq!(report.status, ExitStatus::Code(0));
    let took = report.exited.boottime_ns - report.term.before.boottime_ns;
    assert!(took < 1_000_000_000, "exit took {} ms after TERM", ms(took));
    assert_eq!(container.log()?, "ready\ngot TERM\n");
    Ok(())
}

#[test]
fn shell_pid1_ignores_term_and_needs_kill_after_grace() -> Result<()> {
    let Some(_serial) = root_only("shell_pid1_ignores_term_and_needs_kill_after_grace")? else {
        return Ok(());
    };
    let container = Container::start(ContainerSpec::shell("shell", "sleep 1000")?)?;
    let pid = container.init_pid()?;
    // busybox ash execs the last command of `-c`: PID 1 becomes `sleep` itself (a
    // moment after it was `sh`), with no SIGTERM handler, so the kernel drops the
    // SIGTERM sent to the namespace init.
    let comm = || fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(2);
    while comm() != "sleep\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(comm(), "sleep\n");

    let report = container.stop_like_kubelet(Duration::from_secs(1))?;

    let kill = report
        .kill
        .clone()
        .context("no KILL after the grace period")?;
    assert_eq!(kill.signal, "KILL");
    assert_eq!(report.status, ExitStatus::Signal(Signal::SIGKILL));
    assert_eq!(report.status.kubelet_exit_code(), 137);
    let waited = kill.before.boottime_ns - report.term.after.boottime_ns;
    assert!(
        (1_000_000_000..1_500_000_000).contains(&waited),
        "KILL sent {} ms after TERM returned",
        ms(waited)
    );
    assert!(report.exited.realtime_ns >= kill.after.realtime_ns);
    Ok(())
}

#[test]
fn cgroup_id_is_the_v2_dir_inode_and_pid1_is_in_the_kubelet_path() -> Result<()> {
    let test = "cgroup_id_is_the_v2_dir_inode_and_pid1_is_in_the_kubelet_path";
    let Some(_serial) = root_only(test)? else {
        return Ok(());
    };
    let v2 = cgroup_v2_mount()?;
    for (name, qos) in [
        ("besteffort", Some(Qos::BestEffort)),
        ("burstable", Some(Qos::Burstable)),
        ("guaranteed", Some(Qos::Guaranteed)),
        ("docker", None),
    ] {
        let mut spec = ContainerSpec::new(name, &["sleep", "1000"])?;
        spec.pod = qos.map(PodRef::new).transpose()?;
        let container = Container::start(spec)?;
        let id = container.id();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b"0123456789abcdef".contains(&b)),
            "{id}"
        );
        let expected = match (qos, container.pod_uid()) {
            (Some(Qos::BestEffort), Some(uid)) => format!("/kubepods/besteffort/pod{uid}/{id}"),
            (Some(Qos::Burstable), Some(uid)) => format!("/kubepods/burstable/pod{uid}/{id}"),
            (Some(Qos::Guaranteed), Some(uid)) => format!("/kubepods/pod{uid}/{id}"),
            (None, None) => format!("/docker/{id}"),
            other => panic!("pod uid does not match the spec: {other:?}"),
        };
        if let Some(uid) = container.pod_uid() {
            assert!(is_uuid_v4(uid), "{uid}");
        }
        assert_eq!(container.cgroups_path(), expected);

        let pid = container.init_pid()?;
        let lines = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let unified: Vec<&str> = lines.lines().filter(|l| l.starts_with("0::")).collect();
        assert_eq!(unified, [format!("0::{expected}")], "{name}");
        // In the hybrid layout runc also puts it in every v1 controller.
        for line in lines.lines() {
            assert!(line.ends_with(&format!(":{expected}")), "{name}: {line}");
        }
        let dir = v2.join(expected.trim_start_matches('/'));
        assert_eq!(container.cgroup_v2_dir(), dir);
        assert_eq!(container.cgroup_id()?, fs::metadata(&dir)?.ino(), "{name}");
        let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
        assert_eq!(procs, format!("{pid}\n"), "{name}");
    }
    Ok(())
}

/// runc run --detach does not wait for the container; the harness process is the
/// subreaper that PID 1 is re-parented to, so waitpid gives its exit status.
#[test]
fn exit_code_3_is_observed_by_reaping_pid1() -> Result<()> {
    let Some(_serial) = root_only("exit_code_3_is_observed_by_reaping_pid1")? else {
        return Ok(());
    };
    let container = Container::start(ContainerSpec::shell("exits", "exit 3")?)?;

    let status = container.wait_exit(Duration::from_secs(5))?;

    assert_eq!(status, Some(ExitStatus::Code(3)));
    assert_eq!(status.map(ExitStatus::kubelet_exit_code), Some(3));
    assert!(container.wait_stopped(Duration::ZERO)?);
    let err = container
        .init_pid()
        .map(drop)
        .err()
        .context("init_pid after exit")?;
    assert!(
        err.to_string().ends_with("PID 1 has exited (Code(3))"),
        "{err}"
    );
    Ok(())
}

#[test]
fn pid1_runs_the_spec_in_its_own_namespaces() -> Result<()> {
    let Some(_serial) = root_only("pid1_runs_the_spec_in_its_own_namespaces")? else {
        return Ok(());
    };
    let mut spec = ContainerSpec::shell("web-0", "echo \"greeting=$GREETING\"; sleep 1000")?;
    spec.env.push("GREETING=hello".to_owned());
    let container = Container::start(spec)?;
    container.wait_for_log("greeting=hello\n", Duration::from_secs(5))?;

    let cmdline = container.exec_stdout(&["cat", "/proc/1/cmdline"])?;
    assert_eq!(cmdline, "sleep\u{0}1000\u{0}");
    assert_eq!(container.exec_stdout(&["hostname"])?, "web-0\n");
    let net_dev = container.exec_stdout(&["cat", "/proc/net/dev"])?;
    let devices: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(devices, ["lo"]);
    let flags = container.exec_stdout(&["cat", "/sys/class/net/lo/flags"])?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)?;
    assert_eq!(flags & 1, 1, "lo is down: {flags:#x}");
    let failed = container.exec(&["sh", "-c", "echo oops >&2; exit 7"])?;
    assert_eq!(failed.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&failed.stderr), "oops\n");
    Ok(())
}

/// What a container leaves that must be gone after it.
struct Traces {
    id: String,
    pid: u32,
    bundle: PathBuf,
    dirs: Vec<PathBuf>,
}

fn traces(c: &Container) -> Result<Traces> {
    Ok(Traces {
        id: c.id().to_owned(),
        pid: c.init_pid()?,
        bundle: c.bundle().to_owned(),
        dirs: c.cgroup_dirs()?,
    })
}

fn ensure_gone(t: &Traces) -> Result<()> {
    ensure!(
        !runc_list_ids()?.contains(&t.id),
        "runc still lists {}",
        t.id
    );
    ensure!(!t.bundle.exists(), "{} left behind", t.bundle.display());
    for dir in &t.dirs {
        ensure!(!dir.exists(), "{} left behind", dir.display());
    }
    let proc = PathBuf::from(format!("/proc/{}", t.pid));
    ensure!(!proc.exists(), "PID 1 {} still exists", t.pid);
    Ok(())
}

/// Every directory of the `kubepods` and `docker` trees in every hierarchy. Other
/// sessions on the machine may keep cgroups of their own there, so the tests compare
/// against a snapshot instead of expecting the trees to be absent.
fn parent_cgroups() -> Result<Vec<PathBuf>> {
    fn walk(dir: PathBuf, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(&dir) {
            out.push(dir);
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(entry.path(), out);
                }
            }
        }
    }
    let mut dirs = Vec::new();
    for mount in cgroup_mounts()? {
        walk(mount.join("kubepods"), &mut dirs);
        walk(mount.join("docker"), &mut dirs);
    }
    Ok(dirs)
}

/// Nothing the harness created above its containers' cgroups is left.
fn ensure_no_new_parents(before: &[PathBuf]) -> Result<()> {
    let new: Vec<PathBuf> = parent_cgroups()?
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    ensure!(new.is_empty(), "cgroup directories left behind: {new:?}");
    let markers = fs::read_dir(Path::new(STATE_DIR).join("owned-cgroups"))?.count();
    ensure!(
        markers == 0,
        "{markers} cgroup ownership markers left behind"
    );
    Ok(())
}

#[test]
fn drop_leaves_no_container_bundle_cgroup_or_process() -> Result<()> {
    let Some(_serial) = root_only("drop_leaves_no_container_bundle_cgroup_or_process")? else {
        return Ok(());
    };
    let before = parent_cgroups()?;
    let pod = PodRef::new(Qos::Burstable)?;
    let mut app = ContainerSpec::shell("app", "while true; do sleep 0.1; done")?;
    app.pod = Some(pod.clone());
    let mut sidecar = ContainerSpec::new("sidecar", &["sleep", "1000"])?;
    sidecar.pod = Some(pod.clone());
    let app = Container::start(app)?;
    let sidecar = Container::start(sidecar)?;
    let (app_traces, sidecar_traces) = (traces(&app)?, traces(&sidecar)?);
    let pod_dir = cgroup_v2_mount()?.join(format!("kubepods/burstable/pod{}", pod.uid));
    assert!(sidecar.cgroup_v2_dir().starts_with(&pod_dir));

    drop(app);
    ensure_gone(&app_traces)?;
    assert!(
        pod_dir.exists(),
        "the pod's cgroup went while its sidecar runs"
    );
    assert!(sidecar.cgroup_v2_dir().exists());

    drop(sidecar);
    ensure_gone(&sidecar_traces)?;
    assert!(!pod_dir.exists(), "{} left behind", pod_dir.display());
    ensure_no_new_parents(&before)
}

#[test]
fn parallel_starts_get_distinct_ids_and_cgroups() -> Result<()> {
    let Some(_serial) = root_only("parallel_starts_get_distinct_ids_and_cgroups")? else {
        return Ok(());
    };
    let before = parent_cgroups()?;
    let started: Vec<Result<Container>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                s.spawn(move || {
                    let spec =
                        ContainerSpec::shell(&format!("loop-{i}"), "while :; do sleep 0.1; done");
                    Container::start(spec?)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let containers = started.into_iter().collect::<Result<Vec<_>>>()?;
    let mut ids: Vec<&str> = containers.iter().map(Container::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    let mut listed = runc_list_ids()?;
    listed.sort();
    assert_eq!(listed, ids);
    let mut cgroup_ids = containers
        .iter()
        .map(Container::cgroup_id)
        .collect::<Result<Vec<_>>>()?;
    cgroup_ids.sort();
    cgroup_ids.dedup();
    assert_eq!(cgroup_ids.len(), 4);

    let all = containers.iter().map(traces).collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        for c in containers {
            s.spawn(move || drop(c));
        }
    });
    all.iter().try_for_each(ensure_gone)?;
    ensure_no_new_parents(&before)
}

/// Not a test: the child process of `sweep_stale_removes_a_crashed_runs_leftovers`.
/// It starts a container and exits without dropping it, as a crashed run would.
#[test]
#[ignore = "helper process for sweep_stale_removes_a_crashed_runs_leftovers"]
fn crash_helper() -> Result<()> {
    let Ok(out) = std::env::var(CRASH_HELPER_ENV) else {
        return Ok(());
    };
    let container = Container::start(ContainerSpec::new("orphan", &["sleep", "1000"])?)?;
    let t = traces(&container)?;
    let mut record = vec![t.id, t.pid.to_string(), t.bundle.display().to_string()];
    record.extend(t.dirs.iter().map(|d| d.display().to_string()));
    fs::write(out, record.join("\n"))?;
    std::process::exit(0);
}

#[test]
fn sweep_stale_removes_a_crashed_runs_leftovers() -> Result<()> {
    let Some(_serial) = root_only("sweep_stale_removes_a_crashed_runs_leftovers")? else {
        return Ok(());
    };
    let before = parent_cgroups()?;
    let out = std::env::temp_dir().join(format!("gracewatch-crash-{}", std::process::id()));
    let helper = Command::new(std::env::current_exe()?)
        .args(["--exact", "crash_helper", "--ignored", "--test-threads=1"])
        .env(CRASH_HELPER_ENV, &out)
        .output()?;
    ensure!(helper.status.success(), "crash helper failed: {helper:?}");
    let record = fs::read_to_string(&out)?;
    fs::remove_file(&out)?;
    let mut lines = record.lines();
    let mut next = || lines.next().context("short crash helper record");
    let t = Traces {
        id: next()?.to_owned(),
        pid: next()?.parse()?,
        bundle: PathBuf::from(next()?),
        dirs: lines.map(PathBuf::from).collect(),
    };
    assert!(
        runc_list_ids()?.contains(&t.id),
        "the crashed run left no container"
    );
    assert!(t.bundle.exists(), "the crashed run left no bundle");
    assert!(
        Path::new(&format!("/proc/{}", t.pid)).exists(),
        "its PID 1 is not running"
    );

    sweep_stale()?;

    ensure_gone(&t)?;
    ensure_no_new_parents(&before)?;
    let rootfs_left = fs::read_dir(Path::new(STATE_DIR).join("rootfs"))?.count();
    assert_eq!(rootfs_left, 0, "the crashed run's rootfs is left");
    Ok(())
}
