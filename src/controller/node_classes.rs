//! Per policy: the Karpenter node classes that would launch its nodes drifted
//! ([`imds_core::karpenter::mismatches`] on [`super::karpenter`]'s read), for its status, and a
//! Warning when that list changes.

use super::context::Context;
use super::events::{PolicyEvent, publish};
use imds_core::api::InstanceMetadataPolicy;
use imds_core::karpenter::{self, NodeClassReport};
use imds_core::reason::Reason;
use imds_core::selection::PolicyInput;

/// The mismatches of `me` (the policy being reconciled, reduced); empty without Karpenter.
pub async fn mismatches(ctx: &Context, me: &PolicyInput) -> Vec<NodeClassReport> {
    match ctx.karpenter.get(&ctx.clients.kube).await {
        Some(inventory) => karpenter::mismatches(me, &inventory.classes, &inventory.pools),
        None => Vec::new(),
    }
}

/// One Warning per node class newly reported (not on every reconcile while it lasts).
pub async fn publish_new(ctx: &Context, policy: &InstanceMetadataPolicy, reports: &[NodeClassReport]) {
    let before: Vec<NodeClassReport> = policy
        .status
        .as_ref()
        .map(|s| s.node_classes.clone())
        .unwrap_or_default();
    for report in reports.iter().filter(|r| !before.contains(r)) {
        let pools = if report.node_pools.is_empty() {
            String::new()
        } else {
            format!(" (NodePools {})", report.node_pools.join(", "))
        };
        let note = format!(
            "Karpenter EC2NodeClass {}{pools} launches nodes this policy selects with {}: they launch drifted; set spec.metadataOptions of the node class",
            report.node_class,
            report.mismatches.join(", ")
        );
        let event = PolicyEvent::warning(None, Reason::NodeClassMismatch, "CompareNodeClass", note);
        publish(ctx, policy, event).await;
    }
}
