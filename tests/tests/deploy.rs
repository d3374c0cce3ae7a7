//! The two install paths render the same objects, every object is a valid Kubernetes
//! object of its type, and the dashboard and alert rules in them are exactly the files in
//! deploy/grafana and deploy/prometheus. No root needed: real `helm template`, `helm lint`
//! and `kubectl kustomize` (installed by `cargo xtask setup`).

use std::collections::BTreeMap;

use gracewatch_tests::deploy::{
    by_key, check_typed, deploy, helm_lint, helm_template, kustomize, read_documents,
    without_tool_labels,
};
use serde_json::Value;

const NS: &str = "gracewatch";
const MONITORING: &[&str] = &["serviceMonitor.enabled=true", "prometheusRule.enabled=true"];

fn normalized(objects: Vec<Value>) -> BTreeMap<String, Value> {
    by_key(objects.into_iter().map(without_tool_labels).collect()).expect("unique objects")
}

/// Fails with the first differing object, shown whole on both sides.
fn assert_same_objects(helm: BTreeMap<String, Value>, kustomize: BTreeMap<String, Value>) {
    let helm_keys: Vec<_> = helm.keys().collect();
    let kustomize_keys: Vec<_> = kustomize.keys().collect();
    assert_eq!(
        helm_keys, kustomize_keys,
        "helm and kustomize render other objects"
    );
    for (key, from_helm) in &helm {
        let from_kustomize = &kustomize[key];
        assert!(
            from_helm == from_kustomize,
            "{key} differs:\nhelm:      {from_helm}\nkustomize: {from_kustomize}"
        );
    }
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn container(objects: &[Value]) -> &Value {
    &find(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

/// The rules (apiGroup, resource, verb) granted on events.
fn event_verbs(objects: &[Value]) -> Vec<String> {
    let role = named(objects, "ClusterRole", "gracewatch");
    let mut verbs = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        if rule["resources"]
            .as_array()
            .expect("resources")
            .contains(&Value::from("events"))
        {
            for verb in rule["verbs"].as_array().expect("verbs") {
                verbs.push(format!(
                    "{}:{}",
                    rule["apiGroups"][0],
                    verb.as_str().expect("verb")
                ));
            }
        }
    }
    verbs
}

fn rule_file_groups() -> Value {
    let file = read_documents(&deploy("prometheus/rules.yaml")).expect("rules.yaml");
    file[0]["groups"].clone()
}

#[test]
fn chart_defaults_render_the_kustomize_base() {
    let helm = helm_template(NS, &[]).expect("helm template");
    let base = kustomize("base").expect("kubectl kustomize base");
    assert_eq!(base.len(), 7, "the base has Namespace, ServiceAccount, 2 ClusterRoles, ClusterRoleBinding, Service, DaemonSet");
    assert_same_objects(normalized(helm), normalized(base));
}

#[test]
fn chart_with_monitoring_renders_the_monitoring_overlay() {
    let helm = helm_template(NS, MONITORING).expect("helm template");
    let overlay = kustomize("overlays/monitoring").expect("kubectl kustomize overlay");
    assert_eq!(overlay.len(), 9);
    assert_same_objects(normalized(helm), normalized(overlay));
}

#[test]
fn every_manifest_and_rendered_object_parses_into_its_type() {
    let mut objects = Vec::new();
    for file in [
        "kustomize/base/namespace.yaml",
        "kustomize/base/serviceaccount.yaml",
        "kustomize/base/rbac.yaml",
        "kustomize/base/viewer-rbac.yaml",
        "kustomize/base/daemonset.yaml",
        "kustomize/base/service.yaml",
        "kustomize/components/servicemonitor/servicemonitor.yaml",
        "kustomize/components/prometheusrule/prometheusrule.yaml",
    ] {
        objects.extend(read_documents(&deploy(file)).expect(file));
    }
    objects.extend(kustomize("overlays/monitoring").expect("overlay"));
    objects.extend(
        helm_template(
            "monitoring",
            &[
                "serviceMonitor.enabled=true",
                "prometheusRule.enabled=true",
                "dashboard.enabled=true",
                "ringBufferBytes=1048576",
                "signals={TERM,KILL,USR1}",
                "stuckMarginSeconds=60",
                "extraLabels.team=platform",
            ],
        )
        .expect("helm template, everything on"),
    );
    objects.extend(helm_template(NS, &["emitEvents=false"]).expect("helm template"));
    assert!(objects.len() > 30);
    let failures: Vec<String> = objects
        .iter()
        .filter_map(|o| check_typed(o).err().map(|e| format!("{e:#}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn helm_lint_is_clean() {
    let out = helm_lint().expect("helm lint --strict");
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn both_prometheus_rules_carry_exactly_the_rule_file() {
    let groups = rule_file_groups();
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "rules.yaml has groups"
    );
    let helm = helm_template(NS, MONITORING).expect("helm template");
    let overlay = kustomize("overlays/monitoring").expect("overlay");
    for (path, objects) in [("helm", &helm), ("kustomize", &overlay)] {
        let rule = find(objects, "PrometheusRule");
        assert!(
            rule["spec"]["groups"] == groups,
            "{path}'s PrometheusRule differs from deploy/prometheus/rules.yaml"
        );
    }
}

#[test]
fn chart_dashboard_is_the_dashboard_file_for_the_grafana_sidecar() {
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/gracewatch.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let helm = helm_template(
        NS,
        &["dashboard.enabled=true", "dashboard.namespace=monitoring"],
    )
    .expect("helm template");
    let cm = find(&helm, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        cm["data"]["gracewatch.json"]
            .as_str()
            .expect("gracewatch.json key"),
    )
    .expect("ConfigMap holds JSON");
    assert!(
        shipped == file,
        "the ConfigMap's dashboard differs from deploy/grafana/gracewatch.json"
    );
    // Off by default, like the Operator objects: they need Grafana or the Operator's CRDs.
    let defaults = helm_template(NS, &[]).expect("helm template");
    for kind in ["ConfigMap", "ServiceMonitor", "PrometheusRule"] {
        assert!(
            !defaults.iter().any(|o| o["kind"] == kind),
            "{kind} rendered by default"
        );
    }
}

#[test]
fn service_monitor_selects_the_metrics_service_port() {
    let helm = helm_template("observability", MONITORING).expect("helm template");
    let sm = find(&helm, "ServiceMonitor");
    let svc = find(&helm, "Service");
    for (label, value) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][label], value,
            "Service lacks {label}"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["observability"])
    );
    let port = sm["spec"]["endpoints"][0]["port"]
        .as_str()
        .expect("endpoint port");
    assert!(svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == port));
    // GracewatchAgentDown selects job="gracewatch": the Operator's job label is the Service name.
    assert_eq!(svc["metadata"]["name"], "gracewatch");
}

#[test]
fn event_emission_value_adds_the_flag_and_the_write_rules() {
    let on = helm_template(NS, &[]).expect("helm template");
    assert!(
        args(&on).contains(&"--emit-events".to_owned()),
        "{:?}",
        args(&on)
    );
    let verbs = event_verbs(&on);
    for verb in [
        "\"\":create",
        "\"events.k8s.io\":create",
        "\"events.k8s.io\":patch",
    ] {
        assert!(
            verbs.contains(&verb.to_owned()),
            "{verb} missing from {verbs:?}"
        );
    }
    let off = helm_template(NS, &["emitEvents=false"]).expect("helm template");
    assert!(
        !args(&off).contains(&"--emit-events".to_owned()),
        "{:?}",
        args(&off)
    );
    let verbs = event_verbs(&off);
    assert!(
        !verbs
            .iter()
            .any(|v| v.ends_with(":create") || v.ends_with(":patch")),
        "{verbs:?}"
    );
    assert!(
        verbs.contains(&"\"\":watch".to_owned()),
        "reading events stays: {verbs:?}"
    );
}

#[test]
fn values_reach_the_daemonset() {
    let objects = helm_template(
        NS,
        &[
            "image.repository=registry.example/gw",
            "image.tag=1.2.3",
            "ringBufferBytes=1048576",
            "signals={TERM,KILL,USR1}",
            "stuckMarginSeconds=0",
            "extraArgs={--history,512}",
            "resources.limits.memory=512Mi",
            "priorityClassName=",
            "tolerations=null",
            "nodeSelector.pool=general",
            "extraLabels.team=platform",
        ],
    )
    .expect("helm template");
    let c = container(&objects);
    assert_eq!(c["image"], "registry.example/gw:1.2.3");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    let a = args(&objects).join(" ");
    for wanted in [
        "--ring-buffer-bytes 1048576",
        "--signals TERM,KILL,USR1",
        "--stuck-margin-seconds 0",
        "--history 512",
        "--emit-events",
    ] {
        assert!(a.contains(wanted), "{wanted:?} not in {a:?}");
    }
    let pod = &find(&objects, "DaemonSet")["spec"]["template"];
    assert!(pod["spec"].get("priorityClassName").is_none());
    assert!(pod["spec"].get("tolerations").is_none());
    assert_eq!(pod["spec"]["nodeSelector"]["pool"], "general");
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    for obj in &objects {
        assert_eq!(
            obj["metadata"]["labels"]["team"], "platform",
            "{}",
            obj["kind"]
        );
    }
    // Defaults keep the agent's own flag defaults and the image of the chart's appVersion.
    let defaults = helm_template(NS, &[]).expect("helm template");
    assert_eq!(
        container(&defaults)["image"],
        "ghcr.io/gracewatch/gracewatch:0.1.0"
    );
    assert_eq!(
        args(&defaults),
        [
            "run",
            "--listen",
            "0.0.0.0:9610",
            "--cgroup-root",
            "/host/sys/fs/cgroup",
            "--emit-events"
        ]
    );
}

#[test]
fn chart_follows_the_release_namespace() {
    let objects = helm_template("observability", &[]).expect("helm template");
    assert_eq!(
        find(&objects, "Namespace")["metadata"]["name"],
        "observability"
    );
    let binding = find(&objects, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["namespace"], "observability");
    for obj in objects.iter().filter(|o| {
        !matches!(
            o["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        )
    }) {
        assert_eq!(
            obj["metadata"]["namespace"], "observability",
            "{}",
            obj["kind"]
        );
    }
    let without = helm_template(NS, &["namespace.create=false"]).expect("helm template");
    assert!(!without.iter().any(|o| o["kind"] == "Namespace"));
}

#[test]
fn viewer_role_grants_the_pod_proxy_and_nothing_that_writes() {
    for (path, objects) in [
        ("helm", helm_template(NS, &[]).expect("helm template")),
        ("kustomize", kustomize("base").expect("kustomize")),
    ] {
        let role = named(&objects, "ClusterRole", "gracewatch-viewer");
        let rules = role["rules"].as_array().expect("rules");
        assert!(
            rules
                .iter()
                .any(|r| r["resources"] == serde_json::json!(["pods/proxy"])
                    && r["verbs"] == serde_json::json!(["get"])),
            "{path}: {role}"
        );
        for rule in rules {
            for verb in rule["verbs"].as_array().expect("verbs") {
                assert!(
                    ["get", "list"].contains(&verb.as_str().unwrap_or("")),
                    "{path}: {rule}"
                );
            }
        }
    }
    let without = helm_template(NS, &["viewerRole.create=false"]).expect("helm template");
    assert!(!without
        .iter()
        .any(|o| o["metadata"]["name"] == "gracewatch-viewer"));
}

#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/gracewatch.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        panels.push(p);
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeMap::new();
    let mut cells = BTreeMap::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"].as_u64().expect("panel id");
        if let Some(other) = ids.insert(id, title) {
            panic!("panels {other:?} and {title:?} share id {id}");
        }
        let g = &p["gridPos"];
        let n = |k: &str| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        };
        assert!(n("x") + n("w") <= 24, "{title} is wider than the grid");
        for x in n("x")..n("x") + n("w") {
            for y in n("y")..n("y") + n("h") {
                if let Some(other) = cells.insert((x, y), title) {
                    panic!("{title:?} overlaps {other:?} at ({x}, {y})");
                }
            }
        }
    }
}
