//! The `gracewatch` binary: parse the command line and dispatch.

use clap::Parser;
use gracewatch::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

// One thread: the agent's event loop, its HTTP server and its watchers are all short
// reactions to I/O and timers. On a multi-threaded runtime every timer tick crossed
// threads (a worker woke from epoll, then woke the loop with a futex), which was most of
// the agent's CPU on an idle node.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "info,{}",
                gracewatch::kube::watch::LIBRARY_LOG_FILTER
            ))
        }))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => gracewatch::run::run(args).await,
        Command::Explain(args) => Ok(gracewatch::explain::explain(args).await?),
    }
}
