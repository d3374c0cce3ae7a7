//! `cargo xtask test`: every tier, in order, stopping at the first failure: format and
//! lints; unit tests and the deploy tests (no root); root tests (real BPF programs, real
//! runc containers, the agent binary as users run it); the Prometheus rules' own tests; a
//! bounded fuzz run. `--unit` runs only what needs no root: format, lints, the unit tests
//! and the deploy tests.

use crate::{image, setup, util};

/// Seconds each fuzz target runs in the test tier; `cargo xtask fuzz` runs longer.
const FUZZ_SECONDS: u32 = 15;

pub fn run(unit_only: bool) -> anyhow::Result<()> {
    setup::run(false)?;
    if !unit_only {
        util::require_root("test")?;
    }
    util::cargo(&["build", "--workspace", "--all-targets"])?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo(&["test", "-p", "agent", "-p", "xtask"])?;
    // The install paths (helm, kustomize) need no root: real renderers, no cluster.
    util::cargo(&["test", "-p", "gracewatch-tests", "--test", "deploy"])?;
    if unit_only {
        eprintln!("unit tier passed (format, lints, unit tests, deploy tests)");
        return Ok(());
    }
    // The image the root tier runs (tests/tests/image.rs), from the debug build above: a
    // few seconds, where compiling inside an image build would take minutes.
    image::build_from("debug")?;
    // Root tier: one test at a time, since tests read node-wide metrics and signal storms
    // must not overlap.
    util::cargo(&["test", "-p", "gracewatch-tests", "--", "--test-threads=1"])?;
    util::run(
        "promtool",
        &["check", "rules", "deploy/prometheus/rules.yaml"],
    )?;
    util::run(
        "promtool",
        &["test", "rules", "deploy/prometheus/rules_test.yaml"],
    )?;
    // Bounded fuzzing of what the agent reads from outside (see `cargo xtask fuzz`).
    crate::fuzz::run(FUZZ_SECONDS)?;
    eprintln!("all test tiers passed");
    Ok(())
}
