//! Scenarios against moto: convergence, status, events, triggers, resync, audit, conflicts.

use anyhow::Result;
use aws_sdk_ec2::types::{HttpTokensState, InstanceMetadataEndpointState};
use imds_test_support::Moto;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, imds, metric_sum, provider_id, wait_imds};

const REQUIRE_V2: &str = r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: require-imdsv2
spec:
  nodeSelector: {}
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: 2
  rollout: {maxInFlight: "100%", settleSeconds: 0}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_reports_and_records_events() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(3, &[("kubernetes.io/cluster/e2e", "owned")]).await?;
    for (i, id) in ids.iter().enumerate() {
        cluster
            .create_node(&format!("node-{i}"), &[("pool", "general")], Some(&provider_id(id)))
            .await?;
    }
    cluster.create_node("no-provider-id", &[], None).await?;
    cluster
        .create_node(
            "fargate-ip-10-0-0-1",
            &[],
            Some("aws:///us-east-1a/abc123/fargate-ip-10-0-0-1.ec2.internal"),
        )
        .await?;
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;

    cluster.apply(REQUIRE_V2)?;
    for id in &ids {
        wait_imds(&ec2, id, ("required", 2), CONVERGE).await?;
    }
    let status = cluster
        .wait_status("require-imdsv2", "kstatus Current", |p, s| {
            s.observed_generation == p.metadata.generation
                && condition(s, "Ready").0 == "True"
                && condition(s, "Reconciling").0 == "False"
        })
        .await?;
    assert_eq!(status.matched_nodes, 5);
    assert_eq!(status.compliant_nodes, 3);
    assert_eq!(status.skipped_nodes, 2);
    assert_eq!(status.drifted_nodes + status.failed_nodes + status.pending_nodes, 0);
    assert_eq!(condition(&status, "Reconciling"), ("False".into(), "Idle".into()));
    assert_eq!(condition(&status, "Stalled"), ("False".into(), "NoBlockers".into()));
    let reasons: Vec<&str> = status.non_compliant_nodes.iter().map(|n| n.reason.as_str()).collect();
    assert_eq!(reasons, vec!["Fargate", "NoProviderID"]);

    // kubectl get shows the fleet at a glance.
    let table = cluster.kubectl(&["get", "imp"])?;
    assert!(
        table.contains("MATCHED") && table.contains("COMPLIANT") && table.contains("READY"),
        "{table}"
    );
    assert!(table.contains("require-imdsv2   Enforce   5         3"), "{table}");

    let events = cluster.events_for("require-imdsv2").await?;
    let modified = events.iter().filter(|e| e.starts_with("Modified:")).count();
    assert_eq!(modified, 3, "one Modified event per instance: {events:?}");
    assert!(
        events.iter().any(|e| e.contains("httpTokens optional→required")),
        "{events:?}"
    );

    let metrics = operator.metrics().await?;
    assert_eq!(
        metric_sum(&metrics, "imds_operator_instance_modifications_total", &[]),
        3.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "imds_operator_policy_nodes",
            &["policy=\"require-imdsv2\"", "state=\"compliant\""]
        ),
        3.0
    );
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nodes_label_moves_edits_and_deletes_act_without_resync() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    // A resync far beyond the test's deadlines: everything below is event-driven.
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=1h"],
    )
    .await?;
    cluster.apply(
        r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata: {name: pool-a}
spec:
  rollout: {maxInFlight: "100%", settleSeconds: 0}
  nodeSelector: {matchLabels: {pool: a}}
  metadataOptions: {httpTokens: required, httpPutResponseHopLimit: 2}
---
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata: {name: pool-b}
spec:
  rollout: {maxInFlight: "100%", settleSeconds: 0}
  nodeSelector:
    matchExpressions: [{key: pool, operator: In, values: [b]}]
  metadataOptions: {httpTokens: required, httpPutResponseHopLimit: 3}
"#,
    )?;
    cluster
        .wait_status("pool-a", "reconciled with no nodes", |_, s| {
            s.matched_nodes == 0 && condition(s, "Ready").1 == "NoNodesSelected"
        })
        .await?;

    // A node created after the policy is modified without waiting for the resync.
    cluster
        .create_node("late", &[("pool", "a")], Some(&provider_id(&ids[0])))
        .await?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    cluster
        .wait_status("pool-a", "one compliant node", |_, s| s.compliant_nodes == 1)
        .await?;

    // A providerID that appears later (nodes register before the cloud provider sets it).
    cluster.create_node("no-id-yet", &[("pool", "a")], None).await?;
    cluster
        .wait_status("pool-a", "the new node skipped", |_, s| s.skipped_nodes == 1)
        .await?;
    cluster.kubectl(&[
        "patch",
        "node",
        "no-id-yet",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"providerID":"{}"}}}}"#, provider_id(&ids[1])),
    ])?;
    wait_imds(&ec2, &ids[1], ("required", 2), CONVERGE).await?;

    // A label change moves a node to the other policy; both statuses follow.
    cluster.kubectl(&["label", "node", "late", "pool=b", "--overwrite"])?;
    wait_imds(&ec2, &ids[0], ("required", 3), CONVERGE).await?;
    cluster
        .wait_status("pool-a", "only no-id-yet left", |_, s| {
            s.matched_nodes == 1 && s.compliant_nodes == 1
        })
        .await?;
    cluster
        .wait_status("pool-b", "late compliant", |_, s| {
            s.matched_nodes == 1 && s.compliant_nodes == 1
        })
        .await?;

    // A policy edit converges; observedGeneration follows.
    cluster.kubectl(&[
        "patch",
        "imp",
        "pool-b",
        "--type=merge",
        "-p",
        r#"{"spec":{"metadataOptions":{"httpPutResponseHopLimit":4}}}"#,
    ])?;
    wait_imds(&ec2, &ids[0], ("required", 4), CONVERGE).await?;
    cluster
        .wait_status("pool-b", "generation 2 observed", |p, s| {
            s.observed_generation == Some(2) && p.metadata.generation == Some(2) && condition(s, "Ready").0 == "True"
        })
        .await?;

    // Deleting a policy (onDelete defaults to Retain) leaves instances as they are and the
    // operator keeps serving the other policy.
    cluster.kubectl(&["delete", "imp", "pool-b", "--wait=true"])?;
    cluster.kubectl(&["label", "node", "late", "pool=a", "--overwrite"])?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    cluster
        .wait_status("pool-a", "both nodes back", |_, s| {
            s.matched_nodes == 2 && s.compliant_nodes == 2
        })
        .await?;
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_band_change_is_reverted_at_resync() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(1, &[]).await?;
    cluster.create_node("n1", &[], Some(&provider_id(&ids[0]))).await?;
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=3s"],
    )
    .await?;
    cluster.apply(REQUIRE_V2)?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;

    // Someone re-enables IMDSv1 from the console: nothing in the cluster changes. (EC2's answer
    // says it took; a read-back could already see the operator's next resync put it right.)
    let answer = ec2
        .modify_instance_metadata_options()
        .instance_id(&ids[0])
        .http_tokens(HttpTokensState::Optional)
        .http_put_response_hop_limit(1)
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .send()
        .await?;
    let taken = answer.instance_metadata_options();
    assert_eq!(taken.and_then(|o| o.http_tokens()), Some(&HttpTokensState::Optional));
    assert_eq!(taken.and_then(|o| o.http_put_response_hop_limit()), Some(1));
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_reports_and_conflicts_leave_options_alone() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    cluster
        .create_node("audited", &[("team", "audit")], Some(&provider_id(&ids[0])))
        .await?;
    cluster
        .create_node("contested", &[("team", "both")], Some(&provider_id(&ids[1])))
        .await?;
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(
        r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata: {name: audit-only}
spec:
  mode: Audit
  nodeSelector: {matchLabels: {team: audit}}
  metadataOptions: {httpTokens: required}
---
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata: {name: hop-two}
spec:
  rollout: {maxInFlight: "100%", settleSeconds: 0}
  priority: 5
  nodeSelector: {matchLabels: {team: both}}
  metadataOptions: {httpPutResponseHopLimit: 2, httpTokens: required}
---
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata: {name: hop-three}
spec:
  rollout: {maxInFlight: "100%", settleSeconds: 0}
  priority: 5
  nodeSelector: {matchLabels: {team: both}}
  metadataOptions: {httpPutResponseHopLimit: 3}
"#,
    )?;
    let audit = cluster
        .wait_status("audit-only", "drift reported", |_, s| {
            s.drifted_nodes == 1 && condition(s, "Stalled").0 == "True"
        })
        .await?;
    assert_eq!(condition(&audit, "Stalled").1, "AuditModeDrift");
    assert_eq!(condition(&audit, "Ready"), ("False".into(), "Drifted".into()));
    let drift = &audit.non_compliant_nodes[0].drift[0];
    assert_eq!(
        (drift.field.as_str(), drift.observed.as_str(), drift.desired.as_str()),
        ("httpTokens", "optional", "required")
    );

    for name in ["hop-two", "hop-three"] {
        let s = cluster
            .wait_status(name, "conflict reported", |_, s| {
                s.conflicted_nodes == 1 && condition(s, "Stalled").1 == "Conflict"
            })
            .await?;
        assert_eq!(condition(&s, "Ready"), ("False".into(), "Conflict".into()));
        let events = cluster.events_for(name).await?;
        assert!(events.iter().any(|e| e.starts_with("Conflict:")), "{name}: {events:?}");
    }
    // hop-two's uncontested option was applied; the contested hop limit was left alone.
    wait_imds(&ec2, &ids[1], ("required", 1), CONVERGE).await?;
    // Audit never modifies.
    assert_eq!(imds(&ec2, &ids[0]).await?, ("optional".to_string(), 1));
    let metrics = operator.metrics().await?;
    assert_eq!(
        metric_sum(&metrics, "imds_operator_instance_modifications_total", &[]),
        1.0
    );
    operator.ensure_running()?;
    Ok(())
}
