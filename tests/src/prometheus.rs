//! Debian's Prometheus server, for the tests that check the agent's metrics, the rules and
//! the dashboard against the real thing: started on a free loopback port with its own
//! temporary directory (config, rule files, TSDB), scraping only the given loopback targets
//! every second, and stopped (SIGTERM, then SIGKILL) and removed on drop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::agent::{free_port, get};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `targets` as job `gracewatch` every second and evaluates `rule_files`
    /// every second.
    pub fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> anyhow::Result<Prometheus> {
        if targets.iter().any(|t| !t.ip().is_loopback()) {
            bail!("Prometheus here scrapes loopback targets only: {targets:?}");
        }
        let addr = free_port()?;
        let dir = std::env::temp_dir().join(format!("gracewatch-prometheus-{}", addr.port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let mut rules = Vec::new();
        for (i, file) in rule_files.iter().enumerate() {
            let copy = dir.join(format!("rules-{i}.yaml"));
            std::fs::copy(file, &copy).with_context(|| format!("copying {}", file.display()))?;
            rules.push(format!("  - {}", copy.display()));
        }
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\n\
             scrape_configs:\n  - job_name: gracewatch\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() { "  []".to_string() } else { rules.join("\n") },
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS} (apt-get install prometheus)"))?;
        let mut prometheus = Prometheus { child, addr, dir };
        prometheus.wait_ready(Duration::from_secs(30))?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            if matches!(get(self.addr, "/-/ready"), Ok((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("prometheus not ready after {timeout:?}:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET <path>` of the HTTP API: the `data` of a `success` answer, else an error with
    /// Prometheus's own `errorType` and `error`.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("{path} answered {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("{path}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .with_context(|| format!("evaluating {expr}"))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query (None when the result is empty).
    pub fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .with_context(|| format!("{expr}: no number in {one}")),
            many => bail!("{expr}: {} series, expected one: {many:?}", many.len()),
        }
    }

    /// Polls `expr` until its single value is `want`.
    pub fn wait_value(&self, expr: &str, want: f64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.value(expr)?;
            if got == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{expr} is {got:?} after {timeout:?}, expected {want}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encoding of a query parameter value (everything but unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every PromQL expression of the Grafana dashboard (panel targets, nested rows
/// included), with Grafana's variables replaced by what they stand for when everything is
/// selected, and the metric selector of each `label_values()` variable query.
pub fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(expr.to_string());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(inner) = query.and_then(|q| q.strip_prefix("label_values(")) {
            if let Some((selector, _label)) = inner.rsplit_once(',') {
                out.push(selector.trim().to_string());
            }
        }
    }
    out.into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "5m")
                .replace("\"$namespace\"", "\".*\"")
                .replace("\"$workload\"", "\".*\"")
        })
        .collect()
}

/// Every `expr` of a Prometheus rule file.
pub fn rule_expressions(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode("sum(x{a=\"b\"}[5m])"),
            "sum%28x%7Ba%3D%22b%22%7D%5B5m%5D%29"
        );
    }

    #[test]
    fn dashboard_variables_are_replaced() {
        let d = serde_json::json!({
            "panels": [{"type": "row", "panels": [{"targets": [{"expr": "rate(x{namespace=~\"$namespace\"}[$__rate_interval])"}]}]},
                       {"targets": [{"expr": "increase(y[$__range])"}]}],
            "templating": {"list": [{"query": {"query": "label_values(z{namespace=~\"$namespace\"}, workload)"}}]}
        });
        assert_eq!(
            dashboard_expressions(&d),
            [
                "rate(x{namespace=~\".*\"}[1m])",
                "increase(y[5m])",
                "z{namespace=~\".*\"}"
            ]
        );
    }
}
