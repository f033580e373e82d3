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

/// A Node as the watch delivers it, deserialized narrowly: only what [`strip`] keeps is read
/// into memory; images, managedFields, annotations, addresses and the rest are skipped by the
/// parser without being allocated. Watching `SlimNode` instead of `Node` keeps a 13 kB EKS Node
/// from ever existing in full in the operator's memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimNode(pub Node);

#[derive(serde::Deserialize)]
struct WireNode {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
    #[serde(default)]
    status: Option<WireStatus>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    deletion_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(rename = "providerID")]
    provider_id: Option<String>,
    unschedulable: Option<bool>,
}

#[derive(serde::Deserialize)]
struct WireStatus {
    #[serde(default)]
    conditions: Option<Vec<WireCondition>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: Option<String>,
    last_transition_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl<'de> serde::Deserialize<'de> for SlimNode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireNode::deserialize(deserializer)?;
        let ready = wire
            .status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| {
                vec![k8s_openapi::api::core::v1::NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    last_transition_time: c.last_transition_time,
                    ..Default::default()
                }]
            });
        let spec = wire.spec.map(|s| NodeSpec {
            provider_id: s.provider_id,
            unschedulable: s.unschedulable,
            ..Default::default()
        });
        Ok(SlimNode(Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: wire.metadata.name,
                uid: wire.metadata.uid,
                resource_version: wire.metadata.resource_version,
                labels: wire.metadata.labels,
                deletion_timestamp: wire.metadata.deletion_timestamp,
                ..Default::default()
            },
            spec: Some(spec.unwrap_or_default()),
            status: Some(NodeStatus {
                conditions: ready,
                ..Default::default()
            }),
        }))
    }
}

impl kube_core::Resource for SlimNode {
    type DynamicType = ();
    type Scope = kube_core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::big_node;

    #[test]
    fn a_slim_node_is_the_stripped_node() {
        let mut full = big_node();
        let json = serde_json::to_string(&full).expect("serializes");
        let SlimNode(slim) = serde_json::from_str(&json).expect("deserializes");
        strip(&mut full);
        full.metadata.generation = None;
        full.metadata.creation_timestamp = None;
        let mut slim_stripped = slim.clone();
        strip(&mut slim_stripped);
        assert_eq!(slim_stripped, slim, "nothing left to strip");
        assert_eq!(slim.metadata.name, full.metadata.name);
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(slim.spec, full.spec);
        assert_eq!(slim.status, full.status);
        assert_eq!(relevance_hash(&slim), relevance_hash(&full));
        assert_eq!(readiness(&slim), readiness(&full));
        let bare: SlimNode = serde_json::from_str(r#"{"metadata":{"name":"n"}}"#).expect("a bare node");
        assert_eq!(bare.0.metadata.name.as_deref(), Some("n"));
        assert_eq!(readiness(&bare.0), None);
    }
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
