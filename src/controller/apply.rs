//! Apply: sends the planned modify requests, at most the rollout's budget and as many as the
//! rate limit allows now (the rest wait for the next reconcile, requeued shortly). Before the
//! first real request of a policy a DryRun proves the operator may ([`super::preflight`]);
//! before an instance's first change its original options are recorded.

use super::cache::Change;
use super::context::Context;
use super::events::{PolicyEvent, publish};
use super::observe::Observed;
use super::preflight::preflight;
use crate::aws::{AwsError, AwsErrorKind};
use futures::StreamExt;
use imds_core::api::{FieldDrift, InstanceMetadataPolicy, OnDelete};
use imds_core::observation::{Failure, Observation};
use imds_core::options::{ApplyState, FullOptions, ObservedOptions};
use imds_core::plan::NodePlan;
use imds_core::plan::guards::GuardWarning;
use imds_core::reason::Reason;
use imds_core::status::Progress;
use std::collections::HashMap;
use tokio::time::Instant;

/// Requests sent at once.
const SEND_CONCURRENCY: usize = 4;

/// A modify request claimed for sending.
pub struct Claimed {
    /// The node.
    pub node: String,
    /// What differs, observed → desired.
    pub drift: Vec<FieldDrift>,
    /// The instance.
    pub instance_id: String,
    /// The complete request.
    pub request: FullOptions,
    /// The options to record before the first change (`None`: already recorded).
    pub original: Option<FullOptions>,
    /// A guard's warning (`imdsv1Usage: Warn`), reported with the modification.
    pub warning: Option<GuardWarning>,
}

/// What applying did: per-instance failures of this reconcile, and the progress.
#[derive(Default)]
pub struct Applied {
    /// Failed requests by instance.
    pub failures: HashMap<String, Failure>,
    /// Sent and deferred counts.
    pub progress: Progress,
}

/// Sends the planned requests of `plans`, at most `allowed`.
pub async fn apply(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    plans: &[NodePlan],
    observed: &Observed,
    allowed: usize,
) -> Applied {
    let wanted: Vec<(&NodePlan, String, FullOptions)> = plans
        .iter()
        .filter_map(|p| Some((p, p.instance_id.clone()?, p.action?)))
        .collect();
    let mut applied = Applied::default();
    if wanted.is_empty() {
        return applied;
    }
    let budget = (ctx.clients.ec2.modify_tokens().await as usize)
        .clamp(1, ctx.config.max_modifies_per_reconcile)
        .min(allowed);
    let claimed = claim(ctx, &wanted, budget).await;
    applied.progress.deferred = wanted.len() - claimed.len();
    let Some(first) = claimed.first() else {
        return applied;
    };
    if let Err(failure) = preflight(ctx, policy, &first.instance_id, &first.request).await {
        // Denied (or EC2 unreachable): nothing is sent; every planned instance reports it, so
        // the policy is Stalled (or Retrying), not "Applying".
        let mut cache = ctx.cache.lock().await;
        for claim in &claimed {
            cache.release(&claim.instance_id);
        }
        for (_, id, _) in &wanted {
            applied.failures.insert(id.clone(), failure.clone());
        }
        applied.progress.deferred = 0;
        return applied;
    }
    let restore = policy.spec.on_delete == OnDelete::Restore;
    for (claim, result) in send(ctx, claimed, restore).await {
        match result {
            Ok(answer) => {
                applied.progress.modified += 1;
                record_modified(ctx, policy, observed, claim, answer).await;
            }
            Err(err) => {
                if let Some(failure) = record_failed(ctx, policy, &claim, err).await {
                    applied.failures.insert(claim.instance_id, failure);
                }
            }
        }
    }
    applied
}

/// Claims up to `budget` instances. Another reconcile may have changed an instance since this
/// one planned: never claim one that is pending or already has exactly these options.
async fn claim(ctx: &Context, wanted: &[(&NodePlan, String, FullOptions)], budget: usize) -> Vec<Claimed> {
    let mut cache = ctx.cache.lock().await;
    let mut claimed = Vec::new();
    for (plan, id, request) in wanted {
        if claimed.len() >= budget {
            break;
        }
        let current = match cache.observations([id]).remove(id) {
            Some(Observation::Found(o)) => Some(o),
            _ => None,
        };
        let settled_elsewhere = current
            .as_ref()
            .is_some_and(|o| o.state == ApplyState::Pending || FullOptions::completed(&o.values) == *request);
        if settled_elsewhere || !cache.claim(id) {
            continue;
        }
        let original = match cache.original(id) {
            Some(_) => None,
            None => current.map(|o| FullOptions::completed(&o.values)),
        };
        claimed.push(Claimed {
            node: plan.node.clone(),
            drift: plan.drift.clone(),
            instance_id: id.clone(),
            request: *request,
            original,
            warning: plan.warning.clone(),
        });
    }
    claimed
}

/// Records originals and sends the requests, a few at a time.
async fn send(
    ctx: &Context,
    claimed: Vec<Claimed>,
    restore: bool,
) -> Vec<(Claimed, Result<ObservedOptions, AwsError>)> {
    futures::stream::iter(claimed)
        .map(|claim| {
            let ec2 = ctx.clients.ec2.clone();
            async move {
                if let Some(original) = &claim.original {
                    match ec2.record_original(&claim.instance_id, original).await {
                        Ok(()) => {}
                        // Without a record a Restore policy could not restore: do not change.
                        Err(e) if restore => return (claim, Err(e)),
                        Err(e) => tracing::warn!(instance = %claim.instance_id, error = %e, "could not record original options"),
                    }
                }
                let result = ec2.modify(&claim.instance_id, &claim.request, false).await;
                (claim, result)
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await
}

/// Records an accepted request in the cache (observation, original, change) and reports it.
async fn record_modified(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    claim: Claimed,
    answer: ObservedOptions,
) {
    let Claimed {
        node,
        drift,
        instance_id: id,
        request,
        original,
        warning,
    } = claim;
    let pending = answer.state == ApplyState::Pending;
    {
        let now = Instant::now();
        let mut cache = ctx.cache.lock().await;
        cache.release(&id);
        if let Some(original) = original {
            cache.set_original(&id, original.to_tag_value());
        }
        let tag_keys = cache.tag_keys(&id).map(<[String]>::to_vec).unwrap_or_default();
        cache.observe(&id, Observation::Found(answer), tag_keys, now);
        let was_ready = observed.readiness.get(&node).copied().flatten().unwrap_or(false);
        cache.record_change(
            &id,
            Change {
                node: node.clone(),
                at: now,
                was_ready,
            },
        );
    }
    let changes: Vec<String> = drift
        .iter()
        .map(|d| format!("{} {}→{}", d.field, d.observed, d.desired))
        .collect();
    let note = format!(
        "node {node} ({id}): {}; sent {request}{}",
        changes.join(", "),
        if pending { " (pending)" } else { "" }
    );
    let event = PolicyEvent::normal(Some(&node), Reason::Modified, "ModifyInstanceMetadataOptions", note);
    publish(ctx, policy, event).await;
    if let Some(warning) = warning {
        let note = format!("node {node} ({id}) modified despite: {warning}");
        publish(
            ctx,
            policy,
            PolicyEvent::warning(Some(&node), Reason::Imdsv1InUse, "Guard", note),
        )
        .await;
    }
}

/// Records a refused request; the failure to report on the node (`None`: the instance is gone,
/// which the next plan reports as skipped).
async fn record_failed(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    claim: &Claimed,
    err: AwsError,
) -> Option<Failure> {
    let failure = err.to_failure();
    let id = &claim.instance_id;
    {
        let mut cache = ctx.cache.lock().await;
        cache.release(id);
        match err.kind {
            AwsErrorKind::NotFound => {
                cache.observe(id, Observation::NotFound, Vec::new(), Instant::now());
                return None;
            }
            AwsErrorKind::Unsupported => cache.refuse(id, claim.request, failure.clone()),
            _ => {}
        }
    }
    let note = format!("node {} ({id}): {}: {}", claim.node, err.operation, failure.message);
    let event = PolicyEvent::warning(Some(&claim.node), failure.kind.reason(), err.operation, note);
    publish(ctx, policy, event).await;
    Some(failure)
}
