//! Observe: the policies and nodes from the reflector stores, the instances from EC2 where the
//! cache is stale, IMDSv1 usage where a guard asks for it — and planning over what is known.

use super::context::Context;
use super::error::ReconcileError;
use crate::aws::ec2::ORIGINAL_OPTIONS_TAG;
use imds_core::api::InstanceMetadataPolicy;
use imds_core::observation::{Failure, NodeInput, Observation};
use imds_core::options::ObservedOptions;
use imds_core::plan::guards::parse_lookback;
use imds_core::plan::{self, NodePlan, PlanInput};
use imds_core::provider_id;
use imds_core::record::{self, ChangeState, InstanceRecord};
use imds_core::selection::PolicyInput;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a reconcile waits for the node cache to fill.
const NODE_STORE_WAIT: Duration = Duration::from_secs(60);

/// Everything observed for one reconcile.
pub struct Observed {
    /// The policy being reconciled.
    pub me: PolicyInput,
    /// The policies that decide (every live policy, this one included unless it is going away).
    pub policies: Vec<PolicyInput>,
    /// The nodes this policy selects.
    pub selected: Vec<NodeInput>,
    /// Their `Ready` condition (`None`: no such condition).
    pub readiness: HashMap<String, Option<bool>>,
    /// Their instances.
    pub instance_ids: Vec<String>,
}

/// Reads policies and nodes from the stores; `exclude_self` leaves this policy out of the
/// policies that decide (used when it is being deleted).
pub async fn observe(
    policy: &InstanceMetadataPolicy,
    ctx: &Context,
    exclude_self: bool,
) -> Result<Observed, ReconcileError> {
    tokio::time::timeout(NODE_STORE_WAIT, ctx.stores.nodes.wait_until_listed())
        .await
        .map_err(|_| ReconcileError::NodeStoreNotReady)?;
    let me = PolicyInput::from_policy(policy)?;
    let mut policies: Vec<PolicyInput> = ctx
        .stores
        .policies
        .state()
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter_map(|p| PolicyInput::from_policy(p).ok())
        .filter(|p| p.name != me.name)
        .collect();
    if !exclude_self {
        policies.push(me.clone());
    }
    let mut readiness = HashMap::new();
    let selected: Vec<NodeInput> = ctx
        .stores
        .nodes
        .nodes_where(|n| me.selects(&n.labels))
        .iter()
        .map(|n| {
            readiness.insert(n.name.to_string(), n.ready);
            n.to_input()
        })
        .collect();
    let instance_ids = selected
        .iter()
        .filter_map(|n| provider_id::parse(n.provider_id.as_deref()).ok())
        .map(|i| i.instance_id)
        .collect();
    Ok(Observed {
        me,
        policies,
        selected,
        readiness,
        instance_ids,
    })
}

/// Reads the instances whose cached observation is stale (all of them when `all`), and those
/// with a request sent but not answered; settles such requests by what EC2 shows. Returns the
/// instances newly seen carrying the tag older versions recorded originals in.
pub async fn refresh(ctx: &Context, instance_ids: &[String], all: bool) -> Vec<String> {
    let max_age = if all {
        Duration::ZERO
    } else {
        ctx.config.resync_period.mul_f64(0.9)
    };
    let records = ctx.records.valid_where(instance_ids, has_sent).await;
    let unanswered = records.keys().cloned();
    let mut stale = ctx.cache.lock().await.stale(instance_ids, Instant::now(), max_age);
    stale.extend(unanswered);
    stale.sort();
    stale.dedup();
    if stale.is_empty() {
        return Vec::new();
    }
    let issued = Instant::now();
    let issued_at = Timestamp::now();
    let described = ctx.clients.ec2.describe_instances(&stale).await;
    let mut shown: HashMap<String, ObservedOptions> = HashMap::new();
    let mut tagged = Vec::new();
    {
        let mut cache = ctx.cache.lock().await;
        for (id, d) in described {
            if let Observation::Found(options) = &d.observation
                && records.contains_key(&id)
            {
                shown.insert(id.clone(), options.clone());
            }
            if d.tag_keys.iter().any(|k| k == ORIGINAL_OPTIONS_TAG) && cache.first_sight_of_record_tag(&id) {
                tagged.push(id.clone());
            }
            cache.observe_described(&id, d, issued);
        }
    }
    // Requests this process is still sending (their instance is claimed) are not settled here.
    let unanswered: Vec<String> = {
        let cache = ctx.cache.lock().await;
        shown
            .keys()
            .filter(|id| records.contains_key(*id) && !cache.is_claimed(id))
            .cloned()
            .collect()
    };
    if !unanswered.is_empty() {
        ctx.records
            .update(&unanswered, |id, record| {
                let change = record.change.as_ref().filter(|c| c.state == ChangeState::Sent)?;
                let mut next = record.clone();
                next.change = record::settle_sent(change, shown.get(id)?, issued_at);
                imds_core::revert::forget_untaken(&mut next, change);
                Some(next)
            })
            .await;
    }
    tagged
}

fn has_sent(record: &InstanceRecord) -> bool {
    record.change.as_ref().is_some_and(|c| c.state == ChangeState::Sent)
}

/// Plans, reading the IMDSv1 usage the plans wait for and planning again with it.
pub async fn plan_reading_usage(ctx: &Context, observed: &Observed) -> Vec<NodePlan> {
    let plans = plan_with_cache(ctx, observed, &HashMap::new()).await;
    let wanted = plan::usage_wanted(&plans);
    if wanted.is_empty() {
        return plans;
    }
    let answers = ctx
        .clients
        .usage
        .read_wanted(wanted, std::time::SystemTime::now())
        .await;
    {
        let now = Instant::now();
        let mut cache = ctx.cache.lock().await;
        for answer in answers {
            cache.set_usage(&answer.instance_id, answer.lookback, answer.calls, now);
        }
    }
    plan_with_cache(ctx, observed, &HashMap::new()).await
}

/// Plans with the cached observations and guard facts; `outcomes` overlays failures of this
/// reconcile's requests.
pub async fn plan_with_cache(ctx: &Context, observed: &Observed, outcomes: &HashMap<String, Failure>) -> Vec<NodePlan> {
    let mut lookbacks: Vec<Duration> = observed
        .policies
        .iter()
        .map(|p| parse_lookback(&p.guards.imdsv1_usage.lookback))
        .collect();
    lookbacks.sort();
    lookbacks.dedup();
    let mut plans = {
        // Planning is pure and short; it reads the cache's guard facts only where it plans a
        // request, under the lock.
        let cache = ctx.cache.lock().await;
        let now = Instant::now();
        let refusals = cache.refusals(now);
        let guard_facts = cache.guard_facts(lookbacks, now);
        let input = PlanInput {
            policy: &observed.me,
            policies: &observed.policies,
            observations: &*cache,
            refusals: &refusals,
            guard_facts: &guard_facts,
        };
        plan::plan(&input, &observed.selected)
    };
    super::revert::hold_reverted(ctx, &mut plans).await;
    for p in plans.iter_mut() {
        if let Some(failure) = p.instance_id.as_ref().and_then(|id| outcomes.get(id)) {
            p.fail(failure.clone());
        }
    }
    plans
}
