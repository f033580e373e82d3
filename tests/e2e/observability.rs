//! What Prometheus, Grafana, Argo CD and Flux read, against the running operator:
//!
//! - the policy states a GitOps tool sees (no status yet, an older generation, compliant, no node
//!   selected, drifting, pending, stalled by a conflict, an unsupported option, Audit drift, a
//!   denied permission): the real objects are judged by the Argo CD health check (Lua) and by
//!   kstatus (Flux) on every run, and with `IMDS_OPERATOR_CAPTURE=1` written to the Argo CD
//!   testdata that tests/observability_files.rs checks without a cluster;
//! - no dangling names: every metric and label an alert or a dashboard panel names is on the
//!   operator's `/metrics` page, after the operator converged a policy, was throttled, denied
//!   and had a reconcile fail (so the families that appear only after an error have samples).

use crate::safety::{FAST, NO_USAGE_GUARD, v1_instance};
use anyhow::{Context, Result, ensure};
use imds_core::options::Field;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, metric_sum, provider_id};
use imds_test_support::ec2_double::{DESCRIBE, Ec2Double, MODIFY};
use imds_test_support::observability::{
    self, CAPTURE_ENV, KSTATUS_ENV, LUA_ENV, POLICY_STATES, alert_rules, argo_health, argocd_dir, captured,
    dashboard_exprs, promql, template_labels,
};
use imds_test_support::repo_root;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A policy on the nodes labelled `group=<group>`; `extra` is appended under `spec:`.
fn policy(name: &str, group: &str, options: &str, extra: &str) -> String {
    format!(
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         nodeSelector: {{matchLabels: {{group: {group}}}}}\n  metadataOptions: {options}\n{NO_USAGE_GUARD}{extra}"
    )
}

/// `value` as YAML that YAML 1.1 readers (Go's, so Argo CD's and kubectl's) read back the same:
/// serde_yaml writes YAML 1.2, where `Off` or `yes` are strings, unquoted; they are quoted here.
fn yaml_for_go(value: &Value) -> Result<String> {
    const YAML11_BOOLS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
        "on", "On", "ON", "off", "Off", "OFF",
    ];
    let text = serde_yaml::to_string(value)?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let split = line.rfind(": ").map(|i| i + 2).or_else(|| {
            let trimmed = line.trim_start();
            trimmed.starts_with("- ").then(|| line.len() - trimmed.len() + 2)
        });
        match split {
            Some(at) if YAML11_BOOLS.contains(&&line[at..]) => {
                out.push_str(&line[..at]);
                out.push('"');
                out.push_str(&line[at..]);
                out.push('"');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// The judge of captured objects: the Argo CD health check, kstatus, and the capture itself.
struct Judge {
    lua: PathBuf,
    kstatus: PathBuf,
    capture: bool,
    /// (state, Argo CD status, message) of each judged object, for health_test.yaml.
    judged: Vec<(&'static str, String, String)>,
}

impl Judge {
    fn new() -> Result<Judge> {
        Ok(Judge {
            lua: observability::tool(LUA_ENV)?,
            kstatus: observability::tool(KSTATUS_ENV)?,
            capture: std::env::var(CAPTURE_ENV).is_ok_and(|v| v == "1"),
            judged: Vec::new(),
        })
    }

    /// Reads policy `name`, checks what Argo CD and kstatus say against `state`, and (capturing)
    /// writes it to testdata/<state>.yaml.
    fn judge(&mut self, cluster: &Cluster, name: &str, state: &'static str) -> Result<()> {
        let want = POLICY_STATES
            .iter()
            .find(|s| s.name == state)
            .with_context(|| format!("no state {state}"))?;
        let live: Value = serde_json::from_str(&cluster.kubectl(&["get", "imp", name, "-o", "json"])?)?;
        let obj = captured(&live);
        let health = argo_health(&self.lua, &argocd_dir().join("health.lua"), &obj)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(format!("{state}.yaml"));
        let yaml = yaml_for_go(&obj)?;
        std::fs::write(&file, &yaml)?;
        let (kstatus, message) = observability::kstatus(&self.kstatus, std::slice::from_ref(&file))?
            .pop()
            .context("no kstatus")?;
        eprintln!(
            "{state}: Argo CD {} ({}), kstatus {kstatus} ({message})",
            health.status, health.message
        );
        ensure!(health.status == want.argo, "{state}: Argo CD says {health:?}\n{yaml}");
        ensure!(
            kstatus == want.kstatus_says(),
            "{state}: kstatus says {kstatus} ({message}), want {}\n{yaml}",
            want.kstatus_says()
        );
        if self.capture {
            std::fs::write(argocd_dir().join(format!("testdata/{state}.yaml")), yaml)?;
        }
        self.judged.push((state, health.status, health.message));
        Ok(())
    }

    /// Capturing: writes health_test.yaml (Argo CD's format) for the judged objects.
    fn finish(&self) -> Result<()> {
        let mut names: Vec<&str> = self.judged.iter().map(|j| j.0).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = POLICY_STATES.iter().map(|s| s.name).collect();
        want.sort_unstable();
        ensure!(names == want, "judged {names:?}, the states are {want:?}");
        if !self.capture {
            return Ok(());
        }
        let tests: Vec<Value> = POLICY_STATES
            .iter()
            .filter_map(|s| self.judged.iter().find(|j| j.0 == s.name))
            .map(|(state, status, message)| {
                serde_json::json!({
                    "healthStatus": {"status": status, "message": message},
                    "inputPath": format!("testdata/{state}.yaml"),
                })
            })
            .collect();
        let header = "# Argo CD's health tests of health.lua (the format of Argo CD's resource_customizations),\n\
                      # on policies captured from the e2e suite: IMDS_OPERATOR_CAPTURE=1 cargo test --test e2e -- observability\n";
        let yaml = serde_yaml::to_string(&serde_json::json!({ "tests": tests }))?;
        std::fs::write(argocd_dir().join("health_test.yaml"), format!("{header}{yaml}"))?;
        Ok(())
    }
}

/// Waits until policy `name` is at its current generation and `accept` holds.
async fn wait_for(
    cluster: &Cluster,
    name: &str,
    what: &str,
    accept: impl Fn(&[(String, String); 3]) -> bool,
) -> Result<()> {
    cluster
        .wait_status(name, what, |p, s| {
            let c = [
                condition(s, "Ready"),
                condition(s, "Reconciling"),
                condition(s, "Stalled"),
            ];
            s.observed_generation == p.metadata.generation && accept(&c)
        })
        .await?;
    Ok(())
}

fn is(c: &(String, String), status: &str, reason: &str) -> bool {
    c.0 == status && (reason.is_empty() || c.1 == reason)
}

/// Instances (one per group, two for `drifting`) that allow IMDSv1, and their nodes.
async fn fleet(cluster: &Cluster, ec2: &Ec2Double) -> Result<Vec<(String, String)>> {
    let groups = [
        "compliant",
        "pending",
        "drifting",
        "drifting",
        "conflict",
        "unsupported",
        "audit",
        "denied",
    ];
    let mut nodes = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let id = format!("i-{:017x}", 0xa0 + i);
        ec2.add_instance(&id, v1_instance(), &[]);
        let node = format!("{group}-{i}");
        cluster
            .create_node(&node, &[("group", group)], Some(&provider_id(&id)))
            .await?;
        nodes.push((group.to_string(), id));
    }
    Ok(nodes)
}

fn instance_of<'a>(nodes: &'a [(String, String)], group: &str) -> Result<&'a str> {
    nodes
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, id)| id.as_str())
        .with_context(|| format!("no instance in {group}"))
}

/// The Stalled states: equal-priority policies disagree; an instance refuses the hop limit; Audit
/// drift; Modify denied (last: it holds for every later request).
async fn stalled_states(
    cluster: &Cluster,
    ec2: &Ec2Double,
    nodes: &[(String, String)],
    judge: &mut Judge,
) -> Result<()> {
    let v2 = "{httpTokens: required, httpPutResponseHopLimit: 2}";
    cluster.apply(&policy("conflict-a", "conflict", "{httpPutResponseHopLimit: 2}", FAST))?;
    cluster.apply(&policy("conflict-b", "conflict", "{httpPutResponseHopLimit: 3}", FAST))?;
    wait_for(cluster, "conflict-a", "Conflict", |c| is(&c[2], "True", "Conflict")).await?;
    judge.judge(cluster, "conflict-a", "stalled-conflict")?;
    ec2.unsupported(instance_of(nodes, "unsupported")?, Field::HopLimit);
    cluster.apply(&policy("unsupported", "unsupported", v2, FAST))?;
    wait_for(cluster, "unsupported", "UnsupportedOption", |c| {
        is(&c[2], "True", "UnsupportedOption")
    })
    .await?;
    judge.judge(cluster, "unsupported", "stalled-unsupported-option")?;
    cluster.apply(&policy("audit", "audit", v2, &format!("{FAST}  mode: Audit\n")))?;
    wait_for(cluster, "audit", "AuditModeDrift", |c| {
        is(&c[2], "True", "AuditModeDrift")
    })
    .await?;
    judge.judge(cluster, "audit", "stalled-audit-drift")?;

    ec2.deny(MODIFY);
    cluster.apply(&policy("denied", "denied", v2, FAST))?;
    wait_for(cluster, "denied", "PermissionDenied", |c| {
        is(&c[2], "True", "PermissionDenied")
    })
    .await?;
    judge.judge(cluster, "denied", "stalled-permission-denied")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_states_as_argo_cd_and_kstatus_read_them() -> Result<()> {
    let mut judge = Judge::new()?;
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    let nodes = fleet(&cluster, &ec2).await?;
    let v2 = "{httpTokens: required, httpPutResponseHopLimit: 2}";

    // Before the operator runs: no status.
    cluster.apply(&policy("compliant", "compliant", v2, FAST))?;
    cluster.apply(&policy("no-nodes", "none", v2, FAST))?;
    judge.judge(&cluster, "compliant", "no-status")?;
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    wait_for(&cluster, "compliant", "Ready", |c| is(&c[0], "True", "Compliant")).await?;
    judge.judge(&cluster, "compliant", "compliant")?;
    wait_for(&cluster, "no-nodes", "Ready", |c| is(&c[0], "True", "NoNodesSelected")).await?;
    judge.judge(&cluster, "no-nodes", "no-nodes-selected")?;

    // EC2 reports the change pending for (practically) ever: Reconciling Pending.
    ec2.pending_describes(1_000_000);
    cluster.apply(&policy("pending", "pending", v2, FAST))?;
    wait_for(&cluster, "pending", "Pending", |c| is(&c[1], "True", "Pending")).await?;
    judge.judge(&cluster, "pending", "pending")?;
    ec2.pending_describes(0);

    // A staged rollout, one instance and then an hour's settling: drifted, still applying.
    let staged = "  rollout: {maxInFlight: 1, settleSeconds: 3600}\n";
    cluster.apply(&policy("drifting", "drifting", v2, staged))?;
    wait_for(&cluster, "drifting", "drifting, in flight", |c| {
        is(&c[0], "False", "Drifted") && is(&c[1], "True", "")
    })
    .await?;
    judge.judge(&cluster, "drifting", "drifting")?;

    stalled_states(&cluster, &ec2, &nodes, &mut judge).await?;
    operator.ensure_running()?;

    // The operator stops; the compliant policy is edited: its status is of an older generation.
    operator.stop(Duration::from_secs(20));
    cluster.kubectl(&[
        "patch",
        "imp",
        "compliant",
        "--type=merge",
        "-p",
        r#"{"spec":{"metadataOptions":{"httpPutResponseHopLimit":3}}}"#,
    ])?;
    judge.judge(&cluster, "compliant", "stale-generation")?;
    judge.finish()
}

/// While the first reconcile still waits for DescribeInstances, the policy already has a status
/// that kstatus calls InProgress (Reconciling=True NotObservedYet at its generation), not none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_marks_a_new_policy_in_progress_before_reading_ec2() -> Result<()> {
    let kstatus = observability::tool(KSTATUS_ENV)?;
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    ec2.add_instance("i-00000000000000f01", v1_instance(), &[]);
    cluster
        .create_node(
            "first-0",
            &[("group", "first")],
            Some(&provider_id("i-00000000000000f01")),
        )
        .await?;
    ec2.set_latency(DESCRIBE, Duration::from_secs(10));
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    let v2 = "{httpTokens: required}";
    cluster.apply(&policy("first", "first", v2, FAST))?;
    wait_for(&cluster, "first", "the first look", |c| {
        is(&c[0], "False", "NotObservedYet") && is(&c[1], "True", "NotObservedYet")
    })
    .await?;
    let live: Value = serde_json::from_str(&cluster.kubectl(&["get", "imp", "first", "-o", "json"])?)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("first-look.yaml");
    std::fs::write(&file, yaml_for_go(&captured(&live))?)?;
    let (status, message) = observability::kstatus(&kstatus, std::slice::from_ref(&file))?
        .pop()
        .context("no kstatus")?;
    ensure!(status == "InProgress", "kstatus says {status} ({message})");
    ec2.clear_latency();
    wait_for(&cluster, "first", "Ready", |c| {
        is(&c[0], "True", "Compliant") || is(&c[0], "False", "Drifted")
    })
    .await?;
    operator.ensure_running()?;
    Ok(())
}

/// The shipped alerts (rendered) and the dashboard: (where, expression, labels templates name).
fn shipped_expressions() -> Result<Vec<(String, String, Vec<String>)>> {
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("deploy/prometheus/alerts.yaml"),
    )?)?;
    let mut out = Vec::new();
    for rule in alert_rules(&rules) {
        let name = rule["alert"].as_str().unwrap_or_default().to_string();
        let expr = rule["expr"].as_str().unwrap_or_default().to_string();
        out.push((format!("alert {name}"), expr, template_labels(&rule)));
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("charts/imds-operator/files/dashboard.json"),
    )?)?;
    for expr in dashboard_exprs(&dashboard) {
        out.push(("dashboard".to_string(), expr, Vec::new()));
    }
    ensure!(out.len() > 20, "only {} expressions", out.len());
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_exported_metrics() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    for (i, group) in ["fine", "panicky", "denied"].iter().enumerate() {
        let id = format!("i-{:017x}", 0xb0 + i);
        ec2.add_instance(&id, v1_instance(), &[]);
        cluster
            .create_node(&format!("{group}-{i}"), &[("group", group)], Some(&provider_id(&id)))
            .await?;
    }
    let mut env = ec2.aws_env();
    env.push(("IMDS_OPERATOR_FAULT_PANIC_POLICY".into(), "panicky".into()));
    let mut operator = Operator::start(&cluster, &env, &["--leader-election=false", "--resync-period=10m"]).await?;
    let v2 = "{httpTokens: required, httpPutResponseHopLimit: 2}";

    // Converges through throttling; a reconcile fails (an injected panic); a Modify is denied.
    ec2.throttle(MODIFY, 2);
    ec2.throttle(DESCRIBE, 2);
    cluster.apply(&policy("fine", "fine", v2, FAST))?;
    wait_for(&cluster, "fine", "Ready", |c| is(&c[0], "True", "Compliant")).await?;
    cluster.apply(&policy("panicky", "panicky", v2, FAST))?;
    ec2.deny(MODIFY);
    cluster.apply(&policy("denied", "denied", v2, FAST))?;
    let families = [
        "imds_operator_aws_api_throttled_total",
        "imds_operator_aws_api_retries_total",
        "imds_operator_aws_api_permission_errors_total",
        "imds_operator_reconcile_errors_total",
        "imds_operator_instance_modifications_total",
    ];
    let text = eventually("every family to have a sample", CONVERGE, || async {
        let text = operator.metrics().await?;
        let missing: Vec<&str> = families
            .iter()
            .copied()
            .filter(|f| metric_sum(&text, f, &[]) == 0.0)
            .collect();
        Ok(if missing.is_empty() {
            Ok(text)
        } else {
            Err(format!("{missing:?}"))
        })
    })
    .await?;
    let exported = promql::exported(&text);
    let mut problems = Vec::new();
    let shipped = shipped_expressions()?;
    for (place, expr, labels) in &shipped {
        for p in promql::dangling(&exported, expr, labels)? {
            problems.push(format!("{place}: {p}\n    in {expr}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "names the operator does not export:\n{}\n/metrics:\n{text}",
        problems.join("\n")
    );
    eprintln!(
        "{} expressions checked against {} exported series names",
        shipped.len(),
        exported.samples.len()
    );
    operator.ensure_running()?;
    Ok(())
}
