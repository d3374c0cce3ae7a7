//! `cargo xtask image`: the agent's container image, built here with Podman from
//! `deploy/image/Containerfile`, saved as a Docker archive under `target/image/` that
//! `docker load`, `podman load` and `ctr images import` read.
//!
//! The agent is compiled on the host (where `cargo xtask setup` put the eBPF toolchain) and
//! the build context is staged from it: `rootfs/usr/bin/gracewatch` with debug info
//! stripped, plus each shared library `ldd` lists, at its own path. Podman runs on private
//! storage inside `target/image/` (the vfs driver: no mounts), removed after the save with
//! the blob-info cache Podman writes to /var/lib/containers when that did not exist, so
//! nothing is left in the machine's image store.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build, util};

/// The image the manifests name (deploy/kustomize/base/kustomization.yaml `images:`).
pub const IMAGE: &str = "ghcr.io/gracewatch/gracewatch";
pub const CONTAINERFILE: &str = "deploy/image/Containerfile";
/// Outside the private storage, what Podman creates (outermost first).
const PODMAN_OUTSIDE: &[&str] = &["/var/lib/containers", "/var/lib/containers/cache"];

/// The archive a profile's build writes: `target/image/gracewatch-<profile>.tar`.
pub fn archive(profile: &str) -> PathBuf {
    util::root()
        .join("target/image")
        .join(format!("gracewatch-{profile}.tar"))
}

pub fn run(release: bool) -> Result<()> {
    build::run(release)?;
    let profile = if release { "release" } else { "debug" };
    build_from(profile)
}

/// Stages the context from the already built binary of `profile` and builds the image.
pub fn build_from(profile: &str) -> Result<()> {
    util::require_root("image")?;
    let root = util::root();
    let binary = root.join("target").join(profile).join("gracewatch");
    if !binary.is_file() {
        bail!("{} is missing: build the agent first", binary.display());
    }
    let work = root.join("target/image");
    let context = work.join("context");
    let storage = work.join("storage");
    for dir in [&context, &storage] {
        remove_dir(dir)?;
    }
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    util::run_checked(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&binary)
            .arg(rootfs.join("usr/bin/gracewatch")),
    )?;
    for lib in shared_libraries(&binary)? {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the image holds the file under the name the loader asks for.
        std::fs::copy(&lib, &to)
            .with_context(|| format!("copying {} into the image", lib.display()))?;
    }

    let tag = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    let archive = archive(profile);
    let _ = std::fs::remove_file(&archive);
    // Podman keeps a blob-info cache in /var/lib/containers/cache whatever --root says;
    // what this build creates there goes again afterwards.
    let created_outside: Vec<&Path> = PODMAN_OUTSIDE
        .iter()
        .map(Path::new)
        .filter(|p| !p.exists())
        .collect();
    let result = (|| {
        util::run_checked(
            podman(&storage)
                .args(["build", "--quiet", "--pull=never", "-f"])
                .arg(root.join(CONTAINERFILE))
                .args(["-t", &tag])
                .arg(&context),
        )?;
        util::run_checked(
            podman(&storage)
                .args(["save", "--quiet", "--format", "docker-archive", "-o"])
                .arg(&archive)
                .arg(&tag),
        )
    })();
    // The private store holds nothing worth keeping once the archive is written.
    let mut cleanup = remove_dir(&storage);
    for path in created_outside {
        cleanup = cleanup.and(remove_dir(path));
    }
    result?;
    cleanup?;
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "built {tag} from the {profile} agent: {} ({:.1} MiB)",
        archive.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Podman on private storage under `storage` (vfs: no overlay mounts to clean up).
fn podman(storage: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .arg("--tmpdir")
        .arg(storage.join("tmp"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    cmd
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The absolute paths `ldd` lists for the binary (its libraries and the dynamic loader).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    if libs.is_empty() {
        bail!("ldd listed no libraries for {}", binary.display());
    }
    Ok(libs)
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fb4)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb4)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007fb4)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
