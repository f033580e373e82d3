//! One reconcile of one policy, as a pipeline: observe (nodes from the store, instances from EC2
//! where the cache is stale) → plan (pure) → apply (rate-limited modify requests) → one
//! server-side-apply status patch.

use crate::api::{InstanceMetadataPolicy, InstanceMetadataPolicyStatus, MANAGER};
use crate::context::Context;
use crate::ec2::Ec2ErrorKind;
use crate::nodes;
use crate::options::{ApplyState, FullOptions};
use crate::plan::{self, Failure, FailureKind, NodeInput, NodePlan, NodeState, Observation, PlanInput};
use crate::provider_id;
use crate::selection::PolicyInput;
use crate::status::{self, Progress};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Errors that end a reconcile early (the status patch is not written). Per-instance EC2
/// errors are not among them: they are reported on the node.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The policy's selector cannot be parsed.
    #[error(transparent)]
    InvalidSelector(#[from] crate::selection::InvalidSelector),
    /// Writing status failed.
    #[error("patching status of {policy}: {source}")]
    StatusPatch {
        /// The policy.
        policy: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The node store never became ready.
    #[error("the node cache is not ready")]
    NodeStoreNotReady,
}

/// Requeue delay while changes are pending in EC2 (Terraform polls every 10 s; EC2 usually
/// applies within seconds).
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// Reconciles one policy.
pub async fn reconcile(policy: Arc<InstanceMetadataPolicy>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    let label = match &result {
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

async fn reconcile_inner(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    if policy.meta().deletion_timestamp.is_some() {
        ctx.forget_policy(&name);
        return Ok(Action::await_change());
    }
    tokio::time::timeout(Duration::from_secs(60), ctx.node_store.wait_until_ready())
        .await
        .map_err(|_| ReconcileError::NodeStoreNotReady)?
        .map_err(|_| ReconcileError::NodeStoreNotReady)?;

    // Observe: Kubernetes.
    let me = PolicyInput::from_policy(policy)?;
    let policies: Vec<PolicyInput> = ctx
        .policy_store
        .state()
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter_map(|p| PolicyInput::from_policy(p).ok())
        .filter(|p| p.name != me.name)
        .chain(std::iter::once(me.clone()))
        .collect();
    let selected: Vec<NodeInput> = ctx
        .node_store
        .state()
        .iter()
        .map(|n| nodes::to_input(n))
        .filter(|n| me.selects(&n.labels))
        .collect();
    ctx.record_membership(&name, selected.iter().map(|n| n.name.clone()).collect());

    // Observe: EC2, only where the cache is stale.
    let instance_ids: Vec<String> = selected
        .iter()
        .filter_map(|n| provider_id::parse(n.provider_id.as_deref()).ok())
        .map(|i| i.instance_id)
        .collect();
    refresh(ctx, &instance_ids).await;

    // Plan.
    let (observations, refusals) = {
        let cache = ctx.cache.lock().await;
        (cache.observations(&instance_ids), cache.refusals().clone())
    };
    let input = PlanInput {
        policy: &me,
        policies: &policies,
        observations: &observations,
        refusals: &refusals,
    };
    let plans = plan::plan(&input, &selected);

    // Apply.
    let (outcomes, progress) = apply(ctx, policy, &plans).await;

    // Re-plan with what EC2 answered, then report.
    let (observations, refusals) = {
        let cache = ctx.cache.lock().await;
        (cache.observations(&instance_ids), cache.refusals().clone())
    };
    let input = PlanInput {
        observations: &observations,
        refusals: &refusals,
        ..input
    };
    let mut plans = plan::plan(&input, &selected);
    for p in plans.iter_mut() {
        if let Some(failure) = p.instance_id.as_ref().and_then(|id| outcomes.get(id)) {
            p.fail(failure.clone());
        } else if p.action.is_some() && progress.deferred > 0 {
            p.message = Some("waiting for the operator's EC2 rate limit".into());
        }
    }
    let previous = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = policy.metadata.generation.unwrap_or_default();
    let new_status = status::summarize(policy.spec.mode, generation, &plans, &progress, &previous, now);
    publish_conflicts(ctx, policy, &plans).await;
    patch_status(ctx, &name, &new_status).await?;
    record_gauges(ctx, &name, &new_status);
    Ok(next_action(ctx, &name, &plans, &progress))
}

/// Reads the instances whose cached observation is stale.
async fn refresh(ctx: &Context, instance_ids: &[String]) {
    let max_age = ctx.config.resync_period.mul_f64(0.9);
    let stale = ctx.cache.lock().await.stale(instance_ids, Instant::now(), max_age);
    if stale.is_empty() {
        return;
    }
    let described = ctx.ec2.describe(&stale).await;
    let now = Instant::now();
    let mut cache = ctx.cache.lock().await;
    for (id, (observation, tag_keys)) in described {
        cache.observe(&id, observation, tag_keys, now);
    }
}

/// A modify request claimed for sending.
struct Claimed {
    node: String,
    drift: Vec<crate::api::FieldDrift>,
    instance_id: String,
    request: FullOptions,
}

/// Sends the planned requests, as many as the rate limit allows now; the rest wait for the next
/// reconcile (requeued shortly). Returns per-instance failures and the progress made.
async fn apply(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    plans: &[NodePlan],
) -> (HashMap<String, Failure>, Progress) {
    let wanted: Vec<(&NodePlan, String, FullOptions)> = plans
        .iter()
        .filter_map(|p| Some((p, p.instance_id.clone()?, p.action?)))
        .collect();
    let mut progress = Progress::default();
    if wanted.is_empty() {
        return (HashMap::new(), progress);
    }
    let budget = (ctx.ec2.modify_tokens().await as usize).clamp(1, ctx.config.max_modifies_per_reconcile);
    let mut claimed: Vec<Claimed> = Vec::new();
    {
        let mut cache = ctx.cache.lock().await;
        for (plan, id, request) in &wanted {
            if claimed.len() >= budget {
                break;
            }
            if cache.claim(id) {
                claimed.push(Claimed {
                    node: plan.node.clone(),
                    drift: plan.drift.clone(),
                    instance_id: id.clone(),
                    request: *request,
                });
            }
        }
    }
    progress.deferred = wanted.len() - claimed.len();

    let results: Vec<(Claimed, Result<_, _>)> = futures::stream::iter(claimed)
        .map(|claim| {
            let ec2 = ctx.ec2.clone();
            async move {
                let result = ec2.modify(&claim.instance_id, &claim.request, false).await;
                (claim, result)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut failures = HashMap::new();
    let now = Instant::now();
    for (claim, result) in results {
        let Claimed {
            node,
            drift,
            instance_id: id,
            request,
        } = claim;
        let mut cache = ctx.cache.lock().await;
        cache.release(&id);
        match result {
            Ok(observed) => {
                progress.modified += 1;
                let pending = observed.state == ApplyState::Pending;
                let tag_keys = cache.tag_keys(&id).map(<[String]>::to_vec).unwrap_or_default();
                cache.observe(&id, Observation::Found(observed), tag_keys, now);
                drop(cache);
                let changes: Vec<String> = drift
                    .iter()
                    .map(|d| format!("{} {}→{}", d.field, d.observed, d.desired))
                    .collect();
                let note = format!(
                    "node {node} ({id}): {}; sent {request}{}",
                    changes.join(", "),
                    if pending { " (pending)" } else { "" }
                );
                publish(
                    ctx,
                    policy,
                    Some(&node),
                    EventType::Normal,
                    "Modified",
                    "ModifyInstanceMetadataOptions",
                    note,
                )
                .await;
            }
            Err(err) => {
                let failure = err.to_failure();
                match err.kind {
                    Ec2ErrorKind::NotFound => {
                        cache.observe(&id, Observation::NotFound, Vec::new(), now);
                        continue;
                    }
                    Ec2ErrorKind::Unsupported => cache.refuse(&id, request, failure.clone()),
                    _ => {}
                }
                drop(cache);
                let note = format!("node {node} ({id}): {}", failure.message);
                publish(
                    ctx,
                    policy,
                    Some(&node),
                    EventType::Warning,
                    failure.kind.reason(),
                    "ModifyInstanceMetadataOptions",
                    note,
                )
                .await;
                failures.insert(id, failure);
            }
        }
    }
    (failures, progress)
}

/// Publishes an event on the policy. `node` becomes the event's `related` object: the
/// recorder aggregates events with the same reason, action and related object into one series,
/// so a modification of each node stays its own event.
async fn publish(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    node: Option<&str>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let secondary = node.map(|name| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_string()),
        ..Default::default()
    });
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: action.to_string(),
        secondary,
    };
    if let Err(err) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(policy = %policy.name_any(), error = %err, "could not publish event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn publish_conflicts(ctx: &Context, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) {
    let conflicted: Vec<&NodePlan> = plans.iter().filter(|p| p.state == NodeState::Conflict).collect();
    if let Some(first) = conflicted.first() {
        let note = format!(
            "{} nodes have options that equal-priority policies disagree on; first: {}: {}",
            conflicted.len(),
            first.node,
            first.message.clone().unwrap_or_default()
        );
        publish(
            ctx,
            policy,
            None,
            EventType::Warning,
            crate::api::reason::CONFLICT,
            "Plan",
            note,
        )
        .await;
    }
}

async fn patch_status(ctx: &Context, name: &str, status: &InstanceMetadataPolicyStatus) -> Result<(), ReconcileError> {
    let api: Api<InstanceMetadataPolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", crate::api::GROUP),
        "kind": "InstanceMetadataPolicy",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ReconcileError::StatusPatch {
            policy: name.to_string(),
            source,
        })?;
    Ok(())
}

fn record_gauges(ctx: &Context, name: &str, s: &InstanceMetadataPolicyStatus) {
    ctx.metrics.policy_counts(
        name,
        &[
            ("matched", s.matched_nodes),
            ("compliant", s.compliant_nodes),
            ("drifted", s.drifted_nodes),
            ("pending", s.pending_nodes),
            ("skipped", s.skipped_nodes),
            ("failed", s.failed_nodes),
            ("conflicted", s.conflicted_nodes),
        ],
    );
}

/// When to look again: soon while work is in flight, with a growing backoff per failure kind,
/// otherwise at the resync period (which catches changes made outside the cluster).
fn next_action(ctx: &Context, name: &str, plans: &[NodePlan], progress: &Progress) -> Action {
    let kinds: BTreeSet<FailureKind> = plans.iter().filter_map(|p| p.failure).collect();
    let waiting = plans.iter().any(|p| p.state == NodeState::Pending) || progress.deferred > 0;
    let mut delay = ctx.config.resync_period;
    let mut failing = HashSet::new();
    for kind in &kinds {
        let base = match kind {
            FailureKind::PermissionDenied => Duration::from_secs(60),
            FailureKind::Unsupported => continue, // waits for a change of the request
            FailureKind::Transient | FailureKind::Other => Duration::from_secs(10),
        };
        failing.insert(*kind);
        delay = delay.min(ctx.backoff(name, *kind, base));
    }
    ctx.reset_backoff(name, &failing);
    if waiting {
        delay = delay.min(PENDING_RECHECK);
    }
    Action::requeue(delay)
}

/// What the controller does when a reconcile fails as a whole: back off per policy.
pub fn error_policy(policy: Arc<InstanceMetadataPolicy>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    tracing::warn!(policy = %name, %error, "reconcile failed");
    if matches!(error, ReconcileError::InvalidSelector(_)) {
        return Action::await_change();
    }
    Action::requeue(ctx.backoff(&name, FailureKind::Other, Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc→def".into(), 4), "abc");
        assert_eq!(truncate("short".into(), 100), "short");
    }
}
