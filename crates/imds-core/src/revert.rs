//! Revert after refused IMDSv1 calls (`rollout.verify.onRejectedCalls: Revert`), pure: whether an
//! instance goes back to the options it had before the operator changed it, what the request is,
//! and the hold that keeps it there.
//!
//! Reverting is the one place the operator deliberately lowers an instance's safety, so it is
//! narrow: only when the policy chose `Revert`; only for an instance whose last recorded request
//! was this policy's, moved it to `httpTokens: required`, was accepted by EC2, and is younger than
//! the verification window; only when CloudWatch counted refused calls since that change; only to
//! the originals in the instance's record (options without a recorded original keep their value).
//!
//! The hold ([`RevertHold`]) is written into the instance's record (the operator's ConfigMaps,
//! which only it may write — never an instance tag, which anyone with `ec2:CreateTags` could
//! forge to keep an instance on IMDSv1). While it is in force no policy sends the instance a
//! request. It is in force while the policy that reverted exists with the same generation and the
//! same value of [`REENFORCE_ANNOTATION`](crate::api::REENFORCE_ANNOTATION): a person releases it
//! by changing the spec or setting that annotation to a new value.

use crate::api::{HttpTokens, RejectedCallsAction};
use crate::options::{ApplyState, Field, FullOptions, ObservedOptions};
use crate::plan::{NodePlan, NodeState};
use crate::reason::Reason;
pub use crate::record::RevertHold;
use crate::record::{self, ChangeRecord, ChangeState, InstanceRecord};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// What the policy that reverted says now: its generation and re-enforce annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyNow<'a> {
    /// `metadata.generation`.
    pub generation: i64,
    /// The re-enforce annotation's value.
    pub reenforce: Option<&'a str>,
}

/// Whether `hold` still keeps its instance: its policy exists (`policy`; `None`: deleted) with
/// the same generation and the same re-enforce annotation value.
pub fn in_force(hold: &RevertHold, policy: Option<PolicyNow<'_>>) -> bool {
    policy.is_some_and(|p| p.generation == hold.generation && p.reenforce == hold.reenforce_seen.as_deref())
}

/// Everything the revert decision looks at for one instance.
#[derive(Clone, Copy)]
pub struct RevertInput<'a> {
    /// The policy's `rollout.verify.onRejectedCalls`.
    pub action: RejectedCallsAction,
    /// The policy being reconciled.
    pub policy: &'a str,
    /// Its verification window.
    pub window: Duration,
    /// The instance's record.
    pub record: &'a InstanceRecord,
    /// What EC2 shows of the instance now.
    pub current: &'a ObservedOptions,
    /// Refused IMDSv1 calls since the change (`None`: CloudWatch gave no verdict).
    pub rejected: Option<f64>,
    /// Which policies exist (an original attributed only to deleted policies is the baseline).
    pub live: &'a dyn Fn(&str) -> bool,
    /// Now.
    pub now: Timestamp,
}

/// Why an instance is not reverted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The policy did not choose `Revert`.
    NotChosen,
    /// The last recorded request is not this policy's move to `httpTokens: required`, accepted
    /// within the window (or there is none).
    NotThisChange,
    /// No refused call counted (or no verdict).
    NoRejectedCalls,
    /// EC2 shows a change pending, or the instance no longer requires IMDSv2.
    NotRevertible,
    /// No recorded original differs from the instance's options.
    NothingRecorded,
}

/// A revert to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revert {
    /// The complete request: the instance's options with every recorded original put back.
    pub request: FullOptions,
    /// The options that go back.
    pub restored: Vec<Field>,
    /// The refused calls that caused it.
    pub rejected_calls: u64,
}

/// Decides whether the instance is reverted.
pub fn decide(input: &RevertInput<'_>) -> Result<Revert, Keep> {
    if input.action != RejectedCallsAction::Revert {
        return Err(Keep::NotChosen);
    }
    let change = input.record.change.as_ref().ok_or(Keep::NotThisChange)?;
    let this_change = change.policy == input.policy
        && change.state == ChangeState::Accepted
        && record::requires_tokens(change)
        && record::age(change.at, input.now) < input.window;
    if !this_change {
        return Err(Keep::NotThisChange);
    }
    let calls = input.rejected.filter(|c| *c > 0.0).ok_or(Keep::NoRejectedCalls)?;
    let current = FullOptions::completed(&input.current.values);
    if input.current.state == ApplyState::Pending || current.http_tokens != HttpTokens::Required {
        return Err(Keep::NotRevertible);
    }
    let (request, restored) = originals_over(input.record, &current, input.live);
    if restored.is_empty() {
        return Err(Keep::NothingRecorded);
    }
    Ok(Revert {
        request,
        restored,
        rejected_calls: calls.round() as u64,
    })
}

/// `current` with each recorded original (of a live policy) that differs put back.
fn originals_over(
    record: &InstanceRecord,
    current: &FullOptions,
    live: &dyn Fn(&str) -> bool,
) -> (FullOptions, Vec<Field>) {
    let mut target = *current;
    let mut restored = Vec::new();
    for (name, entry) in &record.options {
        let Some(field) = record::field_named(name) else {
            continue;
        };
        let Some(original) = record.original(field).filter(|_| entry.by.iter().any(|p| live(p))) else {
            continue;
        };
        if current.get(field) != original {
            target = target.with(field, original);
            restored.push(field);
        }
    }
    (target, restored)
}

/// The record written ahead of the revert request: the request is recorded as `Sent` and the
/// hold is set. The originals stay: they are still what the instance had before the operator
/// first changed it (a later enforcement keeps them, a restore finds nothing to do).
pub fn before_revert(record: &InstanceRecord, change: ChangeRecord, hold: RevertHold) -> InstanceRecord {
    let mut next = record.clone();
    next.change = Some(change);
    next.reverted = Some(hold);
    next
}

/// After a describe settled `sent` (the record's last request, `Sent`): when it was a revert that
/// did not take (the settled record has no request any more), its hold goes too — the instance
/// was never put back.
pub fn forget_untaken(settled: &mut InstanceRecord, sent: &ChangeRecord) {
    let untaken = settled.change.is_none() && settled.reverted.as_ref().is_some_and(|h| h.options == sent.request);
    if untaken {
        settled.reverted = None;
    }
}

/// Marks the plan of a held instance: it would otherwise get a request (or its revert is still
/// `pending` in EC2), and gets none. A plan that needs nothing (the instance complies anyway),
/// failed or conflicts is kept.
pub fn hold_plan(plan: &mut NodePlan, hold: &RevertHold) {
    if !matches!(plan.state, NodeState::Drifted | NodeState::Blocked | NodeState::Pending) {
        return;
    }
    plan.state = NodeState::Blocked;
    plan.reason = Reason::Reverted;
    plan.action = None;
    plan.needs_imdsv1_usage = None;
    plan.warning = None;
    plan.message = Some(hold_message(hold));
}

/// What a hold says to a person: why, since when, and how to release it.
pub fn hold_message(hold: &RevertHold) -> String {
    format!(
        "reverted by policy {} at {} after {} refused IMDSv1 calls (MetadataNoTokenRejected) since its change; held at {} until the policy's spec changes or its annotation {}=<new value>",
        hold.policy,
        hold.at,
        hold.rejected_calls,
        hold.options,
        crate::api::REENFORCE_ANNOTATION
    )
}

#[cfg(test)]
mod tests;
