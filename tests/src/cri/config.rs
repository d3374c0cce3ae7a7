//! The private containerd's `config.toml`: every path it writes under the run directory,
//! the CRI plugin set up as a cgroupfs-driver kubelet node without CNI.

use std::path::Path;

use super::{Layout, PAUSE_IMAGE};

/// Plugins a test node never uses; leaving them out keeps start-up short and quiet.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

pub(super) fn render(layout: &Layout) -> String {
    let p = |path: &Path| toml_string(&path.to_string_lossy());
    let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|d| toml_string(d)).collect();
    // `restrict_oom_score_adj`: root here lacks CAP_SYS_RESOURCE, and without it runc
    // cannot lower the sandbox's oom_score_adj ("can't get final child's PID from pipe").
    // `SystemdCgroup = false`: the cgroupfs driver, so the runtime places containers at
    // `<cgroup_parent>/<id>` as the sandbox config asks (`/kubepods/<qos>/pod<uid>`).
    // `Root`: runc's state of these containers, apart from any other runc user.
    // The CNI directories hold the harness's own plugin (module `network`): only pods
    // that ask for a network namespace of their own call it.
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [{disabled}]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc_root}
"#,
        root = p(&layout.root()),
        state = p(&layout.state()),
        disabled = disabled.join(", "),
        socket = p(&layout.socket()),
        opt = p(&layout.root().join("opt")),
        pause = toml_string(PAUSE_IMAGE),
        cni_bin = p(&layout.cni().join("bin")),
        cni_conf = p(&layout.cni().join("conf")),
        runc_root = p(&layout.runc_root()),
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(toml_string("/run/a b"), "\"/run/a b\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
