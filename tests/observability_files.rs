//! The observability files the project ships, checked against the real tools (fast, no cluster):
//! the chart's alerts (one source, files/alerts.yaml) under `promtool test rules`, the chart
//! rendering each piece on and off (`helm template`; policy reports with their RBAC too), the
//! Grafana dashboard, the Argo CD health check run by a Lua interpreter and kstatus on the
//! policies the e2e suite captured (tests/e2e/observability.rs), and the Flux example.
//!
//! The tools come from hack/setup.d/30-observability.sh (hack/test.sh sources it); a missing
//! tool fails the test with a message saying so. `IMDS_OPERATOR_REGENERATE=1` rewrites
//! deploy/prometheus/alerts.yaml and deploy/argocd/argocd-cm.yaml from their sources.

use anyhow::{Context, Result, ensure};
use imds_test_support::observability::{
    self, KSTATUS_ENV, LUA_ENV, POLICY_STATES, PROMTOOL_ENV, alert_rules, argo_health, argocd_dir, promql,
};
use imds_test_support::repo_root;
use serde::Deserialize as _;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RELEASE: &str = "imds-operator";
const NAMESPACE: &str = "imds-operator";
const ARGO_KEY: &str = "resource.customizations.health.imds-operator.io_InstanceMetadataPolicy";

fn chart() -> PathBuf {
    repo_root().join("charts/imds-operator")
}

fn regenerate() -> bool {
    std::env::var("IMDS_OPERATOR_REGENERATE").is_ok_and(|v| v == "1")
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The documents of a YAML stream (empty ones dropped).
fn yaml_documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).context("parsing YAML")?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `helm template` of the chart with `args`: (success, stdout, stderr).
fn helm(args: &[&str]) -> Result<(bool, String, String)> {
    let helm = imds_test_support::control_plane::bin_dir().join("helm");
    let out = Command::new(&helm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} (hack/build-control-plane.sh builds it)", helm.display()))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
}

/// The rendered documents of the chart with the required value and `sets` (`key=value`).
fn render(sets: &[&str]) -> Result<Vec<Value>> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().context("chart path")?,
        "--namespace",
        NAMESPACE,
        "--set",
        "aws.region=us-east-1",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, stdout, stderr) = helm(&args)?;
    ensure!(ok, "helm {args:?} failed:\n{stderr}");
    yaml_documents(&stdout)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The rule groups the chart ships with its default values.
fn default_rule_groups() -> Result<Value> {
    let docs = render(&["prometheusRule.enabled=true"])?;
    let rules = of_kind(&docs, "PrometheusRule");
    ensure!(rules.len() == 1, "{} PrometheusRules rendered", rules.len());
    Ok(rules[0]["spec"].clone())
}

const ALERTS_HEADER: &str = "# The rule groups of the chart's PrometheusRule (charts/imds-operator/files/alerts.yaml) with\n\
# the default values, for a Prometheus without prometheus-operator (rule_files). Generated: do not\n\
# edit; IMDS_OPERATOR_REGENERATE=1 cargo test --test observability_files rewrites it.\n";

/// Checks (or rewrites) a generated file.
fn check_generated(path: &Path, want: &str) -> Result<()> {
    if regenerate() {
        std::fs::write(path, want)?;
        return Ok(());
    }
    let have = read(path)?;
    ensure!(
        have == want,
        "{} is stale: run IMDS_OPERATOR_REGENERATE=1 cargo test --test observability_files",
        path.display()
    );
    Ok(())
}

fn promtool(args: &[&str], dir: &Path) -> Result<String> {
    let tool = observability::tool(PROMTOOL_ENV)?;
    let out = Command::new(&tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn shipped_alerts_pass_promtool_test_rules() -> Result<()> {
    let groups = default_rule_groups()?;
    let generated = format!("{ALERTS_HEADER}{}", serde_yaml::to_string(&groups)?);
    let deploy = repo_root().join("deploy/prometheus");
    check_generated(&deploy.join("alerts.yaml"), &generated)?;
    // promtool runs on what the chart renders, in a directory of its own.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("alerts.yaml"), &generated)?;
    std::fs::copy(deploy.join("alerts_test.yaml"), dir.path().join("alerts_test.yaml"))?;
    let checked = promtool(&["check", "rules", "alerts.yaml"], dir.path())?;
    ensure!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yaml"], dir.path())?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    eprintln!("{checked}{tested}");
    Ok(())
}

/// GitHub's anchors of a Markdown file's headings.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_says_what_to_do_and_links_its_runbook_section() -> Result<()> {
    let groups = default_rule_groups()?;
    let runbook = anchors(&read(&repo_root().join("docs/runbook.md"))?);
    let tests = read(&repo_root().join("deploy/prometheus/alerts_test.yaml"))?;
    let alerts = alert_rules(&groups);
    ensure!(alerts.len() == 10, "{} alerts", alerts.len());
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap_or_default();
        let a = &alert["annotations"];
        for key in ["summary", "description"] {
            let text = a[key].as_str().unwrap_or_default();
            ensure!(text.len() > 20, "{name}: {key} {text:?}");
        }
        let url = a["runbook_url"].as_str().unwrap_or_default();
        let anchor = url.rsplit_once("/docs/runbook.md#").map(|(_, a)| a).unwrap_or_default();
        ensure!(
            runbook.contains(anchor),
            "{name}: {url} names no section of docs/runbook.md"
        );
        ensure!(anchor == name.to_lowercase(), "{name}: anchor {anchor}");
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        ensure!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        ensure!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool test in alerts_test.yaml"
        );
        ensure!(
            promql::names(alert["expr"].as_str().unwrap_or_default())?
                .matchers
                .iter()
                .any(|(_, l)| l == "job"),
            "{name}: the expression does not select the operator's job"
        );
    }
    Ok(())
}

fn rule_named<'a>(groups: &'a Value, name: &str) -> Option<&'a Value> {
    groups["groups"]
        .as_array()?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .find(|r| r["alert"] == name || r["record"] == name)
}

#[test]
fn chart_renders_the_prometheus_rule_on_and_off() -> Result<()> {
    let off = render(&[])?;
    ensure!(
        of_kind(&off, "PrometheusRule").is_empty(),
        "a PrometheusRule by default"
    );
    let on = render(&[
        "prometheusRule.enabled=true",
        "prometheusRule.namespace=monitoring",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "prometheusRule.alertLabels.team=security",
        "prometheusRule.selector=job=\"imds\"\\,cluster=\"prod\"",
        "prometheusRule.runbookUrl=https://wiki.example.com/imds",
        "prometheusRule.thresholds.driftedFor=2h",
        "prometheusRule.thresholds.throttledPerSecond=2",
        "prometheusRule.additionalRules[0].alert=ImdsAuditDrift",
        "prometheusRule.additionalRules[0].expr=imds_operator_policy_nodes{state=\"drifted\"\\,policy=~\"audit.*\"} > 0",
    ])?;
    let rules = of_kind(&on, "PrometheusRule");
    ensure!(rules.len() == 1, "{rules:?}");
    let rule = rules[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(rule["metadata"]["labels"]["app.kubernetes.io/name"], "imds-operator");
    let groups = &rule["spec"];
    let drift = rule_named(groups, "ImdsOperatorInstancesDrifted").context("no drift alert")?;
    assert_eq!(drift["for"], "2h");
    assert_eq!(drift["labels"]["team"], "security");
    assert_eq!(drift["labels"]["severity"], "warning");
    let expr = drift["expr"].as_str().unwrap_or_default();
    assert!(
        expr.contains(r#"{job="imds",cluster="prod", state="drifted"}"#),
        "{expr}"
    );
    let url = drift["annotations"]["runbook_url"].as_str().unwrap_or_default();
    assert_eq!(url, "https://wiki.example.com/imds#imdsoperatorinstancesdrifted");
    let throttled = rule_named(groups, "ImdsOperatorEC2Throttled").context("no throttling alert")?;
    assert!(
        throttled["expr"].as_str().unwrap_or_default().ends_with("> 2"),
        "{throttled}"
    );
    let extra = rule_named(groups, "ImdsAuditDrift").context("additionalRules not rendered")?;
    assert_eq!(
        extra["labels"]["team"], "security",
        "alertLabels reach additional alerts too"
    );
    let group_names: Vec<&str> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        group_names,
        [
            "imds-operator.compliance",
            "imds-operator.operator",
            "imds-operator.additional"
        ]
    );
    // A misspelled value is refused by the schema.
    let chart = chart();
    let (ok, _, stderr) = helm(&[
        "template",
        RELEASE,
        chart.to_str().context("chart")?,
        "--set",
        "aws.region=us-east-1",
        "--set",
        "prometheusRule.thresholds.driftFor=1h",
    ])?;
    ensure!(
        !ok && stderr.contains("driftFor"),
        "a misspelled threshold was accepted: {stderr}"
    );
    Ok(())
}

#[test]
fn chart_renders_the_dashboard_config_map_on_and_off() -> Result<()> {
    let dashboard = read(&chart().join("files/dashboard.json"))?;
    let off = render(&[])?;
    ensure!(
        !off.iter()
            .any(|d| d["kind"] == "ConfigMap" && d["data"]["imds-operator.json"].is_string()),
        "a dashboard ConfigMap by default"
    );
    let on = render(&[
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.annotations.grafana_folder=Security",
    ])?;
    let maps: Vec<&Value> = of_kind(&on, "ConfigMap")
        .into_iter()
        .filter(|d| d["data"]["imds-operator.json"].is_string())
        .collect();
    ensure!(maps.len() == 1, "{maps:?}");
    let map = maps[0];
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Security");
    assert_eq!(map["data"]["imds-operator.json"].as_str(), Some(dashboard.trim_end()));
    // Both pieces on: helm lint passes.
    helm_passes(
        "lint",
        &["grafanaDashboard.enabled=true", "prometheusRule.enabled=true"],
    )
}

/// `helm <command>` (lint, template) of the chart with the required value and `sets` passes.
fn helm_passes(command: &str, sets: &[&str]) -> Result<()> {
    let (ok, stdout, stderr) = helm_with(command, sets)?;
    ensure!(ok, "helm {command} {sets:?} failed:\n{stdout}{stderr}");
    Ok(())
}

/// `helm <command>` of the chart with the required value and `sets`: (success, stdout, stderr).
fn helm_with(command: &str, sets: &[&str]) -> Result<(bool, String, String)> {
    let chart = chart();
    let mut args = vec![
        command,
        chart.to_str().context("chart")?,
        "--set",
        "aws.region=us-east-1",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The operator container's args and the ClusterRole's wgpolicyk8s.io rules, as rendered.
fn report_args_and_rules(docs: &[Value]) -> Result<(Vec<String>, Vec<Value>)> {
    let deployment = of_kind(docs, "Deployment");
    ensure!(deployment.len() == 1, "{} Deployments", deployment.len());
    let args: Vec<String> =
        serde_json::from_value(deployment[0]["spec"]["template"]["spec"]["containers"][0]["args"].clone())?;
    let args = args.into_iter().filter(|a| a.starts_with("--policy-report")).collect();
    let rules = of_kind(docs, "ClusterRole")
        .iter()
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| {
            r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "wgpolicyk8s.io"))
        })
        .collect();
    Ok((args, rules))
}

#[test]
fn chart_renders_policy_reports_and_their_rbac_on_and_off() -> Result<()> {
    let (args, rules) = report_args_and_rules(&render(&[])?)?;
    ensure!(
        args.is_empty() && rules.is_empty(),
        "off by default: {args:?} {rules:?}"
    );
    let on = render(&["policyReports.enabled=true", "policyReports.interval=1m"])?;
    let (args, rules) = report_args_and_rules(&on)?;
    assert_eq!(args, vec!["--policy-reports", "--policy-report-interval=1m"]);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["resources"], serde_json::json!(["clusterpolicyreports"]));
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["list", "create", "patch", "delete"])
    );
    helm_passes("lint", &["policyReports.enabled=true"])?;
    let (bad, _, stderr) = helm_with("template", &["policyReports.interval=soon"])?;
    ensure!(!bad, "the schema takes interval=soon");
    ensure!(stderr.contains("interval"), "{stderr}");
    Ok(())
}

#[test]
fn dashboard_shows_compliance_ec2_and_latency() -> Result<()> {
    let dashboard: Value = serde_json::from_str(&read(&chart().join("files/dashboard.json"))?)?;
    assert_eq!(dashboard["uid"], "imds-operator-compliance");
    let exprs = observability::dashboard_exprs(&dashboard);
    let mut metrics = BTreeSet::new();
    for e in &exprs {
        let names = promql::names(e).with_context(|| format!("parsing {e}"))?;
        metrics.extend(names.metrics);
    }
    for want in [
        "imds_operator_policy_nodes",
        "imds_operator_instance_modifications_total",
        "imds_operator_aws_api_calls_total",
        "imds_operator_aws_api_throttled_total",
        "imds_operator_aws_client_rate_limit",
        "imds_operator_reconcile_time_seconds_bucket",
    ] {
        ensure!(metrics.contains(want), "the dashboard shows no {want}: {metrics:?}");
    }
    let all = exprs.join("\n");
    for state in ["compliant", "matched", "drifted", "blocked"] {
        ensure!(all.contains(&format!("state=\"{state}\"")), "no panel of state {state}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        ensure!(ids.insert(panel["id"].as_u64()), "duplicate panel id {}", panel["id"]);
        ensure!(panel["title"].is_string() && panel["gridPos"]["w"].is_u64(), "{panel}");
    }
    Ok(())
}

/// The entries of health_test.yaml: (input file, status, message).
fn argo_tests() -> Result<Vec<(PathBuf, String, String)>> {
    let dir = argocd_dir();
    let doc: Value = serde_yaml::from_str(&read(&dir.join("health_test.yaml"))?)?;
    let mut out = Vec::new();
    for t in doc["tests"].as_array().context("health_test.yaml: no tests")? {
        let field = |k: &str| t["healthStatus"][k].as_str().unwrap_or_default().to_string();
        let input = t["inputPath"].as_str().context("a test without inputPath")?;
        out.push((dir.join(input), field("status"), field("message")));
    }
    Ok(out)
}

fn load(path: &Path) -> Result<Value> {
    Ok(serde_yaml::from_str(&read(path)?)?)
}

#[test]
fn argo_cd_health_check_on_captured_policies() -> Result<()> {
    let lua = observability::tool(LUA_ENV)?;
    let script = argocd_dir().join("health.lua");
    let tests = argo_tests()?;
    for state in POLICY_STATES {
        let input = argocd_dir().join(format!("testdata/{}.yaml", state.name));
        let entry = tests
            .iter()
            .find(|(path, _, _)| *path == input)
            .with_context(|| format!("health_test.yaml has no test of {}", input.display()))?;
        ensure!(
            entry.1 == state.argo,
            "{}: health_test.yaml says {}",
            state.name,
            entry.1
        );
    }
    for (input, status, message) in &tests {
        let got = argo_health(&lua, &script, &load(input)?)?;
        ensure!(
            (got.status.as_str(), got.message.as_str()) == (status.as_str(), message.as_str()),
            "{}: the health check says {got:?}, health_test.yaml {status} {message:?}",
            input.display()
        );
    }
    // The argocd-cm snippet carries exactly health.lua.
    let cm_path = repo_root().join("deploy/argocd/argocd-cm.yaml");
    let lua_text = read(&script)?;
    let mut cm: Value = load(&cm_path)?;
    if regenerate() {
        let header: String = read(&cm_path)?
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        cm["data"][ARGO_KEY] = Value::String(lua_text.clone());
        std::fs::write(&cm_path, format!("{header}{}", serde_yaml::to_string(&cm)?))?;
    }
    ensure!(
        cm["data"][ARGO_KEY].as_str() == Some(lua_text.as_str()),
        "deploy/argocd/argocd-cm.yaml does not carry health.lua (IMDS_OPERATOR_REGENERATE=1 rewrites it)"
    );
    eprintln!("{} Argo CD health tests passed", tests.len());
    Ok(())
}

#[test]
fn kstatus_on_captured_policies() -> Result<()> {
    let tool = observability::tool(KSTATUS_ENV)?;
    let files: Vec<PathBuf> = POLICY_STATES
        .iter()
        .map(|s| argocd_dir().join(format!("testdata/{}.yaml", s.name)))
        .collect();
    let results = observability::kstatus(&tool, &files)?;
    for (state, (status, message)) in POLICY_STATES.iter().zip(&results) {
        ensure!(
            status == state.kstatus_says(),
            "{}: kstatus says {status} ({message}), want {}",
            state.name,
            state.kstatus_says()
        );
        if let Some((says, why)) = state.kstatus_gap {
            eprintln!(
                "known gap: {}: kstatus says {says}, not {}: {why}",
                state.name, state.kstatus
            );
        }
    }
    Ok(())
}

/// The status the operator writes at its first look at a policy (before any EC2 read) is in
/// progress for kstatus (Flux) and Argo CD: a policy with no status is Current for kstatus, so
/// the operator does not leave it without one while its first reconcile reads and changes
/// instances.
#[test]
fn the_first_look_status_is_in_progress_for_kstatus_and_argo_cd() -> Result<()> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let policy = serde_json::json!({
        "apiVersion": "imds-operator.io/v1alpha1",
        "kind": "InstanceMetadataPolicy",
        "metadata": {"name": "new", "generation": 1},
        "spec": {"nodeSelector": {}, "metadataOptions": {"httpTokens": "required"}},
        "status": imds_core::status::first_look(1, now),
    });
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("first-look.json");
    std::fs::write(&file, serde_json::to_string(&policy)?)?;
    let tool = observability::tool(KSTATUS_ENV)?;
    let (status, message) = observability::kstatus(&tool, std::slice::from_ref(&file))?
        .pop()
        .context("no kstatus")?;
    ensure!(status == "InProgress", "kstatus says {status} ({message})");
    let lua = observability::tool(LUA_ENV)?;
    let health = argo_health(&lua, &argocd_dir().join("health.lua"), &policy)?;
    ensure!(health.status == "Progressing", "Argo CD says {health:?}");
    Ok(())
}

#[test]
fn flux_example_waits_for_enforce_policies() -> Result<()> {
    let docs = yaml_documents(&read(&repo_root().join("deploy/flux/kustomization.yaml"))?)?;
    ensure!(docs.len() == 2, "{docs:?}");
    for d in &docs {
        assert_eq!(d["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        assert_eq!(d["kind"], "Kustomization");
    }
    assert_eq!(docs[0]["spec"]["wait"], true);
    let checks = docs[1]["spec"]["healthChecks"].as_array().context("no healthChecks")?;
    let crd = read(&repo_root().join("crds/imds-operator.io_instancemetadatapolicies.yaml"))?;
    let examples = repo_root().join("examples/policies");
    let mut policies = Vec::new();
    for entry in std::fs::read_dir(&examples)? {
        policies.extend(yaml_documents(&read(&entry?.path())?)?);
    }
    for c in checks {
        assert_eq!(c["apiVersion"], "imds-operator.io/v1alpha1");
        assert_eq!(c["kind"], "InstanceMetadataPolicy");
        ensure!(crd.contains("kind: InstanceMetadataPolicy"), "the CRD kind changed");
        let policy = policies
            .iter()
            .find(|p| p["metadata"]["name"] == c["name"])
            .with_context(|| format!("healthChecks names {} which examples/policies lacks", c["name"]))?;
        ensure!(
            policy["spec"]["mode"] != "Audit",
            "{}: an Audit policy that sees drift is Stalled, so Failed for Flux",
            c["name"]
        );
    }
    Ok(())
}
