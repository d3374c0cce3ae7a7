//! `kubectl-gracewatch`: the kubectl plugin (`kubectl gracewatch ...` once it is on PATH).

use clap::Parser;
use gracewatch::kubectl::{main as plugin, PluginCli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match plugin(PluginCli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
