//! The policy's status field that says where its reports are (`status.policyReports`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a policy's per-node results are (`--policy-reports`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReportsStatus {
    /// The `ClusterPolicyReport`s (`wgpolicyk8s.io/v1alpha2`) with the policy's results, by
    /// name (written at most one report interval after the status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<String>,
    /// Why no report is written (the ClusterPolicyReport CRD is not installed), when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
