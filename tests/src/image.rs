//! The agent's container image run the way the DaemonSet runs it: every privilege setting
//! is read from deploy/kustomize/base/daemonset.yaml and turned into the engine's flags,
//! so the manifest is the one list of capabilities, mounts and limits the tests exercise.
//! A setting this module cannot express as an engine flag is an error, not skipped.

use std::path::PathBuf;

use anyhow::{bail, Context};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};

use crate::deploy;

/// What the manifests call the image; `cargo xtask image` tags the archive so.
pub const IMAGE: &str = "ghcr.io/gracewatch/gracewatch:0.1.0";

/// The archive `cargo xtask image` writes from the debug build.
pub fn archive() -> PathBuf {
    deploy::root().join("target/image/gracewatch-debug.tar")
}

/// The archive, if it is at least as new as the agent binary it should contain.
pub fn fresh_archive() -> anyhow::Result<PathBuf> {
    let archive = archive();
    let built = |p: &PathBuf| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .with_context(|| format!("{} is missing", p.display()))
    };
    let image_time = built(&archive).context("run `cargo xtask image` first")?;
    let binary = crate::agent::binary();
    if built(&binary)? > image_time {
        bail!(
            "{} is older than {}: run `cargo xtask image` again",
            archive.display(),
            binary.display()
        );
    }
    Ok(archive)
}

/// The base's DaemonSet.
pub fn daemonset() -> anyhow::Result<DaemonSet> {
    let path = deploy::deploy("kustomize/base/daemonset.yaml");
    let docs = deploy::read_documents(&path)?;
    let [doc] = docs.as_slice() else {
        bail!("{} should hold one object", path.display());
    };
    serde_json::from_value(doc.clone())
        .with_context(|| format!("{} is no DaemonSet", path.display()))
}

/// The agent container of the DaemonSet.
pub fn agent_container(ds: &DaemonSet) -> anyhow::Result<&Container> {
    ds.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .context("the DaemonSet has no container")
}

/// The capabilities the manifest adds (after dropping ALL), as written there (`BPF`).
pub fn added_capabilities(ds: &DaemonSet) -> anyhow::Result<Vec<String>> {
    let caps = agent_container(ds)?
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .context("the agent container sets no capabilities")?;
    Ok(caps.add.clone().unwrap_or_default())
}

/// The `docker run` / `podman run` flags that give a container exactly the pod's and the
/// agent container's security context, host namespaces, read-only host mounts and memory
/// limit, less the capability `without` (as the manifest spells it) when given.
pub fn engine_flags(ds: &DaemonSet, without: Option<&str>) -> anyhow::Result<Vec<String>> {
    let template = &ds.spec.template;
    let pod = template.spec.as_ref().context("no pod spec")?;
    let container = agent_container(ds)?;
    let mut flags: Vec<String> = Vec::new();

    if pod.host_pid == Some(true) {
        push(&mut flags, &["--pid", "host"]);
    }
    if pod.host_network == Some(true) || pod.host_ipc == Some(true) {
        bail!("hostNetwork/hostIPC in the manifest: teach engine_flags to map them");
    }
    let sc = container
        .security_context
        .as_ref()
        .context("the agent container has no securityContext")?;
    let known = k8s_openapi::api::core::v1::SecurityContext {
        allow_privilege_escalation: sc.allow_privilege_escalation,
        capabilities: sc.capabilities.clone(),
        privileged: sc.privileged,
        read_only_root_filesystem: sc.read_only_root_filesystem,
        run_as_non_root: sc.run_as_non_root,
        run_as_user: sc.run_as_user,
        seccomp_profile: sc.seccomp_profile.clone(),
        app_armor_profile: sc.app_armor_profile.clone(),
        ..Default::default()
    };
    if &known != sc {
        bail!("the agent's securityContext sets fields engine_flags does not map: {sc:?}");
    }
    if sc.privileged == Some(true) {
        push(&mut flags, &["--privileged"]);
    }
    if let Some(uid) = sc.run_as_user {
        flags.push("--user".into());
        flags.push(uid.to_string());
    }
    if sc.read_only_root_filesystem == Some(true) {
        push(&mut flags, &["--read-only"]);
    }
    if sc.allow_privilege_escalation == Some(false) {
        push(&mut flags, &["--security-opt", "no-new-privileges"]);
    }
    if let Some(caps) = &sc.capabilities {
        for cap in caps.drop.iter().flatten() {
            flags.push("--cap-drop".into());
            flags.push(cap.clone());
        }
        let added = caps.add.clone().unwrap_or_default();
        if let Some(missing) = without {
            if !added.iter().any(|c| c == missing) {
                bail!("{missing} is not among the manifest's capabilities {added:?}");
            }
        }
        for cap in added.iter().filter(|c| Some(c.as_str()) != without) {
            flags.push("--cap-add".into());
            flags.push(cap.clone());
        }
    }
    match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => push(&mut flags, &["--security-opt", "seccomp=unconfined"]),
        Some(other) => bail!("seccomp profile type {other} has no engine flag here"),
    }
    let annotation = format!(
        "container.apparmor.security.beta.kubernetes.io/{}",
        container.name
    );
    let apparmor = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(&annotation).cloned())
        .or_else(|| {
            sc.app_armor_profile
                .as_ref()
                .map(|p| p.type_.to_lowercase())
        });
    match apparmor.as_deref() {
        None | Some("runtime/default") | Some("runtimedefault") => {}
        Some("unconfined") => push(&mut flags, &["--security-opt", "apparmor=unconfined"]),
        Some(other) => bail!("AppArmor profile {other} has no engine flag here"),
    }

    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volumeMount {} has no volume", mount.name))?;
        let host = volume
            .host_path
            .as_ref()
            .with_context(|| format!("volume {} is not a hostPath", volume.name))?;
        let mode = if mount.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        flags.push("-v".into());
        flags.push(format!("{}:{}:{mode}", host.path, mount.mount_path));
    }
    if let Some(memory) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    {
        flags.push("--memory".into());
        flags.push(memory_bytes(&memory.0)?.to_string());
    }
    Ok(flags)
}

fn push(flags: &mut Vec<String>, items: &[&str]) {
    flags.extend(items.iter().map(|s| s.to_string()));
}

/// A Kubernetes memory quantity in bytes (binary and decimal suffixes).
fn memory_bytes(quantity: &str) -> anyhow::Result<u64> {
    let (digits, unit) = quantity.split_at(
        quantity
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(quantity.len()),
    );
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad quantity {quantity:?}"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => bail!("unsupported memory unit in {quantity:?}"),
    };
    Ok(n * factor)
}

/// The value of `--<flag>` in the agent container's args.
pub fn arg_value<'a>(container: &'a Container, flag: &str) -> Option<&'a str> {
    let args = container.args.as_deref()?;
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        for (q, bytes) in [
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("500M", 500_000_000),
            ("4096", 4096),
        ] {
            assert_eq!(memory_bytes(q).expect(q), bytes, "{q}");
        }
        assert!(memory_bytes("1.5Gi").is_err());
    }

    #[test]
    fn manifest_maps_to_flags() {
        let ds = daemonset().expect("daemonset");
        let flags = engine_flags(&ds, None).expect("flags").join(" ");
        for want in [
            "--pid host",
            "--read-only",
            "--cap-drop ALL",
            "--cap-add BPF",
            "--security-opt no-new-privileges",
            "/sys/fs/cgroup:/host/sys/fs/cgroup:ro",
        ] {
            assert!(flags.contains(want), "{want} not in {flags}");
        }
        let fewer = engine_flags(&ds, Some("BPF")).expect("flags").join(" ");
        assert!(
            !fewer.contains("--cap-add BPF") && fewer.contains("--cap-add PERFMON"),
            "{fewer}"
        );
        assert!(engine_flags(&ds, Some("SYS_ADMIN")).is_err());
    }
}
