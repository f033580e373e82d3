//! The record of what the operator changed on an instance, pure: per option, the value before the
//! operator first changed it and the policies whose decision changed it; and the instance's last
//! modify request (what the staged rollout counts as in flight and what may halt it).
//!
//! The rules:
//! - **Before a change**, every option the request changes gets an entry: its current value as
//!   the original (unless an entry of a live policy exists: an original is never overwritten),
//!   attributed to the policies that decide it. An entry whose policies are all gone (deleted with
//!   `Retain`) no longer counts: the value it left is the new baseline.
//! - **When a `Restore` policy is deleted**, only entries attributed to it are looked at. Where a
//!   remaining policy enforces the option, the entry passes to that policy and the value stays;
//!   otherwise the option goes back to its original and the entry is dropped. Options the deleted
//!   policy did not decide are never touched.

use crate::options::{Field, FullOptions, ObservedOptions, OptionValue};
use crate::selection::{Decisions, FieldDecision};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The value of one option before the operator first changed it, and who changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionRecord {
    /// The value before the first change, as EC2 spells it.
    pub original: String,
    /// The policies whose decision the change carried out.
    pub by: BTreeSet<String>,
}

/// Where a modify request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeState {
    /// Recorded before sending; no answer yet (or the answer was lost).
    Sent,
    /// EC2 accepted it (or a describe showed it took effect).
    Accepted,
}

/// The last modify request sent to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    /// The policy that sent it (for a restore: the policy being deleted).
    pub policy: String,
    /// The node.
    pub node: String,
    /// When it was recorded (just before sending), then when EC2 accepted it.
    pub at: Timestamp,
    /// Whether the node was Ready then (a node already NotReady does not halt a rollout).
    pub was_ready: bool,
    /// The request, in [`FullOptions::to_tag_value`] form.
    pub request: String,
    /// Where it is.
    pub state: ChangeState,
}

impl ChangeRecord {
    /// A request of `policy` to the instance behind `node`, at `at`.
    pub fn new(
        policy: &str,
        node: &str,
        at: Timestamp,
        was_ready: bool,
        request: &FullOptions,
        state: ChangeState,
    ) -> Self {
        ChangeRecord {
            policy: policy.to_string(),
            node: node.to_string(),
            at,
            was_ready,
            request: request.to_tag_value(),
            state,
        }
    }
}

/// What the operator knows it did to one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    /// Per option (by its `spec.metadataOptions` name), the original and who changed it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, OptionRecord>,
    /// The last modify request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeRecord>,
    /// Set when the operator reverted the instance after refused IMDSv1 calls: no request goes
    /// to it while the hold is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<RevertHold>,
}

/// Kept in an instance's record after the operator reverted it: no request goes to the instance
/// while the hold is in force ([`crate::revert::in_force`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevertHold {
    /// The policy whose change was reverted.
    pub policy: String,
    /// That policy's `metadata.generation` then; a spec change releases the hold.
    pub generation: i64,
    /// The node.
    pub node: String,
    /// When the operator reverted the instance.
    pub at: Timestamp,
    /// The refused IMDSv1 calls counted since the change.
    pub rejected_calls: u64,
    /// The options the instance was put back to, in [`FullOptions::to_tag_value`] form.
    pub options: String,
    /// The value of the re-enforce annotation on the policy then; another value releases the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenforce_seen: Option<String>,
}

/// A stored record that cannot be used; it is never applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the record of {instance_id} is invalid: {why}")]
pub struct InvalidRecord {
    /// The instance.
    pub instance_id: String,
    /// What is wrong with it.
    pub why: String,
}

impl InstanceRecord {
    /// Parses and checks a stored record: known option names, originals valid for their option,
    /// a request that parses.
    pub fn parse(instance_id: &str, text: &str) -> Result<InstanceRecord, InvalidRecord> {
        let invalid = |why: String| InvalidRecord {
            instance_id: instance_id.to_string(),
            why,
        };
        let record: InstanceRecord = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, entry) in &record.options {
            let field = field_named(name).ok_or_else(|| invalid(format!("unknown option {name:?}")))?;
            if OptionValue::parse(field, &entry.original).is_none() {
                return Err(invalid(format!("{name}: {:?} is not a valid value", entry.original)));
            }
            if entry.by.is_empty() {
                return Err(invalid(format!("{name}: no policy recorded")));
            }
        }
        if let Some(change) = &record.change
            && FullOptions::from_tag_value(&change.request).is_none()
        {
            return Err(invalid(format!("change: {:?} is not a request", change.request)));
        }
        if let Some(hold) = &record.reverted
            && FullOptions::from_tag_value(&hold.options).is_none()
        {
            return Err(invalid(format!("reverted: {:?} is not a set of options", hold.options)));
        }
        Ok(record)
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        // A record of strings, maps and a timestamp always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether nothing is recorded (the stored record can go).
    pub fn is_empty(&self) -> bool {
        self.options.is_empty() && self.change.is_none() && self.reverted.is_none()
    }

    /// The original of `field`, when recorded.
    pub fn original(&self, field: Field) -> Option<OptionValue> {
        let entry = self.options.get(field.name())?;
        OptionValue::parse(field, &entry.original)
    }
}

/// The option named as in `spec.metadataOptions`.
pub fn field_named(name: &str) -> Option<Field> {
    Field::ALL.into_iter().find(|f| f.name() == name)
}

/// The policies that decide each field (the owners of an enforced decision).
pub fn deciders(decisions: &Decisions) -> BTreeMap<Field, BTreeSet<String>> {
    decisions
        .iter()
        .filter_map(|(field, decision)| match decision {
            FieldDecision::Decided {
                owners, enforced: true, ..
            } => Some((*field, owners.iter().cloned().collect())),
            _ => None,
        })
        .collect()
}

/// The record to write before sending `request` to an instance at `current`: every option the
/// request changes gets (or keeps) an entry. `live` tells which policies exist; `sender` stands
/// in where no decider is known.
pub fn before_change(
    record: &InstanceRecord,
    current: &FullOptions,
    request: &FullOptions,
    deciders: &BTreeMap<Field, BTreeSet<String>>,
    sender: &str,
    live: impl Fn(&str) -> bool,
) -> InstanceRecord {
    let mut next = record.clone();
    // A request goes out only when no revert hold is in force: an old one is done with.
    next.reverted = None;
    for field in Field::ALL {
        if current.get(field) == request.get(field) {
            continue;
        }
        let by = deciders
            .get(&field)
            .cloned()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| [sender.to_string()].into());
        let entry = next
            .options
            .entry(field.name().to_string())
            .or_insert_with(|| OptionRecord {
                original: current.get(field).to_string(),
                by: BTreeSet::new(),
            });
        if !entry.by.iter().any(|p| live(p)) {
            // Its policies are gone (Retain): the value they left is the baseline now.
            entry.original = current.get(field).to_string();
            entry.by.clear();
        }
        entry.by.extend(by);
    }
    next
}

/// What deleting a `Restore` policy does to one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The request that puts the options back (`None`: nothing to put back).
    pub request: Option<FullOptions>,
    /// The options put back.
    pub restored: Vec<Field>,
    /// The record afterwards (entries passed on or dropped).
    pub record: InstanceRecord,
}

/// Restores the options `deleted` decided and the operator changed, where no remaining policy
/// enforces them (`remaining` are the decisions of the policies still selecting the node).
/// `live` tells which policies exist: an option a policy deleted with `Retain` also decided
/// keeps its value (its changes are the baseline now) and the entry goes.
pub fn restore(
    record: &InstanceRecord,
    current: &FullOptions,
    deleted: &str,
    remaining: &Decisions,
    live: impl Fn(&str) -> bool,
) -> RestoreOutcome {
    let mut next = record.clone();
    let mut target = *current;
    let mut restored = Vec::new();
    let successors = deciders(remaining);
    for (name, entry) in &record.options {
        if !entry.by.contains(deleted) {
            continue;
        }
        let Some(field) = field_named(name) else { continue };
        let kept_by = match remaining.get(&field) {
            Some(FieldDecision::Conflict { claims }) => Some(claims.iter().map(|(p, _)| p.clone()).collect()),
            _ => successors.get(&field).cloned(),
        };
        let retained_by_another = entry.by.iter().any(|p| p != deleted && !live(p));
        match kept_by {
            Some(by) => {
                if let Some(e) = next.options.get_mut(name) {
                    e.by = by;
                }
            }
            None if retained_by_another => {
                next.options.remove(name);
            }
            None => {
                if let Some(original) = record.original(field) {
                    target = target.with(field, original);
                    restored.push(field);
                }
                next.options.remove(name);
            }
        }
    }
    RestoreOutcome {
        request: (target != *current).then_some(target),
        restored,
        record: next,
    }
}

/// What EC2 answered to a request written ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted, at this time.
    Accepted(Timestamp),
    /// An error that does not say the request was not applied (a lost answer, a 5xx).
    MaybeApplied,
    /// Refused: not applied.
    Refused,
}

/// The record after `answer`: `stored` is the record now (others may have handed entries over
/// since), `written` what was written ahead over `before`. Accepted: the request settles from
/// now. Maybe applied: unchanged (in flight until a describe says). Refused: what the write-ahead
/// changed goes back, and the request holds no slot.
pub fn after_answer(
    stored: &InstanceRecord,
    before: &InstanceRecord,
    written: &InstanceRecord,
    answer: Answer,
) -> InstanceRecord {
    let mut next = stored.clone();
    match answer {
        Answer::MaybeApplied => {}
        Answer::Accepted(at) => {
            next.change = written.change.clone().map(|c| ChangeRecord {
                state: ChangeState::Accepted,
                at,
                ..c
            });
        }
        Answer::Refused => {
            for (name, entry) in &written.options {
                if before.options.get(name) == Some(entry) {
                    continue;
                }
                match before.options.get(name) {
                    Some(old) => next.options.insert(name.clone(), old.clone()),
                    None => next.options.remove(name),
                };
            }
            if stored.change == written.change {
                next.change = before.change.clone();
            }
            if stored.reverted == written.reverted {
                next.reverted = before.reverted.clone();
            }
        }
    }
    next
}

/// How long after a request a describe must be issued to show that the request did not take:
/// EC2's reads are eventually consistent, and the request may still be on its way.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// After a describe issued at `issued`: a request still `Sent` is settled — `Accepted` when the
/// instance shows it (or a pending change), dropped when a describe issued more than
/// [`SETTLE_MARGIN`] after it shows otherwise (the request did not take; it holds no slot).
pub fn settle_sent(change: &ChangeRecord, observed: &ObservedOptions, issued: Timestamp) -> Option<ChangeRecord> {
    if change.state != ChangeState::Sent {
        return Some(change.clone());
    }
    let shows = FullOptions::from_tag_value(&change.request) == Some(FullOptions::completed(&observed.values))
        || observed.state == crate::options::ApplyState::Pending;
    if shows {
        return Some(ChangeRecord {
            state: ChangeState::Accepted,
            ..change.clone()
        });
    }
    let settled_after = age(change.at, issued) > SETTLE_MARGIN;
    (!settled_after).then(|| change.clone())
}

/// How long ago `at` was, at `now` (zero for a time in the future: clocks of replicas differ).
pub fn age(at: Timestamp, now: Timestamp) -> Duration {
    let nanos = now.as_nanosecond().saturating_sub(at.as_nanosecond()).max(0);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Whether the change still counts toward `maxInFlight`: not answered yet, or accepted less
/// than `settle` ago.
pub fn in_flight(change: &ChangeRecord, now: Timestamp, settle: Duration) -> bool {
    change.state == ChangeState::Sent || age(change.at, now) < settle
}

/// Whether the change's request required IMDSv2 (`httpTokens: required`).
pub fn requires_tokens(change: &ChangeRecord) -> bool {
    FullOptions::from_tag_value(&change.request).is_some_and(|r| r.http_tokens == crate::api::HttpTokens::Required)
}

/// [`in_flight`], where a change that required IMDSv2 also counts until its verification
/// window `verify` has passed (the next batch waits for its verdict); `None`: not verified.
pub fn in_flight_until_verified(
    change: &ChangeRecord,
    now: Timestamp,
    settle: Duration,
    verify: Option<Duration>,
) -> bool {
    let verifying = verify.filter(|_| requires_tokens(change)).unwrap_or_default();
    in_flight(change, now, settle.max(verifying))
}

#[cfg(test)]
mod tests;
