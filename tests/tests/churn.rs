//! Root tier: container churn against the standalone agent. A thousand short-lived
//! containers (a cgroupfs Docker-style cgroup each, a real PID namespace whose PID 1
//! exits) must each be recorded, and `/metrics` must stay bounded: a container's series
//! expire `--series-ttl-seconds` after its record completes, whatever the churn.
//!
//! Run as root, one test at a time (`cargo xtask test` does both).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gracewatch_tests::{agent::Agent, runc::cgroup_v2_mount};

const CONTAINERS: usize = 1000;
const BATCH: usize = 200;
/// The series TTL the agent runs with here.
const TTL_SECONDS: u64 = 2;
/// Completed records the agent keeps (`--history`).
const HISTORY: usize = 256;
/// Ids of this test's containers start with this, so a crashed run's cgroups are found.
const ID_PREFIX: &str = "c4a2c4a2";

/// Series lines (not comments) in a `/metrics` answer.
fn series_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

/// `<v2 mount>/docker`, the cgroupfs layout the agent knows as Docker's.
fn docker_parent() -> PathBuf {
    cgroup_v2_mount().expect("cgroup v2").join("docker")
}

/// Removes this test's cgroups (and the parent it made) however the last run ended.
struct Cleanup {
    parent: PathBuf,
    made_parent: bool,
}

impl Cleanup {
    fn new() -> Cleanup {
        let parent = docker_parent();
        let made_parent = !parent.exists();
        let cleanup = Cleanup {
            parent,
            made_parent,
        };
        cleanup.sweep();
        std::fs::create_dir_all(&cleanup.parent).expect("docker parent cgroup");
        cleanup
    }

    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(ID_PREFIX) {
                remove_cgroup(&e.path());
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.sweep();
        if self.made_parent {
            let _ = std::fs::remove_dir(&self.parent);
        }
    }
}

/// rmdir of a cgroup whose last process may still be on its way out.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Container `n`'s id, unique in its first 12 characters (the id the agent labels
/// series by).
fn full_id(n: usize) -> String {
    format!("{ID_PREFIX}{n:04x}{:052x}", n * 7919)
}

fn short_id(n: usize) -> String {
    full_id(n)[..12].to_string()
}

/// The container ids whose terminations `/metrics` counts.
fn terminated_ids(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| l.starts_with("gracewatch_container_terminations_total{"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("container=\"")?;
            Some(rest.split('"').next()?.to_string())
        })
}

/// One container's life: its cgroup, a PID namespace whose PID 1 runs `exit 3`, the
/// cgroup removed as a runtime would. Returns the 12-character id the agent labels it by.
fn flash_container(parent: &Path, n: usize) -> String {
    let id = full_id(n);
    let dir = parent.join(&id);
    std::fs::create_dir(&dir).expect("container cgroup");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec unshare --pid --fork sh -c 'exit 3'",
            dir.display()
        ))
        .status()
        .expect("run the container's PID 1");
    assert_eq!(status.code(), Some(3), "PID 1's exit code comes back");
    remove_cgroup(&dir);
    id[..12].to_string()
}

#[test]
fn a_thousand_short_lived_containers_keep_metrics_bounded() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the root tier loads BPF programs and makes cgroups: run it as root (cargo xtask test)"
    );
    let cleanup = Cleanup::new();
    let ttl = TTL_SECONDS.to_string();
    let history = HISTORY.to_string();
    let agent = Agent::start_standalone(&["--series-ttl-seconds", &ttl, "--history", &history])
        .expect("agent");
    let baseline = series_lines(&agent.metrics().expect("metrics").0);
    // Series one container adds (its signals, outcome, SIGTERM → exit buckets…), measured
    // on the first one.
    let first = flash_container(&cleanup.parent, 0);
    agent
        .wait_completed(&first, Duration::from_secs(10))
        .expect("first recorded");
    let per_container = series_lines(&agent.metrics().expect("metrics").0) - baseline;
    assert!(per_container > 0, "a container's end shows in /metrics");

    // Batches of BATCH containers, each followed by a pause longer than the TTL plus the
    // agent's 1 s expiry tick: at no scrape may more than two batches' series be present.
    // A scraper runs throughout (every 250 ms, well within the TTL), so it also sees each
    // container's termination counted before its series expire.
    let ceiling = baseline + per_container * 2 * BATCH;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let (peak, peak_bytes, seen) = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let (mut peak, mut peak_bytes) = (0, 0);
            let mut seen = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = agent.metrics().expect("metrics").0;
                peak = peak.max(series_lines(&text));
                peak_bytes = peak_bytes.max(text.len());
                seen.extend(terminated_ids(&text));
                std::thread::sleep(Duration::from_millis(250));
            }
            (peak, peak_bytes, seen)
        });
        let mut made = 1;
        while made < CONTAINERS {
            for _ in 0..BATCH.min(CONTAINERS - made) {
                flash_container(&cleanup.parent, made);
                made += 1;
            }
            std::thread::sleep(Duration::from_secs(TTL_SECONDS + 2));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scraper.join().expect("scraper")
    });
    let churn = started.elapsed();
    let (_, body) = agent.get("/debug/terminations").expect("terminations");
    let all: serde_json::Value = serde_json::from_str(&body).expect("terminations JSON");
    let completed = all["terminations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["state"] == "completed"
                && t["containers"][0]["container_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(ID_PREFIX))
        })
        .count();
    let end = series_lines(&agent.metrics().expect("metrics").0);
    let counted = agent
        .metrics()
        .expect("metrics")
        .sum("gracewatch_unattributed_events_total", &[]);
    eprintln!(
        "{CONTAINERS} containers in {churn:?}: {per_container} series each, baseline {baseline}, \
         peak {peak} series ({peak_bytes} bytes), ceiling {ceiling}, {end} at the end; \
         {completed} in the history, {} seen counted in /metrics",
        seen.len()
    );
    assert!(
        peak <= ceiling,
        "/metrics peaked at {peak} series, over the ceiling {ceiling}"
    );
    assert!(
        end <= baseline + per_container,
        "series of ended containers expire: {end} left, baseline {baseline}"
    );
    let missing: Vec<String> = (1..CONTAINERS)
        .map(short_id)
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "every container's end is counted: {} of {} never seen in /metrics, e.g. {:?}",
        missing.len(),
        CONTAINERS - 1,
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        completed, HISTORY,
        "the history (bounded by --history) holds the most recent ones"
    );
    assert_eq!(
        counted, 0.0,
        "every event of every container was attributed"
    );
}
