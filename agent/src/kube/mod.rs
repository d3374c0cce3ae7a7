//! The Kubernetes side: watchers of this node's pods, the endpoints of those pods and
//! kubelet's Events about them (`watch`), the model each pod is converted into on arrival
//! (`model`), the API's view of the node that the updates build (`node`), pods' owners
//! read on demand to say why a pod was deleted (`owners`), and the Events the agent
//! writes about its diagnoses (`events`).

pub mod events;
pub mod model;
pub mod node;
pub mod owners;
pub mod watch;

pub use model::{ApiContainerKind, ApiPod, PreStop, SANDBOX};
pub use node::{ApiPodState, NodeView, PodChange};
pub use watch::{EndpointState, KubeUpdate};

use std::{error::Error as StdError, path::Path};

use kube::{
    client::AuthError,
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError, LoadDataError},
};

/// What can stop Kubernetes mode from starting. The messages name the file and the kind
/// of problem (with a line and column where the parser gives one) and never quote a
/// kubeconfig: it holds tokens and keys, and a YAML parser's message shows the lines
/// around an error. For the same reason no variant keeps the library's error as its
/// source, whose text would be printed after it.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes mode needs this node's name: pass --node-name or set NODE_NAME (from the downward API: spec.nodeName), or run with --standalone")]
    NodeNameMissing,
    #[error("cannot use kubeconfig {path}: {problem}")]
    Kubeconfig { path: String, problem: String },
    #[error("no Kubernetes client configuration: no usable kubeconfig ({kubeconfig}) and not in a cluster ({in_cluster})")]
    Config {
        kubeconfig: String,
        in_cluster: String,
    },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// A client from `--kubeconfig` / KUBECONFIG, else the default kubeconfig, else
/// in-cluster (the order of `kube::Config::infer`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    client_in_context(kubeconfig, None).await
}

/// [`client`], with the kubeconfig's named context instead of its current one (kubectl's
/// `--context`).
pub async fn client_in_context(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, KubeError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let invalid = |e: KubeconfigError| KubeError::Kubeconfig {
                path: path.display().to_string(),
                problem: kubeconfig_problem(&e),
            };
            let kc = Kubeconfig::read_from(path).map_err(invalid)?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(invalid)?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(mut config) => {
                config.apply_debug_overrides();
                config
            }
            Err(from_file) => match kube::Config::incluster() {
                Ok(mut config) => {
                    config.apply_debug_overrides();
                    config
                }
                Err(in_cluster) => {
                    return Err(KubeError::Config {
                        kubeconfig: kubeconfig_problem(&from_file),
                        in_cluster: in_cluster.to_string(),
                    })
                }
            },
        },
    };
    // Key and certificate data are decoded only here.
    kube::Client::try_from(config).map_err(|e| match (kubeconfig, kubeconfig_cause(&e)) {
        (Some(path), Some(cause)) => KubeError::Kubeconfig {
            path: path.display().to_string(),
            problem: kubeconfig_problem(cause),
        },
        _ => KubeError::Client(describe(&e)),
    })
}

fn kubeconfig_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a KubeconfigError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(kc) = c.downcast_ref::<KubeconfigError>() {
            return Some(kc);
        }
        cause = c.source();
    }
    None
}

/// An error from the Kubernetes client or a watch, in words that hold no credentials:
/// kubeconfig and authentication problems (an exec plugin's output, a token that is
/// not a valid header) are named, not quoted, wherever they sit in the error's chain.
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(auth) = c.downcast_ref::<AuthError>() {
            return format!("authentication failed: {}", auth_problem(auth));
        }
        if let Some(kc) = c.downcast_ref::<KubeconfigError>() {
            return format!("kubeconfig: {}", kubeconfig_problem(kc));
        }
        if let Some(kube::Error::Api(status)) = c.downcast_ref::<kube::Error>() {
            return format!("{} {}: {}", status.code, status.reason, status.message);
        }
        cause = c.source();
    }
    e.to_string()
}

fn kubeconfig_problem(e: &KubeconfigError) -> String {
    use KubeconfigError as K;
    match e {
        K::ReadConfig(io, _) => format!("cannot read it: {io}"),
        K::Parse(parse) => match parse.location() {
            Some(at) => format!(
                "not a valid kubeconfig (YAML syntax or structure) at line {}, column {}",
                at.line(),
                at.column()
            ),
            None => "not a valid kubeconfig (YAML syntax or structure)".to_string(),
        },
        K::CurrentContextNotSet => "no current-context is set".to_string(),
        K::KindMismatch | K::ApiVersionMismatch => {
            "the files merged from KUBECONFIG disagree on kind or apiVersion".to_string()
        }
        K::LoadContext(name) => format!("it has no context named {name:?}"),
        K::LoadClusterOfContext(name) => format!("it has no cluster named {name:?}"),
        K::FindPath => "no kubeconfig path (no KUBECONFIG and no home directory)".to_string(),
        K::MissingClusterUrl => "the selected cluster has no server URL".to_string(),
        K::ParseClusterUrl(_) => "the selected cluster's server is not a valid URL".to_string(),
        K::ParseProxyUrl(_) => "proxy-url is not a valid URL".to_string(),
        K::LoadCertificateAuthority(d) => data_problem("certificate-authority", d),
        K::LoadClientCertificate(d) => data_problem("client-certificate", d),
        K::LoadClientKey(d) => data_problem("client-key", d),
        K::ParseCertificates(_) => "a certificate in it is not valid PEM".to_string(),
    }
}

fn data_problem(what: &str, e: &LoadDataError) -> String {
    match e {
        LoadDataError::DecodeBase64(_) => format!("{what}-data is not valid base64"),
        LoadDataError::ReadFile(io, path) => {
            format!("cannot read {what} file {}: {io}", path.display())
        }
        LoadDataError::NoBase64DataOrFile => format!("{what} has neither data nor a file"),
    }
}

fn auth_problem(e: &AuthError) -> String {
    use AuthError as A;
    match e {
        A::InvalidBasicAuth(_) => "the username or password is not a valid header value".into(),
        A::InvalidBearerToken(_) => "the token is not a valid header value".into(),
        A::UnrefreshableTokenResponse
        | A::ExecPluginFailed
        | A::MissingCommand
        | A::ExecMissingClusterInfo
        | A::NoValidNativeRootCA(_)
        | A::AuthExecStart(_) => e.to_string(),
        A::AuthExecRun { cmd, out } => format!(
            "exec plugin {cmd:?} failed with {} (its output is withheld: it may hold credentials)",
            out.status
        ),
        A::ReadTokenFile(io, path) => {
            format!("cannot read token file {}: {io}", path.display())
        }
        _ => "details withheld: they may quote credentials".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.sig";
    const KEY: &str = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUV2UUlCQURBTkJna3Foa2lHOXcwQkFRRUZBQVNDQktjd2dnU2pBZ0VBQW9JQkFRQw==";

    /// A kubeconfig file of this test's own, removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "gracewatch-kubeconfig-{}-{name}.yaml",
                std::process::id()
            ));
            std::fs::write(&path, text).expect("write kubeconfig");
            Self(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: c
clusters:
- name: k
  cluster:
    server: https://127.0.0.1:6443
contexts:
- name: c
  context: {{cluster: k, user: u}}
users:
- name: u
  user:
{user}
"
        )
    }

    /// The error `client` gives for `text`, as Display and Debug (what a log or anyhow
    /// would print).
    async fn refused(name: &str, text: &str) -> (String, String) {
        let file = File::new(name, text);
        let Err(e) = client(Some(&file.0)).await else {
            panic!("{name}: accepted")
        };
        let shown = format!("{e}");
        assert!(shown.contains(&file.0.display().to_string()), "{shown}");
        (shown, format!("{e:?}"))
    }

    fn assert_no_secret(text: &str) {
        for secret in [
            TOKEN,
            KEY,
            "c2VjcmV0",
            "LS0tLS1CRUdJTi",
            "token: ",
            "-data: ",
        ] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }

    #[tokio::test]
    async fn a_syntax_error_is_located_not_quoted() {
        let user = format!("    token: {TOKEN}\n    client-key-data: {KEY}\n    bad: [unclosed\n");
        let (shown, debug) = refused("syntax", &kubeconfig(&user)).await;
        assert!(shown.contains("not a valid kubeconfig"), "{shown}");
        assert!(shown.contains("line "), "{shown}");
        assert_no_secret(&shown);
        assert_no_secret(&debug);
    }

    #[tokio::test]
    async fn a_structure_error_does_not_quote_values() {
        // A mapping where a string belongs: serde's message would name the value.
        let user = format!("    token: {{value: {TOKEN}}}\n    client-key-data: {KEY}\n");
        let (shown, debug) = refused("structure", &kubeconfig(&user)).await;
        assert!(shown.contains("not a valid kubeconfig"), "{shown}");
        assert_no_secret(&shown);
        assert_no_secret(&debug);
    }

    #[tokio::test]
    async fn bad_key_data_is_named_not_shown() {
        let user = format!(
            "    token: {TOKEN}\n    client-certificate-data: {KEY}\n    client-key-data: {KEY}!!\n"
        );
        let (shown, debug) = refused("base64", &kubeconfig(&user)).await;
        assert!(
            shown.contains("not valid base64") || shown.contains("not valid PEM"),
            "{shown}"
        );
        assert_no_secret(&shown);
        assert_no_secret(&debug);
    }

    #[tokio::test]
    async fn a_missing_file_says_so() {
        let path = std::env::temp_dir().join("gracewatch-no-such-kubeconfig.yaml");
        let Err(e) = client(Some(&path)).await else {
            panic!("accepted")
        };
        let e = e.to_string();
        assert!(e.contains("cannot read it"), "{e}");
        assert!(e.contains("gracewatch-no-such-kubeconfig.yaml"), "{e}");
    }

    #[tokio::test]
    async fn a_valid_kubeconfig_with_a_token_builds_a_client() {
        let file = File::new("valid", &kubeconfig(&format!("    token: {TOKEN}\n")));
        assert!(client(Some(&file.0)).await.is_ok());
    }

    #[test]
    fn an_exec_plugins_output_is_withheld() {
        use std::os::unix::process::ExitStatusExt;
        let failed = AuthError::AuthExecRun {
            cmd: "aws".into(),
            out: Box::new(std::process::Output {
                status: std::process::ExitStatus::from_raw(256),
                stdout: format!("{{\"token\": \"{TOKEN}\"}}").into_bytes(),
                stderr: Vec::new(),
            }),
        };
        let wrapped = kube::Error::Auth(failed);
        let text = describe(&wrapped);
        assert!(text.contains("exec plugin \"aws\" failed"), "{text}");
        assert!(text.contains("withheld"), "{text}");
        assert_no_secret(&text);
        // Found anywhere in the chain, e.g. inside a watch error.
        let watch = kube::runtime::watcher::Error::InitialListFailed(wrapped);
        assert_no_secret(&describe(&watch));
    }
}
