//! Records and restore that can be trusted (issue 9), end to end: restore puts back only what the
//! deleted policy changed; a record nobody else can forge; rollout limits that survive SIGKILL and
//! leader changes; restore as a staged rollout that can be abandoned.

use crate::safety::{NO_USAGE_GUARD, set_ready, v1_instance};
use anyhow::{Context as _, Result, bail};
use imds_operator::controller::records::{shard_name, shard_of};
use imds_test_support::Moto;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, imds, provider_id, wait_imds};
use imds_test_support::ec2_double::{Ec2Double, MODIFY};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A policy selecting `scenario=<scenario>` nodes; `extra` goes under `spec:`.
pub(crate) fn scoped(name: &str, scenario: &str, options: &str, extra: &str) -> String {
    format!(
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{matchLabels: {{scenario: {scenario}}}}}\n  metadataOptions: {options}\n{NO_USAGE_GUARD}{extra}"
    )
}

const FAST_RESTORE: &str = "  rollout: {maxInFlight: \"100%\", settleSeconds: 0}\n  onDelete: Restore\n";
pub(crate) const FAST_RETAIN: &str = "  rollout: {maxInFlight: \"100%\", settleSeconds: 0}\n";

fn delete(cluster: &Cluster, policy: &str) -> Result<()> {
    cluster.kubectl(&["delete", "imp", policy, "--timeout=90s"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_puts_back_only_what_the_deleted_policy_changed() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(3, &[]).await?;
    for (i, scenario) in ["one", "two", "three"].iter().enumerate() {
        let node = format!("n-{scenario}");
        cluster
            .create_node(&node, &[("scenario", scenario)], Some(&provider_id(&ids[i])))
            .await?;
    }
    let _operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;

    // One: A (Retain) requires tokens, B (Restore) sets hop limit 2. Delete A, then B.
    cluster.apply(&scoped("a1", "one", "{httpTokens: required}", FAST_RETAIN))?;
    cluster.apply(&scoped("b1", "one", "{httpPutResponseHopLimit: 2}", FAST_RESTORE))?;
    // Two: the same, but B is deleted while A remains.
    cluster.apply(&scoped("a2", "two", "{httpTokens: required}", FAST_RETAIN))?;
    cluster.apply(&scoped("b2", "two", "{httpPutResponseHopLimit: 2}", FAST_RESTORE))?;
    // Three: two Restore policies on one option.
    cluster.apply(&scoped(
        "c1",
        "three",
        "{httpPutResponseHopLimit: 2}",
        &format!("{FAST_RESTORE}  priority: 10\n"),
    ))?;
    cluster.apply(&scoped("c2", "three", "{httpPutResponseHopLimit: 3}", FAST_RESTORE))?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    wait_imds(&ec2, &ids[1], ("required", 2), CONVERGE).await?;
    wait_imds(&ec2, &ids[2], ("optional", 2), CONVERGE).await?;

    delete(&cluster, "a1")?;
    delete(&cluster, "b1")?;
    assert_eq!(
        imds(&ec2, &ids[0]).await?,
        ("required".into(), 1),
        "IMDSv2 stays required"
    );

    delete(&cluster, "b2")?;
    assert_eq!(
        imds(&ec2, &ids[1]).await?,
        ("required".into(), 1),
        "a2 still requires tokens"
    );

    delete(&cluster, "c1")?;
    wait_imds(&ec2, &ids[2], ("optional", 3), CONVERGE).await?;
    delete(&cluster, "c2")?;
    assert_eq!(
        imds(&ec2, &ids[2]).await?,
        ("optional".into(), 1),
        "back to the value before the first change"
    );
    let events = cluster.events_for("c2").await?;
    assert!(events.iter().any(|e| e.starts_with("Restored:")), "{events:?}");
    Ok(())
}

/// Instances of `ids`, one per shard, at most `n`.
fn in_distinct_shards(ids: &[String], n: usize) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let picked: Vec<String> = ids
        .iter()
        .filter(|id| seen.insert(shard_of(id)))
        .take(n)
        .cloned()
        .collect();
    if picked.len() < n {
        bail!("only {} shards among {ids:?}", picked.len());
    }
    Ok(picked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cannot_be_forged_and_bad_ones_are_never_applied() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let forged = "httpTokens=optional,httpPutResponseHopLimit=64,httpEndpoint=enabled,httpProtocolIPv6=disabled,instanceMetadataTags=disabled";
    let launched = moto
        .run_instances(8, &[("imds-operator.io:original-options", forged)])
        .await?;
    let ids = in_distinct_shards(&launched, 3)?;
    let (tagged, garbled, unwritable) = (&ids[0], &ids[1], &ids[2]);
    for (i, id) in ids.iter().enumerate() {
        cluster
            .create_node(&format!("n{i}"), &[("scenario", "forge")], Some(&provider_id(id)))
            .await?;
    }
    // A record that does not parse, and a records ConfigMap nobody can write.
    let configmap = |name: String, data: &str, immutable: bool| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\nimmutable: {immutable}\ndata: {data}\n"
        )
    };
    cluster.apply(&configmap(
        shard_name("imds-operator", shard_of(garbled)),
        &format!("{{{garbled}: 'httpTokens=optional'}}"),
        false,
    ))?;
    cluster.apply(&configmap(
        shard_name("imds-operator", shard_of(unwritable)),
        "{placeholder: x}",
        true,
    ))?;
    let _operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&scoped(
        "guarded",
        "forge",
        "{httpTokens: required, httpPutResponseHopLimit: 2}",
        FAST_RESTORE,
    ))?;
    wait_imds(&ec2, tagged, ("required", 2), CONVERGE).await?;
    let events = eventually("the guard events", CONVERGE, || async {
        let events = cluster.events_for("guarded").await?;
        let has = |r: &str| events.iter().any(|e| e.starts_with(r));
        Ok(
            if has("RecordTagIgnored:") && has("RecordInvalid:") && has("RecordNotWritten:") {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            },
        )
    })
    .await?;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("RecordInvalid:") && e.contains(garbled.as_str())),
        "{events:?}"
    );
    assert_eq!(
        imds(&ec2, garbled).await?,
        ("optional".into(), 1),
        "an invalid record stops the change"
    );
    assert_eq!(
        imds(&ec2, unwritable).await?,
        ("optional".into(), 1),
        "nothing is sent without a record"
    );

    // Deleting the policy restores the real original, never the planted tag's hop limit of 64.
    delete(&cluster, "guarded")?;
    assert_eq!(imds(&ec2, tagged).await?, ("optional".into(), 1));
    assert_eq!(
        imds(&ec2, garbled).await?,
        ("optional".into(), 1),
        "an invalid record is never applied"
    );
    Ok(())
}

/// The modify requests (not DryRun) the double received: instance and when.
pub(crate) fn modifies(double: &Ec2Double) -> Vec<(String, Instant)> {
    double
        .requests_for(MODIFY)
        .into_iter()
        .filter(|r| !r.dry_run())
        .filter_map(|r| Some((r.param("InstanceId")?.to_string(), r.at)))
        .collect()
}

/// The most modify requests within any `window`.
pub(crate) fn most_within(sent: &[(String, Instant)], window: Duration) -> usize {
    sent.iter()
        .map(|(_, start)| {
            sent.iter()
                .filter(|(_, t)| *t >= *start && t.duration_since(*start) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

pub(crate) async fn wait_for_modifies(double: &Ec2Double, at_least: usize) -> Result<()> {
    eventually(&format!("{at_least} modifications"), CONVERGE, || async {
        let n = modifies(double).len();
        Ok(if n >= at_least { Ok(()) } else { Err(format!("{n}")) })
    })
    .await
}

/// `n` Ready nodes labelled `scenario`, named `<prefix><i>`, on double instances
/// `i-<id_prefix><i:03x>` at the launch defaults; instance → node.
pub(crate) async fn fleet(
    cluster: &Cluster,
    double: &Ec2Double,
    n: u32,
    id_prefix: &str,
    prefix: &str,
    scenario: &str,
) -> Result<BTreeMap<String, String>> {
    let mut nodes = BTreeMap::new();
    for i in 0..n {
        let id = format!("i-{id_prefix}{i:03x}");
        double.add_instance(&id, v1_instance(), &[]);
        let node = format!("{prefix}{i}");
        cluster
            .create_node(&node, &[("scenario", scenario)], Some(&provider_id(&id)))
            .await?;
        set_ready(cluster, &node, true)?;
        nodes.insert(id, node);
    }
    Ok(nodes)
}

fn leader_args(identity: &str) -> Vec<&str> {
    vec![
        "--leader-election=true",
        "--lease-duration=4s",
        "--resync-period=10m",
        "--identity",
        identity,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_operators_keep_the_rollout_limits_and_halt_after_a_restart() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 6, "00000000000000", "n", "crash").await?;
    let settle = Duration::from_secs(8);
    let mut operator = Operator::start(&cluster, &double.aws_env(), &leader_args("op-a")).await?;
    cluster.apply(&scoped(
        "staged",
        "crash",
        "{httpTokens: required}",
        "  rollout: {maxInFlight: 2, settleSeconds: 8, haltOnNotReadyWithinSeconds: 600, verify: {onRejectedCalls: Ignore}}\n",
    ))?;
    let mut restarts = 0;
    // Kill mid-rollout and restart: twice with the same identity (it re-takes the lease at once),
    // once with a new one (it waits for the lease to expire).
    for (after, identity) in [(1, "op-a"), (2, "op-a"), (3, "op-b")] {
        wait_for_modifies(&double, after).await?;
        operator.kill();
        restarts += 1;
        operator = Operator::start(&cluster, &double.aws_env(), &leader_args(identity)).await?;
    }
    // A node changed before the last restart turns NotReady: the new leader halts.
    let sent = modifies(&double);
    let (last_id, _) = sent.last().context("no modification")?;
    let broken = nodes[last_id].clone();
    set_ready(&cluster, &broken, false)?;
    let halted = cluster
        .wait_status("staged", "halted after the restart", |_, s| {
            condition(s, "Stalled").1 == "RolloutHalted"
        })
        .await?;
    assert_eq!(halted.rollout_halt.map(|h| h.node), Some(broken.clone()));
    let before = modifies(&double).len();
    tokio::time::sleep(settle + Duration::from_secs(2)).await;
    assert_eq!(modifies(&double).len(), before, "nothing is sent while halted");

    set_ready(&cluster, &broken, true)?;
    cluster.kubectl(&["annotate", "imp", "staged", "imds-operator.io/resume-rollout=1"])?;
    cluster
        .wait_status("staged", "all compliant", |_, s| s.compliant_nodes == 6)
        .await?;
    operator.ensure_running()?;

    let sent = modifies(&double);
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in &sent {
        *per_instance.entry(id.as_str()).or_default() += 1;
    }
    eprintln!(
        "restarts {restarts}, instances {}, modifies {}, most within one settle window {}",
        per_instance.len(),
        sent.len(),
        most_within(&sent, settle)
    );
    assert!(
        per_instance.values().all(|n| *n == 1),
        "an instance was modified twice: {per_instance:?}"
    );
    assert_eq!(per_instance.len(), 6);
    // EC2 accepts a request a moment after it is sent: allow 1 s for that.
    assert!(
        most_within(&sent, settle - Duration::from_secs(1)) <= 2,
        "more than maxInFlight within settleSeconds: {sent:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_a_staged_rollout_that_can_halt_and_be_abandoned() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 4, "00000000000001", "r", "restore").await?;
    let _operator = Operator::start(
        &cluster,
        &double.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&scoped(
        "slow",
        "restore",
        "{httpTokens: required}",
        "  rollout: {maxInFlight: 1, settleSeconds: 3, haltOnNotReadyWithinSeconds: 600, verify: {onRejectedCalls: Ignore}}\n  onDelete: Restore\n",
    ))?;
    cluster
        .wait_status("slow", "all compliant", |_, s| s.compliant_nodes == 4)
        .await?;
    double.clear_requests();

    cluster.kubectl(&["delete", "imp", "slow", "--wait=false"])?;
    let progress = cluster
        .wait_status("slow", "restoring", |_, s| {
            condition(s, "Reconciling").1 == "Restoring" && s.restored_nodes == Some(1)
        })
        .await?;
    assert_eq!(progress.restoring_nodes, Some(3), "{progress:?}");
    // The restored node breaks: the restore halts.
    let sent = modifies(&double);
    let (first, _) = sent.first().context("no restore request")?;
    set_ready(&cluster, &nodes[first], false)?;
    let halted = cluster
        .wait_status("slow", "restore halted", |_, s| {
            condition(s, "Stalled").1 == "RolloutHalted"
        })
        .await?;
    assert_eq!(halted.rollout_halt.map(|h| h.node), Some(nodes[first].clone()));
    let restored_so_far = modifies(&double).len();
    assert!(restored_so_far < 4, "halted before the end: {restored_so_far}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        modifies(&double).len(),
        restored_so_far,
        "nothing restored while halted"
    );

    // Give up: the deletion completes and a Warning names what was left.
    let events_before = cluster.events_for("slow").await?;
    cluster.kubectl(&["annotate", "imp", "slow", "imds-operator.io/abandon-restore=true"])?;
    eventually("the policy to go", CONVERGE, || async {
        Ok(match cluster.policies().get_opt("slow").await? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        })
    })
    .await?;
    let abandoned: Vec<String> = cluster
        .events_for("slow")
        .await?
        .into_iter()
        .filter(|e| e.starts_with("RestoreAbandoned:") && !events_before.contains(e))
        .collect();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    let left = 4 - restored_so_far;
    assert!(
        abandoned[0].contains(&format!("{left} instances keep")),
        "{abandoned:?}"
    );
    let mut still_required = 0;
    for id in nodes.keys() {
        if double.options(id).map(|o| o.http_tokens) == Some(imds_core::api::HttpTokens::Required) {
            still_required += 1;
        }
    }
    assert_eq!(still_required, left);
    // Staged: one restore at a time, at least settleSeconds apart (less 1 s for EC2's answer).
    let times: Vec<Instant> = modifies(&double).into_iter().map(|(_, t)| t).collect();
    for pair in times.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_secs(2),
            "restores closer than settleSeconds: {times:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_hold_a_rollout_slot() -> Result<()> {
    let cluster = Cluster::start().await?;
    let double = Ec2Double::start().await;
    let nodes = fleet(&cluster, &double, 3, "00000000000002", "s", "slot").await?;
    let ids: Vec<String> = nodes.keys().cloned().collect();
    // The first instance (by name, so the first one tried) can never take the request.
    double.unsupported(&ids[0], imds_core::options::Field::HopLimit);
    let _operator = Operator::start(
        &cluster,
        &double.aws_env(),
        &["--leader-election=false", "--resync-period=10m"],
    )
    .await?;
    cluster.apply(&scoped(
        "one-at-a-time",
        "slot",
        "{httpPutResponseHopLimit: 2}",
        "  rollout: {maxInFlight: 1, settleSeconds: 1, verify: {onRejectedCalls: Ignore}}\n",
    ))?;
    let status = cluster
        .wait_status("one-at-a-time", "the others converge", |_, s| {
            s.compliant_nodes == 2 && s.failed_nodes == 1
        })
        .await?;
    assert_eq!(condition(&status, "Stalled").1, "UnsupportedOption", "{status:?}");
    Ok(())
}
