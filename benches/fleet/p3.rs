//! P3 — a joining node. A cluster of compliant nodes under the policy; then, one at a time,
//! a Node is created with the providerID of a drifted instance, and the time from its create
//! request to the double receiving that instance's ModifyInstanceMetadataOptions (not a dry
//! run) is measured. No bucket (an unthrottled double); every EC2 call still takes 50–100 ms.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imds_test_support::ec2_double::{DESCRIBE, MODIFY};
use imds_test_support::nodes::EksFleet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use crate::common::{
    DRIFTED, Report, account_double, add_instances, apply_policy, cluster_with_nodes, compliant, size, start_operator,
    wait_compliant,
};

/// How long one join may take before the figure fails.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between joins, so that they come one at a time.
const BETWEEN: Duration = Duration::from_millis(300);

/// The `q` quantile (nearest rank) of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs P3: `IMDS_BENCH_P3_JOINS` (default 50) joins into a cluster of `IMDS_BENCH_P3_BASE`
/// (default 200) compliant nodes.
pub async fn run(report: &mut Report) -> Result<()> {
    let joins = size("IMDS_BENCH_P3_JOINS", 50)?;
    let base = size("IMDS_BENCH_P3_BASE", 200)?;
    let fleet = EksFleet::new("p3");
    let double = account_double(false)?;
    add_instances(&double, &fleet, 0..base, compliant());
    let cluster = cluster_with_nodes(&fleet, base).await?;
    apply_policy(&cluster).await?;
    let mut operator = start_operator(&cluster, &double, "operator", &[]).await?;
    wait_compliant(&cluster, base, Duration::from_secs(120)).await?;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut samples = Vec::with_capacity(joins);
    // Where the time goes: create → the DescribeInstances that reads the instance → its Modify.
    let (mut to_read, mut read_to_modify) = (Vec::new(), Vec::new());
    for index in base..base + joins {
        add_instances(&double, &fleet, index..index + 1, DRIFTED);
        let id = fleet.instance_id(index);
        let node = fleet.node(index);
        let created = Instant::now();
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {index}"))?;
        let sent = loop {
            let modify = double
                .find_request(|r| r.action == MODIFY && !r.dry_run() && r.param("InstanceId") == Some(id.as_str()));
            if let Some(modify) = modify {
                break modify.at;
            }
            operator.ensure_running()?;
            if created.elapsed() > JOIN_TIMEOUT {
                bail!("join {index}: no Modify for {id} within {JOIN_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        samples.push(sent.saturating_duration_since(created));
        let read = double.find_request(|r| r.action == DESCRIBE && r.params.values().any(|v| *v == id));
        if let Some(read) = read {
            to_read.push(read.at.saturating_duration_since(created));
            read_to_modify.push(sent.saturating_duration_since(read.at));
        }
        tokio::time::sleep(BETWEEN).await;
    }
    samples.sort();
    to_read.sort();
    read_to_modify.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99 = quantile(&samples, 0.99);
    report.line(format!(
        "P3 joins={joins} p50 {:.0}ms p99 {:.0}ms max {:.0}ms target 250ms ratio {:.2} (target p99 ≤250ms)",
        ms(quantile(&samples, 0.5)),
        ms(p99),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
        ms(p99) / 250.0,
    ));
    report.line(format!(
        "P3 joins={joins} where the time goes: create → its DescribeInstances p50 {:.0}ms p99 {:.0}ms, → its Modify p50 {:.0}ms p99 {:.0}ms",
        ms(quantile(&to_read, 0.5)),
        ms(quantile(&to_read, 0.99)),
        ms(quantile(&read_to_modify, 0.5)),
        ms(quantile(&read_to_modify, 0.99)),
    ));
    operator.stop(Duration::from_secs(5));
    Ok(())
}
