//! `imds-operator report` against a real API server and moto: evaluates a policy that is not
//! applied, prints a table or JSON, and says in its exit status whether the fleet complies.

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{HttpTokensState, InstanceMetadataEndpointState};
use imds_test_support::Moto;
use imds_test_support::e2e::{Cluster, Operator};
use std::process::Command;

pub(crate) fn report(cluster: &Cluster, moto: &Moto, args: &[&str]) -> Result<(i32, String)> {
    report_with_env(cluster, &moto.aws_env(), args)
}

/// Runs `imds-operator report` with `aws_env`; its exit status (an error on 2) and stdout.
pub(crate) fn report_with_env(cluster: &Cluster, aws_env: &[(String, String)], args: &[&str]) -> Result<(i32, String)> {
    let mut cmd = Command::new(Operator::binary());
    cmd.arg("report")
        .args(args)
        .env("KUBECONFIG", cluster.cp.kubeconfig_path());
    for (k, v) in aws_env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running imds-operator report")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.code() != Some(2), "report failed: {stderr}");
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_evaluates_unapplied_policies_and_exits_by_compliance() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    cluster
        .create_node("n0", &[("pool", "a")], Some(&format!("aws:///us-east-1a/{}", ids[0])))
        .await?;
    cluster
        .create_node("n1", &[("pool", "a")], Some(&format!("aws:///us-east-1a/{}", ids[1])))
        .await?;
    cluster
        .create_node("pending-registration", &[("pool", "a")], None)
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata: {name: v2}\nspec:\n  nodeSelector: {matchLabels: {pool: a}}\n  metadataOptions: {httpTokens: required}\n",
    )?;
    let file_arg = file.to_string_lossy().to_string();

    let (code, json) = report(&cluster, &moto, &["--policy", &file_arg, "-o", "json"])?;
    assert_eq!(code, 1, "drifted fleet: exit 1\n{json}");
    let parsed: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(parsed["compliant"], false);
    assert_eq!(parsed["summary"]["Drifted"], 2);
    assert_eq!(parsed["summary"]["Skipped"], 1);
    assert_eq!(parsed["nodes"][0]["node"], "n0");
    assert_eq!(parsed["nodes"][0]["drift"][0], "httpTokens: optional → required");
    assert_eq!(parsed["nodes"][0]["current"]["httpTokens"], "optional");

    let (_, table) = report(&cluster, &moto, &["--policy", &file_arg])?;
    assert!(table.contains("NODE") && table.contains("DOES NOT COMPLY"), "{table}");
    // The report changed nothing.
    assert!(cluster.kubectl(&["get", "imp", "-o", "name"])?.trim().is_empty());

    for id in &ids {
        ec2.modify_instance_metadata_options()
            .instance_id(id)
            .http_tokens(HttpTokensState::Required)
            .http_put_response_hop_limit(1)
            .http_endpoint(InstanceMetadataEndpointState::Enabled)
            .send()
            .await?;
    }
    let (code, table) = report(&cluster, &moto, &["--policy", &file_arg])?;
    assert_eq!(code, 0, "compliant fleet: exit 0\n{table}");
    assert!(table.contains("fleet COMPLIES"), "{table}");
    Ok(())
}

/// The report names each node's launch source (from its instance's tags) and the IMDSv1 calls
/// EC2 refused on it (CloudWatch `MetadataNoTokenRejected`, last 24h), in JSON and in the table,
/// and counts the nodes per launch source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_shows_rejected_calls_per_node_and_launch_sources() -> Result<()> {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ids = moto.run_instances(2, &[("eks:nodegroup-name", "system")]).await?;
    for (i, id) in ids.iter().enumerate() {
        cluster
            .create_node(&format!("n{i}"), &[], Some(&format!("aws:///us-east-1a/{id}")))
            .await?;
    }
    let datum = MetricDatum::builder()
        .metric_name("MetadataNoTokenRejected")
        .dimensions(Dimension::builder().name("InstanceId").value(&ids[1]).build())
        .unit(StandardUnit::Count)
        .value(7.0)
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::now(),
        ))
        .build();
    let cw = moto.cloudwatch_client().await;
    cw.put_metric_data()
        .namespace("AWS/EC2")
        .metric_data(datum)
        .send()
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata: {name: v2}\nspec:\n  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n",
    )?;
    let file_arg = file.to_string_lossy().to_string();

    let (_, json) = report(&cluster, &moto, &["--policy", &file_arg, "-o", "json"])?;
    let parsed: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(parsed["nodes"][0]["launchSource"], "NodeGroup/system", "{json}");
    assert_eq!(parsed["nodes"][0]["rejectedCalls"], 0, "{json}");
    assert_eq!(parsed["nodes"][1]["rejectedCalls"], 7, "{json}");
    let source = &parsed["launchSources"][0];
    assert_eq!(
        (
            &source["kind"],
            &source["name"],
            &source["nodes"],
            &source["notCompliant"]
        ),
        (&"NodeGroup".into(), &"system".into(), &2.into(), &2.into()),
        "{json}"
    );
    let (_, table) = report(&cluster, &moto, &["--policy", &file_arg])?;
    assert!(table.contains("REJECTED") && table.contains("SOURCE"), "{table}");
    assert!(table.contains("NodeGroup system: 2 nodes, 2 not compliant"), "{table}");
    Ok(())
}
