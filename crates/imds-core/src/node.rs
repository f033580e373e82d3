//! What the operator keeps of a Node. Clusters of 5,000 nodes are normal: everything the
//! decisions do not read is stripped before the object reaches the in-memory store.

use crate::observation::NodeInput;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kube_core::ResourceExt;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Keeps name, labels, resourceVersion/uid, `spec.providerID`, `spec.unschedulable` and the
/// `Ready` condition; drops everything else (images, managedFields, annotations, addresses…).
pub fn strip(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.owner_references = None;
    node.metadata.finalizers = None;
    let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.clone());
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable);
    node.spec = Some(NodeSpec {
        provider_id,
        unschedulable,
        ..Default::default()
    });
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
        .map(|mut c| {
            // The heartbeat changes every few seconds and means nothing to us.
            c.last_heartbeat_time = None;
            c.message = None;
            vec![c]
        });
    node.status = Some(NodeStatus {
        conditions: ready,
        ..Default::default()
    });
}

/// The Node as the decisions see it.
pub fn to_input(node: &Node) -> NodeInput {
    NodeInput {
        name: node.name_any(),
        labels: node.labels().clone(),
        provider_id: node.spec.as_ref().and_then(|s| s.provider_id.clone()),
    }
}

/// Whether the Node's `Ready` condition is True.
pub fn is_ready(node: &Node) -> bool {
    readiness(node) == Some(true)
}

/// The Node's `Ready` condition: `Some(true)` when True, `Some(false)` when False or Unknown,
/// `None` when the node has no such condition (yet).
pub fn readiness(node: &Node) -> Option<bool> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True")
}

/// A hash of what matters in a Node: events that leave it unchanged (heartbeats, image lists)
/// trigger nothing.
pub fn relevance_hash(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.labels().hash(&mut h);
    node.spec.as_ref().and_then(|s| s.provider_id.as_ref()).hash(&mut h);
    is_ready(node).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::big_node;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};

    #[test]
    fn strip_keeps_only_what_decisions_read() {
        let mut node = big_node();
        let before = relevance_hash(&node);
        strip(&mut node);
        assert_eq!(relevance_hash(&node), before, "stripping keeps what matters");
        assert!(node.metadata.managed_fields.is_none());
        assert!(node.metadata.annotations.is_none());
        let status = node.status.as_ref().expect("status");
        assert!(status.images.is_none());
        let conditions = status.conditions.as_ref().expect("ready kept");
        assert_eq!(conditions.len(), 1);
        assert!(is_ready(&node));
        let input = to_input(&node);
        assert_eq!(
            input.provider_id.as_deref(),
            Some("aws:///us-east-1a/i-0123456789abcdef0")
        );
        assert_eq!(
            input.labels.get("karpenter.sh/nodepool").map(String::as_str),
            Some("general")
        );
        assert!(node.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none());
    }

    #[test]
    fn heartbeats_do_not_change_the_hash() {
        let mut a = big_node();
        let mut b = big_node();
        if let Some(st) = b.status.as_mut() {
            st.images = Some(vec![ContainerImage::default()]);
            st.conditions = Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        }
        strip(&mut a);
        strip(&mut b);
        assert_eq!(relevance_hash(&a), relevance_hash(&b));
        b.labels_mut().insert("team".into(), "x".into());
        assert_ne!(relevance_hash(&a), relevance_hash(&b), "a label change matters");
    }
}
