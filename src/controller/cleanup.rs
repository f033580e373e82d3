//! Deleting a policy. `Retain` policies carry no finalizer and simply go (what they changed
//! becomes the baseline). `Restore` policies keep the finalizer `imds-operator.io/restore` until
//! every instance they selected has back the options this policy decided and the operator
//! changed ([`imds_core::record::restore`]), where no remaining policy decides them. Restoring is
//! a staged rollout: `maxInFlight`, settling, the per-reconcile cap, a halt when a restored node
//! turns NotReady; its progress is in status. Instances and nodes that are gone count as done;
//! the annotation `imds-operator.io/abandon-restore` gives up, so `kubectl delete` never needs a
//! person to edit finalizers.

use super::context::Context;
use super::error::ReconcileError;
use super::events::{PolicyEvent, publish, publish_halt, publish_repeating};
use super::observe::{Observed, observe, refresh};
use super::policy_writes::{patch_status, set_finalizers, without_restore_finalizer};
use super::rollout;
use crate::aws::AwsErrorKind;
use imds_core::api::{ABANDON_RESTORE_ANNOTATION, InstanceMetadataPolicy, OnDelete, RESTORE_FINALIZER};
use imds_core::observation::{NodeInput, Observation, ObservationSource};
use imds_core::options::{ApplyState, FullOptions};
use imds_core::provider_id;
use imds_core::reason::Reason;
use imds_core::record::{self, ChangeRecord, ChangeState, InstanceRecord, RestoreOutcome};
use imds_core::rollout::{budget, max_in_flight};
use imds_core::selection::{self, PolicyInput};
use imds_core::status::{self, RestoreProgress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// How soon to look again while a restore waits for its rollout.
const RESTORE_RECHECK: Duration = Duration::from_secs(2);

/// Runs when the policy has a deletion timestamp.
pub async fn cleanup(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    if !policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER) {
        ctx.forget_policy(&name);
        return Ok(Action::await_change());
    }
    if policy.spec.on_delete == OnDelete::Restore {
        if policy.annotations().contains_key(ABANDON_RESTORE_ANNOTATION) {
            abandon(policy, ctx).await?;
        } else if restore(policy, ctx).await? > 0 {
            return Ok(Action::requeue(RESTORE_RECHECK));
        }
    }
    set_finalizers(policy, ctx, without_restore_finalizer(policy)).await?;
    ctx.forget_policy(&name);
    Ok(Action::await_change())
}

/// One instance the restore looks at.
struct Candidate {
    node: String,
    instance_id: String,
    /// The decisions of the policies still selecting the node.
    remaining: selection::Decisions,
}

/// What looking at the instances found.
#[derive(Default)]
struct Survey {
    /// Instances that need a request.
    to_send: Vec<Candidate>,
    /// Instances whose record changes but that need no request (entries passed on or dropped):
    /// their options now and the remaining decisions.
    hand_overs: Vec<(String, FullOptions, selection::Decisions)>,
    /// Instances that cannot be restored now, with why (retried).
    waiting: Vec<String>,
}

/// One pass of the restore; how many instances are still to restore.
async fn restore(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<usize, ReconcileError> {
    let observed = observe(policy, ctx, true).await?;
    refresh(ctx, &observed.instance_ids, true).await;
    let mut survey = survey(ctx, policy, &observed).await;
    write_hand_overs(ctx, &policy.name_any(), &mut survey).await;
    // A restore is not verified: it takes instances back to the options they had.
    let state = rollout::state(policy, ctx, &observed, false).await.state;
    let allowed = match state.halt {
        Some(_) => 0,
        None => {
            let limit = max_in_flight(&policy.spec.rollout.max_in_flight, observed.selected.len());
            let changing = rollout::changing(ctx, policy, &observed.instance_ids, None).await.len();
            budget(limit, changing).min(ctx.config.max_modifies_per_reconcile)
        }
    };
    let mut restored = 0;
    let mut errors = Vec::new();
    let total = survey.to_send.len();
    for candidate in survey.to_send.into_iter().take(allowed) {
        match send_restore(ctx, policy, &observed, candidate).await {
            Ok(()) => restored += 1,
            Err(why) => errors.push(why),
        }
    }
    let remaining = total - restored + survey.waiting.len();
    let progress = RestoreProgress {
        restored,
        remaining,
        halt: state.halt,
        last_resume: state.last_resume,
    };
    // The last pass writes no status: the finalizer patch that follows carries the
    // resourceVersion this reconcile read.
    if remaining > 0 {
        write_progress(ctx, policy, &progress).await?;
    }
    errors.extend(survey.waiting);
    if !errors.is_empty() {
        let note = format!(
            "{} instances not restored yet (retrying): {}",
            errors.len(),
            errors.join("; ")
        );
        publish_repeating(
            ctx,
            policy,
            PolicyEvent::warning(None, Reason::RestoreFailed, "Restore", note),
        )
        .await;
        return Err(ReconcileError::RestoreIncomplete {
            policy: policy.name_any(),
            remaining,
        });
    }
    if remaining == 0 {
        tracing::info!(policy = %policy.name_any(), "restored before deletion");
    }
    Ok(remaining)
}

/// Decides, per selected instance, what restoring it takes.
async fn survey(ctx: &Context, policy: &InstanceMetadataPolicy, observed: &Observed) -> Survey {
    let deleted = policy.name_any();
    let live = live_policies(ctx);
    let mut stored = ctx.records.get_many(&observed.instance_ids).await;
    let observations = ctx.cache.lock().await.observations(&observed.instance_ids);
    let mut survey = Survey::default();
    for node in &observed.selected {
        let Ok(instance) = provider_id::parse(node.provider_id.as_deref()) else {
            continue;
        };
        let id = instance.instance_id;
        let record = match stored.remove(&id) {
            Some(Ok(record)) => record,
            Some(Err(invalid)) => {
                let note = format!("node {}: {invalid}; never applied, not restored", node.name);
                let event = PolicyEvent::warning(Some(&node.name), Reason::RecordInvalid, "Restore", note);
                publish(ctx, policy, event).await;
                continue;
            }
            None => continue,
        };
        if !record.options.values().any(|e| e.by.contains(&deleted)) {
            continue;
        }
        let current = match observations.get(&id) {
            Some(Observation::Found(o)) if o.state == ApplyState::Pending => {
                survey
                    .waiting
                    .push(format!("{id}: a change is pending; restoring after it applied"));
                continue;
            }
            Some(Observation::Found(o)) => FullOptions::completed(&o.values),
            Some(Observation::Failed(f)) => {
                survey.waiting.push(format!("{id}: {}", f.message));
                continue;
            }
            // Gone: nothing to restore.
            Some(Observation::NotFound) | None => continue,
        };
        let remaining = remaining_decisions(observed, node);
        let outcome = record::restore(&record, &current, &deleted, &remaining, |p| live.contains(p));
        match outcome.request {
            Some(_) => survey.to_send.push(Candidate {
                node: node.name.clone(),
                instance_id: id,
                remaining,
            }),
            None => survey.hand_overs.push((id, current, remaining)),
        }
    }
    survey
}

/// Writes the record changes that need no request, recomputed on the stored records in one
/// atomic step (a request of another policy may have changed a record since the survey).
async fn write_hand_overs(ctx: &Context, deleted: &str, survey: &mut Survey) {
    let live = live_policies(ctx);
    let hand_overs = std::mem::take(&mut survey.hand_overs);
    if hand_overs.is_empty() {
        return;
    }
    let inputs: HashMap<&str, (&FullOptions, &selection::Decisions)> =
        hand_overs.iter().map(|(id, c, d)| (id.as_str(), (c, d))).collect();
    let ids: Vec<String> = hand_overs.iter().map(|(id, _, _)| id.clone()).collect();
    let written = ctx
        .records
        .update(&ids, |id, current| {
            let (options, remaining) = inputs.get(id)?;
            let outcome = record::restore(current, options, deleted, remaining, |p| live.contains(p));
            outcome.request.is_none().then_some(outcome.record)
        })
        .await;
    if let Some(error) = written.error {
        survey.waiting.push(format!("records not written: {error}"));
    }
}

fn remaining_decisions(observed: &Observed, node: &NodeInput) -> selection::Decisions {
    let remaining: Vec<&PolicyInput> = observed.policies.iter().filter(|p| p.selects(&node.labels)).collect();
    selection::decide(remaining)
}

/// Claims the instance and restores it; why not, when it failed.
async fn send_restore(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    candidate: Candidate,
) -> Result<(), String> {
    let id = candidate.instance_id.clone();
    if !ctx.cache.lock().await.claim(&id) {
        return Err(format!("{id}: another change is in flight"));
    }
    // The claim is held until the last write, so no other request interleaves.
    let result = restore_claimed(ctx, policy, observed, &candidate).await;
    ctx.cache.lock().await.release(&id);
    result
}

/// Under the claim: the instance's options as known now, the request computed on the stored
/// record and written ahead as `Sent` in one atomic step, the request, and its outcome.
async fn restore_claimed(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    candidate: &Candidate,
) -> Result<(), String> {
    let (node, id) = (candidate.node.as_str(), candidate.instance_id.as_str());
    let current = match ctx.cache.lock().await.observation(id).cloned() {
        Some(Observation::Found(o)) if o.state == ApplyState::Pending => {
            return Err(format!("{id}: a change is pending; restoring after it applied"));
        }
        Some(Observation::Found(o)) => FullOptions::completed(&o.values),
        _ => return Ok(()),
    };
    let Some((outcome, request)) = write_restore_ahead(ctx, policy, observed, candidate, &current).await? else {
        return Ok(()); // nothing to send now; the next pass hands the record over
    };
    match ctx.clients.ec2.modify(id, &request, false).await {
        Ok(answer) => {
            {
                let mut cache = ctx.cache.lock().await;
                let tag_keys = cache.tag_keys(id).map(<[String]>::to_vec).unwrap_or_default();
                cache.observe(id, Observation::Found(answer), tag_keys, tokio::time::Instant::now());
            }
            let accepted = change(policy, observed, node, &request, ChangeState::Accepted);
            write_restored(ctx, policy, candidate, &current, Some(accepted)).await;
            let restored: Vec<&str> = outcome.restored.iter().map(|f| f.name()).collect();
            let note = format!(
                "node {node} ({id}): restored {} (was {current}); sent {request}",
                restored.join(", ")
            );
            let event = PolicyEvent::normal(Some(node), Reason::Restored, "ModifyInstanceMetadataOptions", note);
            publish(ctx, policy, event).await;
            Ok(())
        }
        Err(e) if e.kind == AwsErrorKind::NotFound => {
            ctx.records.put(vec![(id.to_string(), InstanceRecord::default())]).await;
            Ok(())
        }
        // EC2 will never take these options (e.g. the account now enforces IMDSv2): retrying
        // cannot succeed, so report it and let the record go.
        Err(e) if e.kind == AwsErrorKind::Unsupported => {
            let note = format!("node {node} ({id}): cannot restore {request}: {e}");
            let event = PolicyEvent::warning(Some(node), Reason::RestoreRefused, "Restore", note);
            publish(ctx, policy, event).await;
            write_restored(ctx, policy, candidate, &current, None).await;
            Ok(())
        }
        Err(e) => {
            if !e.may_have_applied() {
                // Refused: the request holds no slot; the entries stay for the next try.
                ctx.records
                    .update(&[id.to_string()], |_, stored| {
                        Some(InstanceRecord {
                            change: None,
                            ..stored.clone()
                        })
                    })
                    .await;
            }
            Err(format!("{id}: {e}"))
        }
    }
}

/// Computes the restore request on the stored record and writes it ahead as `Sent`, in one
/// atomic step; `None` when nothing needs sending any more.
async fn write_restore_ahead(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    candidate: &Candidate,
    current: &FullOptions,
) -> Result<Option<(RestoreOutcome, FullOptions)>, String> {
    let (node, id) = (candidate.node.as_str(), candidate.instance_id.as_str());
    let deleted = policy.name_any();
    let live = live_policies(ctx);
    let planned: Mutex<Option<RestoreOutcome>> = Mutex::default();
    let written = ctx
        .records
        .update(&[id.to_string()], |_, stored| {
            let outcome = record::restore(stored, current, &deleted, &candidate.remaining, |p| live.contains(p));
            let request = outcome.request?;
            let mut ahead = stored.clone();
            ahead.change = Some(change(policy, observed, node, &request, ChangeState::Sent));
            if let Ok(mut planned) = planned.lock() {
                *planned = Some(outcome);
            }
            Some(ahead)
        })
        .await;
    let Some(outcome) = planned.into_inner().unwrap_or_default() else {
        return Ok(None);
    };
    match outcome.request.filter(|_| written.ids.contains(id)) {
        Some(request) => Ok(Some((outcome, request))),
        None => Err(format!(
            "{id}: the record could not be written: {}",
            written.error.unwrap_or_default()
        )),
    }
}

/// The record once the restore is done (or given up as refused): recomputed on the stored record,
/// where another deletion may have handed entries over meanwhile; `change` is the last request
/// (`None`: none holds a slot).
async fn write_restored(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    candidate: &Candidate,
    current: &FullOptions,
    change: Option<ChangeRecord>,
) {
    let (deleted, live) = (policy.name_any(), live_policies(ctx));
    ctx.records
        .update(std::slice::from_ref(&candidate.instance_id), |_, stored| {
            let mut done =
                record::restore(stored, current, &deleted, &candidate.remaining, |p| live.contains(p)).record;
            done.change = change.clone();
            Some(done)
        })
        .await;
}

fn live_policies(ctx: &Context) -> HashSet<String> {
    ctx.live_policies()
}

fn change(
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    node: &str,
    request: &FullOptions,
    state: ChangeState,
) -> ChangeRecord {
    let was_ready = observed.readiness.get(node).copied().flatten().unwrap_or(false);
    ChangeRecord::new(&policy.name_any(), node, Timestamp::now(), was_ready, request, state)
}

async fn write_progress(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    progress: &RestoreProgress,
) -> Result<(), ReconcileError> {
    let generation = policy.metadata.generation.unwrap_or_default();
    let previous = policy.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let new_status = status::restoring(&previous, generation, progress, now);
    if progress.halt.is_some() && previous.rollout_halt.is_none() {
        publish_halt(ctx, policy, &new_status, "Restore").await;
    }
    patch_status(ctx, &policy.name_any(), &new_status).await
}

/// Gives up restoring: a Warning names the instances that keep what this policy set.
async fn abandon(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let deleted = policy.name_any();
    let observed = observe(policy, ctx, true).await?;
    let left: Vec<String> = ctx
        .records
        .valid_where(&observed.instance_ids, |r| {
            r.options.values().any(|e| e.by.contains(&deleted))
        })
        .await
        .into_keys()
        .collect();
    let mut shown: Vec<&str> = left.iter().map(String::as_str).collect();
    shown.sort();
    shown.truncate(20);
    let note = format!(
        "restore abandoned ({ABANDON_RESTORE_ANNOTATION}); {} instances keep the options this policy set{}{}",
        left.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );
    publish(
        ctx,
        policy,
        PolicyEvent::warning(None, Reason::RestoreAbandoned, "Restore", note),
    )
    .await;
    Ok(())
}
