//! `cargo xtask demo`: set up, build, then run the demo binary of the node simulator: the
//! agent on this host, real runc containers acting out the ways pods end badly, and
//! `gracewatch explain` for each.

use crate::{build, util};

pub fn run() -> anyhow::Result<()> {
    util::require_root("demo")?;
    build::run(false)?;
    util::cargo(&[
        "run",
        "--quiet",
        "-p",
        "gracewatch-tests",
        "--bin",
        "gracewatch-demo",
    ])
}
