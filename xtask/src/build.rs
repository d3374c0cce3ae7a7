//! `cargo xtask build`: set up if needed, then build the agent; `agent/build.rs` builds the
//! kernel programs into it.

use crate::{setup, util};

pub fn run(release: bool) -> anyhow::Result<()> {
    setup::run(false)?;
    let mut args = vec!["build", "-p", "agent", "-p", "gracewatch-tests", "--bins"];
    if release {
        args.push("--release");
    }
    util::cargo(&args)?;
    eprintln!(
        "built {}",
        util::root()
            .join("target")
            .join(if release { "release" } else { "debug" })
            .join("gracewatch")
            .display()
    );
    Ok(())
}
