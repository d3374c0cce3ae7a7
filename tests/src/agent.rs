//! Runs the real `gracewatch` binary as users do, and reads what they read: the JSON at
//! `/debug/terminations`, the Prometheus text at `/metrics`, `gracewatch explain`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::Value;

/// The `gracewatch` binary of this workspace (built by `cargo xtask test` beforehand).
pub fn binary() -> PathBuf {
    binary_of("debug")
}

/// `GRACEWATCH_BIN`, else `<target dir>/<profile>/gracewatch` of this workspace.
pub fn binary_of(profile: &str) -> PathBuf {
    if let Ok(p) = std::env::var("GRACEWATCH_BIN") {
        return PathBuf::from(p);
    }
    target_binary(profile, "gracewatch")
}

/// The kubectl plugin binary of this workspace's debug build.
pub fn plugin_binary() -> PathBuf {
    target_binary("debug", "kubectl-gracewatch")
}

fn target_binary(profile: &str, name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join(profile).join(name)
}

/// A running agent; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts `gracewatch run --standalone` with extra flags and waits until it is ready.
    pub fn start_standalone(extra: &[&str]) -> anyhow::Result<Agent> {
        let mut args = vec!["--standalone"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Starts `gracewatch run` in Kubernetes mode against a kubeconfig, as node `node`.
    pub fn start_kubernetes(
        kubeconfig: &std::path::Path,
        node: &str,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let kc = kubeconfig
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        let mut args = vec!["--kubeconfig", kc, "--node-name", node];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Starts `gracewatch run <args> --listen <free port>` and waits until it is ready.
    pub fn start(args: &[&str]) -> anyhow::Result<Agent> {
        let addr = free_port()?;
        let bin = binary();
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "info");
        Self::spawn(cmd, addr).with_context(|| {
            format!(
                "starting {} (run `cargo build -p agent` first)",
                bin.display()
            )
        })
    }

    /// Starts an agent some other way (`cmd`, e.g. an engine running its image in the
    /// foreground) that will listen on `addr`, and waits until it is ready. Its output
    /// goes to the agent log; dropping the agent sends `cmd` SIGTERM.
    pub fn spawn(mut cmd: Command, addr: SocketAddr) -> anyhow::Result<Agent> {
        let log = std::env::temp_dir().join(format!("gracewatch-agent-{}.log", addr.port()));
        let log_file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let mut agent = Agent { child, addr, log };
        agent.wait_ready(Duration::from_secs(30))?;
        Ok(agent)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "agent exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if matches!(get(self.addr, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent not ready after {timeout:?}:\n{}", self.log_text())
    }

    /// SIGKILLs the agent (a crash, an OOM kill) and reaps it; the kernel detaches its
    /// programs as their last file descriptors close. Returns its log.
    pub fn kill_hard(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    /// The agent process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .context("no VmRSS")?
            .trim()
            .parse()?;
        Ok(kib * 1024)
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        get(self.addr, path)
    }

    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics(body))
    }

    /// The terminations of a container (by id prefix), as JSON values.
    pub fn terminations_of(&self, container_id: &str) -> anyhow::Result<Vec<Value>> {
        self.terminations_at(&format!("/debug/terminations/container/{container_id}"))
    }

    /// The terminations of a pod `namespace/name`, as JSON values.
    pub fn terminations_of_pod(&self, namespace: &str, pod: &str) -> anyhow::Result<Vec<Value>> {
        self.terminations_at(&format!("/debug/terminations/{namespace}/{pod}"))
    }

    fn terminations_at(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.get(path)?;
        if status == 404 {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(&body).with_context(|| format!("bad JSON: {body}"))?;
        Ok(v["terminations"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until the pod's termination is completed, and returns it.
    pub fn wait_pod_completed(
        &self,
        namespace: &str,
        pod: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_for(&format!("/debug/terminations/{namespace}/{pod}"), timeout)
    }

    /// Waits until the container's termination is completed, and returns it.
    pub fn wait_completed(&self, container_id: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_for(
            &format!("/debug/terminations/container/{container_id}"),
            timeout,
        )
    }

    /// Waits until the record of run `n` of the pod's `container` (its `restart_count`
    /// after that run ended) is completed, and returns it.
    pub fn wait_restart(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ts = self.terminations_of_pod(namespace, pod)?;
            if let Some(t) = ts.iter().find(|t| {
                t["state"] == "completed"
                    && t["restarted_container"] == container
                    && t["restart_count"] == n
            }) {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no record of restart {n} of {container} in {namespace}/{pod}: {ts:#?}\nagent log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a termination of the pod, in progress or not, shows a timeline entry
    /// `what`.
    pub fn wait_for_timeline(
        &self,
        namespace: &str,
        pod: &str,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let path = format!("/debug/terminations/{namespace}/{pod}");
        let deadline = Instant::now() + timeout;
        loop {
            let ts = self.terminations_at(&path)?;
            let seen = ts.iter().find(|t| {
                t["timeline"]
                    .as_array()
                    .is_some_and(|es| es.iter().any(|e| e["what"] == what))
            });
            if let Some(t) = seen {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!("no `{what}` for {namespace}/{pod} after {timeout:?}; have {ts:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ts = self.terminations_at(path)?;
            if let Some(t) = ts.iter().find(|t| t["state"] == "completed") {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no completed termination at {path} after {timeout:?}; have {ts:?}\nagent log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `gracewatch explain container/<id>` against this agent: its stdout.
    pub fn explain(&self, container_id: &str) -> anyhow::Result<String> {
        self.explain_target(&format!("container/{container_id}"))
    }

    /// `gracewatch explain <target>` against this agent: its stdout.
    pub fn explain_target(&self, target: &str) -> anyhow::Result<String> {
        let out = Command::new(binary())
            .args(["explain", target, "--agent"])
            .arg(format!("http://{}", self.addr))
            .output()?;
        if !out.status.success() {
            bail!("explain failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Already reaped (kill_hard): its pid may belong to another process by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = std::fs::remove_file(&self.log);
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A Prometheus text exposition, queried by series.
pub struct Metrics(pub String);

impl Metrics {
    /// Value of the series whose name and labels match exactly, e.g.
    /// `gracewatch_forced_kills_total{namespace="",workload="",container="0123456789ab"}`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// Sum of every series of a metric whose label text contains all of `needles`.
    pub fn sum(&self, name: &str, needles: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }
}

/// A loopback address with a port nothing listens on now.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A minimal HTTP/1.0 GET on loopback: status and body.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP answer: {head}"))?;
    Ok((status, body.to_string()))
}

/// Diagnosis codes of a termination (JSON), in order.
pub fn codes(t: &Value) -> Vec<String> {
    strings(t, "diagnoses", "code")
}

/// The `what` of each timeline entry of a termination (JSON), in order.
pub fn whats(t: &Value) -> Vec<String> {
    strings(t, "timeline", "what")
}

fn strings(t: &Value, list: &str, field: &str) -> Vec<String> {
    t[list]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|e| e[field].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
