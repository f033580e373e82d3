//! `rollout.verify.onRejectedCalls: Revert`: an instance this policy moved to IMDSv2 that refused
//! IMDSv1 calls within its verification window goes back to its recorded original options
//! ([`imds_core::revert`] decides), through the same path as every write — claimed, written ahead
//! in the records, sent with all five options through the rate limiter and the leader's write
//! fence, its answer recorded — and is reported (a `Reverted` Warning naming the node). The hold
//! written with it keeps every policy from sending the instance a request until a person acts
//! (a spec change, or a new value of `imds-operator.io/reenforce-reverted` on the policy), across
//! restarts and leader changes: it is in the records, not in memory.

use super::context::Context;
use super::events::{PolicyEvent, publish};
use imds_core::api::{InstanceMetadataPolicy, REENFORCE_ANNOTATION};
use imds_core::observation::{Observation, ObservationSource};
use imds_core::plan::NodePlan;
use imds_core::reason::Reason;
use imds_core::record::{self, ChangeRecord, ChangeState, InstanceRecord};
use imds_core::revert::{self, PolicyNow, Revert, RevertHold, RevertInput};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Reverts the instances among `rejected` (refused calls since their change, by instance) that
/// [`revert::decide`] says go back; `readiness` is the selected nodes' Ready condition. Returns
/// whether any instance was looked at (its records and observation may have changed since the
/// reconcile planned).
pub async fn revert_rejecting(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    window: Duration,
    readiness: &HashMap<String, Option<bool>>,
    rejected: &HashMap<String, f64>,
) -> bool {
    let ids: Vec<String> = rejected
        .iter()
        .filter(|(_, c)| **c > 0.0)
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return false;
    }
    let records = ctx.records.valid_where(&ids, |r| r.change.is_some()).await;
    for id in &ids {
        let Some(node) = records.get(id).and_then(|r| r.change.as_ref()).map(|c| c.node.clone()) else {
            continue;
        };
        if !ctx.cache.lock().await.claim(id) {
            continue; // another request is in flight; the next reconcile looks again
        }
        let was_ready = readiness.get(&node).copied().flatten().unwrap_or(false);
        let target = Target {
            id,
            node: &node,
            was_ready,
            window,
            rejected: rejected.get(id).copied(),
        };
        revert_claimed(ctx, policy, &target).await;
        ctx.cache.lock().await.release(id);
    }
    true
}

/// One instance to look at.
struct Target<'a> {
    id: &'a str,
    node: &'a str,
    was_ready: bool,
    window: Duration,
    rejected: Option<f64>,
}

/// Under the claim: decides on the stored record and writes the revert ahead in one atomic step,
/// sends it and records the answer.
async fn revert_claimed(ctx: &Context, policy: &InstanceMetadataPolicy, target: &Target<'_>) {
    let Some(Observation::Found(current)) = ctx.cache.lock().await.observation(target.id).cloned() else {
        return;
    };
    let name = policy.name_any();
    let live = ctx.live_policies();
    let is_live = |p: &str| live.contains(p);
    let now = Timestamp::now();
    let hold = RevertHold {
        policy: name.clone(),
        generation: policy.metadata.generation.unwrap_or_default(),
        node: target.node.to_string(),
        at: now,
        rejected_calls: 0,
        options: String::new(),
        reenforce_seen: policy.annotations().get(REENFORCE_ANNOTATION).cloned(),
    };
    let planned: Mutex<Option<(InstanceRecord, InstanceRecord, Revert)>> = Mutex::default();
    let written = ctx
        .records
        .update(&[target.id.to_string()], |_, stored| {
            let input = RevertInput {
                action: policy.spec.rollout.verify.on_rejected_calls,
                policy: &name,
                window: target.window,
                record: stored,
                current: &current,
                rejected: target.rejected,
                live: &is_live,
                now,
            };
            let revert = revert::decide(&input).ok()?;
            let change = ChangeRecord::new(
                &name,
                target.node,
                now,
                target.was_ready,
                &revert.request,
                ChangeState::Sent,
            );
            let hold = RevertHold {
                rejected_calls: revert.rejected_calls,
                options: revert.request.to_tag_value(),
                ..hold.clone()
            };
            let next = revert::before_revert(stored, change, hold);
            if let Ok(mut planned) = planned.lock() {
                *planned = Some((stored.clone(), next.clone(), revert));
            }
            Some(next)
        })
        .await;
    let Some((before, ahead, revert)) = planned.into_inner().unwrap_or_default() else {
        return;
    };
    if !written.ids.contains(target.id) {
        tracing::warn!(instance = target.id, error = ?written.error, "revert not sent: the record could not be written");
        return;
    }
    send_revert(ctx, policy, target, &before, &ahead, &revert).await;
}

/// Sends the revert (all five options, through the limiter and the fence), records the answer
/// and reports it.
async fn send_revert(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    target: &Target<'_>,
    before: &InstanceRecord,
    ahead: &InstanceRecord,
    revert: &Revert,
) {
    let (id, node) = (target.id, target.node);
    let result = ctx.clients.ec2.modify(id, &revert.request, false).await;
    let answer = crate::aws::error::answer_of(&result);
    ctx.records
        .update(&[id.to_string()], |_, stored| {
            Some(record::after_answer(stored, before, ahead, answer))
        })
        .await;
    let restored: Vec<&str> = revert.restored.iter().map(|f| f.name()).collect();
    let event = match result {
        Ok(options) => {
            {
                let mut cache = ctx.cache.lock().await;
                let tag_keys = cache.tag_keys(id).map(<[String]>::to_vec).unwrap_or_default();
                cache.observe(id, Observation::Found(options), tag_keys, tokio::time::Instant::now());
            }
            let hold = ahead.reverted.as_ref().map(revert::hold_message).unwrap_or_default();
            let note = format!(
                "node {node} ({id}) refused {} IMDSv1 calls since it was moved to httpTokens: required; put back {} to the recorded originals: sent {}; {hold}",
                revert.rejected_calls,
                restored.join(", "),
                revert.request
            );
            PolicyEvent::warning(Some(node), Reason::Reverted, "ModifyInstanceMetadataOptions", note)
        }
        Err(e) => {
            let note = format!("node {node} ({id}): revert to {} failed: {e}", revert.request);
            PolicyEvent::warning(Some(node), e.to_failure().kind.reason(), "Revert", note)
        }
    };
    publish(ctx, policy, event).await;
}

/// Marks the plans of instances under a revert hold that is in force: they get no request.
pub async fn hold_reverted(ctx: &Context, plans: &mut [NodePlan]) {
    let ids: Vec<String> = plans.iter().filter_map(|p| p.instance_id.clone()).collect();
    let held: HashMap<String, RevertHold> = ctx
        .records
        .valid_where(&ids, |r| r.reverted.is_some())
        .await
        .into_iter()
        .filter_map(|(id, r)| Some((id, r.reverted?)))
        .collect();
    if held.is_empty() {
        return;
    }
    let policies = ctx.stores.policies.state();
    let now_of = |name: &str| {
        policies.iter().find(|p| p.name_any() == name).map(|p| PolicyNow {
            generation: p.metadata.generation.unwrap_or_default(),
            reenforce: p.annotations().get(REENFORCE_ANNOTATION).map(String::as_str),
        })
    };
    for plan in plans.iter_mut() {
        let Some(hold) = plan.instance_id.as_ref().and_then(|id| held.get(id)) else {
            continue;
        };
        if revert::in_force(hold, now_of(&hold.policy)) {
            revert::hold_plan(plan, hold);
        }
    }
}
