//! Pod networks for sandboxes that ask for a network namespace of their own: a CNI
//! plugin of the harness (a shell script over `ip` and `nsenter`) that containerd's CRI
//! plugin runs in the namespace it made. It gives the pod's `eth0` the address the test
//! chose for the pod (`<a.b.c>.2/24`) and the host end of the veth `<a.b.c>.1/24`, so the
//! host reaches the pod at an address that exists only in that namespace. Pods in the
//! node's namespace (the default) never call it. Host veths are named
//! `gwp<8 hex digits of the sandbox id>`; each one and its namespace are recorded so a
//! teardown after a crash removes them.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::Layout;

/// Prefix of the host-side veths the plugin makes.
pub const HOST_VETH_PREFIX: &str = "gwp";

const PLUGIN: &str = r#"#!/bin/sh
# Gracewatch test network: one veth per pod, with the address the harness chose.
dir='@DIR@'
conf=$(cat)
version=$(printf '%s' "$conf" | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
[ -n "$version" ] || version=0.4.0
arg() { printf '%s' "$CNI_ARGS" | tr ';' '\n' | sed -n "s/^$1=//p"; }
host="@PREFIX@$(printf '%s' "$CNI_CONTAINERID" | cut -c1-8)"
case "$CNI_COMMAND" in
ADD)
  ip=$(cat "$dir/ips/$(arg K8S_POD_NAMESPACE)_$(arg K8S_POD_NAME)") || exit 1
  net=${ip%.*}
  printf '%s %s\n' "$host" "$CNI_NETNS" > "$dir/attached/$CNI_CONTAINERID"
  nsenter --net="$CNI_NETNS" ip link add eth0 type veth peer name "$host" netns 1 >&2 || exit 1
  ip addr add "$net.1/24" dev "$host" >&2 && ip link set "$host" up >&2 || exit 1
  nsenter --net="$CNI_NETNS" sh -c "ip addr add $ip/24 dev eth0 && ip link set eth0 up && ip route add default via $net.1" >&2 || exit 1
  printf '{"cniVersion":"%s","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"version":"4","address":"%s/24","gateway":"%s.1","interface":0}]}\n' "$version" "$CNI_NETNS" "$ip" "$net"
  ;;
DEL)
  ip link del "$host" 2>/dev/null
  rm -f "$dir/attached/$CNI_CONTAINERID"
  ;;
VERSION)
  echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}'
  ;;
esac
exit 0
"#;

const LOOPBACK: &str = r#"#!/bin/sh
conf=$(cat)
version=$(printf '%s' "$conf" | sed -n 's/.*"cniVersion" *: *"\([^"]*\)".*/\1/p')
[ -n "$version" ] || version=0.4.0
case "$CNI_COMMAND" in
ADD)
  nsenter --net="$CNI_NETNS" ip link set lo up >&2 || exit 1
  printf '{"cniVersion":"%s","interfaces":[{"name":"lo","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}\n' "$version" "$CNI_NETNS"
  ;;
VERSION)
  echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}'
  ;;
esac
exit 0
"#;

fn state_dir(layout: &Layout) -> std::path::PathBuf {
    layout.cni().join("state")
}

/// Writes the plugins and the network configuration (before containerd starts).
pub(super) fn install(layout: &Layout) -> Result<()> {
    let state = state_dir(layout);
    for d in [state.join("ips"), state.join("attached")] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let bin = layout.cni().join("bin");
    let plugin = PLUGIN
        .replace("@DIR@", &state.to_string_lossy())
        .replace("@PREFIX@", HOST_VETH_PREFIX);
    for (name, text) in [("gwnet", plugin.as_str()), ("loopback", LOOPBACK)] {
        let path = bin.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(
        layout.cni().join("conf").join("10-gwnet.conf"),
        r#"{"cniVersion":"0.4.0","name":"gracewatch-test","type":"gwnet"}"#,
    )?;
    Ok(())
}

/// The address the plugin gives pod `namespace/name` (`<a.b.c>.2`), set before its
/// sandbox is run.
pub(super) fn assign(layout: &Layout, namespace: &str, name: &str, ip: &str) -> Result<()> {
    let ok = |s: &str| !s.is_empty() && !s.contains(['/', '\0']);
    if !ok(namespace) || !ok(name) {
        bail!("pod name {namespace}/{name} cannot name a file");
    }
    let path = state_dir(layout)
        .join("ips")
        .join(format!("{namespace}_{name}"));
    fs::write(&path, ip).with_context(|| format!("writing {}", path.display()))
}

/// Host veths and namespaces the plugin made that are still there (containerd removes
/// both when it stops a sandbox; a crash may not have).
pub(super) fn remove_leftovers(layout: &Layout) -> Result<()> {
    let attached = state_dir(layout).join("attached");
    let Ok(entries) = fs::read_dir(&attached) else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for e in entries.flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let mut parts = text.split_whitespace();
        let (Some(host), Some(netns)) = (parts.next(), parts.next()) else {
            continue;
        };
        if host.starts_with(HOST_VETH_PREFIX) && Path::new("/sys/class/net").join(host).exists() {
            let _ = Command::new("ip").args(["link", "del", host]).status();
        }
        if Path::new(netns).exists() {
            let _ = nix::mount::umount2(netns, nix::mount::MntFlags::MNT_DETACH);
            if let Err(err) = fs::remove_file(netns) {
                problems.push(format!("removing {netns}: {err}"));
            }
        }
        let _ = fs::remove_file(e.path());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}
