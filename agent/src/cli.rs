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
    /// Ring buffer size in bytes: a power of two from 4096 (4 KiB) to 268435456 (256 MiB).
    #[arg(long, default_value_t = agent_ebpf::DEFAULT_RING_BYTES, value_parser = ring_buffer_bytes)]
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
    /// Completed terminations kept for /debug/terminations (1 to 100000).
    #[arg(long, default_value_t = 256, value_parser = history)]
    pub history: usize,
    /// A pod still present this many seconds past deletion + grace period is stuck (at
    /// most 86400, one day).
    #[arg(long, default_value_t = 30, value_parser = stuck_margin_seconds)]
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
    /// Record a Kubernetes Event (events.k8s.io/v1) on the pod for each diagnosis, so
    /// `kubectl describe pod` shows it (Kubernetes mode; rate-limited per pod and node).
    #[arg(long)]
    pub emit_events: bool,
    /// A Docker-API socket (Docker's, or Podman's compatible service) to read container
    /// names from in standalone mode; repeatable. Default: /var/run/docker.sock and
    /// /run/podman/podman.sock where present. Without one, containers are named by id.
    #[arg(long = "engine-socket", value_name = "PATH")]
    pub engine_sockets: Vec<PathBuf>,
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
    /// Seconds to wait for the connection to the agent (1 to 600).
    #[arg(long, default_value_t = 5, value_parser = timeout_seconds)]
    pub connect_timeout_seconds: u64,
    /// Seconds the whole exchange with the agent may take, connection included (1 to 600).
    #[arg(long, default_value_t = 10, value_parser = timeout_seconds)]
    pub timeout_seconds: u64,
}

/// Bounds of `--ring-buffer-bytes`: the kernel wants a power of two of at least a page;
/// above 256 MiB the ring alone would exceed the DaemonSet's memory limit.
pub const RING_BYTES_MIN: u32 = 4 << 10;
pub const RING_BYTES_MAX: u32 = 256 << 20;
/// Most completed terminations `--history` may keep.
pub const HISTORY_MAX: usize = 100_000;
/// Longest `--stuck-margin-seconds`: one day.
pub const STUCK_MARGIN_MAX_SECONDS: u64 = 86_400;
/// Longest timeout `gracewatch explain` accepts.
pub const TIMEOUT_MAX_SECONDS: u64 = 600;

fn integer<T: FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

fn ring_buffer_bytes(s: &str) -> Result<u32, String> {
    let bad = || {
        format!("must be a power of two from {RING_BYTES_MIN} (4 KiB) to {RING_BYTES_MAX} (256 MiB), e.g. 1048576 (1 MiB)")
    };
    let n: u64 = integer(s).map_err(|e| format!("{e}; {}", bad()))?;
    match u32::try_from(n) {
        Ok(n) if (RING_BYTES_MIN..=RING_BYTES_MAX).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(bad()),
    }
}

fn history(s: &str) -> Result<usize, String> {
    let n: usize = integer(s)?;
    if (1..=HISTORY_MAX).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be from 1 to {HISTORY_MAX} terminations"))
    }
}

fn stuck_margin_seconds(s: &str) -> Result<u64, String> {
    let n: u64 = integer(s)?;
    if n <= STUCK_MARGIN_MAX_SECONDS {
        Ok(n)
    } else {
        Err(format!(
            "must be at most {STUCK_MARGIN_MAX_SECONDS} seconds (one day)"
        ))
    }
}

pub(crate) fn timeout_seconds(s: &str) -> Result<u64, String> {
    let n: u64 = integer(s)?;
    if (1..=TIMEOUT_MAX_SECONDS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be from 1 to {TIMEOUT_MAX_SECONDS} seconds"))
    }
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
        assert_eq!(r.ring_buffer_bytes, 1 << 20);
        assert_eq!(r.history, 256);
        assert_eq!(r.stuck_margin_seconds, 30);
    }

    /// The parse error of `args` after `gracewatch`, or `None` if they parse.
    fn refused(args: &[&str]) -> Option<String> {
        let argv = std::iter::once("gracewatch").chain(args.iter().copied());
        Cli::try_parse_from(argv).err().map(|e| e.to_string())
    }

    #[test]
    fn ring_buffer_bytes_is_a_power_of_two_from_4_kib_to_256_mib() {
        for ok in ["4096", "1048576", "268435456"] {
            assert_eq!(
                refused(&["run", "--standalone", "--ring-buffer-bytes", ok]),
                None,
                "{ok}"
            );
        }
        for bad in [
            "2048",
            "536870912",
            "2147483648",
            "3000",
            "0",
            "-1",
            "1MiB",
            "99999999999",
        ] {
            let flag = format!("--ring-buffer-bytes={bad}");
            let e = refused(&["run", "--standalone", &flag])
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains("--ring-buffer-bytes"), "{e}");
            assert!(
                e.contains("must be a power of two from 4096 (4 KiB) to 268435456 (256 MiB)"),
                "{e}"
            );
        }
    }

    #[test]
    fn history_is_from_1_to_100000() {
        assert_eq!(refused(&["run", "--standalone", "--history", "1"]), None);
        assert_eq!(
            refused(&["run", "--standalone", "--history", "100000"]),
            None
        );
        for bad in ["0", "100001", "lots"] {
            let e = refused(&["run", "--standalone", "--history", bad])
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains("--history"), "{e}");
        }
        let e = refused(&["run", "--standalone", "--history", "0"]).unwrap_or_default();
        assert!(e.contains("must be from 1 to 100000 terminations"), "{e}");
    }

    #[test]
    fn stuck_margin_is_at_most_a_day() {
        let flag = "--stuck-margin-seconds";
        assert_eq!(refused(&["run", "--standalone", flag, "0"]), None);
        assert_eq!(refused(&["run", "--standalone", flag, "86400"]), None);
        let e = refused(&["run", "--standalone", flag, "86401"]).unwrap_or_default();
        assert!(e.contains("must be at most 86400 seconds (one day)"), "{e}");
        assert!(refused(&["run", "--standalone", flag, "-5"]).is_some());
    }

    #[test]
    fn explain_timeouts_are_from_1_to_600_seconds() {
        let cli = Cli::try_parse_from(["gracewatch", "explain", "shop/web-1"]).expect("parse");
        let Command::Explain(e) = cli.command else {
            panic!("not explain")
        };
        assert_eq!((e.connect_timeout_seconds, e.timeout_seconds), (5, 10));
        for flag in ["--timeout-seconds", "--connect-timeout-seconds"] {
            assert_eq!(refused(&["explain", "a/b", flag, "600"]), None);
            for bad in ["0", "601", "1.5"] {
                let e = refused(&["explain", "a/b", flag, bad])
                    .unwrap_or_else(|| panic!("{flag} {bad} accepted"));
                assert!(e.contains(flag), "{e}");
            }
            let e = refused(&["explain", "a/b", flag, "0"]).unwrap_or_default();
            assert!(e.contains("must be from 1 to 600 seconds"), "{e}");
        }
    }
}
