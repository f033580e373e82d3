//! The staged rollout's inputs from the persisted records and the last status, handed to the
//! pure decisions in [`imds_core::rollout`]. The records survive restarts and leader changes, so
//! a restarted operator counts what is settling and what may halt before it sends anything.
//! With `onRejectedCalls: Revert` the instances that refused calls are reverted here
//! ([`super::revert`]).

use super::context::Context;
use super::observe::Observed;
use imds_core::api::{InstanceMetadataPolicy, RESUME_ANNOTATION, RejectedCallsAction};
use imds_core::plan::NodePlan;
use imds_core::record::{self, ChangeState, InstanceRecord};
use imds_core::rollout::{self, HaltRecord, RecentChange, RolloutState, Watch};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The verification window of `policy`'s rollout (`None`: `onRejectedCalls: Ignore`).
pub fn verify_window(policy: &InstanceMetadataPolicy) -> Option<Duration> {
    let verify = &policy.spec.rollout.verify;
    (verify.on_rejected_calls != RejectedCallsAction::Ignore)
        .then(|| humantime::parse_duration(&verify.window).unwrap_or(DEFAULT_VERIFY_WINDOW))
}

/// The window used when `rollout.verify.window` cannot be parsed (the API's default).
const DEFAULT_VERIFY_WINDOW: Duration = Duration::from_secs(900);

/// The IMDSv1 calls refused (`MetadataNoTokenRejected`) since each change being verified, by
/// instance; an instance CloudWatch gave no usable answer for is absent (no verdict: it keeps
/// counting as changing until its window ends).
async fn rejected_since_change(
    ctx: &Context,
    recent: &[RecentChange],
    window: Option<Duration>,
) -> HashMap<String, f64> {
    let verifying: Vec<&RecentChange> = rollout::verifying(recent, window).collect();
    let Some(window) = window.filter(|_| !verifying.is_empty()) else {
        return HashMap::new();
    };
    let ids: Vec<String> = verifying.iter().map(|c| c.instance_id.clone()).collect();
    let now = std::time::SystemTime::now();
    let answers = ctx.clients.usage.rejected_calls(&ids, window, now).await;
    let now = Timestamp::now();
    verifying
        .iter()
        .filter_map(|c| {
            let series = match answers.get(&c.instance_id)? {
                Ok(series) => series,
                Err(error) => {
                    tracing::warn!(instance = %c.instance_id, %error, "cannot verify: MetadataNoTokenRejected unreadable");
                    return None;
                }
            };
            let changed_at = Timestamp::from_second(now.as_second().saturating_sub(c.age.as_secs() as i64)).ok()?;
            Some((c.instance_id.clone(), series.after(changed_at)))
        })
        .collect()
}

/// What looking at the rollout found, and did.
pub struct RolloutLook {
    /// The rollout's state.
    pub state: RolloutState,
    /// Instances were looked at for a revert (`onRejectedCalls: Revert`): their records and
    /// observations may have changed since the reconcile planned.
    pub reverting: bool,
}

/// The rollout's state: the halt carried over from the last status (unless a person resumed or
/// the spec changed), or a new one when a node changed within the halt window turned NotReady,
/// or (when `verify`) an instance moved to IMDSv2 within the verification window refused IMDSv1
/// calls. A lifted halt forgets the accepted changes of the selected instances.
pub async fn state(policy: &InstanceMetadataPolicy, ctx: &Context, observed: &Observed, verify: bool) -> RolloutLook {
    let generation = policy.metadata.generation.unwrap_or_default();
    let status = policy.status.clone().unwrap_or_default();
    let record = HaltRecord {
        halt: status.rollout_halt,
        last_resume: status.last_resume,
        annotation: policy.annotations().get(RESUME_ANNOTATION).cloned(),
    };
    let window = Duration::from_secs(policy.spec.rollout.halt_on_not_ready_within_seconds.max(0) as u64);
    // Only changes younger than both windows can halt or be verified: the records of a fleet
    // converged long ago are not copied out (`perf`: 14% of a quiet resync with 5,000 records).
    let horizon = window.max(verify_window(policy).unwrap_or_default());
    let now = Timestamp::now();
    let within = |r: &InstanceRecord| r.change.as_ref().is_some_and(|c| record::age(c.at, now) < horizon);
    let records = ctx.records.valid_where(&observed.instance_ids, within).await;
    let recent = recent_changes(&records, now);
    let is_ready = |node: &str| observed.readiness.get(node).copied().flatten();
    let watch = Watch {
        not_ready: window,
        verify: verify_window(policy).filter(|_| verify),
    };
    // With Revert, instances changed before the halt are still verified (and reverted) while halted.
    let revert = policy.spec.rollout.verify.on_rejected_calls == RejectedCallsAction::Revert;
    let rejected = if record.halt.is_none() || revert {
        rejected_since_change(ctx, &recent, watch.verify).await
    } else {
        HashMap::new()
    };
    let rejected_calls = |c: &RecentChange| rejected.get(&c.instance_id).copied();
    let state = rollout::rollout_state(&record, generation, &recent, watch, is_ready, rejected_calls, Time(now));
    let mut reverting = false;
    if state.lifted {
        forget_accepted_changes(ctx, &observed.instance_ids).await;
        tracing::info!(policy = %policy.name_any(), "rollout resumed");
    } else if let Some(window) = watch.verify.filter(|_| revert) {
        reverting = super::revert::revert_rejecting(ctx, policy, window, &observed.readiness, &rejected).await;
    }
    RolloutLook { state, reverting }
}

/// Every recorded change of these instances, whoever made it.
pub fn recent_changes(records: &HashMap<String, InstanceRecord>, now: Timestamp) -> Vec<RecentChange> {
    records
        .iter()
        .filter_map(|(id, r)| {
            let change = r.change.as_ref()?;
            Some(RecentChange {
                node: change.node.clone(),
                instance_id: id.clone(),
                age: record::age(change.at, now),
                was_ready: change.was_ready,
                requires_tokens: record::requires_tokens(change),
            })
        })
        .collect()
}

async fn forget_accepted_changes(ctx: &Context, ids: &[String]) {
    ctx.records
        .update(ids, |_, record| {
            let accepted = record.change.as_ref().is_some_and(|c| c.state == ChangeState::Accepted);
            accepted.then(|| InstanceRecord {
                change: None,
                ..record.clone()
            })
        })
        .await;
}

/// Instances of this policy that are changing: pending in EC2, sent without an answer yet,
/// accepted less than `settleSeconds` ago, or moved to IMDSv2 less than its verification window
/// ago.
pub async fn in_flight(ctx: &Context, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) -> usize {
    let ids: Vec<String> = plans.iter().filter_map(|p| p.instance_id.clone()).collect();
    let changing = changing(ctx, policy, &ids, None).await;
    let verifying = changing_or_verifying(ctx, policy, &ids).await;
    rollout::in_flight(plans, |id| changing.contains(id), |id| verifying.contains(id))
}

/// [`changing`], counting a move to IMDSv2 until its verification window is over.
async fn changing_or_verifying(ctx: &Context, policy: &InstanceMetadataPolicy, ids: &[String]) -> HashSet<String> {
    changing(ctx, policy, ids, verify_window(policy)).await
}

/// The instances among `ids` whose last recorded request still counts toward `maxInFlight`
/// (not answered yet, or accepted less than the policy's `settleSeconds` ago, or — a move to
/// IMDSv2, when `verify` is given — less than that window ago).
pub async fn changing(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    ids: &[String],
    verify: Option<Duration>,
) -> HashSet<String> {
    let settle = Duration::from_secs(policy.spec.rollout.settle_seconds.max(0) as u64);
    let now = Timestamp::now();
    let counts = |r: &InstanceRecord| {
        r.change
            .as_ref()
            .is_some_and(|c| record::in_flight_until_verified(c, now, settle, verify))
    };
    ctx.records.valid_where(ids, counts).await.into_keys().collect()
}
