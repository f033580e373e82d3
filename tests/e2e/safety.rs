//! Safe-rollout behaviour end to end: the EC2 double where moto cannot model EC2 (pending,
//! DryRun, UnauthorizedOperation, tag-key refusals, non-Nitro IPv6), moto (with CloudWatch) for
//! the IMDSv1-usage guard, staged rollout and restore-on-delete.

use anyhow::Result;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use imds_core::api::{HttpTokens, Toggle};
use imds_core::options::{Field, FullOptions};
use imds_test_support::Moto;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, metric_sum, provider_id};
use imds_test_support::ec2_double::{Ec2Double, MODIFY, OPTION_PARAMS};
use std::time::Duration;

pub(crate) fn v1_instance() -> FullOptions {
    FullOptions {
        http_tokens: HttpTokens::Optional,
        hop_limit: 1,
        http_endpoint: Toggle::Enabled,
        http_protocol_ipv6: Toggle::Disabled,
        instance_metadata_tags: Toggle::Disabled,
    }
}

/// A policy document; `extra` is appended under `spec:` (two-space indented lines).
pub(crate) fn policy(name: &str, options: &str, extra: &str) -> String {
    format!(
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{}}\n  metadataOptions: {options}\n{extra}"
    )
}

pub(crate) const FAST: &str = "  rollout: {maxInFlight: \"100%\", settleSeconds: 0}\n";
pub(crate) const NO_USAGE_GUARD: &str = "  guards: {imdsv1Usage: {mode: \"Off\"}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_changes_are_never_resent_and_requests_carry_all_five_options() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    ec2.pending_describes(3);
    let ids = ["i-0000000000000000a", "i-0000000000000000b"];
    for (i, id) in ids.iter().enumerate() {
        ec2.add_instance(id, v1_instance(), &[]);
        cluster
            .create_node(&format!("n{i}"), &[], Some(&provider_id(id)))
            .await?;
    }
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&policy(
        "v2",
        "{httpTokens: required, httpPutResponseHopLimit: 2}",
        &format!("{FAST}{NO_USAGE_GUARD}"),
    ))?;

    // While EC2 reports `pending`, the policy says so.
    cluster
        .wait_status("v2", "pending reported", |_, s| {
            s.pending_nodes > 0 && condition(s, "Reconciling") == ("True".into(), "Pending".into())
        })
        .await?;
    let status = cluster
        .wait_status("v2", "applied", |_, s| {
            condition(s, "Ready").0 == "True" && condition(s, "Reconciling").0 == "False"
        })
        .await?;
    assert_eq!(status.compliant_nodes, 2);

    let modifies = ec2.requests_for(MODIFY);
    let real: Vec<_> = modifies.iter().filter(|r| !r.dry_run()).collect();
    for id in ids {
        let sent = real.iter().filter(|r| r.param("InstanceId") == Some(id)).count();
        assert_eq!(sent, 1, "{id}: exactly one request, none while pending: {modifies:?}");
    }
    for r in &modifies {
        for p in OPTION_PARAMS {
            assert!(r.param(p).is_some(), "{p} missing in {r:?}");
        }
    }
    assert_eq!(
        modifies.iter().filter(|r| r.dry_run()).count(),
        1,
        "one preflight DryRun"
    );
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_preflight_modifies_nothing_and_stalls() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    ec2.deny(MODIFY);
    ec2.add_instance("i-0000000000000000c", v1_instance(), &[]);
    cluster
        .create_node("n", &[], Some(&provider_id("i-0000000000000000c")))
        .await?;
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&policy(
        "v2",
        "{httpTokens: required}",
        &format!("{FAST}{NO_USAGE_GUARD}"),
    ))?;
    let status = cluster
        .wait_status("v2", "PermissionDenied", |_, s| {
            condition(s, "Stalled").1 == "PermissionDenied"
        })
        .await?;
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        stalled.contains("preflight") && stalled.contains("UnauthorizedOperation"),
        "{stalled}"
    );
    assert_eq!(status.failed_nodes, 1);
    assert!(
        ec2.requests_for(MODIFY).iter().all(|r| r.dry_run()),
        "no real request after a denied DryRun"
    );
    assert_eq!(ec2.options("i-0000000000000000c"), Some(v1_instance()));
    let events = cluster.events_for("v2").await?;
    assert!(events.iter().any(|e| e.starts_with("PermissionDenied:")), "{events:?}");

    // Permission granted and the policy touched: it goes through.
    ec2.allow(MODIFY);
    cluster.kubectl(&["annotate", "imp", "v2", "example.com/touch=1"])?;
    cluster
        .wait_status("v2", "Ready", |_, s| condition(s, "Ready").0 == "True")
        .await?;
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_keys_and_unsupported_options_are_reported_per_node_and_not_retried() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    ec2.add_instance(
        "i-0000000000000001a",
        v1_instance(),
        &[("kubernetes.io/cluster/e2e", "owned")],
    );
    ec2.add_instance("i-0000000000000001b", v1_instance(), &[("team", "x")]);
    ec2.add_instance("i-0000000000000001c", v1_instance(), &[]);
    ec2.unsupported("i-0000000000000001c", Field::HttpProtocolIpv6);
    cluster
        .create_node(
            "eks-node",
            &[("want", "tags")],
            Some(&provider_id("i-0000000000000001a")),
        )
        .await?;
    cluster
        .create_node(
            "plain-node",
            &[("want", "tags")],
            Some(&provider_id("i-0000000000000001b")),
        )
        .await?;
    cluster
        .create_node(
            "xen-node",
            &[("want", "ipv6")],
            Some(&provider_id("i-0000000000000001c")),
        )
        .await?;
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=2s"],
    )
    .await?;
    cluster.apply(&format!(
        "{}---\n{}",
        policy("tags", "{instanceMetadataTags: enabled}", FAST)
            .replace("nodeSelector: {}", "nodeSelector: {matchLabels: {want: tags}}"),
        policy("ipv6", "{httpProtocolIPv6: enabled}", FAST)
            .replace("nodeSelector: {}", "nodeSelector: {matchLabels: {want: ipv6}}"),
    ))?;
    let tags = cluster
        .wait_status("tags", "eks-node blocked, plain-node compliant", |_, s| {
            s.blocked_nodes == 1 && s.compliant_nodes == 1
        })
        .await?;
    assert_eq!(condition(&tags, "Stalled"), ("True".into(), "TagKeyNotAllowed".into()));
    let report = &tags.non_compliant_nodes[0];
    assert_eq!(report.node, "eks-node");
    assert!(
        report
            .message
            .as_deref()
            .unwrap_or("")
            .contains("kubernetes.io/cluster/e2e"),
        "{report:?}"
    );
    let ipv6 = cluster
        .wait_status("ipv6", "xen-node unsupported", |_, s| {
            condition(s, "Stalled").1 == "UnsupportedOption"
        })
        .await?;
    assert_eq!(ipv6.failed_nodes, 1);

    // Several resyncs later: EC2 was never asked for the tag change on the EKS node, and the
    // refused IPv6 request was sent once.
    let synced = ipv6.last_sync_time.clone();
    cluster
        .wait_status("ipv6", "two more reconciles", |_, s| s.last_sync_time != synced)
        .await?;
    let synced = cluster
        .policies()
        .get("ipv6")
        .await?
        .status
        .and_then(|s| s.last_sync_time);
    cluster
        .wait_status("ipv6", "another reconcile", |_, s| s.last_sync_time != synced)
        .await?;
    let sent_to = |id: &str| {
        ec2.requests_for(MODIFY)
            .iter()
            .filter(|r| !r.dry_run() && r.param("InstanceId") == Some(id))
            .count()
    };
    assert_eq!(sent_to("i-0000000000000001a"), 0);
    assert_eq!(sent_to("i-0000000000000001c"), 1);
    operator.ensure_running()?;
    Ok(())
}

async fn put_tokenless_calls(cw: &aws_sdk_cloudwatch::Client, id: &str, calls: f64) -> Result<()> {
    let datum = MetricDatum::builder()
        .metric_name("MetadataNoToken")
        .dimensions(Dimension::builder().name("InstanceId").value(id).build())
        .unit(StandardUnit::Count)
        .value(calls)
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::now() - Duration::from_secs(600),
        ))
        .build();
    cw.put_metric_data()
        .namespace("AWS/EC2")
        .metric_data(datum)
        .send()
        .await?;
    Ok(())
}

pub(crate) async fn tokens_of(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<String> {
    Ok(imds_test_support::e2e::imds(ec2, id).await?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imdsv1_callers_are_not_moved_to_required() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    put_tokenless_calls(&moto.cloudwatch_client().await, &ids[0], 42.0).await?;
    cluster
        .create_node("v1-caller", &[], Some(&provider_id(&ids[0])))
        .await?;
    cluster.create_node("quiet", &[], Some(&provider_id(&ids[1]))).await?;
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    // moto launches the instances now and the calls are put 10 minutes back: judge every call
    // (the boot window has its own test, in fleet_safety.rs).
    let judge_all = format!("{FAST}  guards: {{imdsv1Usage: {{ignoreAfterLaunch: 0s}}}}\n");
    cluster.apply(&policy("v2", "{httpTokens: required}", &judge_all))?;
    let status = cluster
        .wait_status("v2", "caller blocked", |_, s| {
            s.blocked_nodes == 1 && s.compliant_nodes == 1
        })
        .await?;
    assert_eq!(condition(&status, "Stalled"), ("True".into(), "IMDSv1InUse".into()));
    let report = &status.non_compliant_nodes[0];
    assert_eq!(
        (report.node.as_str(), report.reason.as_str()),
        ("v1-caller", "IMDSv1InUse")
    );
    assert!(
        report.message.as_deref().unwrap_or("").contains("42 IMDSv1 calls"),
        "{report:?}"
    );
    assert_eq!(tokens_of(&ec2, &ids[0]).await?, "optional");
    assert_eq!(tokens_of(&ec2, &ids[1]).await?, "required");

    // Warn mode changes it anyway and says so.
    cluster.apply(&policy(
        "v2",
        "{httpTokens: required}",
        &format!("{FAST}  guards: {{imdsv1Usage: {{mode: Warn}}}}\n"),
    ))?;
    eventually("the caller to be moved in Warn mode", CONVERGE, || async {
        let t = tokens_of(&ec2, &ids[0]).await?;
        Ok(if t == "required" { Ok(()) } else { Err(t) })
    })
    .await?;
    operator.ensure_running()?;
    Ok(())
}

/// Marks a node Ready or NotReady (there is no kubelet: the test plays it).
pub(crate) fn set_ready(cluster: &Cluster, node: &str, ready: bool) -> Result<()> {
    let status = if ready { "True" } else { "False" };
    let patch = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{status}","reason":"Test","message":"set by the test"}}]}}}}"#
    );
    cluster.kubectl(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_rollout_halts_when_a_changed_node_turns_not_ready_until_resumed() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(4, &[]).await?;
    for (i, id) in ids.iter().enumerate() {
        let name = format!("n{i}");
        cluster.create_node(&name, &[], Some(&provider_id(id))).await?;
        set_ready(&cluster, &name, true)?;
    }
    let operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&policy(
        "staged",
        "{httpTokens: required}",
        &format!(
            "{NO_USAGE_GUARD}  rollout: {{maxInFlight: 1, settleSeconds: 15, haltOnNotReadyWithinSeconds: 600, verify: {{onRejectedCalls: Ignore}}}}\n"
        ),
    ))?;
    // One instance at a time: the first one changes, the others wait for it to settle.
    let first = eventually("the first change", CONVERGE, || async {
        let mut changed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if tokens_of(&ec2, id).await? == "required" {
                changed.push(i);
            }
        }
        Ok(if changed.len() == 1 {
            Ok(changed[0])
        } else {
            Err(format!("{changed:?}"))
        })
    })
    .await?;
    let status = cluster
        .wait_status("staged", "rollout in progress", |_, s| s.compliant_nodes == 1)
        .await?;
    assert_eq!(condition(&status, "Reconciling"), ("True".into(), "Applying".into()));

    // The changed node breaks: the rollout halts and names it.
    set_ready(&cluster, &format!("n{first}"), false)?;
    let halted = cluster
        .wait_status("staged", "halted", |_, s| condition(s, "Stalled").1 == "RolloutHalted")
        .await?;
    assert_eq!(
        halted.rollout_halt.as_ref().map(|h| h.node.clone()),
        Some(format!("n{first}"))
    );
    let events = cluster.events_for("staged").await?;
    assert!(events.iter().any(|e| e.starts_with("RolloutHalted:")), "{events:?}");
    let before = metric_sum(
        &operator.metrics().await?,
        "imds_operator_instance_modifications_total",
        &[],
    );
    // Past the settle time nothing else moves while halted.
    let synced = halted.last_sync_time.clone();
    tokio::time::sleep(Duration::from_secs(16)).await;
    cluster.kubectl(&["annotate", "imp", "staged", "example.com/poke=1"])?;
    cluster
        .wait_status("staged", "reconciled while halted", |_, s| s.last_sync_time != synced)
        .await?;
    let after = metric_sum(
        &operator.metrics().await?,
        "imds_operator_instance_modifications_total",
        &[],
    );
    assert_eq!(before, after, "no modification while halted");
    assert_eq!(
        cluster
            .policies()
            .get("staged")
            .await?
            .status
            .map(|s| s.compliant_nodes),
        Some(1)
    );

    // A person resumes it.
    cluster.kubectl(&[
        "annotate",
        "imp",
        "staged",
        "imds-operator.io/resume-rollout=2026-11-23T04:00:00Z",
    ])?;
    let resumed = cluster
        .wait_status("staged", "resumed and progressing", |_, s| {
            s.rollout_halt.is_none() && s.compliant_nodes >= 2
        })
        .await?;
    assert_eq!(resumed.last_resume.as_deref(), Some("2026-11-23T04:00:00Z"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_restore_policy_puts_the_original_options_back() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    cluster.create_node("stays", &[], Some(&provider_id(&ids[0]))).await?;
    cluster
        .create_node("vanishes", &[], Some(&provider_id(&ids[1])))
        .await?;
    let _operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&policy(
        "restore-me",
        "{httpTokens: required, httpPutResponseHopLimit: 2}",
        &format!("{FAST}{NO_USAGE_GUARD}  onDelete: Restore\n"),
    ))?;
    cluster
        .wait_status("restore-me", "Ready", |_, s| {
            condition(s, "Ready").0 == "True" && s.compliant_nodes == 2
        })
        .await?;
    let p = cluster.policies().get("restore-me").await?;
    assert!(
        p.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"imds-operator.io/restore".to_string())
    );
    assert_eq!(tokens_of(&ec2, &ids[0]).await?, "required");
    let records = cluster.records().await?;
    for id in &ids {
        let options = &records[id]["options"];
        assert_eq!(options["httpTokens"]["original"], "optional", "{records:?}");
        assert_eq!(
            options["httpTokens"]["by"],
            serde_json::json!(["restore-me"]),
            "{records:?}"
        );
        assert_eq!(options["httpPutResponseHopLimit"]["original"], "1", "{records:?}");
    }
    let tags = ec2.describe_tags().send().await?;
    assert!(
        !tags
            .tags()
            .iter()
            .any(|t| t.key() == Some("imds-operator.io:original-options")),
        "no record is kept in instance tags"
    );

    // One node goes away (and its instance with it); deletion must not hang on it.
    cluster.kubectl(&["delete", "node", "vanishes"])?;
    ec2.terminate_instances().instance_ids(&ids[1]).send().await?;
    cluster.kubectl(&["delete", "imp", "restore-me", "--timeout=60s"])?;
    assert_eq!(tokens_of(&ec2, &ids[0]).await?, "optional", "original options restored");
    let records = cluster.records().await?;
    let left = records.get(&ids[0]).map(|r| r["options"].clone());
    assert!(
        left.as_ref()
            .is_none_or(|o| o.is_null() || o.as_object().is_some_and(|m| m.is_empty())),
        "nothing is attributed to the policy once restored: {left:?}"
    );
    let events = cluster.events_for("restore-me").await?;
    assert!(events.iter().any(|e| e.starts_with("Restored:")), "{events:?}");
    Ok(())
}
