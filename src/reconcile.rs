//! One reconcile of one policy, as a pipeline: observe (nodes from the store, instances from EC2
//! where the cache is stale, IMDSv1 usage where a guard needs it) → plan (pure) → apply
//! (preflight, record originals, rate-limited and staged modify requests) → one
//! server-side-apply status patch. Deleting a `Restore` policy runs [`crate::restore`] instead.

use crate::api::{InstanceMetadataPolicy, InstanceMetadataPolicyStatus, MANAGER, OnDelete, RESTORE_FINALIZER};
use crate::cache::Change;
use crate::context::Context;
use crate::ec2::Ec2ErrorKind;
use crate::nodes;
use crate::options::{ApplyState, FullOptions};
use crate::plan::{self, Failure, FailureKind, GuardFacts, NodeInput, NodePlan, NodeState, Observation, PlanInput};
use crate::provider_id;
use crate::rollout::{self, RecentChange};
use crate::selection::PolicyInput;
use crate::status::{self, Progress};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// A Kubernetes API call failed.
    #[error("{action} {policy}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The policy.
        policy: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The node store never became ready.
    #[error("the node cache is not ready")]
    NodeStoreNotReady,
    /// Restoring instances before deletion is not finished (errors were reported).
    #[error("restoring {policy}: {remaining} instances not restored yet")]
    RestoreIncomplete {
        /// The policy.
        policy: String,
        /// Instances left.
        remaining: usize,
    },
}

/// Requeue delay while changes are pending in EC2 (Terraform polls every 10 s; EC2 usually
/// applies within seconds).
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// Everything observed for one reconcile.
pub(crate) struct Observed {
    pub(crate) me: PolicyInput,
    pub(crate) policies: Vec<PolicyInput>,
    pub(crate) selected: Vec<NodeInput>,
    pub(crate) readiness: HashMap<String, Option<bool>>,
    pub(crate) instance_ids: Vec<String>,
}

/// Reconciles one policy.
pub async fn reconcile(policy: Arc<InstanceMetadataPolicy>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = if policy.meta().deletion_timestamp.is_some() {
        crate::restore::cleanup(&policy, &ctx).await
    } else {
        reconcile_live(&policy, &ctx).await
    };
    let label = match &result {
        Ok(_) => "success",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

/// Reads policies and nodes from the stores; `exclude_self` leaves this policy out of the
/// policies that decide (used when it is being deleted).
pub(crate) async fn observe(
    policy: &InstanceMetadataPolicy,
    ctx: &Context,
    exclude_self: bool,
) -> Result<Observed, ReconcileError> {
    tokio::time::timeout(Duration::from_secs(60), ctx.node_store.wait_until_ready())
        .await
        .map_err(|_| ReconcileError::NodeStoreNotReady)?
        .map_err(|_| ReconcileError::NodeStoreNotReady)?;
    let me = PolicyInput::from_policy(policy)?;
    let mut policies: Vec<PolicyInput> = ctx
        .policy_store
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
        .node_store
        .state()
        .iter()
        .filter(|n| me.selects(n.labels()))
        .map(|n| {
            readiness.insert(n.name_any(), nodes::readiness(n));
            nodes::to_input(n)
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

async fn reconcile_live(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    sync_finalizer(policy, ctx).await?;
    let observed = observe(policy, ctx, false).await?;
    ctx.record_membership(&name, observed.selected.iter().map(|n| n.name.clone()).collect());
    refresh(ctx, &observed.instance_ids, false).await;

    // Plan; read IMDSv1 usage where the guard asks for it, then plan again.
    let mut plans = plan_with_cache(ctx, &observed, &HashMap::new()).await;
    if read_usage(ctx, &plans).await {
        plans = plan_with_cache(ctx, &observed, &HashMap::new()).await;
    }

    // Staged rollout: halted? How many may start now?
    let generation = policy.metadata.generation.unwrap_or_default();
    let (halt, last_resume) = rollout_state(policy, ctx, &observed).await;
    let limit = rollout::max_in_flight(&policy.spec.rollout.max_in_flight, observed.selected.len());
    let in_flight = in_flight(ctx, policy, &plans).await;
    let allowed = if halt.is_some() {
        0
    } else {
        rollout::budget(limit, in_flight)
    };

    // Apply.
    let (outcomes, mut progress) = apply(ctx, policy, &plans, &observed, allowed).await;
    progress.halt = halt;
    progress.last_resume = last_resume;

    // Re-plan with what EC2 answered, then report.
    let mut plans = plan_with_cache(ctx, &observed, &outcomes).await;
    for p in plans.iter_mut().filter(|p| p.action.is_some()) {
        let waiting = if progress.halt.is_some() {
            "rollout halted".to_string()
        } else {
            format!("waiting for the rollout (maxInFlight {limit}) or the EC2 rate limit")
        };
        // Keep a guard's warning visible while the node waits its turn.
        p.message = Some(match p.message.take().filter(|m| m.starts_with("warning:")) {
            Some(warning) => format!("{waiting}; {warning}"),
            None => waiting,
        });
    }
    let previous = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::summarize(policy.spec.mode, generation, &plans, &progress, &previous, now);
    publish_conflicts(ctx, policy, &plans).await;
    if progress.halt.is_some() && policy.status.as_ref().and_then(|s| s.rollout_halt.as_ref()).is_none() {
        let note = new_status
            .conditions
            .iter()
            .find(|c| c.type_ == crate::api::condition::STALLED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(
            ctx,
            policy,
            None,
            EventType::Warning,
            crate::api::reason::ROLLOUT_HALTED,
            "Rollout",
            note,
        )
        .await;
    }
    patch_status(ctx, &name, &new_status).await?;
    record_gauges(ctx, &name, &new_status);
    Ok(next_action(ctx, &name, &plans, &progress))
}

/// Plans with the cached observations and guard facts; `outcomes` overlays failures of this
/// reconcile's requests.
async fn plan_with_cache(ctx: &Context, observed: &Observed, outcomes: &HashMap<String, Failure>) -> Vec<NodePlan> {
    let (observations, refusals, guard_facts) = {
        let cache = ctx.cache.lock().await;
        let now = Instant::now();
        let mut lookbacks: Vec<Duration> = observed
            .policies
            .iter()
            .map(|p| plan::parse_lookback(&p.guards.imdsv1_usage.lookback))
            .collect();
        lookbacks.sort();
        lookbacks.dedup();
        let facts: HashMap<String, GuardFacts> = observed
            .instance_ids
            .iter()
            .map(|id| {
                let facts = GuardFacts {
                    tag_keys: cache.tag_keys(id).map(<[String]>::to_vec).unwrap_or_default(),
                    imdsv1_calls: lookbacks
                        .iter()
                        .filter_map(|l| Some((*l, cache.usage(id, *l, now)?)))
                        .collect(),
                };
                (id.clone(), facts)
            })
            .collect();
        (
            cache.observations(&observed.instance_ids),
            cache.refusals().clone(),
            facts,
        )
    };
    let input = PlanInput {
        policy: &observed.me,
        policies: &observed.policies,
        observations: &observations,
        refusals: &refusals,
        guard_facts: &guard_facts,
    };
    let mut plans = plan::plan(&input, &observed.selected);
    for p in plans.iter_mut() {
        if let Some(failure) = p.instance_id.as_ref().and_then(|id| outcomes.get(id)) {
            p.fail(failure.clone());
        }
    }
    plans
}

/// Reads IMDSv1 usage for the plans that wait for it; true when anything was read.
async fn read_usage(ctx: &Context, plans: &[NodePlan]) -> bool {
    let mut wanted: BTreeMap<Duration, Vec<String>> = BTreeMap::new();
    for p in plans {
        if let (Some(lookback), Some(id)) = (p.needs_imdsv1_usage, p.instance_id.as_ref()) {
            wanted.entry(lookback).or_default().push(id.clone());
        }
    }
    if wanted.is_empty() {
        return false;
    }
    for (lookback, ids) in wanted {
        let answers = ctx
            .imdsv1
            .tokenless_calls(&ids, lookback, std::time::SystemTime::now())
            .await;
        let now = Instant::now();
        let mut cache = ctx.cache.lock().await;
        for id in &ids {
            let value = match answers.get(id) {
                Some(Ok(calls)) => Ok(*calls),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no answer from CloudWatch".to_string()),
            };
            cache.set_usage(id, lookback, value, now);
        }
    }
    true
}

/// Reads the instances whose cached observation is stale (all of them when `all`).
pub(crate) async fn refresh(ctx: &Context, instance_ids: &[String], all: bool) {
    let max_age = if all {
        Duration::ZERO
    } else {
        ctx.config.resync_period.mul_f64(0.9)
    };
    let stale = ctx.cache.lock().await.stale(instance_ids, Instant::now(), max_age);
    if stale.is_empty() {
        return;
    }
    let issued = Instant::now();
    let described = ctx.ec2.describe_instances(&stale).await;
    let mut cache = ctx.cache.lock().await;
    for (id, d) in described {
        cache.observe_described(&id, d, issued);
    }
}

/// Adds the restore finalizer to `onDelete: Restore` policies and removes it from `Retain`
/// ones, with a merge patch guarded by the resourceVersion.
async fn sync_finalizer(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let has = policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER);
    let wants = policy.spec.on_delete == OnDelete::Restore;
    if has == wants {
        return Ok(());
    }
    let mut finalizers: Vec<String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != RESTORE_FINALIZER)
        .cloned()
        .collect();
    if wants {
        finalizers.push(RESTORE_FINALIZER.to_string());
    }
    set_finalizers(policy, ctx, finalizers).await
}

/// Replaces the policy's finalizers (merge patch with the resourceVersion, so a concurrent
/// change fails and is retried).
pub(crate) async fn set_finalizers(
    policy: &InstanceMetadataPolicy,
    ctx: &Context,
    finalizers: Vec<String>,
) -> Result<(), ReconcileError> {
    let api: Api<InstanceMetadataPolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": policy.resource_version()}
    });
    api.patch(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| ReconcileError::Kube {
            action: "updating finalizers of",
            policy: policy.name_any(),
            source,
        })?;
    Ok(())
}

/// The halt carried over from the last status (unless a person resumed or the spec changed),
/// or a new one when a node this policy changed turned NotReady.
async fn rollout_state(
    policy: &InstanceMetadataPolicy,
    ctx: &Context,
    observed: &Observed,
) -> (Option<crate::api::RolloutHalt>, Option<String>) {
    let generation = policy.metadata.generation.unwrap_or_default();
    let status = policy.status.clone().unwrap_or_default();
    let annotation = policy.annotations().get(crate::api::RESUME_ANNOTATION).cloned();
    let mut last_resume = status.last_resume.clone();
    if let Some(halt) = status.rollout_halt.clone() {
        let resumed = annotation.is_some() && annotation != last_resume;
        if !resumed && halt.generation == generation {
            return (Some(halt), last_resume);
        }
        ctx.cache.lock().await.forget_changes(&observed.instance_ids);
        if resumed {
            last_resume = annotation;
        }
        tracing::info!(policy = %policy.name_any(), "rollout resumed");
        return (None, last_resume);
    }
    let window = Duration::from_secs(policy.spec.rollout.halt_on_not_ready_within_seconds.max(0) as u64);
    let recent = recent_changes(ctx, observed).await;
    let halt =
        rollout::halting_node(&recent, window, |node| observed.readiness.get(node).copied().flatten()).map(|c| {
            crate::api::RolloutHalt {
                node: c.node.clone(),
                instance_id: c.instance_id.clone(),
                since: Time(k8s_openapi::jiff::Timestamp::now()),
                generation,
            }
        });
    if halt.is_some() {
        // Only a value set after this halt resumes it, not one left over from an earlier resume.
        last_resume = annotation;
    }
    (halt, last_resume)
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
async fn in_flight(ctx: &Context, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) -> usize {
    let settle = Duration::from_secs(policy.spec.rollout.settle_seconds.max(0) as u64);
    let cache = ctx.cache.lock().await;
    let now = Instant::now();
    plans
        .iter()
        .filter(|p| {
            p.state == NodeState::Pending
                || p.instance_id
                    .as_ref()
                    .and_then(|id| cache.change(id))
                    .is_some_and(|c| rollout::still_settling(now.saturating_duration_since(c.at), settle))
        })
        .count()
}

/// A modify request claimed for sending.
struct Claimed {
    node: String,
    drift: Vec<crate::api::FieldDrift>,
    instance_id: String,
    request: FullOptions,
    original: Option<FullOptions>,
    /// A guard's warning (`imdsv1Usage: Warn`), reported with the modification.
    warning: Option<String>,
}

/// Sends the planned requests, at most `allowed` (the rollout's budget) and as many as the rate
/// limit allows now; the rest wait for the next reconcile (requeued shortly). Before the first
/// real request of a policy, a DryRun proves the operator may; before an instance's first
/// change, its original options are recorded. Returns per-instance failures and the progress.
async fn apply(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    plans: &[NodePlan],
    observed: &Observed,
    allowed: usize,
) -> (HashMap<String, Failure>, Progress) {
    let wanted: Vec<(&NodePlan, String, FullOptions)> = plans
        .iter()
        .filter_map(|p| Some((p, p.instance_id.clone()?, p.action?)))
        .collect();
    let mut progress = Progress::default();
    let mut failures = HashMap::new();
    if wanted.is_empty() {
        return (failures, progress);
    }
    let budget = (ctx.ec2.modify_tokens().await as usize)
        .clamp(1, ctx.config.max_modifies_per_reconcile)
        .min(allowed);
    let mut claimed: Vec<Claimed> = Vec::new();
    {
        let mut cache = ctx.cache.lock().await;
        for (plan, id, request) in &wanted {
            if claimed.len() >= budget {
                break;
            }
            // Another reconcile may have changed the instance since this one planned: never
            // send to an instance that is pending or already has exactly these options.
            let current = cache.observations([id]).remove(id);
            let settled_elsewhere = match &current {
                Some(Observation::Found(o)) => {
                    o.state == ApplyState::Pending || FullOptions::merge(&Default::default(), &o.values) == *request
                }
                _ => false,
            };
            if settled_elsewhere {
                continue;
            }
            if cache.claim(id) {
                let original = match cache.original(id) {
                    Some(_) => None,
                    None => current_full(&cache.observations([id]), id),
                };
                claimed.push(Claimed {
                    node: plan.node.clone(),
                    drift: plan.drift.clone(),
                    instance_id: id.clone(),
                    request: *request,
                    original,
                    warning: plan.message.clone().filter(|m| m.starts_with("warning:")),
                });
            }
        }
    }
    progress.deferred = wanted.len() - claimed.len();
    if claimed.is_empty() {
        return (failures, progress);
    }

    if let Err(failure) = preflight(ctx, policy, &claimed[0]).await {
        // Denied (or EC2 unreachable): nothing is sent; every planned instance reports it, so
        // the policy is Stalled (or Retrying), not "Applying".
        let mut cache = ctx.cache.lock().await;
        for claim in &claimed {
            cache.release(&claim.instance_id);
        }
        for (_, id, _) in &wanted {
            failures.insert(id.clone(), failure.clone());
        }
        progress.deferred = 0;
        return (failures, progress);
    }

    let restore = policy.spec.on_delete == OnDelete::Restore;
    let results: Vec<(Claimed, Result<_, _>)> = futures::stream::iter(claimed)
        .map(|claim| {
            let ec2 = ctx.ec2.clone();
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
        .buffer_unordered(4)
        .collect()
        .await;

    let now = Instant::now();
    for (claim, result) in results {
        let Claimed {
            node,
            drift,
            instance_id: id,
            request,
            original,
            warning,
        } = claim;
        let mut cache = ctx.cache.lock().await;
        cache.release(&id);
        match result {
            Ok(observed_options) => {
                progress.modified += 1;
                if let Some(original) = original {
                    cache.set_original(&id, original.to_tag_value());
                }
                let pending = observed_options.state == ApplyState::Pending;
                let tag_keys = cache.tag_keys(&id).map(<[String]>::to_vec).unwrap_or_default();
                cache.observe(&id, Observation::Found(observed_options), tag_keys, now);
                let was_ready = observed.readiness.get(&node).copied().flatten().unwrap_or(false);
                cache.record_change(
                    &id,
                    Change {
                        node: node.clone(),
                        at: now,
                        was_ready,
                    },
                );
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
                if let Some(warning) = warning {
                    let note = format!("node {node} ({id}) modified despite: {warning}");
                    let reason = crate::plan::guard_reason::IMDSV1_IN_USE;
                    publish(ctx, policy, Some(&node), EventType::Warning, reason, "Guard", note).await;
                }
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
                let note = format!("node {node} ({id}): {}: {}", err.operation, failure.message);
                publish(
                    ctx,
                    policy,
                    Some(&node),
                    EventType::Warning,
                    failure.kind.reason(),
                    err.operation,
                    note,
                )
                .await;
                failures.insert(id, failure);
            }
        }
    }
    (failures, progress)
}

/// The instance's current options as a complete set (EC2's defaults where it reported none).
fn current_full(observations: &HashMap<String, Observation>, id: &str) -> Option<FullOptions> {
    match observations.get(id)? {
        Observation::Found(o) => Some(FullOptions::merge(&Default::default(), &o.values)),
        _ => None,
    }
}

/// Before a policy's first real request (in this process, for this generation): the same
/// request with `DryRun=true`. `DryRunOperation` means allowed; `UnauthorizedOperation` means
/// no real request is attempted. An endpoint that ignores DryRun (moto) answers with success,
/// which also means allowed.
async fn preflight(ctx: &Context, policy: &InstanceMetadataPolicy, first: &Claimed) -> Result<(), Failure> {
    let key = (policy.name_any(), policy.metadata.generation.unwrap_or_default());
    if ctx.preflight_passed(&key) {
        return Ok(());
    }
    match ctx.ec2.modify(&first.instance_id, &first.request, true).await {
        Ok(_) => {}
        Err(e) if e.kind == Ec2ErrorKind::DryRunOk => {}
        Err(e) if e.kind == Ec2ErrorKind::PermissionDenied => {
            let mut failure = e.to_failure();
            failure.message = format!("preflight (DryRun) denied: {}", failure.message);
            let note = format!("no instance modified: {}", failure.message);
            publish(
                ctx,
                policy,
                None,
                EventType::Warning,
                failure.kind.reason(),
                "Preflight",
                note,
            )
            .await;
            return Err(failure);
        }
        Err(e) if e.kind == Ec2ErrorKind::Transient => return Err(e.to_failure()),
        // An error about this one instance (gone, cannot take the option) says nothing about
        // permissions: send the real requests, which report per instance, and check again
        // next time.
        Err(e) => {
            tracing::debug!(instance = %first.instance_id, error = %e, "preflight inconclusive");
            return Ok(());
        }
    }
    ctx.set_preflight_passed(key);
    Ok(())
}

/// Publishes an event on the policy. `node` becomes the event's `related` object: the
/// recorder aggregates events with the same reason, action and related object into one series,
/// so a modification of each node stays its own event.
pub(crate) async fn publish(
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

pub(crate) async fn patch_status(
    ctx: &Context,
    name: &str,
    status: &InstanceMetadataPolicyStatus,
) -> Result<(), ReconcileError> {
    let api: Api<InstanceMetadataPolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", crate::api::GROUP),
        "kind": "InstanceMetadataPolicy",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ReconcileError::Kube {
            action: "patching status of",
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
            ("blocked", s.blocked_nodes),
        ],
    );
}

/// When to look again: soon while work is in flight, with a growing backoff per failure kind,
/// otherwise at the resync period (which catches changes made outside the cluster).
fn next_action(ctx: &Context, name: &str, plans: &[NodePlan], progress: &Progress) -> Action {
    let kinds: BTreeSet<FailureKind> = plans.iter().filter_map(|p| p.failure).collect();
    let pending = plans.iter().any(|p| p.state == NodeState::Pending);
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
    if progress.halt.is_none() {
        if pending {
            delay = delay.min(PENDING_RECHECK);
        }
        // The rollout or rate limit frees up as instances settle: look again soon — unless
        // something is failing, whose backoff must not be cut short.
        if progress.deferred > 0 && failing.is_empty() {
            delay = delay.min(Duration::from_secs(2));
        }
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
