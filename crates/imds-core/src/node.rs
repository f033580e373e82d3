//! What the operator keeps of a Node. Clusters of 5,000 nodes are normal: a Node is read
//! narrowly from the watch ([`SlimNode`]) and kept as [`NodeFacts`] — name, uid, labels (interned,
//! see [`crate::labels`]), providerID and readiness — and nothing else.

use crate::labels::{Interner, Labels};
use crate::observation::NodeInput;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A Node, as the controller keeps it. Two facts that compare equal mean nothing that matters
/// changed (heartbeats, images, annotations are not in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: Arc<str>,
    /// `metadata.uid` (policy reports name the Node by it).
    pub uid: Option<Arc<str>>,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.providerID`.
    pub provider_id: Option<Arc<str>>,
    /// The `Ready` condition: `Some(true)` when True, `Some(false)` when False or Unknown,
    /// `None` when the node has no such condition (yet).
    pub ready: Option<bool>,
}

impl NodeFacts {
    /// The facts of a full Node object (labels not interned: for one-off reads such as `report`).
    pub fn of_node(node: &Node) -> NodeFacts {
        NodeFacts {
            name: node.name_any().into(),
            uid: node.metadata.uid.as_deref().map(Arc::from),
            labels: Labels::from(node.labels()),
            provider_id: node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).map(Arc::from),
            ready: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status == "True"),
        }
    }

    /// The Node as the decisions see it.
    pub fn to_input(&self) -> NodeInput {
        NodeInput {
            name: self.name.to_string(),
            labels: self.labels.clone(),
            provider_id: self.provider_id.as_deref().map(str::to_string),
        }
    }
}

/// A Node as the watch delivers it, deserialized narrowly: only name, resourceVersion, labels,
/// `spec.providerID` and the `Ready` condition's status are read; images, managedFields,
/// annotations, addresses and the rest are skipped by the parser without being allocated. It
/// lives only until [`SlimNode::facts`] turns it into what the store keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimNode {
    /// Name, uid and resourceVersion (the watch resumes from the latter).
    pub metadata: ObjectMeta,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
    /// The `Ready` condition, as in [`NodeFacts::ready`].
    pub ready: Option<bool>,
}

impl SlimNode {
    /// What the store keeps, with labels shared through `interner`.
    pub fn facts(&self, interner: &mut Interner) -> NodeFacts {
        NodeFacts {
            name: interner.intern(self.metadata.name.as_deref().unwrap_or_default()),
            uid: self.metadata.uid.as_deref().map(Arc::from),
            labels: interner.labels(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            provider_id: self.provider_id.as_deref().map(Arc::from),
            ready: self.ready,
        }
    }
}

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
    labels: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct WireSpec {
    #[serde(rename = "providerID")]
    provider_id: Option<String>,
}

#[derive(serde::Deserialize)]
struct WireStatus {
    #[serde(default)]
    conditions: Option<Vec<WireCondition>>,
}

#[derive(serde::Deserialize)]
struct WireCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

impl<'de> serde::Deserialize<'de> for SlimNode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireNode::deserialize(deserializer)?;
        let ready = wire
            .status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        Ok(SlimNode {
            metadata: ObjectMeta {
                name: wire.metadata.name,
                uid: wire.metadata.uid,
                resource_version: wire.metadata.resource_version,
                ..Default::default()
            },
            labels: wire.metadata.labels.unwrap_or_default(),
            provider_id: wire.spec.and_then(|s| s.provider_id),
            ready,
        })
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
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::big_node;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};

    #[test]
    fn a_slim_node_has_the_full_nodes_facts() {
        let full = big_node();
        let json = serde_json::to_string(&full).expect("serializes");
        let slim: SlimNode = serde_json::from_str(&json).expect("deserializes");
        let mut interner = Interner::default();
        let facts = slim.facts(&mut interner);
        assert_eq!(facts, NodeFacts::of_node(&full));
        assert_eq!(slim.metadata.resource_version, full.metadata.resource_version);
        assert_eq!(facts.ready, Some(true));
        let input = facts.to_input();
        assert_eq!(
            input.provider_id.as_deref(),
            Some("aws:///us-east-1a/i-0123456789abcdef0")
        );
        assert_eq!(input.labels.get("karpenter.sh/nodepool"), Some("general"));
        let bare: SlimNode = serde_json::from_str(r#"{"metadata":{"name":"n"}}"#).expect("a bare node");
        assert_eq!(bare.metadata.name.as_deref(), Some("n"));
        assert_eq!(bare.ready, None);
    }

    #[test]
    fn heartbeats_and_images_are_not_facts() {
        let a = big_node();
        let mut b = big_node();
        if let Some(st) = b.status.as_mut() {
            st.images = Some(vec![ContainerImage::default()]);
            st.conditions = Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        }
        assert_eq!(NodeFacts::of_node(&a), NodeFacts::of_node(&b));
        b.labels_mut().insert("team".into(), "x".into());
        assert_ne!(NodeFacts::of_node(&a), NodeFacts::of_node(&b), "a label change matters");
    }
}
