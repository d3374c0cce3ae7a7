//! `kubectl gracewatch`: the on-call engineer's view from a laptop. `explain <ns>/<pod>`
//! finds the pod's node through the API, the Gracewatch agent pod on that node, and reads
//! the termination through the API server's pod proxy (no port-forward, no access to the
//! node's network); `stuck` lists pods stuck in Terminating across the cluster with the
//! reason their node's agent gives. The text comes from [`crate::explain`], coloured on a
//! terminal; `--json` prints JSON instead.

mod locate;
mod open;
mod stuck;

use std::{io::IsTerminal as _, io::Write as _, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use hyper::StatusCode;

use crate::explain::{self, ExplainError, Form, Palette};

pub use locate::AgentPod;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-gracewatch",
    bin_name = "kubectl gracewatch",
    version,
    about = "Explains how pods terminated, from the Gracewatch agent on their node"
)]
pub struct PluginCli {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the Gracewatch DaemonSet.
    #[arg(long, global = true, default_value = "gracewatch")]
    pub agent_namespace: String,
    /// The agents' HTTP port (the DaemonSet's `metrics` port).
    #[arg(long, global = true, default_value_t = 9610)]
    pub agent_port: u16,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Colour the text: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Seconds the whole command may take (1 to 600).
    #[arg(long, global = true, default_value_t = 30, value_parser = crate::cli::timeout_seconds)]
    pub timeout_seconds: u64,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Print the termination timeline and diagnoses of a pod: <namespace>/<pod>.
    Explain {
        /// <namespace>/<pod>
        target: String,
        /// Also open the picture of the termination (the agent's /ui page, saved to a
        /// temporary file) in $BROWSER, else with xdg-open.
        #[arg(long)]
        open: bool,
    },
    /// List pods stuck in Terminating across the cluster, with what holds each.
    Stuck {
        /// A pod counts as stuck this many seconds after its deletion time plus grace
        /// period (the agent's --stuck-margin-seconds default).
        #[arg(long, default_value_t = 30)]
        margin_seconds: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Kube(#[from] crate::kube::KubeError),
    #[error("the API server refused {what}: {message}")]
    Api { what: String, message: String },
    #[error("pod {namespace}/{pod} is not scheduled on a node, so no agent has seen it")]
    NotScheduled { namespace: String, pod: String },
    #[error("no running Gracewatch agent pod on node {node} in namespace {namespace} (is the DaemonSet installed there? see --agent-namespace)")]
    NoAgentOnNode { node: String, namespace: String },
    #[error("no Gracewatch agent pods in namespace {0} (is the DaemonSet installed there? see --agent-namespace)")]
    NoAgents(String),
    #[error("pod {namespace}/{pod} is gone from the API and none of the {agents} agents recorded its termination")]
    NowhereFound {
        namespace: String,
        pod: String,
        agents: usize,
    },
    #[error("reading agent {agent} through the API server's pod proxy answered {status}: {message}{hint}")]
    Proxy {
        agent: String,
        status: StatusCode,
        message: String,
        hint: &'static str,
    },
    #[error("kubectl gracewatch explains pods: give <namespace>/<pod>, not {0:?} (for a container id, run `gracewatch explain` on its node)")]
    NotAPod(String),
    #[error("not done within {0} s (--timeout-seconds)")]
    Timeout(u64),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("cannot save the picture to {path}")]
    SavePicture {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the picture with {opener} (set BROWSER to a browser command): {problem}")]
    OpenPicture { opener: String, problem: String },
}

/// Parses, runs and prints; the error is for the caller to report.
pub async fn main(cli: PluginCli) -> Result<(), PluginError> {
    let seconds = cli.timeout_seconds;
    let text = tokio::time::timeout(Duration::from_secs(seconds), run(&cli))
        .await
        .map_err(|_| PluginError::Timeout(seconds))??;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(PluginError::Stdout)
}

async fn run(cli: &PluginCli) -> Result<String, PluginError> {
    let client =
        crate::kube::client_in_context(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let agents = locate::Agents {
        client: &client,
        namespace: &cli.agent_namespace,
        port: cli.agent_port,
    };
    let palette = palette(cli.color, std::io::stdout().is_terminal(), no_color());
    match &cli.command {
        PluginCommand::Explain { target, open } => {
            let (namespace, pod) = match target.split_once('/') {
                Some(("container", _)) | None => return Err(PluginError::NotAPod(target.clone())),
                Some(pair) => pair,
            };
            let path = explain::endpoint(target)?;
            let (agent, status, body) = agents.terminations_of(namespace, pod, &path).await?;
            let form = if cli.json {
                Form::Json
            } else {
                Form::Text(palette)
            };
            let mut text = explain::format_answer(target, status, &body, form)?;
            if *open {
                let (_, page) = agents
                    .get(&agent, &format!("/ui/{namespace}/{pod}"))
                    .await?;
                let file = open::save_and_open(namespace, pod, &page)?;
                if !cli.json {
                    text.push_str(&format!("Picture: {}\n", file.display()));
                }
            }
            Ok(text)
        }
        PluginCommand::Stuck { margin_seconds } => {
            let found = stuck::find(&agents, *margin_seconds).await?;
            Ok(if cli.json {
                stuck::json(&found)
            } else {
                stuck::table(&found, palette)
            })
        }
    }
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Colours on a terminal (unless NO_COLOR), plain otherwise; `--color` overrides both.
pub fn palette(choice: ColorChoice, terminal: bool, no_color: bool) -> Palette {
    let on = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && !no_color,
    };
    if on {
        Palette::ANSI
    } else {
        Palette::PLAIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_where_asked_or_on_a_terminal() {
        let cases = [
            (ColorChoice::Auto, true, false, Palette::ANSI),
            (ColorChoice::Auto, false, false, Palette::PLAIN),
            (ColorChoice::Auto, true, true, Palette::PLAIN),
            (ColorChoice::Always, false, true, Palette::ANSI),
            (ColorChoice::Never, true, false, Palette::PLAIN),
        ];
        for (choice, terminal, no_color, want) in cases {
            assert_eq!(
                palette(choice, terminal, no_color),
                want,
                "{choice:?} {terminal} {no_color}"
            );
        }
    }

    #[test]
    fn parses_kubectl_style_flags_anywhere() {
        let cli = PluginCli::try_parse_from([
            "kubectl-gracewatch",
            "explain",
            "shop/web-1",
            "--context",
            "prod",
            "--json",
        ])
        .expect("parse");
        assert_eq!(cli.context.as_deref(), Some("prod"));
        assert!(cli.json);
        assert!(
            matches!(cli.command, PluginCommand::Explain { ref target, open: false } if target == "shop/web-1")
        );
        assert!(PluginCli::try_parse_from([
            "kubectl-gracewatch",
            "stuck",
            "--timeout-seconds",
            "0"
        ])
        .is_err());
    }
}
