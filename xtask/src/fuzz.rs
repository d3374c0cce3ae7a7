//! `cargo xtask fuzz`: builds the fuzz targets in `agent/fuzz` (cargo-fuzz, nightly,
//! AddressSanitizer; a dev build, so overflow checks and debug assertions are on, and it
//! builds in less time) and runs each for a bounded time from its committed seeds. New
//! inputs go to a scratch corpus under `target/`, never into the repository; a crash
//! stops the task with the input's path, to be turned into a regression test.

use std::path::Path;

use anyhow::{bail, Context};

use crate::util;

/// The fuzz targets, each with a seed directory `agent/fuzz/seeds/<name>`.
pub const TARGETS: &[&str] = &[
    "decode",
    "cgroup_path",
    "pod_model",
    "http_target",
    "explain_response",
];

pub fn run(seconds: u32) -> anyhow::Result<()> {
    let agent = util::root().join("agent");
    let scratch = util::root().join("target").join("fuzz-corpus");
    util::run_in(&agent, "cargo", &["+nightly", "fuzz", "build", "--dev"])?;
    for target in TARGETS {
        let corpus = scratch.join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let seeds = agent.join("fuzz").join("seeds").join(target);
        if !seeds.is_dir() {
            bail!("no seed directory {}", seeds.display());
        }
        let max_time = format!("-max_total_time={seconds}");
        let result = util::run_in(
            &agent,
            "cargo",
            &[
                "+nightly",
                "fuzz",
                "run",
                "--dev",
                target,
                path(&corpus)?,
                path(&seeds)?,
                "--",
                &max_time,
                "-rss_limit_mb=2048",
                "-max_len=65536",
                "-print_final_stats=1",
            ],
        );
        if let Err(e) = result {
            let artifacts = agent.join("fuzz").join("artifacts").join(target);
            bail!(
                "fuzz target `{target}` failed: {e:#}; the input that failed is under {} (reproduce with `cargo +nightly fuzz run {target} <input>` in agent/), add it as a regression test",
                artifacts.display()
            );
        }
    }
    eprintln!(
        "fuzzing passed: {} targets, {seconds} s each",
        TARGETS.len()
    );
    Ok(())
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}
