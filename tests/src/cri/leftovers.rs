//! What a containerd run can leave on the node once the daemon is gone, and how each is
//! removed: runc containers in its runc root, shims talking to its socket (and their
//! sockets under `/run/containerd/s`), mounts under its run directory (overlay rootfs,
//! sandbox `/dev/shm`), the pod cgroups it recorded, and the run directory itself.
//! Used by the daemon's own teardown and by the sweep of runs whose owner died.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Layout;
use crate::runc::{cgroup_mounts, cgroups, cmd, state};

/// Where containerd 1.6 shims put their sockets, whatever the daemon's state directory.
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// Removes all of it, in this order; returns what could not be removed.
pub(super) fn remove_all(layout: &Layout) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |r: Result<()>| {
        if let Err(err) = r {
            problems.push(format!("{err:#}"));
        }
    };
    note(kill_runc_containers(layout));
    note(kill_shims(layout));
    note(super::network::remove_leftovers(layout));
    note(remove_shim_sockets(layout));
    note(unmount_under(layout.dir()));
    note(remove_pod_cgroups(layout));
    note(remove_dir(layout.dir()));
    problems
}

/// Containers still known to the shims' runc (`<Root>/<namespace>`): killed and deleted.
fn kill_runc_containers(layout: &Layout) -> Result<()> {
    let root = layout.runc_root().join("k8s.io");
    if !root.exists() {
        return Ok(());
    }
    let runc = || {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&root);
        c
    };
    let list = cmd::run_checked(runc().args(["list", "--format", "json"]))?;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    let mut problems = Vec::new();
    for c in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = c["id"].as_str() else { continue };
        let _ = cmd::run_captured(runc().args(["kill", id, "KILL"]));
        if let Some(pid) = c["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
            if pid > 0 {
                state::wait_gone(Pid::from_raw(pid));
            }
        }
        let out = cmd::run_captured(runc().args(["delete", "--force", id]))?;
        if !out.status.success() {
            problems.push(format!(
                "runc delete {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

/// Shims whose command line names this run's socket (`-address <socket>`).
pub(super) fn shim_pids(layout: &Layout) -> Vec<Pid> {
    let socket = layout.socket();
    processes()
        .into_iter()
        .filter(|(_, args)| {
            let is_shim = args.first().is_some_and(|a| {
                Path::new(a)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
            });
            is_shim
                && args
                    .windows(2)
                    .any(|w| w[0] == "-address" && Path::new(&w[1]) == socket)
        })
        .map(|(pid, _)| pid)
        .collect()
}

fn kill_shims(layout: &Layout) -> Result<()> {
    for pid in shim_pids(layout) {
        let _ = kill(pid, Signal::SIGKILL);
        state::wait_gone(pid);
    }
    Ok(())
}

/// (pid, argv) of every process, as far as /proc shows them.
pub(super) fn processes() -> Vec<(Pid, Vec<String>)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((Pid::from_raw(pid), args))
        })
        .collect()
}

/// A shim removes its socket when it exits normally; a killed one leaves it. Its name is
/// sha256(`<daemon socket>/<namespace>/<shim id>`), the shim id being the sandbox's.
fn remove_shim_sockets(layout: &Layout) -> Result<()> {
    let tasks = layout.state().join("io.containerd.runtime.v2.task/k8s.io");
    let Ok(entries) = fs::read_dir(&tasks) else {
        return Ok(());
    };
    let socket = layout.socket();
    for entry in entries.flatten() {
        let key = socket.join("k8s.io").join(entry.file_name());
        let digest =
            ring::digest::digest(&ring::digest::SHA256, key.as_os_str().as_encoded_bytes());
        let path = Path::new(SHIM_SOCKETS).join(state::hex(digest.as_ref()));
        match fs::remove_file(&path) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing {}", path.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first.
pub(super) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|m| PathBuf::from(cgroups::unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    Ok(mounts)
}

fn unmount_under(dir: &Path) -> Result<()> {
    for mount in mounts_under(dir)? {
        // Lazy: a mount some dying process still holds goes as soon as it lets go.
        umount2(&mount, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", mount.display()))?;
    }
    Ok(())
}

/// The pod cgroups the run recorded (kubelet removes them; containerd does not): any
/// container cgroup still in them, their processes killed first, then the pod's own
/// directory and the parents the harness created, in every hierarchy.
fn remove_pod_cgroups(layout: &Layout) -> Result<()> {
    let recorded = match fs::read_to_string(layout.pod_cgroups()) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).context("reading the recorded pod cgroups"),
    };
    for pod in recorded.lines().filter(|l| l.starts_with("/kubepods/")) {
        remove_pod_cgroup(pod)?;
    }
    Ok(())
}

/// Removes one pod cgroup (`/kubepods/<qos>/pod<uid>`) from every hierarchy, with any
/// container cgroup still in it.
pub(super) fn remove_pod_cgroup(pod: &str) -> Result<()> {
    let rel = pod.trim_start_matches('/');
    for mount in cgroup_mounts()? {
        let Ok(children) = fs::read_dir(mount.join(rel)) else {
            continue;
        };
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            kill_cgroup_members(&child.path());
            let leaf = format!("{pod}/{}", child.file_name().to_string_lossy());
            cgroups::remove_leaf(&leaf)?;
        }
    }
    cgroups::release(Some(pod))
}

/// SIGKILLs the processes left in a container cgroup whose runtime is gone.
fn kill_cgroup_members(dir: &Path) {
    let procs = ["cgroup.procs", "tasks"]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok())
        .unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGKILL);
        state::wait_gone(pid);
    }
}

/// Removes the run directory, unless something is still mounted in it (then removing
/// would reach into the mounted file system).
fn remove_dir(dir: &Path) -> Result<()> {
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!(
            "not removing {}: still mounted: {}",
            dir.display(),
            left.iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    state::remove_dir_all_if_exists(dir)
}

/// Removes `/run/containerd/s` and `/run/containerd` if a harness run created them and
/// they are empty (a real containerd on the node keeps them busy, and they are not ours).
pub(super) fn remove_run_containerd(marker: &Path) {
    if !marker.exists() {
        return;
    }
    let _ = fs::remove_dir(SHIM_SOCKETS);
    let _ = fs::remove_dir("/run/containerd");
    if !Path::new("/run/containerd").exists() {
        let _ = fs::remove_file(marker);
    }
}
