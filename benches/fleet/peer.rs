//! The peer: Cloud Custodian (`c7n`, from PyPI in its own virtualenv, `hack/setup-c7n.sh`) with
//! a policy whose `set-metadata-access` action sets `tokens: required`, against the same double
//! (same buckets, same latency) and the same fleet as the operator. c7n lists the instances
//! with one DescribeInstances (boto3's paginator, unfiltered) and then calls
//! ModifyInstanceMetadataOptions for each drifted instance, one after the other, with botocore's
//! retries and its own (`RequestLimitExceeded` is one of the codes it retries).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imds_test_support::ec2_double::MODIFY;
use imds_test_support::nodes::EksFleet;
use imds_test_support::process::{ChildGuard, run_checked};

use crate::common::{Calls, DRIFTED, account_double, add_instances, env_or, required_in};

/// The access key c7n signs with (the double's counters tell its calls apart by it).
const KEY: &str = "c7n";

/// The policy: every instance that still allows IMDSv1 gets `HttpTokens=required`.
const POLICY: &str = "policies:
  - name: ec2-require-imdsv2
    resource: ec2
    filters:
      - MetadataOptions.HttpTokens: optional
    actions:
      - type: set-metadata-access
        tokens: required
";

/// One run of the peer.
pub struct PeerRun {
    /// From starting `custodian run` to its exit (every instance required by then).
    pub wall: Duration,
    /// From c7n's first EC2 request to its last Modify (without Python's start-up).
    pub active: Duration,
    /// Its calls.
    pub calls: Calls,
}

/// The `custodian` executable: `$IMDS_BENCH_C7N`, else what `hack/setup-c7n.sh` installs (or
/// finds cached).
pub fn custodian() -> Result<PathBuf> {
    let given = env_or("IMDS_BENCH_C7N", "");
    if !given.is_empty() {
        return Ok(PathBuf::from(given));
    }
    let script = imds_test_support::repo_root().join("hack/setup-c7n.sh");
    let out = run_checked(Command::new("bash").arg(script))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().context("hack/setup-c7n.sh printed no path")?;
    Ok(PathBuf::from(path.trim()))
}

/// Runs c7n once on `n` drifted instances, with or without the account's buckets.
pub async fn run(custodian: &PathBuf, n: usize, buckets: bool) -> Result<PeerRun> {
    let fleet = EksFleet::new(&format!("peer-{n}"));
    let double = account_double(buckets)?;
    add_instances(&double, &fleet, 0..n, DRIFTED);
    let dir = imds_test_support::temp_dir("c7n")?;
    std::fs::write(dir.path().join("policy.yml"), POLICY)?;
    let mut cmd = Command::new(custodian);
    cmd.arg("run")
        .arg("--region=us-east-1")
        .arg("--cache-period=0")
        .arg(format!("--cache={}", dir.path().join("cache").display()))
        .arg(format!("--output-dir={}", dir.path().join("out").display()))
        .arg(dir.path().join("policy.yml"))
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", dir.path().join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("aws-credentials"));
    for (k, v) in double.aws_env_with_key(KEY) {
        cmd.env(k, v);
    }
    let bound = crate::p1::bound(n);
    let timeout = Duration::from_secs_f64(bound * 3.0 + 180.0);
    let started = Instant::now();
    let mut child = ChildGuard::spawn("custodian", cmd, dir.path())?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            bail!("custodian did not finish within {timeout:?}:\n{}", child.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = started.elapsed();
    let done = required_in(&double, &fleet, n);
    if !status.success() || done != n {
        bail!(
            "custodian exited with {status}, {done} of {n} instances required; its log:\n{}",
            child.log_tail(30)
        );
    }
    let first = double.find_request(|r| r.access_key == KEY && r.action.starts_with("Describe"));
    let last_modify = double.requests_for(MODIFY).last().map(|r| r.at);
    let active = match (first, last_modify) {
        (Some(first), Some(last)) => last.saturating_duration_since(first.at),
        _ => Duration::ZERO,
    };
    let actions: Vec<String> = double
        .counters_by_key()
        .remove(KEY)
        .unwrap_or_default()
        .into_iter()
        .map(|(action, c)| format!("{action} {} ({} throttled, {} errors)", c.calls, c.throttled, c.errors))
        .collect();
    eprintln!("  [peer] c7n's calls: {}", actions.join(", "));
    drop(child);
    imds_test_support::finish_temp_dir(dir);
    Ok(PeerRun {
        wall,
        active,
        calls: Calls::of(&double, KEY),
    })
}
