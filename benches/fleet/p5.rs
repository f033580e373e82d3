//! P5 — one account, many clusters. Several operators, each with a control plane and a fleet
//! of its own, at their default flags, against one double (one account) whose Modify bucket
//! (100, 5 per second) they share: the total wall time against the bound for the sum, the
//! throttled share of all calls, and each cluster's time against its fair share (the time the
//! bucket needs for its instances when every cluster gets an equal part of it).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use imds_test_support::e2e::{Cluster, Operator};
use imds_test_support::nodes::EksFleet;

use crate::Selection;
use crate::common::{
    Calls, DRIFTED, Report, account_double, add_instances, apply_policy, cluster_with_nodes, pct, ratio, required_in,
    show_ratio, size, start_operator,
};

/// One cluster of the run.
struct Member {
    fleet: EksFleet,
    cluster: Cluster,
    operator: Operator,
    key: String,
    done: Option<Duration>,
}

/// The time the shared bucket needs for `total` calls (100 up front, then 5 per second).
fn bound(total: usize) -> f64 {
    total.saturating_sub(100) as f64 / 5.0
}

/// Runs `operators` clusters of `n` drifted instances each; returns the line.
async fn shared(operators: usize, n: usize) -> Result<String> {
    let double = account_double(true)?;
    let mut members = Vec::with_capacity(operators);
    for i in 0..operators {
        let fleet = EksFleet::new(&format!("p5-{operators}-{i}"));
        add_instances(&double, &fleet, 0..n, DRIFTED);
        let cluster = cluster_with_nodes(&fleet, n).await?;
        let key = format!("cluster-{i}");
        let operator = start_operator(&cluster, &double, &key, &[]).await?;
        members.push(Member {
            fleet,
            cluster,
            operator,
            key,
            done: None,
        });
    }
    tokio::time::sleep(crate::p1::settle()?).await;
    double.reset_counters();
    let started = Instant::now();
    for member in &members {
        apply_policy(&member.cluster).await?;
    }
    let total = operators * n;
    let timeout = Duration::from_secs_f64(bound(total) * 3.0 + 180.0);
    while members.iter().any(|m| m.done.is_none()) {
        for m in members.iter_mut().filter(|m| m.done.is_none()) {
            m.operator.ensure_running()?;
            if required_in(&double, &m.fleet, n) >= n {
                m.done = Some(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            let done: Vec<usize> = members.iter().map(|m| required_in(&double, &m.fleet, n)).collect();
            bail!("not every cluster converged within {timeout:?}: {done:?} of {n} each");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = members
        .iter()
        .filter_map(|m| m.done)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let calls: Vec<Calls> = members.iter().map(|m| Calls::of(&double, &m.key)).collect();
    let (all, throttled) = calls
        .iter()
        .fold((0, 0), |(a, t), c| (a + c.all.calls, t + c.all.throttled));
    // Equal fleets: each cluster's fair share of the bucket (100/k up front, 5/k per second)
    // needs as long as the whole.
    let fair = bound(total);
    let times: Vec<f64> = members.iter().filter_map(|m| m.done).map(|d| d.as_secs_f64()).collect();
    let worst = times.iter().copied().fold(0.0, f64::max);
    for mut m in members {
        m.operator.stop(Duration::from_secs(5));
    }
    Ok(format!(
        "operators={operators} N={operators}×{n} wall {wall:.1}s bound {:.1}s ratio {} throttled {:.1}% worst {}× fair share (each {}) (target ≤1.15, ≤5%, ≤1.5×)",
        bound(total),
        show_ratio(ratio(wall, bound(total))),
        pct(throttled, all),
        show_ratio(ratio(worst, fair)),
        times.iter().map(|t| format!("{t:.1}s")).collect::<Vec<_>>().join(" "),
    ))
}

/// Runs P5 (`IMDS_BENCH_P5_OPERATORS`, default 3, × `IMDS_BENCH_P5_SIZE`, default 300) and P5X
/// (`IMDS_BENCH_P5X_OPERATORS`, default 10, × `IMDS_BENCH_P5X_SIZE`, default 60).
pub async fn run(selection: &Selection, report: &mut Report) -> Result<()> {
    if selection.has("P5") {
        let (k, n) = (size("IMDS_BENCH_P5_OPERATORS", 3)?, size("IMDS_BENCH_P5_SIZE", 300)?);
        match shared(k, n).await {
            Ok(line) => report.line(format!("P5 {line}")),
            Err(e) => report.failed("P5", &e),
        }
    }
    if selection.has("P5X") {
        let (k, n) = (size("IMDS_BENCH_P5X_OPERATORS", 10)?, size("IMDS_BENCH_P5X_SIZE", 60)?);
        match shared(k, n).await {
            Ok(line) => report.line(format!("P5X {line}")),
            Err(e) => report.failed("P5X", &e),
        }
    }
    Ok(())
}
