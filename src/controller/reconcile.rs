//! One reconcile of one policy, as a pipeline: observe → plan (pure) → apply → one status
//! patch; or, for a policy being deleted, cleanup.

use super::apply::apply;
use super::cleanup::cleanup;
use super::context::Context;
use super::error::{ReconcileError, contained};
use super::events::{PolicyEvent, publish_conflicts, publish_halt, publish_repeating};
use super::fault_hook;
use super::memo::trigger_of;
use super::observe::{self, Observed};
use super::policy_writes::{patch_status, record_gauges, sync_finalizer};
use super::rollout;
use crate::aws::ec2::ORIGINAL_OPTIONS_TAG;
use imds_core::api::{InstanceMetadataPolicy, InstanceMetadataPolicyStatus};
use imds_core::observation::FailureKind;
use imds_core::plan::NodePlan;
use imds_core::reason::Reason;
use imds_core::requeue::{self, RECONCILE_ERROR_BACKOFF, Work};
use imds_core::rollout::max_in_flight;
use imds_core::status::{self, Progress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reconciles one policy.
pub async fn reconcile(policy: Arc<InstanceMetadataPolicy>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = if policy.meta().deletion_timestamp.is_some() {
        contained(cleanup(&policy, &ctx)).await
    } else {
        contained(reconcile_live(&policy, &ctx)).await
    };
    if let Err(ReconcileError::Panicked(message)) = &result {
        let note = format!("reconcile panicked (a bug; please report it): {message}; retried with a backoff");
        let event = PolicyEvent::warning(None, Reason::ReconcilePanicked, "Reconcile", note);
        publish_repeating(&ctx, &policy, event).await;
    }
    let category = result.as_ref().err().map(|e| e.category().as_str());
    ctx.metrics.reconciled(category, started.elapsed());
    crate::telemetry::memory::release_free_memory_every(std::time::Duration::from_secs(10));
    result
}

async fn reconcile_live(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    // The last reconcile failed as a whole: a node event before its backoff ends runs nothing;
    // the backoff's own requeue (or a change of the policy itself) ends the hold.
    if let Some(left) = ctx.memo.held(&name, trigger_of(policy), Instant::now()) {
        ctx.metrics.reconcile_held();
        tracing::debug!(policy = %name, ?left, "in backoff: trigger held");
        return Ok(Action::requeue(left));
    }
    fault_hook::maybe_panic(&name);
    sync_finalizer(policy, ctx).await?;
    if policy.status.is_none() {
        // In progress from the first look (kstatus calls a policy without status Current).
        let generation = policy.metadata.generation.unwrap_or_default();
        let first = status::first_look(generation, Time(k8s_openapi::jiff::Timestamp::now()));
        patch_status(ctx, &name, &first).await?;
    }
    let observed = observe::observe(policy, ctx, false).await?;
    let defaults = ctx.account_defaults.get(&ctx.clients.ec2).await;
    ctx.cache.lock().await.account_defaults_at(defaults.revision);
    if ctx.memo.trigger_changed(&name, trigger_of(policy)) {
        // Edited or annotated (e.g. after fixing IAM): its instances are tried again now.
        ctx.cache.lock().await.end_backoffs(&observed.instance_ids);
        ctx.memo.forget_denials(&name);
    }
    ctx.memo
        .record_membership(&name, observed.selected.iter().map(|n| n.name.clone()).collect());
    let tagged = observe::refresh(ctx, &observed.instance_ids, false).await;
    publish_ignored_record_tags(ctx, policy, &tagged).await;

    let plans = observe::plan_reading_usage(ctx, &observed).await;

    // Staged rollout: halted? How many may start now?
    let rollout::RolloutLook {
        state: rollout,
        reverting,
    } = rollout::state(policy, ctx, &observed, true).await;
    let limit = max_in_flight(&policy.spec.rollout.max_in_flight, observed.selected.len());
    // Nothing planned (a quiet resync of a compliant fleet): nothing to count in flight, no
    // request to send, and — unless a revert was looked at — the plans stand: planned once,
    // not twice.
    let wants_requests = plans.iter().any(|p| p.action.is_some());
    let allowed = match rollout.halt {
        Some(_) => 0,
        None if !wants_requests => 0,
        None => imds_core::rollout::budget(limit, rollout::in_flight(ctx, policy, &plans).await),
    };

    let applied = apply(ctx, policy, &plans, &observed, allowed).await;
    let progress = Progress {
        halt: rollout.halt,
        last_resume: rollout.last_resume,
        ..applied.progress
    };

    // Re-plan with what EC2 answered, then report.
    let plans = if wants_requests || reverting {
        replan(ctx, &observed, &applied.failures, &progress, limit).await
    } else {
        plans
    };
    let mut new_status = summarize(policy, &plans, &progress);
    new_status.launch_sources = ctx.memo.launch_sources(&name, k8s_openapi::jiff::Timestamp::now());
    new_status.account_defaults = defaults
        .defaults
        .as_ref()
        .and_then(|d| imds_core::defaults::report_for_policy(&policy.spec.metadata_options, d));
    new_status.node_classes = super::node_classes::mismatches(ctx, &observed.me).await;
    super::node_classes::publish_new(ctx, policy, &new_status.node_classes).await;
    new_status.policy_reports = ctx.policy_reports.status_of(&name, plans.len());
    publish_conflicts(ctx, policy, &plans).await;
    publish_new_halt(ctx, policy, &progress, &new_status).await;
    patch_status(ctx, &name, &new_status).await?;
    record_gauges(ctx, &name, &new_status);
    ctx.policy_reports.offer(policy, &plans);
    Ok(next_action(ctx, policy, &observed, &plans, &progress).await)
}

/// Plans again with this reconcile's failures; what still wants a request waits its turn.
async fn replan(
    ctx: &Context,
    observed: &Observed,
    failures: &HashMap<String, imds_core::observation::Failure>,
    progress: &Progress,
    limit: usize,
) -> Vec<NodePlan> {
    let mut plans = observe::plan_with_cache(ctx, observed, failures).await;
    for p in plans.iter_mut().filter(|p| p.action.is_some()) {
        p.mark_waiting(progress.halt.is_some(), limit);
    }
    plans
}

fn summarize(policy: &InstanceMetadataPolicy, plans: &[NodePlan], progress: &Progress) -> InstanceMetadataPolicyStatus {
    let generation = policy.metadata.generation.unwrap_or_default();
    let previous = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    status::summarize(policy.spec.mode, generation, plans, progress, &previous, now)
}

/// A Warning per instance that carries the tag older versions recorded originals in: anyone with
/// `ec2:CreateTags` can write it, so it is never read; the records are in the cluster.
async fn publish_ignored_record_tags(ctx: &Context, policy: &InstanceMetadataPolicy, ids: &[String]) {
    for id in ids {
        let note = format!(
            "instance {id} carries the tag {ORIGINAL_OPTIONS_TAG}; ignored: the operator keeps its records in ConfigMaps, never in instance tags"
        );
        publish_repeating(
            ctx,
            policy,
            PolicyEvent::warning(None, Reason::RecordTagIgnored, "Record", note),
        )
        .await;
    }
}

/// One Warning when the rollout halts (not on every reconcile while it stays halted).
async fn publish_new_halt(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    progress: &Progress,
    new_status: &InstanceMetadataPolicyStatus,
) {
    let was_halted = policy.status.as_ref().and_then(|s| s.rollout_halt.as_ref()).is_some();
    if progress.halt.is_none() || was_halted {
        return;
    }
    publish_halt(ctx, policy, new_status, "Rollout").await;
}

/// When to look again ([`requeue::requeue_delay`]): a failing instance waits out its own
/// backoff in the instance cache (growing per failure of that instance, whatever triggers the
/// reconcile), so the policy looks again when the first of them may be retried; failures with
/// no such clock (a preflight, a record write, a usage read) wait their kind's base delay.
async fn next_action(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    plans: &[NodePlan],
    progress: &Progress,
) -> Action {
    let name = policy.name_any();
    let failing = requeue::retried_failures(plans);
    let next_retry = ctx
        .cache
        .lock()
        .await
        .next_retry(&observed.instance_ids, tokio::time::Instant::now());
    let backoffs: Vec<Duration> = match next_retry {
        Some(retry) if !failing.is_empty() => vec![retry.max(MIN_RETRY)],
        _ => failing.iter().map(|(_, base)| *base).collect(),
    };
    ctx.memo.reset_backoff(&name, &HashSet::new());
    ctx.memo.release(&name);
    let work = Work::of(plans, progress.halt.is_some(), progress.deferred);
    Action::requeue(requeue::requeue_delay(ctx.config.resync_period, &backoffs, &work))
}

/// The shortest requeue for a retry: a backoff ending now still waits this long.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// What the controller does when a reconcile fails as a whole: back off per policy, and hold
/// the policy meanwhile, so that node events do not run it again before the backoff ends.
pub fn error_policy(policy: Arc<InstanceMetadataPolicy>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    tracing::warn!(policy = %name, %error, "reconcile failed");
    if matches!(error, ReconcileError::InvalidSelector(_)) {
        return Action::await_change();
    }
    let delay = ctx.memo.backoff(&name, FailureKind::Other, RECONCILE_ERROR_BACKOFF);
    ctx.memo.hold(&name, trigger_of(&policy), Instant::now() + delay);
    Action::requeue(delay)
}
