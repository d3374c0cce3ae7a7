//! The install paths as users run them: `helm template` of deploy/helm/gracewatch and
//! `kubectl kustomize` of deploy/kustomize, with the real tools `cargo xtask setup`
//! installs, and the rendered objects as JSON values and as k8s-openapi types.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// Where `cargo xtask setup` puts helm and kubectl (`GRACEWATCH_K8S_TOOLS` overrides).
pub const TOOLS_DIR: &str = "/usr/local/lib/gracewatch/k8s-tools";

/// The workspace root.
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `deploy/<rel>` in the workspace.
pub fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

/// A helm or kubectl binary installed by `cargo xtask setup`.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("GRACEWATCH_K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TOOLS_DIR));
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` (it installs helm and kubectl there)",
            path.display()
        );
    }
    Ok(path)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{line} printed non-UTF-8"))
}

/// `helm template gracewatch deploy/helm/gracewatch --namespace <ns>` with `--set` pairs.
pub fn helm_template(namespace: &str, sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut cmd = Command::new(tool("helm")?);
    cmd.args(["template", "gracewatch"])
        .arg(deploy("helm/gracewatch"))
        .args(["--namespace", namespace]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    parse_documents(&output(&mut cmd)?)
}

/// `helm lint` of the chart; its output.
pub fn helm_lint() -> anyhow::Result<String> {
    output(
        Command::new(tool("helm")?)
            .args(["lint", "--strict"])
            .arg(deploy("helm/gracewatch")),
    )
}

/// `kubectl kustomize deploy/kustomize/<dir>`.
pub fn kustomize(dir: &str) -> anyhow::Result<Vec<Value>> {
    let out = output(
        Command::new(tool("kubectl")?)
            .arg("kustomize")
            .arg(deploy(&format!("kustomize/{dir}"))),
    )?;
    parse_documents(&out)
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub fn parse_documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The objects of a YAML file.
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_documents(&text).with_context(|| format!("in {}", path.display()))
}

/// `Kind namespace/name` of an object.
pub fn key(obj: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    format!(
        "{} {}/{}",
        s(&obj["kind"]),
        s(&obj["metadata"]["namespace"]),
        s(&obj["metadata"]["name"])
    )
}

/// Objects by key; two objects with one key is an error.
pub fn by_key(objects: Vec<Value>) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut map = BTreeMap::new();
    for obj in objects {
        let k = key(&obj);
        if map.insert(k.clone(), obj).is_some() {
            bail!("two objects are {k}");
        }
    }
    Ok(map)
}

/// Labels that name the tool that applied an object, which is all two install paths of the
/// same objects may differ in.
const TOOL_LABELS: &[&str] = &["app.kubernetes.io/managed-by", "helm.sh/chart"];

/// The object without the labels naming its installer.
pub fn without_tool_labels(mut obj: Value) -> Value {
    if let Some(labels) = obj["metadata"]["labels"].as_object_mut() {
        for label in TOOL_LABELS {
            labels.remove(*label);
        }
    }
    obj
}

/// Deserializes the object into `T` and serializes it back: an error unless the result is
/// the object itself, so a misspelt or misplaced field (which serde would skip) fails too.
fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> anyhow::Result<()> {
    let typed: T = serde_json::from_value(obj.clone())
        .with_context(|| format!("{} does not parse into its type", key(obj)))?;
    let back = serde_json::to_value(&typed)?;
    if &back != obj {
        bail!(
            "{} has fields its type does not know, or wrongly typed ones:\nwritten: {obj}\nparsed:  {back}",
            key(obj)
        );
    }
    Ok(())
}

/// Checks the object against its k8s-openapi type (exact round trip). Prometheus Operator
/// kinds, which k8s-openapi does not have, are checked as `kube` dynamic objects here and
/// field by field by the tests.
pub fn check_typed(obj: &Value) -> anyhow::Result<()> {
    use k8s_openapi::api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(obj),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(obj),
        ("v1", "Service") => round_trip::<Service>(obj),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(obj),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(obj)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor" | "PrometheusRule") => {
            let dynamic: kube::api::DynamicObject = serde_json::from_value(obj.clone())
                .with_context(|| format!("{} is not a Kubernetes object", key(obj)))?;
            if dynamic.metadata.name.is_none() || dynamic.data.get("spec").is_none() {
                bail!("{} has no name or no spec", key(obj));
            }
            Ok(())
        }
        _ => bail!("{}: no type known for {api_version} {kind}", key(obj)),
    }
}
