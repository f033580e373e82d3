//! The region's account IMDS defaults end to end, on the EC2 double (moto 5.2.5 serves neither
//! GetInstanceMetadataDefaults nor ModifyInstanceMetadataDefaults): the defaults are read once
//! for every policy and shown in policy status and in `imds-operator report`; the
//! `InstanceMetadataDefaults` singleton is reconciled (Enforce writes, Audit does not, only the
//! name `default` is accepted); and a declarative policy's refusal is reported with its reason
//! on policies and on the singleton, and not retried until the account defaults change.

use crate::safety::{FAST, NO_USAGE_GUARD, policy, v1_instance};
use anyhow::{Context, Result};
use imds_core::api::HttpTokens;
use imds_core::defaults::{AccountDefaults, ManagedBy};
use imds_core::defaults_api::{InstanceMetadataDefaults, InstanceMetadataDefaultsStatus};
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, provider_id};
use imds_test_support::ec2_double::{Ec2Double, GET_DEFAULTS, MODIFY, MODIFY_DEFAULTS};
use kube::Api;
use std::process::Command;

const ID: &str = "i-0000000000000000a";

/// Installs the singleton's CRD (before the operator starts, which then runs its controller).
fn install_defaults_crd(cluster: &Cluster) -> Result<()> {
    let crd = imds_test_support::repo_root().join("crds/imds-operator.io_instancemetadatadefaults.yaml");
    let out = cluster
        .cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(&crd)
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/instancemetadatadefaults.imds-operator.io",
    ])?;
    Ok(())
}

fn singleton(mode: &str, name: &str) -> String {
    format!(
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataDefaults\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  httpTokens: required\n  httpPutResponseHopLimit: 2\n"
    )
}

/// The singleton's status once `accept` holds.
async fn wait_singleton(
    cluster: &Cluster,
    what: &str,
    accept: impl Fn(&InstanceMetadataDefaultsStatus) -> bool,
) -> Result<InstanceMetadataDefaultsStatus> {
    let api: Api<InstanceMetadataDefaults> = Api::all(cluster.client.clone());
    eventually(&format!("InstanceMetadataDefaults: {what}"), CONVERGE, || {
        let api = api.clone();
        let accept = &accept;
        async move {
            let object = api.get("default").await?;
            Ok(match object.status {
                Some(s) if accept(&s) => Ok(s),
                other => Err(format!("{other:?}")),
            })
        }
    })
    .await
}

fn singleton_condition(s: &InstanceMetadataDefaultsStatus, type_: &str) -> (String, String) {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

async fn one_node(cluster: &Cluster, ec2: &Ec2Double) -> Result<()> {
    ec2.add_instance(ID, v1_instance(), &[]);
    cluster.create_node("n0", &[], Some(&provider_id(ID))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_read_once_and_shown_in_status_and_report() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ec2 = Ec2Double::start().await;
    ec2.set_account_defaults(AccountDefaults {
        http_tokens: Some(HttpTokens::Optional),
        hop_limit: Some(2),
        ..AccountDefaults::default()
    });
    one_node(&cluster, &ec2).await?;
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=2s"],
    )
    .await?;
    let extra = format!("{FAST}{NO_USAGE_GUARD}");
    cluster.apply(&policy("v2", "{httpTokens: required}", &extra))?;
    cluster.apply(&policy("hop2", "{httpPutResponseHopLimit: 2}", &extra))?;

    let status = cluster
        .wait_status("v2", "account defaults reported", |_, s| s.account_defaults.is_some())
        .await?;
    let report = status.account_defaults.context("set")?;
    assert_eq!(report.managed_by, "account");
    assert_eq!(report.mismatches, ["httpTokens: optional → required"]);
    assert!(
        report.message.contains("new instances launch drifted"),
        "{}",
        report.message
    );
    // The policy the account defaults agree with shows nothing, after several reconciles.
    let synced = cluster
        .wait_status("hop2", "synced", |_, s| s.last_sync_time.is_some())
        .await?;
    cluster
        .wait_status("hop2", "two more reconciles", |_, s| {
            s.last_sync_time != synced.last_sync_time
        })
        .await?;
    let hop2 = cluster
        .wait_status("hop2", "compliant", |_, s| condition(s, "Ready").0 == "True")
        .await?;
    assert_eq!(hop2.account_defaults, None);
    assert_eq!(
        ec2.requests_for(GET_DEFAULTS).len(),
        1,
        "read once for every policy and reconcile within the refresh period"
    );

    let out = Command::new(Operator::binary())
        .args(["report", "-o", "json"])
        .env("KUBECONFIG", cluster.cp.kubeconfig_path())
        .envs(ec2.aws_env())
        .output()?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    let section = &json["accountDefaults"];
    assert_eq!(section["managedBy"], "account");
    assert_eq!(section["accountLevel"]["httpTokens"], "optional");
    assert_eq!(section["accountLevel"]["httpEndpoint"], "no-preference");
    assert_eq!(section["mismatches"][0]["policy"], "v2");
    let out = Command::new(Operator::binary())
        .arg("report")
        .env("KUBECONFIG", cluster.cp.kubeconfig_path())
        .envs(ec2.aws_env())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("account IMDS defaults (this region): httpTokens=optional hopLimit=2"),
        "{text}"
    );
    assert!(text.contains("policy v2: new instances launch drifted"), "{text}");
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_singleton_enforces_and_audits_the_account_defaults() -> Result<()> {
    let cluster = Cluster::start().await?;
    install_defaults_crd(&cluster)?;
    let ec2 = Ec2Double::start().await;
    let refused = cluster.kubectl_apply(&singleton("Enforce", "prod"))?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("must be named default"),
        "the API server refuses another name: {stderr}"
    );
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &["--leader-election=false", "--resync-period=2s"],
    )
    .await?;

    cluster.apply(&singleton("Audit", "default"))?;
    let status = wait_singleton(&cluster, "audit drift", |s| {
        singleton_condition(s, "Stalled") == ("True".into(), "AuditModeDrift".into())
    })
    .await?;
    assert_eq!(
        singleton_condition(&status, "Ready"),
        ("False".into(), "Drifted".into())
    );
    assert_eq!(status.managed_by.as_deref(), Some("account"));
    assert_eq!(
        status.drifted,
        [
            "httpTokens: no-preference → required",
            "httpPutResponseHopLimit: no-preference → 2"
        ]
    );
    assert!(ec2.requests_for(MODIFY_DEFAULTS).is_empty(), "Audit writes nothing");
    assert_eq!(ec2.account_defaults(), AccountDefaults::default());

    cluster.apply(&singleton("Enforce", "default"))?;
    let status = wait_singleton(&cluster, "enforced", |s| {
        singleton_condition(s, "Ready") == ("True".into(), "Compliant".into()) && s.observed_generation == Some(2)
    })
    .await?;
    assert_eq!(singleton_condition(&status, "Stalled").0, "False");
    let now = ec2.account_defaults();
    assert_eq!((now.http_tokens, now.hop_limit), (Some(HttpTokens::Required), Some(2)));
    let writes = ec2.requests_for(MODIFY_DEFAULTS);
    assert_eq!(writes.len(), 1, "one write, none once in sync: {writes:?}");
    assert_eq!(writes[0].param("HttpTokens"), Some("required"));
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_policy_refusals_are_reported_and_not_retried() -> Result<()> {
    let cluster = Cluster::start().await?;
    install_defaults_crd(&cluster)?;
    let ec2 = Ec2Double::start().await;
    let managed = AccountDefaults {
        http_tokens: Some(HttpTokens::Optional),
        managed_by: ManagedBy::DeclarativePolicy,
        managed_exception_message: Some("IMDS is managed centrally: see go/imds".into()),
        ..AccountDefaults::default()
    };
    ec2.set_account_defaults(managed.clone());
    one_node(&cluster, &ec2).await?;
    let mut operator = Operator::start(
        &cluster,
        &ec2.aws_env(),
        &[
            "--leader-election=false",
            "--resync-period=2s",
            "--account-defaults-refresh=2s",
        ],
    )
    .await?;
    cluster.apply(&policy(
        "v2",
        "{httpTokens: required}",
        &format!("{FAST}{NO_USAGE_GUARD}"),
    ))?;
    cluster.apply(&singleton("Enforce", "default"))?;

    let status = cluster
        .wait_status("v2", "declarative refusal", |_, s| {
            condition(s, "Stalled") == ("True".into(), "DeclarativePolicyEnforced".into())
        })
        .await?;
    let node = status.non_compliant_nodes.first().context("the node is listed")?;
    assert_eq!(node.reason, "DeclarativePolicyEnforced");
    assert!(
        node.message.as_deref().unwrap_or_default().contains("go/imds"),
        "{node:?}"
    );
    assert_eq!(
        status.account_defaults.map(|r| r.managed_by).as_deref(),
        Some("declarative-policy")
    );
    let defaults = wait_singleton(&cluster, "declarative policy", |s| {
        singleton_condition(s, "Stalled") == ("True".into(), "DeclarativePolicyEnforced".into())
    })
    .await?;
    assert_eq!(defaults.managed_by.as_deref(), Some("declarative-policy"));
    assert!(
        ec2.requests_for(MODIFY_DEFAULTS).is_empty(),
        "nothing sent for a managed account"
    );

    // Not retried while nothing changes: two more reconciles send no request.
    let sent = || ec2.requests_for(MODIFY).iter().filter(|r| !r.dry_run()).count();
    assert_eq!(sent(), 1);
    let synced = status.last_sync_time.clone();
    let later = cluster
        .wait_status("v2", "another reconcile", |_, s| s.last_sync_time != synced)
        .await?;
    cluster
        .wait_status("v2", "and another", |_, s| s.last_sync_time != later.last_sync_time)
        .await?;
    assert_eq!(sent(), 1, "a declarative refusal is not retried");

    // The organization lets the account manage its defaults again: both go through.
    ec2.set_account_defaults(AccountDefaults {
        managed_by: ManagedBy::Account,
        ..managed
    });
    cluster
        .wait_status("v2", "enforced after the account defaults changed", |_, s| {
            condition(s, "Ready").0 == "True"
        })
        .await?;
    wait_singleton(&cluster, "enforced", |s| singleton_condition(s, "Ready").0 == "True").await?;
    assert_eq!(ec2.options(ID).map(|o| o.http_tokens), Some(HttpTokens::Required));
    assert_eq!(ec2.account_defaults().http_tokens, Some(HttpTokens::Required));
    operator.ensure_running()?;
    Ok(())
}
