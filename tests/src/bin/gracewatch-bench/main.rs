//! `gracewatch-bench`: what the Gracewatch agent costs and how much it can take, measured
//! on this machine with the real agent binary, real BPF programs and a real runc
//! container in a kubelet-style cgroup. Run as root, normally through
//! `sudo cargo xtask bench`.
//!
//! 1. Exit storm overhead: a clone/exit storm inside the container, without (A) and with
//!    (B) the agent, interleaved; storm CPU ratio, wall ratio, agent CPU per event, loss.
//! 2. BPF run time per program per run, with `kernel.bpf_stats_enabled=1`.
//! 3. Signal storm: the highest SIGUSR1 rate to the container's PID 1 with zero loss at the
//!    default ring size.
//! 4. Idle: the agent's CPU while nothing happens on a host with 1,000 cgroups.
//! 5. Traffic: requests/s to a healthy pod with and without the traffic programs, and
//!    their run time per run while a terminating pod is under load (`--only traffic`
//!    runs this phase alone).
//!
//! This file owns the order of the phases and the guards that undo them (container,
//! agent, sysctl), and the command line. Each phase lives in its own module; `storm` is
//! also the hidden subcommand this binary re-executes itself as.

mod agent_proc;
mod bpftrace;
mod exit_storm;
mod host;
mod idle;
mod report;
mod signal_storm;
mod storm;
mod sys;
mod traffic;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gracewatch_tests::runc::{sweep_stale, Container, ContainerSpec};
use serde_json::json;

const DEFAULT_ROUNDS: u32 = 6;
const DEFAULT_EXITS: u64 = 150_000;
/// PID 1 of the bench's container: a shell that handles SIGUSR1 and lives on. The exit
/// storms join its PID namespace and cgroups; the signal storm signals it.
const ENTRYPOINT: &str = "trap 'true' USR1; while true; do sleep 1; done";

struct Options {
    rounds: u32,
    exits: u64,
    storm_cpu: Option<usize>,
    /// Only the traffic phase.
    traffic_only: bool,
    /// Only phases 1 and 2 (the exit storm and the programs' run time).
    exit_only: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(storm::SUBCOMMAND) => storm::driver_main(&args[1..]),
        _ => parse(&args).and_then(|options| match options {
            Some(options) => bench(&options),
            None => Ok(()),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gracewatch-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `None` when only help was asked for.
fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut options = Options {
        rounds: DEFAULT_ROUNDS,
        exits: DEFAULT_EXITS,
        storm_cpu: default_storm_cpu(),
        traffic_only: false,
        exit_only: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--exits" => options.exits = value("--exits")?.parse().context("--exits")?,
            "--storm-cpu" => {
                options.storm_cpu = match value("--storm-cpu")?.as_str() {
                    "none" => None,
                    n => Some(n.parse().context("--storm-cpu")?),
                }
            }
            "--only" => match value("--only")?.as_str() {
                "traffic" => options.traffic_only = true,
                "exit" => options.exit_only = true,
                other => bail!("--only {other:?}: `traffic` or `exit` can run alone"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: gracewatch-bench [--rounds N (default {DEFAULT_ROUNDS})] [--exits N (default {DEFAULT_EXITS})]\n\
                     \x20                       [--storm-cpu N|none (default: the last CPU)] [--only traffic|exit]\n\
                     Run as root. The agent binary is $GRACEWATCH_BIN, else target/release/gracewatch."
                );
                return Ok(None);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if options.rounds == 0 || options.exits < 1000 {
        bail!("--rounds must be at least 1 and --exits at least 1000");
    }
    Ok(Some(options))
}

/// The storm is pinned to one CPU by default: parent and child then hand over on that CPU
/// instead of waking each other across CPUs, which on a VM costs a hypervisor exit per
/// wake-up and makes the storm's CPU time swing far more than the agent's cost.
fn default_storm_cpu() -> Option<usize> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| usize::from(n) - 1)
}

fn bench(options: &Options) -> Result<()> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench loads BPF programs and runs containers: run it as root (sudo cargo xtask bench)");
    }
    sys::install_stop_handler()?;
    if options.traffic_only {
        return traffic_phase(options.rounds).map(|t| {
            println!("BENCH_JSON {}", json!({ "traffic": traffic::json(&t) }));
        });
    }
    let machine = sys::Machine::probe();
    let bin = agent_proc::binary();
    if !bin.is_file() {
        bail!(
            "no agent binary at {} (cargo build --release -p agent, or set GRACEWATCH_BIN)",
            bin.display()
        );
    }
    let mut command = if options.rounds == DEFAULT_ROUNDS {
        "sudo cargo xtask bench".to_owned()
    } else {
        format!("sudo cargo xtask bench --rounds {}", options.rounds)
    };
    if options.exit_only {
        command += " --only exit";
    }
    let storm_cpu = options
        .storm_cpu
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    let invocation = format!(
        "gracewatch-bench --rounds {} --exits {} --storm-cpu {storm_cpu}{}",
        options.rounds,
        options.exits,
        if options.exit_only {
            " --only exit"
        } else {
            ""
        }
    );
    let load_before = sys::loadavg();
    println!("Gracewatch benchmark");
    println!("  reproduce with: {command}   (this run: {invocation}, as root)");
    println!(
        "  machine: nproc {}, kernel {}, load average {load_before}",
        machine.nproc, machine.kernel
    );
    println!(
        "  agent: {} (default flags: standalone, default ring size)",
        bin.display()
    );

    sweep_stale().context("removing what an earlier, interrupted run left")?;
    let container = Container::start(ContainerSpec::shell("gracewatch-bench", ENTRYPOINT)?)?;
    let init_pid = container.init_pid()?;
    // The hierarchies runc actually made a directory in (a v1 one may lack the path).
    let cgroup_dirs: Vec<_> = container
        .cgroup_dirs()?
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    // Time for PID 1 to run its `trap` before the first SIGUSR1 could kill it.
    sys::sleep_checked(Duration::from_millis(300))?;
    println!(
        "  container: {} (runc), cgroup {}, PID 1 = host pid {init_pid}",
        &container.id()[..12],
        container.cgroups_path()
    );

    let stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let stats_before = stats.old().to_owned();
    println!(
        "  kernel.bpf_stats_enabled: {stats_before} before, 1 during the storms, restored after"
    );

    println!();
    println!(
        "1. Exit storm: {} exits per run inside the container (its PID namespace and cgroups), \
         A = no agent, B = agent running; {} rounds, A then B",
        options.exits, options.rounds
    );
    println!("   CPU = the storm's user+sys time (getrusage of the looper and its children)");
    match options.storm_cpu {
        Some(cpu) => println!(
            "   the storm is pinned to CPU {cpu}; the agent runs where the scheduler puts it"
        ),
        None => println!("   the storm is not pinned"),
    }
    let target = storm::Target {
        init_pid,
        cgroup_dirs: &cgroup_dirs,
        cpu: options.storm_cpu,
    };
    let exit = exit_storm::run(&bin, &target, options.rounds, options.exits)?;
    let figures = report::ExitFigures::from(&exit);
    report::print_exit_storm(&exit, &figures);

    println!();
    println!("2. BPF run time per program (kernel.bpf_stats_enabled=1; programs run for every");
    println!("   signal, exit and exec on the host, traced or filtered out, so this is per run)");
    report::print_programs("during the B runs of the exit storm:", &exit.programs);
    // Later phases may fail; what was measured so far still goes into BENCH_JSON.
    let paused = if options.exit_only {
        Ok(None)
    } else {
        exit_storm::paused_reader(&bin, &target, options.exits).map(Some)
    };
    if let Ok(Some(paused)) = &paused {
        report::print_paused_reader(paused, &exit.programs);
    }
    // An error here is most likely a stop signal: then there is no point going on.
    let signal = (paused.is_ok() && !options.exit_only).then(|| signal_phase(&bin, init_pid));
    let idle = signal
        .as_ref()
        .is_some_and(Result::is_ok)
        .then(|| idle_phase(&bin));
    let traffic = idle
        .as_ref()
        .is_some_and(Result::is_ok)
        .then(|| traffic_phase(options.rounds));

    drop(stats);
    let restored = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    drop(container);
    let load_after = sys::loadavg();
    let secs = started.elapsed().as_secs_f64();
    println!();
    println!("  kernel.bpf_stats_enabled restored to {restored}; container and agents removed");
    println!("  load average after: {load_after}; bench took {secs:.1} s");

    let header = json!({
        "command": command,
        "invocation": invocation,
        "rounds": options.rounds,
        "exits_per_run": options.exits,
        "storm_cpu": options.storm_cpu,
        "nproc": machine.nproc,
        "kernel": machine.kernel,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "agent_bin": bin.display().to_string(),
        "bpf_stats_enabled_before": stats_before,
        "duration_s": secs,
        "targets": {},
    });
    let signal = signal.transpose();
    let idle = idle.transpose();
    let mut doc = report::json(
        header,
        (&exit, &figures),
        paused.as_ref().ok().and_then(Option::as_ref),
        signal.as_ref().ok().and_then(Option::as_ref),
    );
    if let Ok(Some(idle)) = &idle {
        report::idle_json(&mut doc, idle);
    }
    let traffic = traffic.transpose();
    if let Ok(Some(t)) = &traffic {
        doc["traffic"] = traffic::json(t);
    }
    println!();
    report::print_targets(&doc);
    println!("BENCH_JSON {doc}");
    paused?;
    signal?;
    idle?;
    traffic?;
    Ok(())
}

fn traffic_phase(rounds: u32) -> Result<traffic::Traffic> {
    println!();
    println!(
        "5. Traffic: wrk (1 thread, 8 connections, 5 s) against a healthy pod's busybox httpd,"
    );
    println!(
        "   A = no traffic programs, B = programs loaded and another pod watched as terminating"
    );
    let t = traffic::run(rounds)?;
    traffic::print(&t);
    Ok(t)
}

fn idle_phase(bin: &std::path::Path) -> Result<idle::Idle> {
    println!();
    println!(
        "4. Idle: the agent's CPU over {} s with nothing happening, on a host with at least {} cgroups",
        idle::WINDOW.as_secs(),
        idle::CGROUPS
    );
    let idle = idle::run(bin)?;
    report::print_idle(&idle);
    Ok(idle)
}

fn signal_phase(bin: &std::path::Path, init_pid: u32) -> Result<signal_storm::SignalStorm> {
    println!();
    println!(
        "3. Signal storm: SIGUSR1 from this process to the container's PID 1, {} s per step, default ring",
        signal_storm::STEP.as_secs()
    );
    let signal = signal_storm::run(bin, init_pid)?;
    report::print_signal_storm(&signal);
    report::print_programs("BPF run time during the signal storm:", &signal.programs);
    Ok(signal)
}
