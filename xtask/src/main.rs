//! Project tasks: `cargo xtask setup | build | image | test | demo | bench | manifests | fuzz`. One module per task;
//! each is a thin sequence of commands a person could run by hand.

mod bench;
mod build;
mod demo;
mod fuzz;
mod image;
mod manifests;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Gracewatch project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (Debian packages, nightly rust-src, bpf-linker).
    Setup {
        #[arg(long)]
        verbose: bool,
    },
    /// Set up if needed, then build the agent and its kernel programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build the agent and its container image (deploy/image/Containerfile) with Podman;
    /// writes target/image/gracewatch-<profile>.tar.
    Image {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, lint, then run every test tier (unit, root with real containers).
    Test {
        /// Only what needs no root: format, lints and unit tests.
        #[arg(long)]
        unit: bool,
    },
    /// Set up, build, run the agent on this host and show it explain real terminations.
    Demo,
    /// Write the deploy files generated from others (the kustomize PrometheusRule from
    /// deploy/prometheus/rules.yaml); `--check` only reports whether they are current.
    Manifests {
        #[arg(long)]
        check: bool,
    },
    /// Measure overhead, loss and throughput; prints a report (see README).
    Bench {
        /// Storm repetitions per side (A/B interleaved).
        #[arg(long, default_value_t = 6)]
        rounds: u32,
        /// Run one phase alone: `exit` (the exit storm and the programs' run time, with
        /// the count-only bpftrace baseline when bpftrace is installed) or `traffic`.
        #[arg(long)]
        only: Option<String>,
    },
    /// Build the fuzz targets (agent/fuzz) and run each for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup { verbose } => setup::run(verbose),
        Task::Build { release } => build::run(release),
        Task::Image { release } => image::run(release),
        Task::Test { unit } => test::run(unit),
        Task::Demo => demo::run(),
        Task::Bench { rounds, only } => bench::run(rounds, only.as_deref()),
        Task::Fuzz { seconds } => {
            setup::run(false)?;
            fuzz::run(seconds)
        }
        Task::Manifests { check } => manifests::run(check),
    }
}
