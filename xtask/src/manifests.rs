//! `cargo xtask manifests`: writes the deploy files that are generated from others, so the
//! alert rules live in one file. Today that is the kustomize PrometheusRule component,
//! made from `deploy/prometheus/rules.yaml`. The Helm chart needs no generation: it reads
//! that file (and the dashboard) through symlinks under `deploy/helm/gracewatch/files/`.
//! `--check` (and a unit test) fail when a generated file differs from what would be
//! written, so a rule added to rules.yaml cannot silently miss the component.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::util;

/// The rule file every other form of the rules comes from.
pub const RULES: &str = "deploy/prometheus/rules.yaml";
/// The generated PrometheusRule of the kustomize component.
pub const PROMETHEUS_RULE: &str = "deploy/kustomize/components/prometheusrule/prometheusrule.yaml";

pub fn run(check: bool) -> Result<()> {
    let root = util::root();
    let rules = read(&root.join(RULES))?;
    let wanted = prometheus_rule(&rules)?;
    let target = root.join(PROMETHEUS_RULE);
    let current = std::fs::read_to_string(&target).unwrap_or_default();
    if current == wanted {
        println!("ok: {PROMETHEUS_RULE} matches {RULES}");
        return Ok(());
    }
    if check {
        bail!("{PROMETHEUS_RULE} is out of date with {RULES}: run `cargo xtask manifests`");
    }
    std::fs::write(&target, wanted).with_context(|| format!("writing {}", target.display()))?;
    println!("wrote {PROMETHEUS_RULE} from {RULES}");
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The PrometheusRule whose `spec` is the rule file's `groups:` block, moved two columns
/// right. Text, not a YAML round trip: block scalars, quoting and comments inside the
/// groups stay exactly as written, and the rule file's header comment is left out.
pub fn prometheus_rule(rules: &str) -> Result<String> {
    let mut lines = rules.lines();
    if !lines.by_ref().any(|line| line == "groups:") {
        bail!("{RULES} has no top-level `groups:` line");
    }
    let mut out = String::from(HEADER);
    out.push_str("spec:\n  groups:\n");
    for line in lines {
        if line.is_empty() {
            out.push('\n');
        } else if !line.starts_with([' ', '#']) {
            bail!("{RULES}: only `groups:` may be at the top level, found {line:?}");
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

const HEADER: &str = "\
# Generated from deploy/prometheus/rules.yaml by `cargo xtask manifests`: edit that file,
# then run the command. A test fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: gracewatch
  namespace: gracewatch
  labels:
    app.kubernetes.io/name: gracewatch
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_component_matches_the_rule_file() {
        let root = util::root();
        let rules = read(&root.join(RULES)).expect("rules");
        let current = read(&root.join(PROMETHEUS_RULE)).expect("component");
        assert!(
            prometheus_rule(&rules).expect("generate") == current,
            "{PROMETHEUS_RULE} is out of date with {RULES}: run `cargo xtask manifests`"
        );
    }

    #[test]
    fn moves_groups_under_spec() {
        let rules = "# header\n\ngroups:\n  - name: g\n    rules:\n      # why\n      - alert: A\n        expr: |\n          up\n\n          == 0\n";
        let out = prometheus_rule(rules).expect("generate");
        let body = out.split_once("spec:\n").expect("spec").1;
        assert_eq!(
            body,
            "  groups:\n    - name: g\n      rules:\n        # why\n        - alert: A\n          expr: |\n            up\n\n            == 0\n"
        );
        assert!(!out.contains("# header"));
    }

    #[test]
    fn refuses_files_it_cannot_wrap() {
        let cases = [
            ("no groups", "rules: []\n"),
            ("second top-level key", "groups:\n  - name: g\nextra: 1\n"),
        ];
        for (what, input) in cases {
            assert!(prometheus_rule(input).is_err(), "{what}");
        }
    }
}
