//! Apply: sends the planned modify requests, at most the rollout's budget and as many as the
//! rate limit allows now (the rest wait for the next reconcile, requeued shortly). Before the
//! first real request of a policy a DryRun proves the operator may ([`super::preflight`]).
//! Before any request its record is written ([`super::records`]): the originals of the options
//! it changes and the request itself, so a crash right after sending loses nothing and the
//! request counts toward `maxInFlight` until EC2's answer (or a describe) settles it. A request
//! whose record cannot be written is not sent.
//!
//! A reconcile claims up to its budget (the rollout's, at most `--max-modifies-per-reconcile`)
//! and sends in chunks of what the rate limiter lets out in about 5 s (all the
//! tokens available, at least): each chunk's records are written, its requests sent (paced by
//! the limiter, so the operator sustains its configured rate), and its answers recorded and
//! reported before the next chunk — so a crash loses at most one chunk's answers, which the next
//! describe settles.

use super::context::Context;
use super::events::{PolicyEvent, publish, publish_repeating};
use super::observe::Observed;
use super::preflight::preflight;
use crate::aws::{AwsError, AwsErrorKind};
use futures::StreamExt;
use imds_core::api::{FieldDrift, InstanceMetadataPolicy};
use imds_core::launch_source::{self, LaunchSource};
use imds_core::observation::{Failure, FailureKind, NodeInput, Observation, ObservationSource};
use imds_core::options::Field;
use imds_core::options::{ApplyState, FullOptions, ObservedOptions};
use imds_core::plan::NodePlan;
use imds_core::plan::guards::GuardWarning;
use imds_core::reason::Reason;
use imds_core::record::{self, ChangeRecord, ChangeState, InstanceRecord};
use imds_core::selection;
use imds_core::status::Progress;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// Requests sent at once.
const SEND_CONCURRENCY: usize = 16;
/// A chunk is what the rate limiter lets out in about this long.
const CHUNK_SECONDS: f64 = 5.0;
/// Events published at once.
const EVENT_CONCURRENCY: usize = 8;

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
    /// The instance's options now, as a complete set.
    pub current: FullOptions,
    /// The record before this request (put back when EC2 refuses it).
    pub before: InstanceRecord,
    /// The record written before sending.
    pub record: InstanceRecord,
    /// A guard's warning (`imdsv1Usage: Warn`), reported with the modification.
    pub warning: Option<GuardWarning>,
    /// The policies that decide each option on this node.
    pub deciders: BTreeMap<Field, BTreeSet<String>>,
    /// Whether the node is Ready now.
    pub was_ready: bool,
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
    let budget = ctx.config.max_modifies_per_reconcile.min(allowed);
    let claimed = claim(ctx, &wanted, budget).await;
    applied.progress.deferred = wanted.len() - claimed.len();
    let Some(first) = claimed.first() else {
        return applied;
    };
    if let Err(failure) = preflight(ctx, policy, &first.instance_id, &first.request).await {
        // Denied (or EC2 unreachable): nothing is sent; every planned instance reports it, so
        // the policy is Stalled (or Retrying), not "Applying".
        release(ctx, claimed.iter().map(|c| c.instance_id.as_str())).await;
        // Those requests wait their backoff, so node events do not re-run the preflight.
        {
            let mut cache = ctx.cache.lock().await;
            let now = tokio::time::Instant::now();
            for c in &claimed {
                cache.back_off(&c.instance_id, c.request, failure.clone(), now);
            }
        }
        for (_, id, _) in &wanted {
            applied.failures.insert(id.clone(), failure.clone());
        }
        applied.progress.deferred = 0;
        return applied;
    }
    let (claimed, invalid) = with_records(ctx, policy, observed, claimed).await;
    applied.failures.extend(invalid);
    let mut queue = claimed.into_iter();
    loop {
        let size = chunk_size(ctx).await;
        let chunk: Vec<Claimed> = queue.by_ref().take(size).collect();
        if chunk.is_empty() {
            break;
        }
        let (chunk, unrecorded) = write_ahead(ctx, policy, chunk).await;
        applied.failures.extend(unrecorded);
        send_and_settle(ctx, policy, chunk, &mut applied).await;
    }
    applied
}

/// What became of one sent request.
enum Sent {
    /// EC2 accepted it.
    Modified,
    /// Throttled: sent again at the next reconcile, paced by the (cut) rate.
    Deferred,
    /// Refused or failed: reported on the node.
    Failed(Failure),
    /// The instance is gone.
    Gone,
}

/// How many requests the next chunk takes: every token available now, or what the current rate
/// lets out in [`CHUNK_SECONDS`], whichever is more.
async fn chunk_size(ctx: &Context) -> usize {
    let tokens = ctx.clients.ec2.modify_tokens().await as usize;
    let paced = (ctx.clients.ec2.modify_rate().await * CHUNK_SECONDS).ceil() as usize;
    tokens.max(paced).max(SEND_CONCURRENCY)
}

/// Sends one chunk, then records EC2's answers in the cache and the records, publishes the
/// events and releases the claims.
async fn send_and_settle(ctx: &Context, policy: &InstanceMetadataPolicy, chunk: Vec<Claimed>, applied: &mut Applied) {
    let results = send(ctx, chunk).await;
    let settled: Vec<_> = results
        .iter()
        .map(|(claim, result)| {
            (
                claim.instance_id.clone(),
                claim.before.clone(),
                claim.record.clone(),
                crate::aws::error::answer_of(result),
            )
        })
        .collect();
    let outcomes: Vec<(String, Sent)> = futures::stream::iter(results)
        .map(|(claim, result)| async move {
            let id = claim.instance_id.clone();
            let sent = match result {
                Ok(answer) => {
                    record_modified(ctx, policy, claim, answer).await;
                    Sent::Modified
                }
                // Throttling is the account's, not the instance's: the limiter has cut its rate;
                // the request waits its turn (a short requeue), not an instance backoff.
                Err(err) if err.is_throttling() => Sent::Deferred,
                Err(err) => match record_failed(ctx, policy, &claim, err).await {
                    Some(failure) => Sent::Failed(failure),
                    None => Sent::Gone,
                },
            };
            (id, sent)
        })
        .buffer_unordered(EVENT_CONCURRENCY)
        .collect()
        .await;
    for (id, sent) in outcomes {
        match sent {
            Sent::Modified => applied.progress.modified += 1,
            Sent::Deferred => applied.progress.deferred += 1,
            Sent::Failed(failure) => {
                applied.failures.insert(id, failure);
            }
            Sent::Gone => {}
        }
    }
    // Best effort: a failed write leaves the requests `Sent`, which holds their slots until a
    // describe settles them. The claims are held until then, so no other request interleaves.
    let ids: Vec<String> = settled.iter().map(|(id, ..)| id.clone()).collect();
    let answers: HashMap<&str, _> = settled.iter().map(|(id, b, w, a)| (id.as_str(), (b, w, *a))).collect();
    ctx.records
        .update(&ids, |id, stored| {
            let (before, written, answer) = answers.get(id)?;
            Some(record::after_answer(stored, before, written, *answer))
        })
        .await;
    release(ctx, ids.iter().map(String::as_str)).await;
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
        let Some(Observation::Found(current)) = cache.observation(id).cloned() else {
            continue;
        };
        let current_full = FullOptions::completed(&current.values);
        if current.state == ApplyState::Pending || current_full == *request || !cache.claim(id) {
            continue;
        }
        claimed.push(Claimed {
            node: plan.node.clone(),
            drift: plan.drift.clone(),
            instance_id: id.clone(),
            request: *request,
            current: current_full,
            before: InstanceRecord::default(),
            record: InstanceRecord::default(),
            warning: plan.warning.clone(),
            deciders: BTreeMap::new(),
            was_ready: false,
        });
    }
    claimed
}

async fn release<'a>(ctx: &Context, ids: impl IntoIterator<Item = &'a str>) {
    let mut cache = ctx.cache.lock().await;
    for id in ids {
        cache.release(id);
    }
}

/// Checks each claim's stored record and notes who decides what on its node. A claim whose
/// stored record is invalid is dropped, and reported.
async fn with_records(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    observed: &Observed,
    claimed: Vec<Claimed>,
) -> (Vec<Claimed>, HashMap<String, Failure>) {
    let ids: Vec<String> = claimed.iter().map(|c| c.instance_id.clone()).collect();
    let mut stored = ctx.records.get_many(&ids).await;
    let nodes: HashMap<&str, &NodeInput> = observed.selected.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = Vec::with_capacity(claimed.len());
    let mut failures = HashMap::new();
    for mut claim in claimed {
        if let Some(Err(invalid)) = stored.remove(&claim.instance_id) {
            ctx.cache.lock().await.release(&claim.instance_id);
            let note = format!("node {}: {invalid}; not modified", claim.node);
            let event = PolicyEvent::warning(Some(&claim.node), Reason::RecordInvalid, "Record", note);
            publish(ctx, policy, event).await;
            let failure = Failure {
                kind: FailureKind::Other,
                message: format!("{invalid}; not modified until the record is fixed or removed"),
            };
            failures.insert(claim.instance_id, failure);
            continue;
        }
        let labels = nodes.get(claim.node.as_str()).map(|n| &n.labels);
        let selecting = observed
            .policies
            .iter()
            .filter(|p| labels.is_some_and(|l| p.selects(l)));
        claim.deciders = record::deciders(&selection::decide(selecting));
        claim.was_ready = observed.readiness.get(&claim.node).copied().flatten().unwrap_or(false);
        out.push(claim);
    }
    (out, failures)
}

/// Writes each claim's record before sending — the originals of what the request changes,
/// attributed to the policies that decide it, and the request as `Sent` — computed on the
/// stored record in one atomic step. The claims whose record is stored, and a failure for the
/// others (released, not sent).
async fn write_ahead(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    claimed: Vec<Claimed>,
) -> (Vec<Claimed>, HashMap<String, Failure>) {
    // Policies being deleted still count: their entries wait for their restore (or hand-over).
    let live = ctx.live_policies();
    let sender = policy.name_any();
    let now = Timestamp::now();
    let by_id: HashMap<&str, &Claimed> = claimed.iter().map(|c| (c.instance_id.as_str(), c)).collect();
    let ids: Vec<String> = claimed.iter().map(|c| c.instance_id.clone()).collect();
    let seen: Mutex<HashMap<String, (InstanceRecord, InstanceRecord)>> = Mutex::default();
    let written = ctx
        .records
        .update(&ids, |id, current| {
            let claim = by_id.get(id)?;
            let mut next =
                record::before_change(current, &claim.current, &claim.request, &claim.deciders, &sender, |p| {
                    live.contains(p)
                });
            next.change = Some(ChangeRecord::new(
                &sender,
                &claim.node,
                now,
                claim.was_ready,
                &claim.request,
                ChangeState::Sent,
            ));
            if let Ok(mut seen) = seen.lock() {
                seen.insert(id.to_string(), (current.clone(), next.clone()));
            }
            Some(next)
        })
        .await;
    let mut seen = seen.into_inner().unwrap_or_default();
    let (mut stored, unstored): (Vec<Claimed>, Vec<Claimed>) =
        claimed.into_iter().partition(|c| written.ids.contains(&c.instance_id));
    for claim in &mut stored {
        if let Some((before, record)) = seen.remove(&claim.instance_id) {
            claim.before = before;
            claim.record = record;
        }
    }
    let mut failures = HashMap::new();
    if !unstored.is_empty() {
        release(ctx, unstored.iter().map(|c| c.instance_id.as_str())).await;
        let error = written.error.unwrap_or_else(|| "the record store refused it".into());
        let failure = Failure {
            kind: FailureKind::Transient,
            message: format!("the record could not be written, nothing sent: {error}"),
        };
        let note = format!("{} instances not modified: {}", unstored.len(), failure.message);
        publish_repeating(
            ctx,
            policy,
            PolicyEvent::warning(None, Reason::RecordNotWritten, "Record", note),
        )
        .await;
        for claim in unstored {
            failures.insert(claim.instance_id, failure.clone());
        }
    }
    (stored, failures)
}

/// Sends the requests, a few at a time.
async fn send(ctx: &Context, claimed: Vec<Claimed>) -> Vec<(Claimed, Result<ObservedOptions, AwsError>)> {
    futures::stream::iter(claimed)
        .map(|claim| {
            let ec2 = ctx.clients.ec2.clone();
            async move {
                let result = ec2.modify(&claim.instance_id, &claim.request, false).await;
                (claim, result)
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await
}

/// Counts a change of a new instance (launched less than an hour before) against its launch
/// source: the source launched it drifted.
fn count_launch_source(ctx: &Context, policy: &str, launched: Option<Timestamp>, source: Option<LaunchSource>) {
    let now = Timestamp::now();
    if let Some(source) = source.filter(|_| launch_source::is_new(launched, now)) {
        ctx.metrics.launch_source_change(policy, source.kind, &source.name);
        ctx.memo.record_launch_source(policy, source, now);
    }
}

/// Records an accepted request in the cache and reports it.
async fn record_modified(ctx: &Context, policy: &InstanceMetadataPolicy, claim: Claimed, answer: ObservedOptions) {
    let Claimed {
        node,
        drift,
        instance_id: id,
        request,
        warning,
        ..
    } = claim;
    let pending = answer.state == ApplyState::Pending;
    let (launched, source) = {
        let mut cache = ctx.cache.lock().await;
        let tag_keys = cache.tag_keys(&id).map(<[String]>::to_vec).unwrap_or_default();
        cache.observe(&id, Observation::Found(answer), tag_keys, tokio::time::Instant::now());
        cache.succeeded(&id);
        (cache.launched(&id), cache.launch_source(&id))
    };
    count_launch_source(ctx, &policy.name_any(), launched, source);
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
    // A refusal while a declarative policy manages the account's IMDS settings is its doing.
    let defaults = ctx.account_defaults.get(&ctx.clients.ec2).await;
    let failure = imds_core::defaults::classify_refusal(err.to_failure(), defaults.defaults.as_ref());
    let id = &claim.instance_id;
    {
        let mut cache = ctx.cache.lock().await;
        match err.kind {
            AwsErrorKind::NotFound => {
                cache.observe(id, Observation::NotFound, Vec::new(), tokio::time::Instant::now());
                return None;
            }
            _ if failure.kind == FailureKind::DeclarativePolicy => cache.refuse(id, claim.request, failure.clone()),
            AwsErrorKind::Unsupported => cache.refuse(id, claim.request, failure.clone()),
            // Throttled, denied, 5xx, timeouts: not again before the backoff, whatever triggers.
            _ => cache.back_off(id, claim.request, failure.clone(), tokio::time::Instant::now()),
        }
    }
    let note = format!("node {} ({id}): {}: {}", claim.node, err.operation, failure.message);
    let event = PolicyEvent::warning(Some(&claim.node), failure.kind.reason(), err.operation, note);
    publish_repeating(ctx, policy, event).await;
    Some(failure)
}
