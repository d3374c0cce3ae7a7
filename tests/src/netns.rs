//! Network namespaces the tests make themselves: a namespace with one veth pair, the
//! host end `<prefix>.1/24` and the namespace's end `<prefix>.2/24`, so the host reaches
//! an address that exists only in the test's own namespace. Dropping it kills what was
//! started in it and deletes the namespace and the host end; [`sweep`] removes those a
//! crashed run left (all named with [`PREFIX`]). `ip netns add` makes `/run/netns` a
//! mount (a shared bind of itself) the first time; if the tests made it, the last
//! namespace dropped unmounts and removes it again.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use anyhow::{bail, Context, Result};

/// Names of every namespace and host-side veth the tests make.
pub const PREFIX: &str = "gwt";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace with a veth to the host.
pub struct NetNs {
    name: String,
    host_if: String,
    /// `<a.b.c>`: the /24 both ends are in.
    prefix: String,
    children: Vec<Child>,
}

impl NetNs {
    /// Namespace `gwt-<tag>` reached at `<prefix>.2` (prefix: three octets, e.g.
    /// "10.246.1"; the caller keeps them unique).
    pub fn create(tag: &str, prefix: &str) -> Result<NetNs> {
        let name = format!("{PREFIX}-{tag}");
        let host_if = format!("{PREFIX}{tag}");
        if host_if.len() > 15 {
            bail!("interface name {host_if} is over 15 bytes");
        }
        // Whether /run/netns was there (and a mount) before any namespace of this run.
        RUN_NETNS_BEFORE.get_or_init(|| {
            let dir = Path::new(RUN_NETNS);
            (dir.exists(), is_mount_point(dir))
        });
        // Whatever a crashed run left under these names goes first.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let ns = NetNs {
            name,
            host_if,
            prefix: prefix.into(),
            children: Vec::new(),
        };
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&self) -> Result<()> {
        let (name, host_if, p) = (&self.name, &self.host_if, &self.prefix);
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        ip(&["addr", "add", &format!("{p}.1/24"), "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{p}.2/24"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Adds IPv6 `<prefix>::1/64` on the host end and `<prefix>::2/64` inside (no
    /// duplicate address detection, so both are usable at once); returns the inside one.
    pub fn add_ipv6(&self, prefix: &str) -> Result<String> {
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{prefix}::1/64"),
            "dev",
            &self.host_if,
            "nodad",
        ])?;
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{prefix}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        Ok(format!("{prefix}::2"))
    }

    /// The address inside the namespace.
    pub fn addr(&self) -> String {
        format!("{}.2", self.prefix)
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Starts `program args` in the namespace; it is killed when the namespace is dropped.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Kills what was started in the namespace (and waits for it).
    pub fn kill_all(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
        release_run_netns();
    }
}

const RUN_NETNS: &str = "/run/netns";
/// Whether `/run/netns` existed, and was a mount, before this run's first namespace.
static RUN_NETNS_BEFORE: OnceLock<(bool, bool)> = OnceLock::new();

/// Undoes what `ip netns add` did to `/run/netns` once no namespace is left in it, if this
/// run's namespaces were the reason it became a mount (or came to exist).
fn release_run_netns() {
    let Some(&(existed, was_mount)) = RUN_NETNS_BEFORE.get() else {
        return;
    };
    let dir = Path::new(RUN_NETNS);
    let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if !empty {
        return;
    }
    if !was_mount && is_mount_point(dir) {
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    }
    if !existed && !is_mount_point(dir) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Whether `dir` is a mount point of this mount namespace (`/proc/self/mountinfo`).
fn is_mount_point(dir: &Path) -> bool {
    let Some(want) = dir.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
    })
}

/// Removes the namespaces and host veths a crashed run left.
pub fn sweep() {
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{PREFIX}-")) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) {
                let _ = ip(&["link", "del", &name]);
            }
        }
    }
}
