//! Events on policies (events.k8s.io). A node's event names the Node as its `related` object:
//! the recorder aggregates events with the same reason, action and related object into one
//! series, so a modification of each node stays its own event.

use super::context::Context;
use imds_core::api::{InstanceMetadataPolicy, InstanceMetadataPolicyStatus, condition};
use imds_core::plan::{NodePlan, NodeState};
use imds_core::reason::Reason;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

/// Longest note kept (the API server refuses notes over 1 kB).
const MAX_NOTE: usize = 1000;

/// One event about a policy, optionally about one of its nodes.
pub struct PolicyEvent<'a> {
    /// The node it concerns.
    pub node: Option<&'a str>,
    /// Normal or Warning.
    pub type_: EventType,
    /// Why.
    pub reason: Reason,
    /// What the operator was doing (an EC2 operation, `Preflight`, `Rollout`…).
    pub action: &'a str,
    /// For people.
    pub note: String,
}

impl<'a> PolicyEvent<'a> {
    /// A Normal event.
    pub fn normal(node: Option<&'a str>, reason: Reason, action: &'a str, note: String) -> Self {
        PolicyEvent {
            node,
            type_: EventType::Normal,
            reason,
            action,
            note,
        }
    }

    /// A Warning event.
    pub fn warning(node: Option<&'a str>, reason: Reason, action: &'a str, note: String) -> Self {
        PolicyEvent {
            node,
            type_: EventType::Warning,
            reason,
            action,
            note,
        }
    }
}

/// Publishes a Warning that repeats while a failure lasts (every reconcile, every retry): at most
/// once per [`WARNING_WINDOW`](super::memo::WARNING_WINDOW) for the same policy, node, reason and
/// action; the next one says how many were held back. (The recorder also folds repeats into one
/// Event series, but each repeat would still be an API call.)
pub async fn publish_repeating(ctx: &Context, policy: &InstanceMetadataPolicy, mut event: PolicyEvent<'_>) {
    let key = (
        policy.name_any(),
        event.node.map(str::to_string),
        event.reason.to_string(),
        event.action.to_string(),
    );
    match ctx.memo.warning_due(key, std::time::Instant::now()) {
        None => {
            tracing::debug!(policy = %policy.name_any(), reason = %event.reason, note = %event.note, "repeated warning held back")
        }
        Some(held_back) => {
            if held_back > 0 {
                event.note = format!("{} ({held_back} more like this since the last event)", event.note);
            }
            publish(ctx, policy, event).await;
        }
    }
}

/// Publishes an event on the policy; a failure to publish is logged, never fatal.
pub async fn publish(ctx: &Context, policy: &InstanceMetadataPolicy, event: PolicyEvent<'_>) {
    let secondary = event.node.map(|name| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.to_string()),
        ..Default::default()
    });
    let event = Event {
        type_: event.type_,
        reason: event.reason.to_string(),
        note: Some(truncate(event.note, MAX_NOTE)),
        action: event.action.to_string(),
        secondary,
    };
    if let Err(err) = ctx.clients.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(policy = %policy.name_any(), error = %err, "could not publish event");
    }
}

/// One Warning for all the nodes of this policy whose options equal-priority policies disagree on.
pub async fn publish_conflicts(ctx: &Context, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) {
    let conflicted: Vec<&NodePlan> = plans.iter().filter(|p| p.state == NodeState::Conflict).collect();
    if let Some(first) = conflicted.first() {
        let note = format!(
            "{} nodes have options that equal-priority policies disagree on; first: {}: {}",
            conflicted.len(),
            first.node,
            first.message.clone().unwrap_or_default()
        );
        publish_repeating(ctx, policy, PolicyEvent::warning(None, Reason::Conflict, "Plan", note)).await;
    }
}

/// The Warning when a rollout (or a restore, `action`) halts; its note is the `Stalled` message.
pub async fn publish_halt(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    status: &InstanceMetadataPolicyStatus,
    action: &str,
) {
    let note = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let reason = status
        .rollout_halt
        .as_ref()
        .map_or(Reason::RolloutHalted, imds_core::status::halt_reason);
    publish(ctx, policy, PolicyEvent::warning(None, reason, action, note)).await;
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

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc→def".into(), 4), "abc");
        assert_eq!(truncate("short".into(), 100), "short");
    }
}
