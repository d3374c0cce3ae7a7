//! The command line: `gracewatch run` (the agent) and `gracewatch explain` (a client that
//! renders one termination for a person).

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gracewatch",
    version,
    about = "Sees how containers and pods shut down, from the kernel's side"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent on this node.
    Run(RunArgs),
    /// Print the termination timeline and diagnoses of a pod (<namespace>/<pod>) or a
    /// container (container/<id-prefix>).
    Explain(ExplainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Attribute by cgroup alone, without a Kubernetes API server.
    #[arg(long)]
    pub standalone: bool,
    /// Address for /metrics, /healthz, /readyz and /debug.
    #[arg(long, default_value = "127.0.0.1:9610")]
    pub listen: SocketAddr,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = agent_ebpf::DEFAULT_RING_BYTES)]
    pub ring_buffer_bytes: u32,
    /// Signals to trace, by name or number (SIGTERM and SIGKILL are always traced).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "HUP,INT,QUIT,USR1,USR2,TERM,KILL"
    )]
    pub signals: Vec<SignalArg>,
    /// The host's cgroup file system (its v2 mount, or a hybrid root with `unified/`).
    /// Default: the cgroup v2 mount this process sees.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Completed terminations kept for /debug/terminations.
    #[arg(long, default_value_t = 256)]
    pub history: usize,
    /// A pod still present this many seconds past deletion + grace period is stuck.
    #[arg(long, default_value_t = 30)]
    pub stuck_margin_seconds: u64,
    /// The longest grace a runtime gives a container before SIGKILL, where the agent
    /// cannot read it (standalone mode): a signal other than SIGTERM followed by the end
    /// within it is the container's stop signal; a container that existed before the
    /// agent and ended within it of the agent's start has an unknown outcome.
    #[arg(long, default_value_t = 30)]
    pub max_grace_seconds: u64,
    /// Seconds a standalone container's metric series (labelled by its id) are kept
    /// after its termination completes, so container churn cannot grow /metrics forever.
    #[arg(long, default_value_t = 120)]
    pub series_ttl_seconds: u64,
    /// Trace host processes as well as containers (debugging and benchmarks).
    #[arg(long, hide = true)]
    pub trace_host: bool,
    /// Kubeconfig for Kubernetes mode (default: in-cluster, then KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (Kubernetes mode).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// What to explain: <namespace>/<pod> or container/<id-prefix>.
    pub target: String,
    /// The agent's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9610")]
    pub agent: String,
    /// Print the raw JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A signal given by name (TERM, SIGTERM) or number (15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalArg(pub u32);

impl FromStr for SignalArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u32>() {
            return if (1..64).contains(&n) {
                Ok(Self(n))
            } else {
                Err(format!("signal number {n} is outside 1..=63"))
            };
        }
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&name)
            .map(|sig| Self(sig as u32))
            .map_err(|_| format!("unknown signal {s:?} (use a name such as TERM or a number)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!("TERM".parse::<SignalArg>(), Ok(SignalArg(15)));
        assert_eq!("sigquit".parse::<SignalArg>(), Ok(SignalArg(3)));
        assert_eq!("9".parse::<SignalArg>(), Ok(SignalArg(9)));
        assert!("BOGUS"
            .parse::<SignalArg>()
            .unwrap_err()
            .contains("unknown signal"));
        assert!("99".parse::<SignalArg>().is_err());
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["gracewatch", "run", "--standalone"]).expect("parse");
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert!(r.standalone);
        assert_eq!(r.listen.port(), 9610);
        assert_eq!(r.signals.len(), 7);
    }
}
