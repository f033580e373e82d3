//! `--policy-reports`: every selected node's result as wg-policy `ClusterPolicyReport`s (the CRD
//! from tests/fixtures), agreeing node by node with `imds-operator report -o json` and named in
//! the policy's status; and without the CRD, the operator enforces as usual and says so once in
//! its log (and in `status.policyReports`).

use anyhow::{Context, Result};
use imds_core::policy_report::{ClusterPolicyReport, Verdict};
use imds_test_support::Moto;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, provider_id, wait_imds};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use std::collections::BTreeMap;

const POLICIES: &str = r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: require-imdsv2
spec:
  nodeSelector: {matchLabels: {pool: general}}
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: 2
  rollout: {maxInFlight: "100%", settleSeconds: 0}
---
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: audit-imdsv2
spec:
  mode: Audit
  nodeSelector: {matchLabels: {pool: legacy}}
  metadataOptions:
    httpTokens: required
"#;

fn reports_api(cluster: &Cluster) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "ClusterPolicyReport");
    Api::all_with(
        cluster.client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "clusterpolicyreports"),
    )
}

async fn reports(api: &Api<DynamicObject>) -> Result<Vec<ClusterPolicyReport>> {
    let list = api.list(&ListParams::default()).await?;
    list.items
        .into_iter()
        .map(|o| Ok(serde_json::from_value(serde_json::to_value(o)?)?))
        .collect()
}

fn install_report_crd(cluster: &Cluster) -> Result<()> {
    let crd = imds_test_support::repo_root().join("tests/fixtures/wgpolicyk8s.io_clusterpolicyreports.yaml");
    cluster.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()])?;
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/clusterpolicyreports.wgpolicyk8s.io",
    ])?;
    Ok(())
}

/// The operator writing reports every second at most, with `extra` flags.
async fn start_operator(cluster: &Cluster, moto: &Moto, extra: &[&str]) -> Result<Operator> {
    let mut flags = vec![
        "--leader-election=false",
        "--resync-period=10m",
        "--policy-reports",
        "--policy-report-interval=1s",
    ];
    flags.extend(extra);
    Operator::start(cluster, &moto.aws_env(), &flags).await
}

/// Five nodes: two enforced to compliance, one audited (stays drifted), one without a
/// providerID, one Fargate; the operator (with `extra` flags) writing reports every second at
/// most. Returns once the two enforced instances have converged.
async fn fleet(cluster: &Cluster, moto: &Moto, extra: &[&str]) -> Result<Operator> {
    let ids = moto.run_instances(3, &[]).await?;
    cluster
        .create_node("general-0", &[("pool", "general")], Some(&provider_id(&ids[0])))
        .await?;
    cluster
        .create_node("general-1", &[("pool", "general")], Some(&provider_id(&ids[1])))
        .await?;
    cluster
        .create_node("legacy-0", &[("pool", "legacy")], Some(&provider_id(&ids[2])))
        .await?;
    cluster
        .create_node("general-registering", &[("pool", "general")], None)
        .await?;
    let fargate = "aws:///us-east-1a/abc123/fargate-ip-10-0-0-1.ec2.internal";
    cluster
        .create_node("fargate-ip-10-0-0-1", &[("pool", "general")], Some(fargate))
        .await?;
    let operator = start_operator(cluster, moto, extra).await?;
    cluster.apply(POLICIES)?;
    let ec2 = moto.ec2_client().await;
    for id in &ids[..2] {
        wait_imds(&ec2, id, ("required", 2), CONVERGE).await?;
    }
    Ok(operator)
}

/// The drift lines of a result (`option: observed → desired`), from its properties.
fn drift_lines(properties: &BTreeMap<String, String>) -> Vec<String> {
    let pairs = |key: &str| -> Vec<(String, String)> {
        properties
            .get(key)
            .map(|v| {
                v.split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(f, x)| (f.to_string(), x.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines: Vec<String> = pairs("observed")
        .into_iter()
        .zip(pairs("desired"))
        .map(|((f, o), (_, d))| format!("{f}: {o} → {d}"))
        .collect();
    lines.sort();
    lines
}

fn verdict_of(state: &str) -> Verdict {
    match state {
        "Compliant" => Verdict::Pass,
        "Failed" => Verdict::Error,
        "Skipped" => Verdict::Skip,
        _ => Verdict::Fail,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reports_agree_with_report_on_every_node() -> Result<()> {
    let cluster = Cluster::start().await?;
    install_report_crd(&cluster)?;
    let moto = Moto::start()?;
    // Two results per report: the enforcing policy's four nodes fill two shards.
    let mut operator = fleet(&cluster, &moto, &["--policy-report-shard-size=2"]).await?;
    let policy = cluster.policies().get("require-imdsv2").await?;
    cluster
        .wait_status("require-imdsv2", "Ready", |p, s| {
            s.observed_generation == p.metadata.generation && condition(s, "Ready").0 == "True"
        })
        .await?;
    let api = reports_api(&cluster);
    let written = eventually("both policies' reports, converged", CONVERGE, || async {
        let all = reports(&api).await?;
        let pass: u32 = all.iter().map(|r| r.summary.pass).sum();
        let fail: u32 = all.iter().map(|r| r.summary.fail).sum();
        Ok(if all.len() == 3 && pass == 2 && fail == 1 {
            Ok(all)
        } else {
            Err(format!("{} reports, pass {pass}, fail {fail}", all.len()))
        })
    })
    .await?;
    let shard = |name: &str| written.iter().find(|r| r.metadata.name.as_deref() == Some(name));
    let enforced = shard("imp-require-imdsv2-0").context("the enforcing policy's first report")?;
    let second = shard("imp-require-imdsv2-1").context("the enforcing policy's second report")?;
    assert_eq!(
        (enforced.summary.pass, enforced.summary.skip),
        (1, 1),
        "{:?}",
        enforced.summary
    );
    assert_eq!(
        (second.summary.pass, second.summary.skip),
        (1, 1),
        "{:?}",
        second.summary
    );
    let owner = &enforced.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(Some(&owner.uid), policy.metadata.uid.as_ref());

    // Node by node, the reports say what `imds-operator report -o json` says.
    let (_, json) = super::report::report(&cluster, &moto, &["-o", "json"])?;
    let report: serde_json::Value = serde_json::from_str(&json)?;
    let results: BTreeMap<String, (&str, &imds_core::policy_report::ReportResult)> = written
        .iter()
        .flat_map(|r| r.results.iter())
        .map(|x| (x.resources[0].name.clone(), (x.policy.as_str(), x)))
        .collect();
    let rows = report["nodes"].as_array().context("report.nodes")?;
    assert_eq!(rows.len(), 5);
    for row in rows {
        let node = row["node"].as_str().unwrap_or_default();
        let (policy_name, result) = results.get(node).with_context(|| format!("{node} in no report"))?;
        let state = row["state"].as_str().unwrap_or_default();
        assert_eq!(row["policies"][0].as_str(), Some(*policy_name), "{node}");
        assert_eq!(result.properties["state"], state, "{node}");
        assert_eq!(result.result, verdict_of(state), "{node}");
        assert_eq!(
            result.properties.get("instanceId").map(String::as_str),
            row["instanceId"].as_str(),
            "{node}"
        );
        let mut drift: Vec<String> = serde_json::from_value(row["drift"].clone())?;
        drift.sort();
        assert_eq!(drift_lines(&result.properties), drift, "{node}");
        if let Some(blocker) = row["blocker"].as_str() {
            assert!(blocker.starts_with(&result.properties["reason"]), "{node}: {blocker}");
        }
    }
    assert_eq!(results["legacy-0"].1.properties["desired"], "httpTokens=required");

    // Nothing changes, nothing is written: the shard keeps its resourceVersion across several
    // intervals and a reconcile (annotating the policy triggers one).
    let version = |r: &DynamicObject| r.metadata.resource_version.clone();
    let before = version(&api.get("imp-require-imdsv2-0").await?);
    cluster.kubectl(&["annotate", "imp", "require-imdsv2", "touch=1"])?;
    // The reconcile after the write names the reports in the policy's status.
    cluster
        .wait_status("require-imdsv2", "status.policyReports", |_, s| {
            s.policy_reports
                .as_ref()
                .is_some_and(|r| r.reports == ["imp-require-imdsv2-0", "imp-require-imdsv2-1"])
        })
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(version(&api.get("imp-require-imdsv2-0").await?), before);

    // A restarted operator reads the reports it wrote: same content, nothing rewritten.
    operator.stop(std::time::Duration::from_secs(20));
    let mut operator = start_operator(&cluster, &moto, &["--policy-report-shard-size=2"]).await?;
    eventually("the restarted writer's turn", CONVERGE, || async {
        let log = operator.log_tail(2000);
        let done = log
            .lines()
            .any(|l| l.contains("policy reports written") && l.contains("require-imdsv2"));
        Ok(if done { Ok(()) } else { Err("not yet".to_string()) })
    })
    .await?;
    assert_eq!(version(&api.get("imp-require-imdsv2-0").await?), before);

    // Two nodes go: the policy needs one shard; the other is deleted.
    cluster.kubectl(&["delete", "node", "general-registering", "fargate-ip-10-0-0-1"])?;
    eventually("one shard left", CONVERGE, || async {
        let mine: Vec<ClusterPolicyReport> = reports(&api)
            .await?
            .into_iter()
            .filter(|r| {
                r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("imp-require-imdsv2-"))
            })
            .collect();
        let names: Vec<String> = mine.iter().filter_map(|r| r.metadata.name.clone()).collect();
        let nodes: Vec<&str> = mine
            .iter()
            .flat_map(|r| r.results.iter().map(|x| x.resources[0].name.as_str()))
            .collect();
        Ok(
            if names == ["imp-require-imdsv2-0"] && nodes == ["general-0", "general-1"] {
                Ok(())
            } else {
                Err(format!("{names:?}: {nodes:?}"))
            },
        )
    })
    .await?;
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_report_crd_the_operator_enforces_and_says_so_once() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let mut operator = fleet(&cluster, &moto, &[]).await?;
    // More reconciles (and offers to the writer): a new node.
    let more = moto.run_instances(1, &[]).await?;
    cluster
        .create_node("general-2", &[("pool", "general")], Some(&provider_id(&more[0])))
        .await?;
    wait_imds(&ec2, &more[0], ("required", 2), CONVERGE).await?;
    cluster
        .wait_status("require-imdsv2", "Ready with the new node", |p, s| {
            let said = s.policy_reports.as_ref().and_then(|r| r.message.as_deref());
            s.observed_generation == p.metadata.generation
                && condition(s, "Ready").0 == "True"
                && s.compliant_nodes == 3
                && said.is_some_and(|m| m.contains("is not installed"))
        })
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    operator.ensure_running()?;
    let log = operator.log_tail(100_000);
    let said = log.lines().filter(|l| l.contains("ClusterPolicyReport CRD")).count();
    assert_eq!(said, 1, "said once:\n{log}");
    assert!(log.contains("is not installed"), "{log}");
    Ok(())
}
