//! `imds-operator report` against a real API server and moto: evaluates a policy that is not
//! applied, prints a table or JSON, and says in its exit status whether the fleet complies.

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{HttpTokensState, InstanceMetadataEndpointState};
use imds_test_support::Moto;
use imds_test_support::e2e::{Cluster, Operator};
use std::process::Command;

/// Runs `imds-operator report <args>`: (exit status, stdout).
pub(crate) fn report(cluster: &Cluster, moto: &Moto, args: &[&str]) -> Result<(i32, String)> {
    let mut cmd = Command::new(Operator::binary());
    cmd.arg("report")
        .args(args)
        .env("KUBECONFIG", cluster.cp.kubeconfig_path());
    for (k, v) in moto.aws_env() {
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
