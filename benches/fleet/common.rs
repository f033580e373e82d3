//! What every figure of the fleet benchmark shares: the EC2 double set up like an account, a
//! cluster of realistic Nodes, the operator binary, the policy, bounded waits, and the printed
//! lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imds_core::api::{HttpTokens, InstanceMetadataPolicy};
use imds_core::options::FullOptions;
use imds_test_support::Ec2Double;
use imds_test_support::e2e::{Cluster, Operator, metric_sum};
use imds_test_support::ec2_double::{ALL_ACTIONS, CallCounts, DESCRIBE, Latency, MODIFY};
use imds_test_support::nodes::{EksFleet, create_nodes};
use kube::api::{Api, PostParams};

/// Requests in flight while the harness creates Nodes.
pub const CREATE_CONCURRENCY: usize = 16;
/// The name of the policy every figure applies.
pub const POLICY: &str = "require-imdsv2";

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A comma-separated list of sizes from an environment variable.
pub fn sizes(name: &str, default: &str) -> Result<Vec<usize>> {
    env_or(name, default)
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .with_context(|| format!("{name}: {s:?} is not a size"))
        })
        .collect()
}

/// One size from an environment variable.
pub fn size(name: &str, default: usize) -> Result<usize> {
    let text = env_or(name, &default.to_string());
    text.trim()
        .parse()
        .with_context(|| format!("{name}: {text:?} is not a size"))
}

/// The latency of every EC2 call: `IMDS_BENCH_LATENCY_MS`, `MIN-MAX` or one number (default
/// 50-100).
pub fn latency() -> Result<Latency> {
    let text = env_or("IMDS_BENCH_LATENCY_MS", "50-100");
    let ms = |s: &str| -> Result<Duration> {
        Ok(Duration::from_millis(s.trim().parse().with_context(|| {
            format!("IMDS_BENCH_LATENCY_MS: {text:?} is not MIN-MAX milliseconds")
        })?))
    };
    Ok(match text.split_once('-') {
        Some((min, max)) => Latency::uniform(ms(min)?, ms(max)?),
        None => Latency::fixed(ms(&text)?),
    })
}

/// A double standing for one account: every call delayed by [`latency`]; with `buckets`,
/// EC2's token buckets (Modify 100 / 5 per second, DescribeInstances 100 / 20, tagging).
pub fn account_double(buckets: bool) -> Result<Ec2Double> {
    let double = Ec2Double::start_blocking();
    double.set_latency(ALL_ACTIONS, latency()?);
    if buckets {
        double.set_account_buckets();
    }
    Ok(double)
}

/// Options of an instance that allows IMDSv1 (EC2's launch defaults).
pub const DRIFTED: FullOptions = FullOptions::EC2_LAUNCH_DEFAULTS;

/// Options of an instance that already requires IMDSv2.
pub fn compliant() -> FullOptions {
    FullOptions {
        http_tokens: HttpTokens::Required,
        ..FullOptions::EC2_LAUNCH_DEFAULTS
    }
}

/// Adds instances `range` of `fleet` to the double, with `options` and their EKS tags.
pub fn add_instances(double: &Ec2Double, fleet: &EksFleet, range: std::ops::Range<usize>, options: FullOptions) {
    for i in range {
        let tags = fleet.instance_tags(i);
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        double.add_instance(&fleet.instance_id(i), options, &tags);
    }
}

/// A fresh control plane with the CRD and nodes `0..n` of `fleet` (created in bulk, Ready).
pub async fn cluster_with_nodes(fleet: &EksFleet, n: usize) -> Result<Cluster> {
    let cluster = Cluster::start().await?;
    let nodes = (0..n).map(|i| fleet.node(i)).collect();
    let created = create_nodes(&cluster.client, nodes, CREATE_CONCURRENCY).await?;
    eprintln!(
        "  [{}] {} nodes created in {:.1}s",
        fleet.cluster(),
        created.nodes,
        created.took.as_secs_f64()
    );
    Ok(cluster)
}

/// The operator's environment: the double's endpoint, a key of its own (so the double's
/// counters tell its calls apart), and its log level (`IMDS_BENCH_OPERATOR_LOG`, default `info`).
pub fn operator_env(double: &Ec2Double, key: &str) -> Vec<(String, String)> {
    let mut env = double.aws_env_with_key(key);
    env.push(("RUST_LOG".into(), env_or("IMDS_BENCH_OPERATOR_LOG", "info")));
    env
}

/// Starts the operator binary against `cluster` and waits until it leads (at most 60 s).
pub async fn start_operator(cluster: &Cluster, double: &Ec2Double, key: &str, flags: &[&str]) -> Result<Operator> {
    let env = operator_env(double, key);
    let kubeconfig = cluster.cp.kubeconfig_path().to_path_buf();
    let mut operator = Operator::start_with(cluster, kubeconfig, &format!("operator-{key}"), &env, flags).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        operator.ensure_running()?;
        if metric_sum(
            &operator.metrics().await.unwrap_or_default(),
            "imds_operator_leader",
            &[],
        ) >= 1.0
        {
            return Ok(operator);
        }
        if Instant::now() > deadline {
            bail!("the operator did not lead within 60 s:\n{}", operator.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies "require IMDSv2 on every node, all at once, no usage guard" and returns when it was
/// sent.
pub async fn apply_policy(cluster: &Cluster) -> Result<Instant> {
    let policy: InstanceMetadataPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "imds-operator.io/v1alpha1",
        "kind": "InstanceMetadataPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "nodeSelector": {},
            "metadataOptions": {"httpTokens": "required"},
            "rollout": {"maxInFlight": "100%", "settleSeconds": 0},
            "guards": {"imdsv1Usage": {"mode": "Off"}},
        },
    }))?;
    let api: Api<InstanceMetadataPolicy> = Api::all(cluster.client.clone());
    let sent = Instant::now();
    api.create(&PostParams::default(), &policy)
        .await
        .context("creating the policy")?;
    Ok(sent)
}

/// Waits until the policy's status counts `compliant` compliant nodes (at most `timeout`).
pub async fn wait_compliant(cluster: &Cluster, compliant: usize, timeout: Duration) -> Result<Duration> {
    let api: Api<InstanceMetadataPolicy> = Api::all(cluster.client.clone());
    let started = Instant::now();
    loop {
        let status = api.get(POLICY).await.ok().and_then(|p| p.status);
        let seen = status.as_ref().map(|s| s.compliant_nodes).unwrap_or(-1);
        if seen == compliant as i32 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{compliant} compliant nodes not reported within {timeout:?} (last: {seen})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `count()` reaches `target` (polled every 50 ms, at most `timeout`); how long it
/// took. `alive` is checked on every poll (e.g. that the operator still runs).
pub async fn wait_count(
    what: &str,
    target: usize,
    timeout: Duration,
    count: impl Fn() -> usize,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let seen = count();
        if seen >= target {
            return Ok(started.elapsed());
        }
        alive()?;
        if started.elapsed() > timeout {
            bail!("{what}: {seen} of {target} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Instances of `fleet` (`0..n`) that require IMDSv2 now.
pub fn required_in(double: &Ec2Double, fleet: &EksFleet, n: usize) -> usize {
    let ids: std::collections::HashSet<String> = (0..n).map(|i| fleet.instance_id(i)).collect();
    double.count_instances(|id, o| o.http_tokens == HttpTokens::Required && ids.contains(id))
}

/// The calls of one access key, summed over its actions, and the ones of Modify and Describe.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calls {
    /// Every EC2 action (STS's GetCallerIdentity left out).
    pub all: CallCounts,
    /// ModifyInstanceMetadataOptions.
    pub modify: CallCounts,
    /// DescribeInstances.
    pub describe: CallCounts,
}

impl Calls {
    /// The calls the double counted for `key`.
    pub fn of(double: &Ec2Double, key: &str) -> Calls {
        let by_key = double.counters_by_key();
        let empty = BTreeMap::new();
        let actions = by_key.get(key).unwrap_or(&empty);
        let mut all = CallCounts::default();
        // STS's GetCallerIdentity (c7n asks it for the account ID, and AWS_ENDPOINT_URL sends it
        // to the double, which answers InvalidAction) is not an EC2 call.
        for (_, counts) in actions.iter().filter(|(action, _)| *action != "GetCallerIdentity") {
            all.calls += counts.calls;
            all.throttled += counts.throttled;
            all.errors += counts.errors;
        }
        Calls {
            all,
            modify: actions.get(MODIFY).copied().unwrap_or_default(),
            describe: actions.get(DESCRIBE).copied().unwrap_or_default(),
        }
    }

    /// Throttled calls over all calls, in percent.
    pub fn throttled_pct(&self) -> f64 {
        pct(self.all.throttled, self.all.calls)
    }
}

/// `part / whole` in percent (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// `measured / bound` (`None` when the bound is 0).
pub fn ratio(measured: f64, bound: f64) -> Option<f64> {
    (bound > 0.0).then(|| measured / bound)
}

/// A ratio as printed: two decimals, `-` without a bound.
pub fn show_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
}

/// The printed figures, kept for the summary at the end.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
}

impl Report {
    /// Prints one figure's line now and keeps it for the summary.
    pub fn line(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }

    /// Prints that a figure could not be measured, and why.
    pub fn failed(&mut self, figure: &str, error: &anyhow::Error) {
        self.line(format!(
            "{figure} FAILED: {}",
            format!("{error:#}").replace('\n', " | ")
        ));
    }

    /// Every line so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}
