//! P2 — a quiet steady state. N compliant nodes, the operator with a short resync period: over
//! one resync in steady state, DescribeInstances calls against ⌈N/200⌉, Modify calls (0), and
//! the operator's CPU time (utime + stime from /proc/<pid>/stat).
//!
//! One resync is measured from the end of one burst of DescribeInstances to the end of the
//! next (a burst ends when no call came for [`QUIET`]), after a first resync has passed.
//!
//! P2R is the same with the records of a fleet the operator converged itself: before it starts,
//! every instance gets the record the operator writes when it moves an instance to IMDSv2 (the
//! original `httpTokens`, the accepted request, a day old), in the operator's ConfigMaps.
//!
//! The fleet's instances carry EKS's `kubernetes.io/cluster/<name>` tag, so the operator learns it
//! from its first read by ID and lists the cluster's instances, 1,000 per call: bound ⌈N/1000⌉+1
//! (the stretch). P2C gives the name (`--cluster-name`) instead; P2I leaves the tag off
//! the instances, so every resync reads by ID: bound ⌈N/200⌉. P2F is P2 with answers the size of
//! EC2's: each instance with its network interfaces, addresses, block devices and the rest
//! (none of it read by the operator; the double's default answers leave it out).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use imds_core::record::{ChangeRecord, ChangeState, InstanceRecord, OptionRecord};
use imds_operator::controller::records::{SHARDS, shard_name, shard_of};
use imds_test_support::Ec2Double;
use imds_test_support::e2e::{Cluster, Operator};
use imds_test_support::ec2_double::{DESCRIBE, MODIFY};
use imds_test_support::nodes::EksFleet;
use imds_test_support::procstat;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;

use crate::common::{
    POLICY, Report, account_double, add_instances, apply_policy, cluster_with_nodes, compliant, env_or, ratio,
    show_ratio, size, start_operator, wait_compliant,
};

/// No DescribeInstances for this long ends a burst.
const QUIET: Duration = Duration::from_secs(2);

/// Resyncs measured: one resync's CPU moves with whatever else the process did in it (lease
/// renewals, watch reconnects), and `/proc` counts in 10 ms ticks; the median is reported.
const RESYNCS: usize = 3;

/// A point between two resyncs.
struct Mark {
    at: Instant,
    describes: u64,
    modifies: u64,
    cpu: Duration,
}

/// What consecutive resyncs took.
struct Resyncs {
    periods: Vec<Duration>,
    cpus: Vec<Duration>,
    /// The most DescribeInstances calls one resync made.
    most_describes: u64,
    /// Modify calls over all of them.
    modifies: u64,
}

impl Resyncs {
    fn between(marks: &[Mark]) -> Resyncs {
        let pairs = || marks.windows(2).map(|w| (&w[0], &w[1]));
        Resyncs {
            periods: pairs().map(|(a, b)| b.at.duration_since(a.at)).collect(),
            cpus: pairs().map(|(a, b)| b.cpu.saturating_sub(a.cpu)).collect(),
            most_describes: pairs().map(|(a, b)| b.describes - a.describes).max().unwrap_or(0),
            modifies: pairs().map(|(a, b)| b.modifies - a.modifies).sum(),
        }
    }

    fn median_cpu(&self) -> Duration {
        let mut cpus = self.cpus.clone();
        cpus.sort();
        cpus.get(cpus.len() / 2).copied().unwrap_or_default()
    }

    fn mean_period(&self) -> Duration {
        let total: Duration = self.periods.iter().sum();
        total / u32::try_from(self.periods.len().max(1)).unwrap_or(1)
    }

    fn cpu_list(&self) -> String {
        let ms: Vec<String> = self
            .cpus
            .iter()
            .map(|c| format!("{:.0}", c.as_secs_f64() * 1e3))
            .collect();
        format!("{} ms", ms.join(", "))
    }
}

/// Waits for the next burst of DescribeInstances to start and end (at most `timeout`), and marks
/// its end.
async fn next_burst_end(double: &Ec2Double, operator: &mut Operator, timeout: Duration) -> Result<Mark> {
    let started = Instant::now();
    let before = double.counter(DESCRIBE).calls;
    let mut last = (before, Instant::now());
    loop {
        operator.ensure_running()?;
        let now = double.counter(DESCRIBE).calls;
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > before && last.1.elapsed() >= QUIET {
            return Ok(Mark {
                at: Instant::now(),
                describes: now,
                modifies: double.counter(MODIFY).calls,
                cpu: procstat::cpu_time(operator.pid())?,
            });
        }
        if started.elapsed() > timeout {
            bail!("no burst of DescribeInstances ended within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Instances `0..n` of `fleet`, compliant, without the `kubernetes.io/cluster/` tag (self-managed
/// nodes launched without it).
fn add_untagged_instances(double: &Ec2Double, fleet: &EksFleet, n: usize) {
    for i in 0..n {
        let tags = fleet.instance_tags(i);
        let tags: Vec<(&str, &str)> = tags
            .iter()
            .filter(|(k, _)| !k.starts_with("kubernetes.io/cluster/"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        double.add_instance(&fleet.instance_id(i), compliant(), &tags);
    }
}

/// Writes, for instances `0..n` of `fleet`, the record the operator keeps after moving each to
/// IMDSv2 a day ago, into its ConfigMaps (`default/imds-operator-records-*`).
async fn seed_records(cluster: &Cluster, fleet: &EksFleet, n: usize) -> Result<()> {
    let at = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(24);
    let mut shards: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); SHARDS];
    for i in 0..n {
        let id = fleet.instance_id(i);
        let original = OptionRecord {
            original: "optional".into(),
            by: [POLICY.to_string()].into(),
        };
        let record = InstanceRecord {
            options: [("httpTokens".to_string(), original)].into(),
            change: Some(ChangeRecord::new(
                POLICY,
                &fleet.node_name(i),
                at,
                true,
                &compliant(),
                ChangeState::Accepted,
            )),
            reverted: None,
        };
        shards[shard_of(&id)].insert(id, record.to_json());
    }
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    for (index, data) in shards.into_iter().enumerate() {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(shard_name("imds-operator", index)),
                labels: Some([("imds-operator.io/records".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        api.create(&PostParams::default(), &object).await?;
    }
    Ok(())
}

/// Which P2 is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// P2: the defaults (the cluster's tag learnt from the first read).
    Defaults,
    /// P2R: with a converged fleet's records.
    WithRecords,
    /// P2C: with `--cluster-name`.
    ClusterName,
    /// P2I: instances without the cluster's tag, read by ID.
    Untagged,
    /// P2F: the defaults, with answers that carry everything EC2 says of an instance
    /// (`Ec2Double::detailed_answers`: ~9× the bytes).
    Detailed,
}

impl Variant {
    fn figure(self) -> &'static str {
        match self {
            Variant::Defaults => "P2",
            Variant::WithRecords => "P2R",
            Variant::ClusterName => "P2C",
            Variant::Untagged => "P2I",
            Variant::Detailed => "P2F",
        }
    }

    /// The DescribeInstances calls a resync of `n` instances may take.
    fn bound(self, n: usize) -> (usize, &'static str) {
        match self {
            Variant::Untagged => (n.div_ceil(200), "⌈N/200⌉"),
            _ => (n.div_ceil(1000) + 1, "⌈N/1000⌉+1"),
        }
    }
}

/// Runs one P2 `variant` on `IMDS_BENCH_P2_NODES` (default 5000) nodes with
/// `IMDS_BENCH_P2_RESYNC` (default 20s).
pub async fn run(report: &mut Report, variant: Variant) -> Result<()> {
    let n = size("IMDS_BENCH_P2_NODES", 5000)?;
    let resync = env_or("IMDS_BENCH_P2_RESYNC", "20s");
    let period = humantime::parse_duration(&resync)?;
    let figure = variant.figure();
    let fleet = EksFleet::new("p2");
    let double = account_double(true)?;
    double.detailed_answers(variant == Variant::Detailed);
    if variant == Variant::Untagged {
        add_untagged_instances(&double, &fleet, n);
    } else {
        add_instances(&double, &fleet, 0..n, compliant());
    }
    let cluster = cluster_with_nodes(&fleet, n).await?;
    if variant == Variant::WithRecords {
        seed_records(&cluster, &fleet, n).await?;
    }
    apply_policy(&cluster).await?;
    let mut flags = vec![format!("--resync-period={resync}")];
    if variant == Variant::ClusterName {
        flags.push(format!("--cluster-name={}", fleet.cluster()));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut operator = start_operator(&cluster, &double, "operator", &flags).await?;
    let converged = wait_compliant(&cluster, n, Duration::from_secs(300)).await?;
    eprintln!("  [{figure}] {n} nodes compliant after {:.1}s", converged.as_secs_f64());
    let timeout = period * 3 + Duration::from_secs(30);
    // The first resync after convergence, then RESYNCS whole resyncs between burst ends.
    next_burst_end(&double, &mut operator, timeout).await?;
    let mut marks = vec![next_burst_end(&double, &mut operator, timeout).await?];
    for _ in 0..RESYNCS {
        marks.push(next_burst_end(&double, &mut operator, timeout).await?);
    }
    let resyncs = Resyncs::between(&marks);
    let (bound, bound_text) = variant.bound(n);
    let throttled = double.counter(DESCRIBE).throttled;
    let cpu = resyncs.median_cpu();
    report.line(format!(
        "{figure} N={n} resync {:.1}s describe {} bound {bound} ratio {} modify {} cpu {:.0}ms (median of {RESYNCS}: {}) target 100ms ratio {} describe-throttled {throttled} (target ≤{bound_text}, 0, ≤100ms)",
        resyncs.mean_period().as_secs_f64(),
        resyncs.most_describes,
        show_ratio(ratio(resyncs.most_describes as f64, bound as f64)),
        resyncs.modifies,
        cpu.as_secs_f64() * 1e3,
        resyncs.cpu_list(),
        show_ratio(ratio(cpu.as_secs_f64(), 0.1)),
    ));
    operator.stop(Duration::from_secs(5));
    Ok(())
}
