//! The two images a test node needs, made here from Debian's static busybox and loaded
//! with `ctr images import` (no registry): the app image (`sh` and every applet) and the
//! pause image the CRI plugin runs as each pod's sandbox (the same layer, with an
//! entrypoint that sleeps). Both go into one docker-format archive: `manifest.json`, one
//! config per image, and the shared layer.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{APP_IMAGE, PAUSE_IMAGE};
use crate::runc::{cmd, rootfs, state, BUSYBOX};

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes the archive holding both images to `path`.
pub(super) fn write_archive(path: &Path) -> Result<()> {
    let layer = layer()?;
    let diff_id = format!(
        "sha256:{}",
        state::hex(ring::digest::digest(&ring::digest::SHA256, &layer).as_ref())
    );
    let app = image_config(&diff_id, None);
    let pause = image_config(&diff_id, Some(&["/bin/sleep", "2147483647"]));
    let manifest = json!([
        {"Config": "app.json", "RepoTags": [APP_IMAGE], "Layers": ["layer.tar"]},
        {"Config": "pause.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]},
    ]);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut archive = tar::Builder::new(BufWriter::new(file));
    for (name, bytes) in [
        ("layer.tar", layer),
        ("app.json", serde_json::to_vec(&app)?),
        ("pause.json", serde_json::to_vec(&pause)?),
        ("manifest.json", serde_json::to_vec(&manifest)?),
    ] {
        let mut header = header(tar::EntryType::Regular, 0o644);
        header.set_size(bytes.len() as u64);
        archive.append_data(&mut header, name, bytes.as_slice())?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

/// `ctr -n k8s.io images import`: the namespace the CRI plugin reads, unpacked for its
/// snapshotter.
pub(super) fn import(socket: &Path, archive: &Path) -> Result<()> {
    let mut ctr = Command::new("ctr");
    ctr.arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io", "images", "import"])
        .args(["--snapshotter", "overlayfs"])
        .arg(archive);
    cmd::run_checked(&mut ctr)
        .map(drop)
        .context("importing the test images (is containerd installed? cargo xtask setup)")
}

fn image_config(diff_id: &str, entrypoint: Option<&[&str]>) -> Value {
    let mut config = json!({"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"});
    if let Some(entrypoint) = entrypoint {
        config["Entrypoint"] = json!(entrypoint);
        config["Cmd"] = Value::Null;
    }
    json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
}

/// The OCI name of this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The layer: `/bin/busybox`, a symlink per applet, a minimal `/etc`, empty mount points.
fn layer() -> Result<Vec<u8>> {
    rootfs::ensure_static(Path::new(BUSYBOX))?;
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let listing = cmd::run_checked(Command::new(BUSYBOX).arg("--list-full"))?;
    let applets: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|a| a.trim().trim_start_matches('/').to_owned())
        .filter(|a| !a.is_empty() && a != "bin/busybox")
        .collect();
    if !applets.iter().any(|a| a == "bin/sh") {
        bail!("{BUSYBOX} has no sh applet");
    }
    let mut dirs: BTreeSet<String> = ["bin", "etc", "proc", "dev", "sys", "tmp", "root"]
        .into_iter()
        .map(String::from)
        .collect();
    for applet in &applets {
        let mut parent = Path::new(applet).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    let mut layer = tar::Builder::new(Vec::new());
    // BTreeSet order puts each parent before its children.
    for dir in &dirs {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        let mut header = header(tar::EntryType::Directory, mode);
        layer.append_data(&mut header, format!("{dir}/"), io::empty())?;
    }
    let files: [(&str, &[u8], u32); 3] = [
        ("bin/busybox", &busybox, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\n", 0o644),
    ];
    for (path, bytes, mode) in files {
        let mut header = header(tar::EntryType::Regular, mode);
        header.set_size(bytes.len() as u64);
        layer.append_data(&mut header, path, bytes)?;
    }
    for applet in &applets {
        let mut header = header(tar::EntryType::Symlink, 0o777);
        layer.append_link(&mut header, applet, "/bin/busybox")?;
    }
    Ok(layer.into_inner()?)
}

/// A header owned by root, with a fixed time so the layer's digest is reproducible.
fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header
}
