//! The fifth phase, traffic: what the traffic programs cost. wrk against a healthy pod
//! (busybox httpd in a network namespace of the bench's own) without the programs (A)
//! and with them loaded and another pod's address watched as terminating (B),
//! interleaved, as a ratio of requests/s within each round; then the run time per
//! program per run (`kernel.bpf_stats_enabled=1`) on that healthy traffic and while wrk
//! drives the watched, terminating pod, whose traffic the programs count. The programs
//! are loaded through the agent's library: their cost to traffic is all in the kernel
//! (nothing reaches the ring; the agent only reads the counters of watched pods every
//! 200 ms).

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use gracewatch::kernel::{LoadOptions, Probes};
use gracewatch_tests::netns::{self, NetNs};
use serde_json::{json, Value};

use crate::{report::median, sys};

/// Requests/s drop allowed with the programs on a healthy pod's traffic.
pub const RATIO_TARGET: f64 = 0.98;
const PORT: u16 = 8080;
const WRK_SECONDS: u32 = 5;
const TRAFFIC_PROGRAMS: [&str; 3] = ["inet_sock_set_state", "tcp_probe", "tcp_send_reset"];

pub struct Traffic {
    pub a_rps: Vec<f64>,
    pub b_rps: Vec<f64>,
    pub ratios: Vec<f64>,
    pub ratio_median: f64,
    /// program → (runs, ns) while the terminating pod was under load.
    pub programs: BTreeMap<String, (u64, u64)>,
    /// program → (runs, ns) under healthy traffic with no pod watched.
    pub unwatched_programs: BTreeMap<String, (u64, u64)>,
    /// program → (runs, ns) under healthy traffic, another pod watched.
    pub healthy_programs: BTreeMap<String, (u64, u64)>,
    pub counted_connections: u64,
}

struct Docroot(PathBuf);

impl Drop for Docroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Requests/s wrk reached against `ip` (bounded: one thread, 8 connections, 5 s).
fn wrk(ip: &str) -> Result<f64> {
    sys::check_interrupted()?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{WRK_SECONDS}s"),
            "--timeout",
            "2s",
        ])
        .arg(format!("http://{ip}:{PORT}/"))
        .output()
        .context("running wrk (apt-get install wrk, or cargo xtask setup)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

fn watch_terminating(probes: &mut Probes, ip: &str) -> Result<agent_ebpf::Addr> {
    let addr = gracewatch::traffic::addr_of(ip).context("address")?;
    let marks = agent_ebpf::WatchMarks {
        removal_ns: gracewatch::clock::boot_now_ns(),
        ports: [PORT, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    probes.watch_addr(addr, &marks)?;
    Ok(addr)
}

fn since(
    after: BTreeMap<String, (u64, u64)>,
    before: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    after
        .into_iter()
        .map(|(name, (runs, ns))| {
            let (r0, n0) = before.get(&name).copied().unwrap_or_default();
            (name, (runs.saturating_sub(r0), ns.saturating_sub(n0)))
        })
        .collect()
}

fn program_stats(probes: &Probes) -> BTreeMap<String, (u64, u64)> {
    probes
        .run_stats()
        .into_iter()
        .filter(|(name, _, _)| TRAFFIC_PROGRAMS.contains(&name.as_str()))
        .map(|(name, runs, ns)| (name, (runs, ns)))
        .collect()
}

pub fn run(rounds: u32) -> Result<Traffic> {
    netns::sweep();
    let dir = std::env::temp_dir().join(format!("gracewatch-bench-www-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let docroot = Docroot(dir);
    std::fs::write(docroot.0.join("index.html"), "ok\n")?;
    let mut healthy = NetNs::create("bh", "10.246.20")?;
    let mut terminating = NetNs::create("bt", "10.246.21")?;
    for ns in [&mut healthy, &mut terminating] {
        ns.spawn(
            "busybox",
            &[
                "httpd",
                "-f",
                "-p",
                &PORT.to_string(),
                "-h",
                &docroot.0.to_string_lossy(),
            ],
        )?;
    }
    sys::sleep_checked(Duration::from_millis(300))?;
    let (mut a_rps, mut b_rps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Run-time statistics cost every program run two clock reads: off while requests/s
    // are compared, so B does not pay for the measurement.
    let no_stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "0")?;
    for round in 1..=rounds {
        let a = wrk(&healthy.addr())?;
        let (mut probes, _ring) = Probes::load(&LoadOptions::default())?;
        watch_terminating(&mut probes, &terminating.addr())?;
        let b = wrk(&healthy.addr())?;
        drop(probes);
        println!(
            "   round {round}: A {a:.0} req/s, B {b:.0} req/s, B/A {:.3}",
            b / a
        );
        a_rps.push(a);
        b_rps.push(b);
        ratios.push(b / a);
    }
    drop(no_stats);
    let stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let (mut probes, _ring) = Probes::load(&LoadOptions::default())?;
    let before = program_stats(&probes);
    wrk(&healthy.addr())?;
    let unwatched_programs = since(program_stats(&probes), &before);
    let addr = watch_terminating(&mut probes, &terminating.addr())?;
    let before = program_stats(&probes);
    wrk(&healthy.addr())?;
    let healthy_programs = since(program_stats(&probes), &before);
    let before = program_stats(&probes);
    let rps = wrk(&terminating.addr())?;
    let after = program_stats(&probes);
    drop(stats);
    let counted = probes.traffic(&addr).map_or(0, |c| c.conns_after_removal);
    if counted == 0 {
        bail!("wrk ran {rps:.0} req/s at the terminating pod but no connection was counted");
    }
    let programs = since(after, &before);
    println!("   terminating pod under load: {rps:.0} req/s, {counted} connections counted");
    Ok(Traffic {
        ratio_median: median(&ratios),
        a_rps,
        b_rps,
        ratios,
        programs,
        healthy_programs,
        unwatched_programs,
        counted_connections: counted,
    })
}

pub fn print(t: &Traffic) {
    let verdict = if t.ratio_median >= RATIO_TARGET {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "   healthy pod, requests/s with the programs / without: median {:.3} over {} rounds (target ≥ {RATIO_TARGET}: {verdict})",
        t.ratio_median,
        t.ratios.len()
    );
    for (title, programs) in [
        (
            "run time per program run on the healthy pod's traffic, no pod watched:",
            &t.unwatched_programs,
        ),
        (
            "run time per program run on the healthy pod's traffic (another pod watched):",
            &t.healthy_programs,
        ),
        (
            "run time per program run while the terminating pod was under load (counted):",
            &t.programs,
        ),
    ] {
        println!("   {title}");
        for (name, (runs, ns)) in programs {
            let per = if *runs > 0 {
                *ns as f64 / *runs as f64
            } else {
                f64::NAN
            };
            println!("     {name:<22} {runs:>9} runs  {per:>7.0} ns/run");
        }
    }
}

fn programs_json(p: &BTreeMap<String, (u64, u64)>) -> Value {
    p.iter()
        .map(|(name, (runs, ns))| {
            (
                name.clone(),
                json!({
                    "runs": runs, "ns": ns,
                    "ns_per_run": if *runs > 0 { Some(*ns as f64 / *runs as f64) } else { None },
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub fn json(t: &Traffic) -> Value {
    json!({
        "a_rps": t.a_rps, "b_rps": t.b_rps, "ratios": t.ratios,
        "ratio_median": t.ratio_median, "ratio_target": RATIO_TARGET,
        "counted_connections": t.counted_connections,
        "bpf_programs_terminating_under_load": programs_json(&t.programs),
        "bpf_programs_healthy_traffic": programs_json(&t.healthy_programs),
        "bpf_programs_nothing_watched": programs_json(&t.unwatched_programs),
    })
}
