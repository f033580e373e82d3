//! Karpenter's `EC2NodeClass` against the policies, pure: which options the nodes a class will
//! launch get (its `spec.metadataOptions`, Karpenter's defaults where unset), which labels those
//! nodes carry (`karpenter.k8s.aws/ec2nodeclass`, `karpenter.sh/nodepool` and the NodePool's
//! `spec.template.metadata.labels`), and where a policy that would select them wants otherwise —
//! reported before any such node launches.
//!
//! Karpenter's defaults (`karpenter.k8s.aws/v1`, `pkg/apis/v1/ec2nodeclass.go` of
//! aws/karpenter-provider-aws): `metadataOptions` omitted, or any of its fields unset, means
//! `httpEndpoint: enabled`, `httpProtocolIPv6: disabled`, `httpPutResponseHopLimit: 1`,
//! `httpTokens: required`; Karpenter always launches with instance metadata tags off (its nodes
//! carry tag keys with `/`).

use crate::api::{HttpTokens, MetadataOptions, Toggle};
use crate::labels::Labels;
use crate::options::{Field, OptionValue};
use crate::selection::PolicyInput;
pub use report::NodeClassReport;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The label Karpenter puts on its nodes naming their `EC2NodeClass`.
pub const NODE_CLASS_LABEL: &str = "karpenter.k8s.aws/ec2nodeclass";
/// The label Karpenter puts on its nodes naming their NodePool.
pub const NODE_POOL_LABEL: &str = "karpenter.sh/nodepool";
/// At most this many node classes are reported per policy.
pub const MAX_REPORTED: usize = 10;

/// `EC2NodeClass.spec.metadataOptions` as written (unset fields absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassMetadataOptions {
    /// `httpEndpoint`.
    pub http_endpoint: Option<String>,
    /// `httpProtocolIPv6`.
    #[serde(rename = "httpProtocolIPv6")]
    pub http_protocol_ipv6: Option<String>,
    /// `httpPutResponseHopLimit`.
    pub http_put_response_hop_limit: Option<i64>,
    /// `httpTokens`.
    pub http_tokens: Option<String>,
}

/// One `EC2NodeClass`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeClass {
    /// `metadata.name`.
    pub name: String,
    /// `spec.metadataOptions` (`None`: omitted).
    pub metadata_options: Option<NodeClassMetadataOptions>,
}

/// One `NodePool` (`karpenter.sh/v1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePool {
    /// `metadata.name`.
    pub name: String,
    /// `spec.template.spec.nodeClassRef.name`.
    pub node_class: String,
    /// `spec.template.metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl NodeClass {
    /// From an object's name and `spec` (a `metadataOptions` that does not parse counts as
    /// omitted: Karpenter's API server would have refused it).
    pub fn from_spec(name: &str, spec: &serde_json::Value) -> NodeClass {
        let metadata_options = spec
            .get("metadataOptions")
            .and_then(|m| serde_json::from_value(m.clone()).ok());
        NodeClass {
            name: name.to_string(),
            metadata_options,
        }
    }

    /// The options its nodes launch with: what it sets, Karpenter's defaults for the rest.
    /// A value EC2 would not know is left out (not compared).
    pub fn launch_options(&self) -> MetadataOptions {
        let m = self.metadata_options.clone().unwrap_or_default();
        let toggle = |v: Option<String>, default: Toggle| match v {
            Some(v) => Toggle::from_ec2(&v),
            None => Some(default),
        };
        MetadataOptions {
            http_tokens: m
                .http_tokens
                .map_or(Some(HttpTokens::Required), |t| HttpTokens::from_ec2(&t)),
            http_put_response_hop_limit: m.http_put_response_hop_limit.map_or(Some(1), |h| {
                i32::try_from(h).ok().filter(|h| crate::options::HOP_LIMITS.contains(h))
            }),
            http_endpoint: toggle(m.http_endpoint, Toggle::Enabled),
            http_protocol_ipv6: toggle(m.http_protocol_ipv6, Toggle::Disabled),
            instance_metadata_tags: Some(Toggle::Disabled),
        }
    }
}

impl NodePool {
    /// From an object's name and `spec`; `None` when it names no node class.
    pub fn from_spec(name: &str, spec: &serde_json::Value) -> Option<NodePool> {
        let template = spec.get("template")?;
        let node_class = template.pointer("/spec/nodeClassRef/name")?.as_str()?.to_string();
        let labels = template
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        Some(NodePool {
            name: name.to_string(),
            node_class,
            labels,
        })
    }
}

/// The label sets of the nodes `class` would launch: one per NodePool using it (its template's
/// labels and Karpenter's two), or with none, the node-class label alone.
pub fn node_labels(class: &NodeClass, pools: &[NodePool]) -> Vec<(Option<String>, Labels)> {
    let mut sets: Vec<(Option<String>, Labels)> = pools
        .iter()
        .filter(|p| p.node_class == class.name)
        .map(|p| {
            let mut labels = p.labels.clone();
            labels.insert(NODE_CLASS_LABEL.to_string(), class.name.clone());
            labels.insert(NODE_POOL_LABEL.to_string(), p.name.clone());
            (Some(p.name.clone()), Labels::from(&labels))
        })
        .collect();
    if sets.is_empty() {
        let labels: BTreeMap<String, String> = [(NODE_CLASS_LABEL.to_string(), class.name.clone())].into();
        sets.push((None, Labels::from(&labels)));
    }
    sets
}

/// The options `policy` sets that `launched` has otherwise, as `option: launched → wanted`.
pub fn option_mismatches(policy: &MetadataOptions, launched: &MetadataOptions) -> Vec<String> {
    Field::ALL
        .into_iter()
        .filter_map(|field| {
            let wanted: OptionValue = policy.get(field)?;
            let have = launched.get(field);
            (have != Some(wanted)).then(|| {
                let have = have.map_or_else(|| "unknown".to_string(), |v| v.to_string());
                format!("{}: {have} → {wanted}", field.name())
            })
        })
        .collect()
}

/// The node classes whose nodes `policy` would select and that launch them with other options
/// than it sets, by name, at most [`MAX_REPORTED`].
pub fn mismatches(policy: &PolicyInput, classes: &[NodeClass], pools: &[NodePool]) -> Vec<NodeClassReport> {
    let mut out: Vec<NodeClassReport> = classes
        .iter()
        .filter_map(|class| {
            let selected: Vec<Option<String>> = node_labels(class, pools)
                .into_iter()
                .filter(|(_, labels)| policy.selects(labels))
                .map(|(pool, _)| pool)
                .collect();
            if selected.is_empty() {
                return None;
            }
            let found = option_mismatches(&policy.options, &class.launch_options());
            (!found.is_empty()).then(|| NodeClassReport {
                node_class: class.name.clone(),
                node_pools: selected.into_iter().flatten().collect(),
                mismatches: found,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node_class.cmp(&b.node_class));
    out.truncate(MAX_REPORTED);
    out
}

pub mod report;
#[cfg(test)]
mod tests;
