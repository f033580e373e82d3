//! Deleting a policy. `Retain` policies carry no finalizer and simply go; `Restore` policies keep
//! the finalizer `imds-operator.io/restore` until every instance they selected has the options it
//! had before the operator first changed it (the instance tag `imds-operator.io:original-options`),
//! merged under whatever the remaining policies still decide ([`imds_core::restore`]). Instances
//! and nodes that are gone count as done, so `kubectl delete` never waits on a vanished node.

use super::context::Context;
use super::error::ReconcileError;
use super::events::{PolicyEvent, publish};
use super::observe::{observe, refresh};
use super::policy_writes::{set_finalizers, without_restore_finalizer};
use crate::aws::AwsErrorKind;
use imds_core::api::{InstanceMetadataPolicy, OnDelete, RESTORE_FINALIZER};
use imds_core::observation::{NodeInput, Observation};
use imds_core::options::FullOptions;
use imds_core::provider_id;
use imds_core::reason::Reason;
use imds_core::restore::{RestoreAction, RestoreStep, restore_action};
use imds_core::selection::PolicyInput;
use kube::ResourceExt;
use kube::runtime::controller::Action;

/// Runs when the policy has a deletion timestamp.
pub async fn cleanup(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    if !policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER) {
        ctx.forget_policy(&name);
        return Ok(Action::await_change());
    }
    if policy.spec.on_delete == OnDelete::Restore {
        restore(policy, ctx).await?;
    }
    set_finalizers(policy, ctx, without_restore_finalizer(policy)).await?;
    ctx.forget_policy(&name);
    Ok(Action::await_change())
}

/// How one instance's restore went.
enum Outcome {
    /// Nothing was sent (nothing to do, or the instance is gone).
    Untouched,
    /// The original options were sent.
    Restored,
    /// EC2 will never take the original options; reported and let go.
    Refused,
    /// Not done; retried.
    Remaining(String),
}

async fn restore(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let name = policy.name_any();
    let observed = observe(policy, ctx, true).await?;
    refresh(ctx, &observed.instance_ids, true).await;
    let mut restored = 0usize;
    let mut remaining_errors = Vec::new();
    for node in &observed.selected {
        let remaining: Vec<&PolicyInput> = observed.policies.iter().filter(|p| p.selects(&node.labels)).collect();
        match restore_node(ctx, policy, node, &remaining).await {
            Outcome::Untouched | Outcome::Refused => {}
            Outcome::Restored => restored += 1,
            Outcome::Remaining(why) => remaining_errors.push(why),
        }
    }
    if !remaining_errors.is_empty() {
        let note = format!(
            "{} instances not restored yet (retrying): {}",
            remaining_errors.len(),
            remaining_errors.join("; ")
        );
        publish(
            ctx,
            policy,
            PolicyEvent::warning(None, Reason::RestoreFailed, "Restore", note),
        )
        .await;
        return Err(ReconcileError::RestoreIncomplete {
            policy: name,
            remaining: remaining_errors.len(),
        });
    }
    tracing::info!(policy = %name, restored, "restored original options before deletion");
    Ok(())
}

async fn restore_node(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    node: &NodeInput,
    remaining: &[&PolicyInput],
) -> Outcome {
    let Ok(instance) = provider_id::parse(node.provider_id.as_deref()) else {
        return Outcome::Untouched;
    };
    let id = instance.instance_id;
    let action = {
        let cache = ctx.cache.lock().await;
        let observation = cache.observations([&id]).remove(&id);
        let original = cache.original(&id).and_then(FullOptions::from_tag_value);
        restore_action(observation.as_ref(), original.as_ref(), remaining)
    };
    let step = match action {
        RestoreAction::Skip => return Outcome::Untouched,
        RestoreAction::Wait(why) => return Outcome::Remaining(format!("{id}: {why}")),
        RestoreAction::Step(step) => step,
    };
    let mut outcome = Outcome::Untouched;
    if let Some(request) = step.modify {
        outcome = send_restore(ctx, policy, &node.name, &id, request).await;
        if !matches!(outcome, Outcome::Restored | Outcome::Refused) {
            return outcome;
        }
    }
    forget_original(ctx, &id, &step)
        .await
        .map_or(outcome, Outcome::Remaining)
}

/// Sends the restoring request; an instance EC2 will never take it for is reported and let go.
async fn send_restore(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    node: &str,
    id: &str,
    request: FullOptions,
) -> Outcome {
    if !ctx.cache.lock().await.claim(id) {
        return Outcome::Remaining(format!("{id}: another change is in flight"));
    }
    let result = ctx.clients.ec2.modify(id, &request, false).await;
    {
        let mut cache = ctx.cache.lock().await;
        cache.release(id);
        if let Ok(answer) = &result {
            let tag_keys = cache.tag_keys(id).map(<[String]>::to_vec).unwrap_or_default();
            cache.observe(
                id,
                Observation::Found(answer.clone()),
                tag_keys,
                tokio::time::Instant::now(),
            );
        }
    }
    match result {
        Ok(_) => {
            let note = format!("node {node} ({id}): restored {request}");
            let event = PolicyEvent::normal(Some(node), Reason::Restored, "ModifyInstanceMetadataOptions", note);
            publish(ctx, policy, event).await;
            Outcome::Restored
        }
        Err(e) if e.kind == AwsErrorKind::NotFound => Outcome::Untouched,
        // EC2 will never take these options (e.g. the account now enforces IMDSv2): retrying
        // cannot succeed, so report it and let the policy go.
        Err(e) if e.kind == AwsErrorKind::Unsupported => {
            let note = format!("node {node} ({id}): cannot restore {request}: {e}");
            let event = PolicyEvent::warning(Some(node), Reason::RestoreRefused, "Restore", note);
            publish(ctx, policy, event).await;
            Outcome::Refused
        }
        Err(e) => Outcome::Remaining(format!("{id}: {e}")),
    }
}

/// Removes the original-options tag when no remaining policy manages the instance; why not,
/// when removing failed.
async fn forget_original(ctx: &Context, id: &str, step: &RestoreStep) -> Option<String> {
    if !step.forget_original {
        return None;
    }
    match ctx.clients.ec2.forget_original(id).await {
        Ok(()) => {
            ctx.cache.lock().await.clear_original(id);
            None
        }
        Err(e) if e.kind == AwsErrorKind::NotFound => None,
        Err(e) => Some(format!("{id}: {e}")),
    }
}
