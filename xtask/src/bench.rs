//! `cargo xtask bench`: the user-space pipeline's throughput (criterion-free, one core),
//! then the kernel-side storms (overhead on an exit storm, lossless signal rate), run by
//! the node simulator's bench binary as root.

use crate::{build, util};

pub fn run(rounds: u32, only: Option<&str>) -> anyhow::Result<()> {
    util::require_root("bench")?;
    build::run(true)?;
    if only.is_none() {
        util::cargo(&[
            "run",
            "--release",
            "--quiet",
            "-p",
            "agent",
            "--example",
            "pipeline_throughput",
        ])?;
    }
    let rounds = rounds.to_string();
    let mut args = vec![
        "run",
        "--release",
        "--quiet",
        "-p",
        "gracewatch-tests",
        "--bin",
        "gracewatch-bench",
        "--",
        "--rounds",
        &rounds,
    ];
    if let Some(phase) = only {
        args.extend(["--only", phase]);
    }
    util::cargo(&args)
}
