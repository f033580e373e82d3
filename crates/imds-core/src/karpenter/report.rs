//! The status entry of a node-class mismatch (its own module: the CRD's status names it, and
//! it needs nothing else of the core).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// In a policy's status: a Karpenter `EC2NodeClass` whose nodes would launch with options this
/// policy changes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassReport {
    /// The `EC2NodeClass`.
    pub node_class: String,
    /// The NodePools using it whose nodes the policy selects (empty: no NodePool uses it yet,
    /// and the policy selects its nodes by the node-class label alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_pools: Vec<String>,
    /// Each option that differs: what the node class launches with → what the policy wants.
    pub mismatches: Vec<String>,
}
