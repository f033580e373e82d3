//! Safety that learns from the fleet (issue 14): the IMDSv1-usage guard judges an instance's
//! calls after its boot window (`ignoreAfterLaunch`), from `MetadataNoToken` per period and the
//! instance's `LaunchTime`. EC2 is the local double (whose `LaunchTime` a test can set), CloudWatch
//! is moto's (through `AWS_ENDPOINT_URL_CLOUDWATCH`).

use crate::safety::{FAST, NO_USAGE_GUARD, policy, v1_instance};
use anyhow::Result;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use imds_test_support::Moto;
use imds_test_support::e2e::{Cluster, Operator, condition, metric_sum, provider_id};
use imds_test_support::ec2_double::Ec2Double;
use std::time::{Duration, SystemTime};

/// Puts `calls` of CloudWatch metric `metric` (`MetadataNoToken`, `MetadataNoTokenRejected`)
/// for instance `id` at `at`.
async fn put_calls(cw: &aws_sdk_cloudwatch::Client, metric: &str, id: &str, calls: f64, at: SystemTime) -> Result<()> {
    let datum = MetricDatum::builder()
        .metric_name(metric)
        .dimensions(Dimension::builder().name("InstanceId").value(id).build())
        .unit(StandardUnit::Count)
        .value(calls)
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(at))
        .build();
    cw.put_metric_data()
        .namespace("AWS/EC2")
        .metric_data(datum)
        .send()
        .await?;
    Ok(())
}

/// Puts `calls` tokenless IMDS calls of instance `id` at `at`.
async fn put_tokenless_calls_at(cw: &aws_sdk_cloudwatch::Client, id: &str, calls: f64, at: SystemTime) -> Result<()> {
    put_calls(cw, "MetadataNoToken", id, calls, at).await
}

/// A new node whose only IMDSv1 calls came at first boot is enforced at once; a node launched
/// two hours ago that made calls half an hour ago is blocked, and its message says the calls
/// came after the boot window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_noise_does_not_block_a_new_node_but_later_calls_do() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let moto = Moto::start()?;
    let cw = moto.cloudwatch_client().await;
    let new_node = "i-0000000000000000a";
    let old_node = "i-0000000000000000b";
    double.add_instance(new_node, v1_instance(), &[]);
    double.add_instance(old_node, v1_instance(), &[]);
    let now = SystemTime::now();
    double.set_launch_time(old_node, now - Duration::from_secs(2 * 3600));
    // The new node's first start (a minute ago is before it was added: still its boot window,
    // since the window is judged by period and periods ending before launch + 10m do not count).
    put_tokenless_calls_at(&cw, new_node, 6.0, now).await?;
    put_tokenless_calls_at(&cw, old_node, 3.0, now - Duration::from_secs(1800)).await?;
    cluster.create_node("new", &[], Some(&provider_id(new_node))).await?;
    cluster.create_node("old", &[], Some(&provider_id(old_node))).await?;

    let mut env = double.aws_env();
    env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), moto.endpoint()));
    let mut operator = Operator::start(&cluster, &env, &["--leader-election=false", "--resync-period=10m"]).await?;
    cluster.apply(&policy("v2", "{httpTokens: required}", FAST))?;
    let status = cluster
        .wait_status("v2", "new enforced, old blocked", |_, s| {
            s.blocked_nodes == 1 && s.compliant_nodes == 1
        })
        .await?;
    assert_eq!(condition(&status, "Stalled"), ("True".into(), "IMDSv1InUse".into()));
    let report = &status.non_compliant_nodes[0];
    assert_eq!((report.node.as_str(), report.reason.as_str()), ("old", "IMDSv1InUse"));
    let message = report.message.as_deref().unwrap_or("");
    assert!(
        message.contains("3 IMDSv1 calls") && message.contains("after the first 10m since launch"),
        "{report:?}"
    );
    assert_eq!(
        double.options(new_node).expect("known").http_tokens.as_str(),
        "required"
    );
    assert_eq!(
        double.options(old_node).expect("known").http_tokens.as_str(),
        "optional"
    );
    operator.ensure_running()?;
    Ok(())
}

/// Puts `calls` IMDSv1 calls that EC2 refused on instance `id`, now.
async fn put_rejected_calls(cw: &aws_sdk_cloudwatch::Client, id: &str, calls: f64) -> Result<()> {
    put_calls(cw, "MetadataNoTokenRejected", id, calls, SystemTime::now()).await
}

/// The operator (its CloudWatch is moto's) on two nodes whose instances allow IMDSv1, and policy
/// `v2` moving one instance at a time to IMDSv2 with `onRejectedCalls`; the instance moved first.
async fn staged_on_two_nodes(
    cluster: &Cluster,
    double: &Ec2Double,
    moto: &Moto,
    ids: [&'static str; 2],
    on_rejected_calls: &str,
) -> Result<(Operator, &'static str)> {
    for (i, id) in ids.iter().enumerate() {
        double.add_instance(id, v1_instance(), &[]);
        cluster
            .create_node(&format!("n{i}"), &[], Some(&provider_id(id)))
            .await?;
    }
    let operator = Operator::start(cluster, &operator_env(double, moto), &OPERATOR_ARGS).await?;
    let staged = format!(
        "{NO_USAGE_GUARD}  rollout: {{maxInFlight: 1, settleSeconds: 0, verify: {{window: 15m, onRejectedCalls: {on_rejected_calls}}}}}\n"
    );
    cluster.apply(&policy("v2", "{httpTokens: required}", &staged))?;
    let first = wait_for_required(double, &ids).await?;
    Ok((operator, first))
}

const OPERATOR_ARGS: [&str; 2] = ["--leader-election=false", "--resync-period=10m"];

/// The EC2 double's environment with moto's CloudWatch.
fn operator_env(double: &Ec2Double, moto: &Moto) -> Vec<(String, String)> {
    let mut env = double.aws_env();
    env.push(("AWS_ENDPOINT_URL_CLOUDWATCH".into(), moto.endpoint()));
    env
}

/// Whether the instance requires IMDSv2 now.
fn requires_v2(double: &Ec2Double, id: &str) -> bool {
    double.options(id).is_some_and(|o| o.http_tokens.as_str() == "required")
}

/// The first of `ids` to require IMDSv2 (polled for up to 60 s).
async fn wait_for_required(double: &Ec2Double, ids: &[&'static str]) -> Result<&'static str> {
    for _ in 0..120 {
        if let Some(id) = ids.iter().find(|id| requires_v2(double, id)) {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("none of {ids:?} was moved to required within 60s")
}

/// Verification after the change: one instance at a time is moved to IMDSv2; the first one then
/// refuses IMDSv1 calls (`MetadataNoTokenRejected`) within its verification window, so the
/// rollout halts (`Stalled`, `IMDSv1CallsRejected`, the node and the count in status) and the
/// second instance is never changed — it waited for the first one's verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_imdsv1_calls_after_the_change_halt_the_rollout() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let moto = Moto::start()?;
    let cw = moto.cloudwatch_client().await;
    let ids = ["i-0000000000000001a", "i-0000000000000001b"];
    let (mut operator, changed) = staged_on_two_nodes(&cluster, &double, &moto, ids, "Halt").await?;
    let other = ids.iter().find(|id| **id != changed).copied().unwrap_or_default();
    put_rejected_calls(&cw, changed, 5.0).await?;
    let status = cluster
        .wait_status("v2", "halted on rejected calls", |_, s| s.rollout_halt.is_some())
        .await?;
    assert_eq!(
        condition(&status, "Stalled"),
        ("True".into(), "IMDSv1CallsRejected".into())
    );
    let halt = status.rollout_halt.as_ref().expect("halted");
    assert_eq!((halt.instance_id.as_str(), halt.rejected_calls), (changed, Some(5)));
    assert!(
        !requires_v2(&double, other),
        "the second instance waited for the first one's verdict"
    );
    operator.ensure_running()?;
    Ok(())
}

/// `onRejectedCalls: Revert`: the changed instance that refused IMDSv1 calls goes back to the
/// options recorded before the change (a Warning `Reverted` naming the node, the node `Reverted`
/// in status, the rollout halted), and stays there: after the operator is killed and restarted
/// and a person resumes the rollout, the other instance is enforced and the reverted one is not
/// (its hold is in the records, not in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_with_revert_put_the_instance_back_and_hold_it_across_a_restart() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let moto = Moto::start()?;
    let cw = moto.cloudwatch_client().await;
    let ids = ["i-0000000000000003a", "i-0000000000000003b"];
    let (mut operator, changed) = staged_on_two_nodes(&cluster, &double, &moto, ids, "Revert").await?;
    let other = ids.iter().find(|id| **id != changed).copied().unwrap_or_default();
    put_rejected_calls(&cw, changed, 4.0).await?;
    let reverted = |s: &imds_core::api::InstanceMetadataPolicyStatus| {
        s.non_compliant_nodes
            .iter()
            .any(|n| n.instance_id.as_deref() == Some(changed) && n.reason == "Reverted")
    };
    let status = cluster
        .wait_status("v2", "reverted and halted", |_, s| {
            s.rollout_halt.is_some() && reverted(s)
        })
        .await?;
    assert_eq!(status.rollout_halt.as_ref().and_then(|h| h.rejected_calls), Some(4));
    assert_eq!(
        double.options(changed).map(|o| o.http_tokens.as_str().to_string()),
        Some("optional".into())
    );
    let events = cluster.events_for("v2").await?;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Reverted:") && e.contains(changed) && e.contains("refused 4 IMDSv1 calls")),
        "{events:?}"
    );
    let records = cluster.records().await?;
    assert_eq!(records[changed]["reverted"]["policy"], "v2", "{records:?}");

    operator.kill();
    let mut operator = Operator::start(&cluster, &operator_env(&double, &moto), &OPERATOR_ARGS).await?;
    cluster.kubectl(&[
        "annotate",
        "imp",
        "v2",
        "imds-operator.io/resume-rollout=1",
        "--overwrite",
    ])?;
    assert_eq!(
        wait_for_required(&double, &[other]).await?,
        other,
        "the rollout resumed"
    );
    let status = cluster
        .wait_status("v2", "resumed, the reverted instance still held", |_, s| {
            s.rollout_halt.is_none() && reverted(s)
        })
        .await?;
    assert_eq!(condition(&status, "Stalled"), ("True".into(), "Reverted".into()));
    assert!(!requires_v2(&double, changed), "held across the restart and the resume");
    operator.ensure_running()?;
    Ok(())
}

/// The source of drift: new instances a policy had to change are counted per launch source
/// (here a launch template and version, from the instance's tags) in status and in a metric;
/// an old instance (launched a day ago) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_sources_of_new_drifted_instances_are_named() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let template = [
        ("aws:ec2launchtemplate:id", "lt-0abc"),
        ("aws:ec2launchtemplate:version", "3"),
    ];
    let ids = ["i-0000000000000002a", "i-0000000000000002b", "i-0000000000000002c"];
    for (i, id) in ids.iter().enumerate() {
        double.add_instance(id, v1_instance(), &template);
        cluster
            .create_node(&format!("n{i}"), &[], Some(&provider_id(id)))
            .await?;
    }
    double.set_launch_time(ids[2], SystemTime::now() - Duration::from_secs(86_400));
    let mut operator = Operator::start(
        &cluster,
        &double.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    let extra = format!(
        "{NO_USAGE_GUARD}  rollout: {{maxInFlight: \"100%\", settleSeconds: 0, verify: {{onRejectedCalls: Ignore}}}}\n"
    );
    cluster.apply(&policy("v2", "{httpTokens: required}", &extra))?;
    let status = cluster
        .wait_status("v2", "compliant with a launch source", |_, s| {
            s.compliant_nodes == 3 && !s.launch_sources.is_empty()
        })
        .await?;
    let sources: Vec<(&str, &str, i32)> = status
        .launch_sources
        .iter()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.instances))
        .collect();
    assert_eq!(
        sources,
        vec![("LaunchTemplate", "lt-0abc:3", 2)],
        "the old instance is not counted"
    );
    let metrics = operator.metrics().await?;
    let counted = metric_sum(
        &metrics,
        "imds_operator_launch_source_changes_total",
        &[r#"name="lt-0abc:3""#],
    );
    assert_eq!(counted, 2.0, "{metrics}");
    operator.ensure_running()?;
    Ok(())
}

/// Karpenter (minimal stand-ins for its CRDs, `tests/fixtures/karpenter-crds.yaml`): an
/// `EC2NodeClass` that launches on IMDSv1, used by a NodePool, is reported against the policy
/// that would select its nodes — in status (`nodeClasses`), as a Warning and in `report` — while
/// no node exists; a node class left to Karpenter's defaults (IMDSv2 required) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_karpenter_node_class_on_imdsv1_is_reported_before_any_node_launches() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let crds = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/karpenter-crds.yaml"
    ))?;
    cluster.apply(&crds)?;
    for crd in ["ec2nodeclasses.karpenter.k8s.aws", "nodepools.karpenter.sh"] {
        let crd = format!("crd/{crd}");
        cluster.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", &crd])?;
    }
    cluster.apply(
        "apiVersion: karpenter.k8s.aws/v1\nkind: EC2NodeClass\nmetadata: {name: legacy}\nspec: {metadataOptions: {httpTokens: optional, httpPutResponseHopLimit: 2}}\n---\n\
         apiVersion: karpenter.k8s.aws/v1\nkind: EC2NodeClass\nmetadata: {name: default}\nspec: {role: KarpenterNodeRole}\n---\n\
         apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: old}\nspec: {template: {metadata: {labels: {team: a}}, spec: {nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: legacy}}}}\n---\n\
         apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: general}\nspec: {template: {spec: {nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}}}\n",
    )?;
    let mut operator = Operator::start(&cluster, &double.aws_env(), &OPERATOR_ARGS).await?;
    let team_a = "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata:\n  name: team-a\nspec:\n  nodeSelector: {matchLabels: {team: a}}\n  metadataOptions: {httpTokens: required}\n";
    cluster.apply(team_a)?;
    let status = cluster
        .wait_status("team-a", "node class reported", |_, s| !s.node_classes.is_empty())
        .await?;
    assert_eq!(status.matched_nodes, 0, "no node launched");
    let reported: Vec<(&str, Vec<&str>, Vec<&str>)> = status
        .node_classes
        .iter()
        .map(|c| {
            let pools = c.node_pools.iter().map(String::as_str).collect();
            (
                c.node_class.as_str(),
                pools,
                c.mismatches.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        reported,
        vec![("legacy", vec!["old"], vec!["httpTokens: optional → required"])]
    );
    let events = cluster.events_for("team-a").await?;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("NodeClassMismatch:") && e.contains("legacy")),
        "{events:?}"
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, team_a)?;
    let file_arg = file.to_string_lossy().to_string();
    let (_, json) =
        crate::report::report_with_env(&cluster, &double.aws_env(), &["--policy", &file_arg, "-o", "json"])?;
    let parsed: serde_json::Value = serde_json::from_str(&json)?;
    let entry = &parsed["nodeClasses"][0];
    assert_eq!(
        (&entry["policy"], &entry["nodeClasses"][0]["nodeClass"]),
        (&"team-a".into(), &"legacy".into()),
        "{json}"
    );
    let (_, table) = crate::report::report_with_env(&cluster, &double.aws_env(), &["--policy", &file_arg])?;
    assert!(
        table.contains(
            "policy team-a: Karpenter EC2NodeClass legacy launches its nodes with httpTokens: optional → required"
        ),
        "{table}"
    );
    operator.ensure_running()?;
    Ok(())
}
