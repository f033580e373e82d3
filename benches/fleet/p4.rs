//! P4 — memory. For each size, a fresh control plane with that many realistic Nodes (and
//! compliant instances), the policy applied, then the operator started: its VmRSS and VmHWM
//! (peak) from /proc once the policy reports every node compliant (the initial list is done),
//! bytes per node over an empty cluster's baseline; at one size also after an API server restart
//! (the operator re-lists every Node). Target: 32 MiB at 5,000 nodes.

use std::time::Duration;

use anyhow::{Context, Result};
use imds_test_support::nodes::EksFleet;
use imds_test_support::procstat::{self, Memory};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use crate::common::{
    Report, account_double, add_instances, apply_policy, cluster_with_nodes, compliant, ratio, show_ratio, size, sizes,
    start_operator, wait_compliant,
};

/// The target at 5,000 nodes.
const TARGET_MIB: f64 = 32.0;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The operator's memory once `n` nodes are listed and compliant; with `restart`, also after an
/// API server restart and the re-list it causes.
async fn measure(n: usize, restart: bool) -> Result<Measured> {
    let fleet = EksFleet::new(&format!("p4-{n}"));
    let double = account_double(false)?;
    add_instances(&double, &fleet, 0..n + 1, compliant());
    let mut cluster = cluster_with_nodes(&fleet, n).await?;
    apply_policy(&cluster).await?;
    let mut operator = start_operator(&cluster, &double, "operator", &[]).await?;
    let timeout = Duration::from_secs(120 + n as u64 / 20);
    wait_compliant(&cluster, n, timeout).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = procstat::memory(operator.pid())?;
    let mut relisted = None;
    let mut marker = None;
    if restart {
        let took = cluster.cp.restart_apiserver().await?;
        eprintln!("  [p4] API server restarted in {:.1}s", took.as_secs_f64());
        // A node created after the restart shows that the watches are back (after the re-list).
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        nodes
            .create(&PostParams::default(), &fleet.node(n))
            .await
            .context("creating the marker node after the restart")?;
        // Bounded past the default resync (5 min), which reconciles every policy anyway.
        let seen = wait_compliant(&cluster, n + 1, Duration::from_secs(420)).await?;
        eprintln!(
            "  [p4] the node created after the restart was reported compliant after {:.1}s",
            seen.as_secs_f64()
        );
        marker = Some(seen);
        tokio::time::sleep(Duration::from_secs(2)).await;
        relisted = Some(procstat::memory(operator.pid())?);
    }
    operator.ensure_running()?;
    operator.stop(Duration::from_secs(5));
    Ok(Measured {
        listed,
        relisted: relisted.zip(marker),
    })
}

/// What [`measure`] read.
struct Measured {
    /// After the initial list.
    listed: Memory,
    /// After the API server restart, and how long a node created then took to be reported.
    relisted: Option<(Memory, Duration)>,
}

/// Runs P4 for every size of `IMDS_BENCH_P4_SIZES` (default 1000,5000,20000), with the API
/// server restart at `IMDS_BENCH_P4_RESTART` (default 5000).
pub async fn run(report: &mut Report) -> Result<()> {
    let restart_at = size("IMDS_BENCH_P4_RESTART", 5000)?;
    let base = measure(0, false).await?.listed;
    report.line(format!(
        "P4 N=0 rss {:.1}MiB peak {:.1}MiB (the baseline; anon {:.1}MiB, file {:.1}MiB)",
        mib(base.rss),
        mib(base.hwm),
        mib(base.anon),
        mib(base.file)
    ));
    for n in sizes("IMDS_BENCH_P4_SIZES", "1000,5000,20000")? {
        let Measured { listed, relisted } = match measure(n, n == restart_at).await {
            Ok(m) => m,
            Err(e) => {
                report.failed(&format!("P4 N={n}"), &e);
                continue;
            }
        };
        let per_node = listed.rss.saturating_sub(base.rss) as f64 / n.max(1) as f64;
        let anon_per_node = listed.anon.saturating_sub(base.anon) as f64 / n.max(1) as f64;
        report.line(format!(
            "P4 N={n} rss {:.1}MiB peak {:.1}MiB target {TARGET_MIB:.0}MiB ratio {} peak-ratio {} per-node {:.0}B over the baseline (anon {:.1}MiB, {:.0}B/node; file {:.1}MiB) (target ≤32MiB at 5000)",
            mib(listed.rss),
            mib(listed.hwm),
            show_ratio(ratio(mib(listed.rss), TARGET_MIB)),
            show_ratio(ratio(mib(listed.hwm), TARGET_MIB)),
            per_node,
            mib(listed.anon),
            anon_per_node,
            mib(listed.file),
        ));
        if let Some((relisted, marker)) = relisted {
            report.line(format!(
                "P4 N={n} after an API server restart rss {:.1}MiB peak {:.1}MiB target {TARGET_MIB:.0}MiB ratio {} peak-ratio {} (anon {:.1}MiB, file {:.1}MiB; a node created after the restart reported after {:.1}s)",
                mib(relisted.rss),
                mib(relisted.hwm),
                show_ratio(ratio(mib(relisted.rss), TARGET_MIB)),
                show_ratio(ratio(mib(relisted.hwm), TARGET_MIB)),
                mib(relisted.anon),
                mib(relisted.file),
                marker.as_secs_f64(),
            ));
        }
    }
    Ok(())
}
