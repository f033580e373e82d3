//! The fault suite (issue 10), end to end: the operator binary against the local control plane
//! and the EC2 double, with partitions (a TCP proxy between one replica and the API server),
//! API server and etcd restarts, SIGKILLs, throttle/5xx storms, a black-holed EC2, clock skew
//! between replicas, a panicking reconcile and a policy this version cannot read. Every replica
//! signs with its own access key, so the double's request log says who sent what. Every loop is
//! bounded in count and time; all traffic is on loopback.

use crate::records::{FAST_RETAIN, fleet, modifies, most_within, scoped, wait_for_modifies};
use crate::safety::v1_instance;
use anyhow::{Context as _, Result, ensure};
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, metric_sum, provider_id};
use imds_test_support::ec2_double::{Ec2Double, InjectedError, MODIFY, Recorded};
use imds_test_support::tcp_proxy::{ProxyMode, TcpProxy};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `--lease-duration=6s`: renew deadline 4s, retry every 0.8s.
const LEASE: &str = "--lease-duration=6s";
const RENEW_DEADLINE: Duration = Duration::from_secs(4);
/// One Modify per second, no burst: a rollout of a dozen instances spans the fault.
const SLOW: [&str; 2] = ["--modify-rate=1", "--modify-burst=1"];

fn replica_args<'a>(identity: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--leader-election=true",
        LEASE,
        "--resync-period=10m",
        "--identity",
        identity,
    ];
    args.extend_from_slice(extra);
    args
}

/// Every Modify (DryRun included: it is a write call too) by access key, in arrival order.
fn writes_by_key(double: &Ec2Double) -> BTreeMap<String, Vec<Recorded>> {
    let mut out: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for r in double.requests_for(MODIFY) {
        out.entry(r.access_key.clone()).or_default().push(r);
    }
    out
}

/// Non-DryRun Modify calls per instance.
fn per_instance(double: &Ec2Double) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (id, _) in modifies(double) {
        *out.entry(id).or_default() += 1;
    }
    out
}

/// The most replicas whose write windows (first to last write) overlap.
fn overlapping_writers(by_key: &BTreeMap<String, Vec<Recorded>>) -> usize {
    let spans: Vec<(Instant, Instant)> = by_key
        .values()
        .filter_map(|w| Some((w.first()?.at, w.last()?.at)))
        .collect();
    spans
        .iter()
        .map(|(start, end)| spans.iter().filter(|(s, e)| s <= end && e >= start).count())
        .max()
        .unwrap_or(0)
}

async fn wait_all_required(double: &Ec2Double, ids: &[String], timeout: Duration) -> Result<()> {
    eventually("every instance to require IMDSv2", timeout, || async {
        let left = ids
            .iter()
            .filter(|id| double.options(id).map(|o| o.http_tokens.as_str()) != Some("required"))
            .count();
        Ok(if left == 0 { Ok(()) } else { Err(format!("{left} left")) })
    })
    .await
}

async fn wait_leading(operator: &Operator) -> Result<()> {
    eventually("the replica to lead", CONVERGE, || async {
        let leader = metric_sum(&operator.metrics().await?, "imds_operator_leader", &[]);
        Ok(if leader == 1.0 {
            Ok(())
        } else {
            Err(format!("leader {leader}"))
        })
    })
    .await
}

fn ids_of(nodes: &BTreeMap<String, String>) -> Vec<String> {
    nodes.keys().cloned().collect()
}

fn assert_once_each(double: &Ec2Double, n: usize) -> Result<()> {
    let counts = per_instance(double);
    ensure!(
        counts.len() == n,
        "{} instances modified, {n} expected: {counts:?}",
        counts.len()
    );
    ensure!(
        counts.values().all(|c| *c == 1),
        "an instance was modified twice: {counts:?}"
    );
    Ok(())
}

/// One operator, no leader election, a long resync (nothing but the test's triggers).
async fn solo(cluster: &Cluster, env: &[(String, String)]) -> Result<Operator> {
    Operator::start(cluster, env, &["--leader-election=false", "--resync-period=10m"]).await
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_writing_before_the_standby_starts() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 12, "00000000000010", "p", "partition").await?;
    let proxy = TcpProxy::start(cluster.cp.apiserver_addr());
    let proxied: PathBuf = cluster.cp.dir().join("replica-a.kubeconfig");
    proxy.write_kubeconfig(cluster.cp.kubeconfig_path(), &proxied)?;
    let a = Operator::start_with(
        &cluster,
        proxied,
        "replica-a",
        &double.aws_env_with_key("AKIAREPLICAA"),
        &replica_args("replica-a", &SLOW),
    )
    .await?;
    wait_leading(&a).await?;
    let _b = Operator::start_with(
        &cluster,
        cluster.cp.kubeconfig_path().to_path_buf(),
        "replica-b",
        &double.aws_env_with_key("AKIAREPLICAB"),
        &replica_args("replica-b", &SLOW),
    )
    .await?;
    cluster.apply(&scoped("cut", "partition", "{httpTokens: required}", FAST_RETAIN))?;
    wait_for_modifies(&double, 3).await?;
    let cut = Instant::now();
    proxy.set_mode(ProxyMode::Reset);
    wait_all_required(&double, &ids_of(&nodes), CONVERGE).await?;

    let by_key = writes_by_key(&double);
    let a_writes = by_key.get("AKIAREPLICAA").context("replica A sent nothing")?;
    let b_writes = by_key.get("AKIAREPLICAB").context("replica B never took over")?;
    let a_last = a_writes.last().map(|r| r.at).context("no write")?;
    let b_first = b_writes.first().map(|r| r.at).context("no write")?;
    eprintln!(
        "partition: A sent {} writes, the last {} after the cut; B sent {}, the first {} after the cut; \
         overlapping writers {}; per instance {:?}",
        a_writes.len(),
        secs(a_last.saturating_duration_since(cut)),
        b_writes.len(),
        secs(b_first.saturating_duration_since(cut)),
        overlapping_writers(&by_key),
        per_instance(&double).values().max()
    );
    ensure!(a_last < b_first, "two writers: A wrote until after B's first write");
    ensure!(
        a_last <= cut + RENEW_DEADLINE + Duration::from_millis(500),
        "A wrote {} after the cut, past its renew deadline",
        secs(a_last - cut)
    );
    assert_once_each(&double, 12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_offset_between_replicas_never_makes_two_writers() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 10, "00000000000011", "s", "skew").await?;
    // A writes renewTimes 30s in the past: a standby that compared them with its own clock
    // would take the lease at once.
    let mut a_args = replica_args("replica-a", &SLOW);
    a_args.push("--lease-clock-offset=-30s");
    let a = Operator::start_with(
        &cluster,
        cluster.cp.kubeconfig_path().to_path_buf(),
        "replica-a",
        &double.aws_env_with_key("AKIAREPLICAA"),
        &a_args,
    )
    .await?;
    wait_leading(&a).await?;
    let mut b_args = replica_args("replica-b", &SLOW);
    b_args.push("--lease-clock-offset=+30s");
    let b = Operator::start_with(
        &cluster,
        cluster.cp.kubeconfig_path().to_path_buf(),
        "replica-b",
        &double.aws_env_with_key("AKIAREPLICAB"),
        &b_args,
    )
    .await?;
    cluster.apply(&scoped("skew", "skew", "{httpTokens: required}", FAST_RETAIN))?;
    wait_all_required(&double, &ids_of(&nodes), CONVERGE).await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "default");
    let lease = leases.get("imds-operator").await?.spec.context("lease without spec")?;
    let by_key = writes_by_key(&double);
    eprintln!(
        "clock skew (A -30s, B +30s): writes by key {:?}, lease holder {:?}, transitions {:?}",
        by_key.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>(),
        lease.holder_identity,
        lease.lease_transitions
    );
    ensure!(
        by_key.keys().collect::<Vec<_>>() == ["AKIAREPLICAA"],
        "B wrote while A led"
    );
    ensure!(lease.holder_identity.as_deref() == Some("replica-a"));
    ensure!(metric_sum(&b.metrics().await?, "imds_operator_leader", &[]) == 0.0);
    assert_once_each(&double, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarts_mid_rollout_need_no_operator_restart() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 10, "00000000000012", "r", "restart").await?;
    // A lease longer than a restart: the leader keeps leading through it.
    let mut operator = Operator::start(
        &cluster,
        &double.aws_env(),
        &[
            "--leader-election=true",
            "--lease-duration=60s",
            "--resync-period=10m",
            "--identity=op",
            SLOW[0],
            SLOW[1],
        ],
    )
    .await?;
    cluster.apply(&scoped("through", "restart", "{httpTokens: required}", FAST_RETAIN))?;
    wait_for_modifies(&double, 3).await?;
    let apiserver = cluster.cp.restart_apiserver().await?;
    wait_for_modifies(&double, 6).await?;
    let etcd = cluster.cp.restart_etcd().await?;
    wait_all_required(&double, &ids_of(&nodes), CONVERGE).await?;
    // The watches came back: a node created after both restarts is seen and changed.
    let late = "i-00000000000001200";
    double.add_instance(late, v1_instance(), &[]);
    cluster
        .create_node("r-late", &[("scenario", "restart")], Some(&provider_id(late)))
        .await?;
    crate::safety::set_ready(&cluster, "r-late", true)?;
    wait_all_required(&double, &[late.to_string()], CONVERGE).await?;
    cluster
        .wait_status("through", "Ready with 11 nodes", |_, s| {
            s.compliant_nodes == 11 && condition(s, "Ready").0 == "True"
        })
        .await?;
    operator.ensure_running()?;
    eprintln!(
        "restarts: kube-apiserver back in {}, etcd back in {}; modifies {} for 11 instances",
        secs(apiserver),
        secs(etcd),
        modifies(&double).len()
    );
    assert_once_each(&double, 11)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_of_the_leader_keep_every_limit() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 12, "00000000000013", "k", "kill").await?;
    let settle = Duration::from_secs(3);
    let args = |identity: &'static str| {
        vec![
            "--leader-election=true",
            "--lease-duration=4s",
            "--resync-period=10m",
            "--identity",
            identity,
        ]
    };
    let mut operator = Operator::start(&cluster, &double.aws_env(), &args("op-a")).await?;
    cluster.apply(&scoped(
        "killed",
        "kill",
        "{httpTokens: required}",
        "  rollout: {maxInFlight: 2, settleSeconds: 3, haltOnNotReadyWithinSeconds: 600, verify: {onRejectedCalls: Ignore}}\n",
    ))?;
    let started = Instant::now();
    for kill in 1..=10usize {
        wait_for_modifies(&double, kill.min(11)).await?;
        operator.kill();
        let identity = if kill % 2 == 0 { "op-a" } else { "op-b" };
        operator = Operator::start(&cluster, &double.aws_env(), &args(identity)).await?;
    }
    wait_all_required(&double, &ids_of(&nodes), CONVERGE * 2).await?;
    operator.ensure_running()?;
    let sent = modifies(&double);
    let most = most_within(&sent, settle - Duration::from_secs(1));
    eprintln!(
        "10 SIGKILLs (alternating identities): {} modifies for 12 instances in {}, most within one settle window {most}",
        sent.len(),
        secs(started.elapsed())
    );
    ensure!(most <= 2, "more than maxInFlight within settleSeconds: {sent:?}");
    assert_once_each(&double, 12)
}

/// Calls the double received in each 10s bucket from `from`, for `buckets` buckets.
fn calls_per_10s(requests: &[Recorded], from: Instant, buckets: usize) -> Vec<usize> {
    let mut out = vec![0; buckets];
    for r in requests {
        if let Some(i) = r.at.checked_duration_since(from).map(|d| (d.as_secs() / 10) as usize)
            && i < buckets
        {
            out[i] += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_storm_with_flapping_labels_decays_and_converges_after() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 10, "00000000000014", "t", "storm").await?;
    let operator = solo(&cluster, &double.aws_env()).await?;
    let storm = Duration::from_secs(60);
    let begun = Instant::now();
    double.storm(&[], InjectedError::request_limit_exceeded(), storm);
    cluster.apply(&scoped("storm", "storm", "{httpTokens: required}", FAST_RETAIN))?;
    // Every node's labels flip every 2s while the storm lasts: 30 flips, each an event that
    // triggers the policy.
    let mut flips = 0;
    while begun.elapsed() < storm - Duration::from_secs(2) && flips < 30 {
        cluster.kubectl(&[
            "label",
            "nodes",
            "-l",
            "scenario=storm",
            &format!("flip=f{}", flips % 2),
            "--overwrite",
        ])?;
        flips += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    while begun.elapsed() < storm {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = operator.metrics().await?;
    let during = double.requests();
    let events = cluster.events_for("storm").await?;
    wait_all_required(&double, &ids_of(&nodes), CONVERGE).await?;
    let after = begun.elapsed();
    let buckets = calls_per_10s(&during, begun, 6);
    let rate = metric_sum(&metrics, "imds_operator_aws_client_rate_limit", &["DescribeInstances"]);
    eprintln!(
        "throttle storm 60s, {flips} label flips: calls per 10s {buckets:?} (total {}), events {}, \
         Describe client rate at the end {rate:.2}/s (configured 5/s), converged {} after the storm began",
        buckets.iter().sum::<usize>(),
        events.len(),
        secs(after)
    );
    let first: usize = buckets[..3].iter().sum();
    let last: usize = buckets[3..].iter().sum();
    ensure!(last < first, "the call rate did not decay: {buckets:?}");
    ensure!(
        buckets.iter().sum::<usize>() <= 40,
        "too many calls in the storm: {buckets:?}"
    );
    ensure!(events.len() <= 10, "too many events: {events:#?}");
    ensure!(rate < 5.0, "the client rate was not cut: {rate}");
    assert_once_each(&double, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_and_a_black_holed_ec2_are_retried_with_bounded_calls() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 5, "00000000000015", "x", "fivexx").await?;
    let _operator = solo(&cluster, &double.aws_env()).await?;

    // 5xx for 20s from the start: status says Retrying meanwhile.
    let storm = Duration::from_secs(20);
    let begun = Instant::now();
    double.storm(&[], InjectedError::internal_error(), storm);
    cluster.apply(&scoped("fivexx", "fivexx", "{httpTokens: required}", FAST_RETAIN))?;
    cluster
        .wait_status("fivexx", "Reconciling/Retrying", |_, s| {
            condition(s, "Reconciling").1 == "Retrying"
        })
        .await?;
    ensure!(begun.elapsed() < storm, "status said Retrying only after the storm");
    wait_all_required(&double, &ids_of(&nodes), CONVERGE).await?;
    let storm_calls = double.requests().iter().filter(|r| r.at < begun + storm).count();
    let converged = begun.elapsed();

    // A black hole for 25s: a new node's instance is read once the hole closes.
    let hole = Duration::from_secs(25);
    let opened = Instant::now();
    double.black_hole(hole);
    let late = "i-00000000000001500";
    double.add_instance(late, v1_instance(), &[]);
    cluster
        .create_node("x-late", &[("scenario", "fivexx")], Some(&provider_id(late)))
        .await?;
    crate::safety::set_ready(&cluster, "x-late", true)?;
    wait_all_required(&double, &[late.to_string()], CONVERGE * 2).await?;
    let hole_calls = double
        .requests()
        .iter()
        .filter(|r| r.at >= opened && r.at < opened + hole)
        .count();
    eprintln!(
        "5xx storm 20s: {storm_calls} calls, converged {} after it began; black hole 25s: {hole_calls} calls \
         into it, the late node converged {} after it opened",
        secs(converged),
        secs(opened.elapsed())
    );
    ensure!(storm_calls <= 30, "{storm_calls} calls in a 20s 5xx storm");
    ensure!(hole_calls <= 6, "{hole_calls} calls into the black hole");
    assert_once_each(&double, 6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reconcile_is_contained_and_reported() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let fine = fleet(&cluster, &double, 2, "00000000000016", "f", "fine").await?;
    fleet(&cluster, &double, 2, "00000000000017", "b", "boom").await?;
    let mut env = double.aws_env();
    env.push(("IMDS_OPERATOR_FAULT_PANIC_POLICY".into(), "boom".into()));
    let mut operator = solo(&cluster, &env).await?;
    cluster.apply(&scoped("boom", "boom", "{httpTokens: required}", FAST_RETAIN))?;
    cluster.apply(&scoped("fine", "fine", "{httpTokens: required}", FAST_RETAIN))?;
    wait_all_required(&double, &ids_of(&fine), CONVERGE).await?;
    let events = eventually("the panic to be reported", CONVERGE, || async {
        let events = cluster.events_for("boom").await?;
        Ok(if events.iter().any(|e| e.starts_with("ReconcilePanicked:")) {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        })
    })
    .await?;
    // Node events for the panicking policy keep coming; its backoff holds them.
    for i in 0..5 {
        cluster.kubectl(&[
            "label",
            "nodes",
            "-l",
            "scenario=boom",
            &format!("flip=f{i}"),
            "--overwrite",
        ])?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = operator.metrics().await?;
    let panics = metric_sum(&metrics, "imds_operator_reconcile_errors_total", &["panic"]);
    operator.ensure_running()?;
    eprintln!("panic containment: {panics} contained panics, events {events:?}");
    ensure!(panics >= 1.0, "no panic counted");
    ensure!(
        panics <= 4.0,
        "the panicking policy was not held in backoff: {panics} panics"
    );
    ensure!(
        per_instance(&double).len() == 2,
        "only the fine policy's instances change"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_this_version_cannot_read_stops_no_other() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let good = fleet(&cluster, &double, 2, "00000000000018", "g", "good").await?;
    fleet(&cluster, &double, 1, "00000000000019", "n", "newer").await?;
    // A newer CRD (a mode this binary does not know), and a policy that uses it, both there
    // before the operator starts: its first list holds the policy it cannot read.
    let crd = std::process::Command::new(Operator::binary()).arg("crd").output()?;
    let crd = String::from_utf8(crd.stdout)?;
    let newer = crd.replacen(
        "                - Enforce\n                - Audit\n",
        "                - Enforce\n                - Audit\n                - Verify\n",
        1,
    );
    ensure!(newer != crd, "the CRD's mode enum was not found");
    cluster.apply(&newer)?;
    // The API server takes a moment to serve the new schema.
    eventually("the newer CRD to accept mode Verify", CONVERGE, || async {
        Ok(cluster
            .apply(&scoped("newer", "newer", "{httpTokens: required}", "  mode: Verify\n"))
            .map_err(|e| format!("{e:#}")))
    })
    .await?;
    cluster.apply(&scoped("good", "good", "{httpTokens: required}", FAST_RETAIN))?;
    let _operator = solo(&cluster, &double.aws_env()).await?;
    wait_all_required(&double, &ids_of(&good), CONVERGE).await?;
    // Read untyped: this test's typed client cannot read the policy either.
    let jsonpath =
        |type_: &str, field: &str| format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].{field}}}");
    let stalled = eventually("newer: Stalled/SpecNotUnderstood", CONVERGE, || async {
        let reason = cluster.kubectl(&["get", "imp", "newer", "-o", &jsonpath("Stalled", "reason")])?;
        Ok(if reason.trim() == "SpecNotUnderstood" {
            Ok(())
        } else {
            Err(format!("Stalled reason {reason:?}"))
        })
    })
    .await;
    stalled?;
    let message = cluster.kubectl(&["get", "imp", "newer", "-o", &jsonpath("Stalled", "message")])?;
    let ready = cluster.kubectl(&["get", "imp", "newer", "-o", &jsonpath("Ready", "status")])?;
    eprintln!("undecodable policy reported: {message}");
    ensure!(message.contains("Verify"), "{message}");
    ensure!(ready.trim() == "False", "Ready {ready:?}");
    ensure!(
        per_instance(&double).len() == 2,
        "the unreadable policy changed something"
    );
    Ok(())
}
