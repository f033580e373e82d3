//! P1 — converge at the bucket. N drifted instances behind EC2's Modify bucket (100, 5 per
//! second) with 50–100 ms per call, the operator at the account rate: wall time from the
//! policy's creation to every instance requiring IMDSv2, against the bound max(0, N−100)/5 s;
//! the throttled share of its calls. Then the bucket off (a raised account limit, the operator's
//! limiter raised too): calls per second sustained, against the peer's.

use std::time::{Duration, Instant};

use anyhow::Result;
use imds_test_support::Ec2Double;
use imds_test_support::ec2_double::{DESCRIBE, MODIFY, Recorded};
use imds_test_support::nodes::EksFleet;

use crate::Selection;
use crate::common::{
    Calls, DRIFTED, Report, account_double, add_instances, apply_policy, cluster_with_nodes, pct, ratio, required_in,
    show_ratio, size, sizes, start_operator, wait_count,
};
use crate::peer;

/// The operator's flags at the account rate.
const AT_THE_BUCKET: [&str; 3] = [
    "--modify-rate=5",
    "--modify-burst=100",
    "--max-modifies-per-reconcile=1000",
];
/// The operator's flags for a raised account limit (no bucket).
const RAISED: [&str; 3] = [
    "--modify-rate=1000",
    "--modify-burst=1000",
    "--max-modifies-per-reconcile=1000",
];

/// The bucket bound: the time EC2's Modify bucket (100, refilled 5 per second) needs for `n`
/// calls, in seconds.
pub fn bound(n: usize) -> f64 {
    n.saturating_sub(100) as f64 / 5.0
}

/// How long the operator runs before the policy is applied: `IMDS_BENCH_SETTLE_MS` (default
/// 3000).
pub fn settle() -> Result<Duration> {
    Ok(Duration::from_millis(size("IMDS_BENCH_SETTLE_MS", 3000)? as u64))
}

/// One run of the operator.
pub struct OperatorRun {
    /// From creating the policy to the last instance requiring IMDSv2.
    pub wall: Duration,
    /// The operator's calls.
    pub calls: Calls,
    /// When its calls arrived (see [`timeline`]).
    pub timeline: String,
}

/// The operator on `n` drifted instances, with or without the account's buckets.
pub async fn operator_run(n: usize, buckets: bool) -> Result<OperatorRun> {
    let fleet = EksFleet::new(&format!("p1-{n}"));
    let double = account_double(buckets)?;
    add_instances(&double, &fleet, 0..n, DRIFTED);
    let cluster = cluster_with_nodes(&fleet, n).await?;
    let flags = if buckets { AT_THE_BUCKET } else { RAISED };
    let mut operator = start_operator(&cluster, &double, "operator", &flags).await?;
    // A user applies a policy to an operator that has been running: let it list the Nodes.
    tokio::time::sleep(settle()?).await;
    double.reset_counters();
    let sent = apply_policy(&cluster).await?;
    let timeout = Duration::from_secs_f64(bound(n) * 3.0 + 120.0);
    wait_count(
        "P1: instances requiring IMDSv2",
        n,
        timeout,
        || required_in(&double, &fleet, n),
        || operator.ensure_running(),
    )
    .await?;
    let wall = sent.elapsed();
    operator.stop(Duration::from_secs(5));
    Ok(OperatorRun {
        wall,
        calls: Calls::of(&double, "operator"),
        timeline: timeline(&double, sent),
    })
}

/// When the operator's calls arrived, from the policy's creation: the first DescribeInstances,
/// the DryRun, the first, 100th and last Modify, and the Modify rate after the first 100.
fn timeline(double: &Ec2Double, sent: Instant) -> String {
    let at = |r: &Recorded| r.at.saturating_duration_since(sent).as_secs_f64();
    let describe = double.requests_for(DESCRIBE).first().map(at);
    let (dry, real): (Vec<Recorded>, Vec<Recorded>) =
        double.requests_for(MODIFY).into_iter().partition(|r| r.dry_run());
    let nth = |n: usize| real.get(n.saturating_sub(1)).map(at);
    let show = |t: Option<f64>| t.map(|t| format!("+{t:.2}s")).unwrap_or_else(|| "-".into());
    let after_burst = match (nth(100), real.last().map(at)) {
        (Some(t100), Some(last)) if real.len() > 100 && last > t100 => (real.len() - 100) as f64 / (last - t100),
        _ => 0.0,
    };
    format!(
        "first describe {}, dry run {}, modify #1 {}, #100 {}, last {}; {after_burst:.2} modify/s after the first 100",
        show(describe),
        show(dry.first().map(at)),
        show(nth(1)),
        show(nth(100)),
        show(real.last().map(at)),
    )
}

fn calls_text(calls: &Calls) -> String {
    format!(
        "modify {} calls ({} throttled, {} errors incl. DryRun) describe {} calls",
        calls.modify.calls, calls.modify.throttled, calls.modify.errors, calls.describe.calls
    )
}

/// The line of a run at the bucket.
fn bucket_line(who: &str, n: usize, wall: Duration, calls: &Calls, target: &str) -> String {
    let wall = wall.as_secs_f64();
    format!(
        "{who} N={n} wall {wall:.1}s bound {:.1}s ratio {} throttled {:.1}% ({}) ({target})",
        bound(n),
        show_ratio(ratio(wall, bound(n))),
        calls.throttled_pct(),
        calls_text(calls),
    )
}

/// Runs P1 at the bucket for every size of `IMDS_BENCH_P1_SIZES` (default 300,1000), then
/// without it at `IMDS_BENCH_P1U_SIZE` (default 1000); the peer beside each when selected.
pub async fn run(selection: &Selection, report: &mut Report) -> Result<()> {
    let custodian = if selection.has("PEER") {
        match peer::custodian() {
            Ok(path) => Some(path),
            Err(e) => {
                report.failed("PEER (c7n setup)", &e);
                None
            }
        }
    } else {
        None
    };
    if selection.has("P1") || custodian.is_some() {
        for n in sizes("IMDS_BENCH_P1_SIZES", "300,1000")? {
            if selection.has("P1") {
                match operator_run(n, true).await {
                    Ok(run) => {
                        report.line(bucket_line("P1", n, run.wall, &run.calls, "target ≤1.03, ≤1%"));
                        report.line(format!("P1 N={n} timeline: {}", run.timeline));
                    }
                    Err(e) => report.failed(&format!("P1 N={n}"), &e),
                }
            }
            if let Some(custodian) = &custodian {
                match peer::run(custodian, n, true).await {
                    Ok(run) => report.line(format!(
                        "{} active {:.1}s",
                        bucket_line("P1 peer c7n", n, run.wall, &run.calls, "the peer, no target"),
                        run.active.as_secs_f64()
                    )),
                    Err(e) => report.failed(&format!("P1 peer c7n N={n}"), &e),
                }
            }
        }
    }
    if selection.has("P1U") || custodian.is_some() {
        unthrottled(selection, custodian.as_ref(), report).await?;
    }
    Ok(())
}

/// P1 without the bucket: the operator's and the peer's sustained Modify rates.
async fn unthrottled(selection: &Selection, custodian: Option<&std::path::PathBuf>, report: &mut Report) -> Result<()> {
    let n = size("IMDS_BENCH_P1U_SIZE", 1000)?;
    let mut operator_rate = None;
    if selection.has("P1U") {
        match operator_run(n, false).await {
            Ok(run) => {
                let rate = n as f64 / run.wall.as_secs_f64();
                operator_rate = Some(rate);
                report.line(format!(
                    "P1U N={n} unthrottled wall {:.1}s {rate:.1} modify/s ({})",
                    run.wall.as_secs_f64(),
                    calls_text(&run.calls)
                ));
                report.line(format!("P1U N={n} timeline: {}", run.timeline));
            }
            Err(e) => report.failed(&format!("P1U N={n}"), &e),
        }
    }
    let Some(custodian) = custodian else {
        return Ok(());
    };
    match peer::run(custodian, n, false).await {
        Ok(run) => {
            let rate = n as f64 / run.wall.as_secs_f64();
            report.line(format!(
                "P1U peer c7n N={n} unthrottled wall {:.1}s {rate:.1} modify/s active {:.1}s ({:.1}% throttled, {})",
                run.wall.as_secs_f64(),
                run.active.as_secs_f64(),
                pct(run.calls.all.throttled, run.calls.all.calls),
                calls_text(&run.calls)
            ));
            if let Some(operator_rate) = operator_rate {
                report.line(format!(
                    "P1U N={n} operator {operator_rate:.1}/s vs peer {rate:.1}/s ratio {} (target ≥5)",
                    show_ratio(ratio(operator_rate, rate))
                ));
            }
        }
        Err(e) => report.failed(&format!("P1U peer c7n N={n}"), &e),
    }
    Ok(())
}
