//! The policy-report writer: takes the plans reconciles offered ([`super::policy_reports`]) and
//! writes them as `ClusterPolicyReport`s with server-side apply — at most once per
//! `--policy-report-interval` per policy, only the shards whose content changed — and deletes
//! the shards a shrunken policy no longer needs. Without the CRD it says so once, writes nothing
//! and looks again every few minutes.

use super::context::Context;
use super::policy_reports::{Offer, Written};
use imds_core::api::MANAGER;
use imds_core::plan::NodePlan;
use imds_core::policy_report::{self, ClusterPolicyReport, PolicyIdentity, ReportInput};
use kube::Resource;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the writer looks for the CRD again after it found none.
const CRD_RECHECK: Duration = Duration::from_secs(300);

/// Why a write of one policy's reports did not finish.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The API server does not serve `clusterpolicyreports` (the CRD is not installed).
    #[error("the ClusterPolicyReport CRD ({}) is not installed", policy_report::API_VERSION)]
    CrdMissing,
    /// Any other API error.
    #[error("{action} ClusterPolicyReport {name}: {source}")]
    Kube {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The writer: runs until `shutdown` resolves (with the controller, so only the leader
/// writes). Returns at once when reports are off.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    if ctx.policy_reports.interval.is_none() {
        return;
    }
    tokio::pin!(shutdown);
    let api = reports_api(&ctx.clients.kube);
    loop {
        let wait = ctx.policy_reports.next_wake(Instant::now());
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ctx.policy_reports.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        for (name, offer) in ctx.policy_reports.take_due(Instant::now()) {
            write_policy(&ctx, &api, &name, offer).await;
        }
    }
}

fn reports_api(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", policy_report::KIND);
    let resource = ApiResource::from_gvk_with_plural(&gvk, "clusterpolicyreports");
    Api::all_with(client.clone(), &resource)
}

/// Writes one policy's reports (when the policy still exists as offered); a failure keeps the
/// offer for the next turn.
async fn write_policy(ctx: &Context, api: &Api<DynamicObject>, name: &str, offer: Offer) {
    let live = ctx.stores.policies.get(&ObjectRef::new(name));
    let current =
        live.is_some_and(|p| p.meta().deletion_timestamp.is_none() && p.meta().uid.as_deref() == Some(&offer.uid));
    if !current {
        ctx.policy_reports.lock().written.remove(name);
        return;
    }
    let previous = ctx
        .policy_reports
        .lock()
        .written
        .remove(name)
        .filter(|w| w.uid == offer.uid);
    let outcome = write_reports(ctx, api, name, &offer, previous.map(|w| w.reports)).await;
    let reports = &ctx.policy_reports;
    match outcome {
        Ok(written) => {
            let mut state = reports.lock();
            if state.crd_missing_until.take().is_some() {
                tracing::info!("the ClusterPolicyReport CRD is installed now; writing policy reports");
            }
            let record = Written {
                uid: offer.uid,
                at: Instant::now(),
                reports: written,
            };
            state.written.insert(name.to_string(), record);
        }
        Err(e) => {
            let mut state = reports.lock();
            if matches!(e, WriteError::CrdMissing) {
                if state.crd_missing_until.is_none() {
                    tracing::warn!(error = %e, recheck = ?CRD_RECHECK, "no policy reports are written until it is installed; the policies are enforced as usual");
                }
                state.crd_missing_until = Some(Instant::now() + CRD_RECHECK);
            } else {
                tracing::warn!(policy = %name, error = %e, "policy reports not written; retried in the next interval");
            }
            // Retried no sooner than an interval from now, with the newest plans by then.
            let failed = Written {
                uid: offer.uid.clone(),
                at: Instant::now(),
                reports: Vec::new(),
            };
            state.written.insert(name.to_string(), failed);
            state.offers.entry(name.to_string()).or_insert(offer);
        }
    }
}

/// Builds the reports, applies the changed shards and deletes the unneeded ones; returns what
/// is now written. `previous` is what this process wrote last (`None`: read it from the API
/// server, so that timestamps survive a restart and an unchanged report is not rewritten).
async fn write_reports(
    ctx: &Context,
    api: &Api<DynamicObject>,
    name: &str,
    offer: &Offer,
    previous: Option<Vec<ClusterPolicyReport>>,
) -> Result<Vec<ClusterPolicyReport>, WriteError> {
    let policy = PolicyIdentity { name, uid: &offer.uid };
    let (previous, listed) = match previous {
        Some(p) if !p.is_empty() => (p, false),
        _ => (list_reports(api, policy).await?, true),
    };
    let built = policy_report::build(&ReportInput {
        policy,
        plans: &offer.plans,
        node_uids: &node_uids(ctx, &offer.plans),
        previous: &previous,
        now: k8s_openapi::jiff::Timestamp::now(),
        shard_size: ctx.policy_reports.shard_size,
    });
    for report in built.iter().filter(|r| !previous.iter().any(|p| same_content(p, r))) {
        let shard = report.metadata.name.clone().unwrap_or_default();
        api.patch(&shard, &PatchParams::apply(MANAGER).force(), &Patch::Apply(report))
            .await
            .map_err(|e| kube_error("applying", &shard, e))?;
    }
    let wanted: HashSet<String> = built.iter().filter_map(|r| r.metadata.name.clone()).collect();
    let stale: Vec<String> = previous
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .filter(|n| !wanted.contains(n))
        .collect();
    for shard in stale {
        match api.delete(&shard, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 && !listed => {}
            Err(e) => return Err(kube_error("deleting", &shard, e)),
        }
    }
    tracing::debug!(policy = %name, shards = built.len(), "policy reports written");
    Ok(built)
}

/// The reports of `policy` on the API server.
async fn list_reports(
    api: &Api<DynamicObject>,
    policy: PolicyIdentity<'_>,
) -> Result<Vec<ClusterPolicyReport>, WriteError> {
    let selector = format!("{}={}", policy_report::POLICY_UID_LABEL, policy.uid);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| kube_error("listing", policy.name, e))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .filter_map(|v| serde_json::from_value::<ClusterPolicyReport>(v).ok())
        .collect())
}

/// The uids of the plans' nodes, from the Node store.
fn node_uids(ctx: &Context, plans: &[NodePlan]) -> HashMap<String, String> {
    let names: HashSet<&str> = plans.iter().map(|p| p.node.as_str()).collect();
    ctx.stores
        .nodes
        .nodes_where(|n| names.contains(&*n.name))
        .iter()
        .filter_map(|n| Some((n.name.to_string(), n.uid.as_deref()?.to_string())))
        .collect()
}

/// Same name, labels, owners, results and summary (what the operator writes; the API server
/// adds the rest).
fn same_content(a: &ClusterPolicyReport, b: &ClusterPolicyReport) -> bool {
    let key = |r: &ClusterPolicyReport| {
        (
            r.metadata.name.clone(),
            r.metadata.labels.clone(),
            r.metadata.owner_references.clone(),
        )
    };
    key(a) == key(b) && a.results == b.results && a.summary == b.summary
}

fn kube_error(action: &'static str, name: &str, source: kube::Error) -> WriteError {
    match &source {
        kube::Error::Api(e) if e.code == 404 && action != "deleting" => WriteError::CrdMissing,
        _ => WriteError::Kube {
            action,
            name: name.to_string(),
            source,
        },
    }
}
