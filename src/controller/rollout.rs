//! The staged rollout's inputs from the cache and the last status, handed to the pure
//! decisions in [`imds_core::rollout`].

use super::context::Context;
use super::observe::Observed;
use imds_core::api::{InstanceMetadataPolicy, RESUME_ANNOTATION};
use imds_core::plan::NodePlan;
use imds_core::rollout::{self, HaltRecord, RecentChange, RolloutState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::time::Duration;
use tokio::time::Instant;

/// The rollout's state: the halt carried over from the last status (unless a person resumed or
/// the spec changed), or a new one when a node this policy changed turned NotReady.
pub async fn state(policy: &InstanceMetadataPolicy, ctx: &Context, observed: &Observed) -> RolloutState {
    let generation = policy.metadata.generation.unwrap_or_default();
    let status = policy.status.clone().unwrap_or_default();
    let record = HaltRecord {
        halt: status.rollout_halt,
        last_resume: status.last_resume,
        annotation: policy.annotations().get(RESUME_ANNOTATION).cloned(),
    };
    let window = Duration::from_secs(policy.spec.rollout.halt_on_not_ready_within_seconds.max(0) as u64);
    let recent = recent_changes(ctx, observed).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let is_ready = |node: &str| observed.readiness.get(node).copied().flatten();
    let state = rollout::rollout_state(&record, generation, &recent, window, is_ready, now);
    if state.lifted {
        ctx.cache.lock().await.forget_changes(&observed.instance_ids);
        tracing::info!(policy = %policy.name_any(), "rollout resumed");
    }
    state
}

async fn recent_changes(ctx: &Context, observed: &Observed) -> Vec<RecentChange> {
    let cache = ctx.cache.lock().await;
    let now = Instant::now();
    observed
        .instance_ids
        .iter()
        .filter_map(|id| {
            let change = cache.change(id)?;
            Some(RecentChange {
                node: change.node.clone(),
                instance_id: id.clone(),
                age: now.saturating_duration_since(change.at),
                was_ready: change.was_ready,
            })
        })
        .collect()
}

/// Instances of this policy that are changing: pending in EC2, or changed less than
/// `settleSeconds` ago.
pub async fn in_flight(ctx: &Context, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) -> usize {
    let settle = Duration::from_secs(policy.spec.rollout.settle_seconds.max(0) as u64);
    let cache = ctx.cache.lock().await;
    let now = Instant::now();
    let age = |id: &str| cache.change(id).map(|c| now.saturating_duration_since(c.at));
    rollout::in_flight(plans, age, settle)
}
