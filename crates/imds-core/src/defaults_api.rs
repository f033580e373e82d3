//! The `InstanceMetadataDefaults` custom resource: an opt-in, cluster-scoped singleton (named
//! `default`) that declares the region's account-level IMDS defaults — what EC2 gives instances
//! launched without metadata options — and what policies show of those defaults in their status.
//!
//! Every field's doc comment becomes its `kubectl explain` text.

pub use crate::api::AccountDefaultsReport;
use crate::api::{HttpTokens, PolicyMode, Toggle};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one name an `InstanceMetadataDefaults` may have.
pub const SINGLETON_NAME: &str = "default";

/// The API server can read `metadata.name` in a rule at the root of a CRD's schema ("apiVersion,
/// kind, metadata.name and metadata.generateName are always accessible from the root of the
/// object"; Kubernetes CRD docs, validation rules).
const SINGLETON_RULE: &str = "self.metadata.name == 'default'";
/// What the API server answers an object of another name with.
const SINGLETON_MESSAGE: &str = "there is one InstanceMetadataDefaults per cluster and it must be named default";

/// The CRD, with the singleton rule at the root of its schema (kube's derive puts root rules
/// through a facade crate the pure core does not depend on, so the rule is added here).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube_core::CustomResourceExt;
    let mut crd = InstanceMetadataDefaults::crd();
    for version in &mut crd.spec.versions {
        if let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            root.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: SINGLETON_RULE.to_string(),
                message: Some(SINGLETON_MESSAGE.to_string()),
                ..ValidationRule::default()
            }]);
        }
    }
    crd
}

/// The region's account-level EC2 instance metadata (IMDS) defaults, as the cluster's owners
/// want them.
///
/// EC2 gives these defaults to instances launched without metadata options of their own (a
/// launch template's or an AMI's settings come first). The operator reconciles them with
/// `ModifyInstanceMetadataDefaults` in `Enforce` mode, or only reports how they differ in
/// `Audit` mode. There is at most one such object, named `default`; the operator leaves the
/// account's defaults alone unless it exists.
// kube's derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "imds-operator.io",
    version = "v1alpha1",
    kind = "InstanceMetadataDefaults",
    plural = "instancemetadatadefaults",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    ),
    shortname = "imdefaults",
    category = "imds",
    status = "InstanceMetadataDefaultsStatus",
    doc = "The region's account-level EC2 instance metadata (IMDS) defaults the operator keeps (a singleton named default).",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "ManagedBy", type_ = "string", json_path = ".status.managedBy"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(crates(kube_core = "::kube_core"))]
pub struct InstanceMetadataDefaultsSpec {
    /// `required` makes new instances launch with IMDSv2 only; `optional` also allows IMDSv1.
    /// Omitted: no preference (the operator leaves the account's value as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<HttpTokens>,

    /// The hop limit new instances launch with, 1 to 64 (2 lets pods off the host network reach
    /// IMDSv2). Omitted: no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: Option<i32>,

    /// `enabled` or `disabled`: whether new instances launch with the metadata endpoint on.
    /// Omitted: no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<Toggle>,

    /// `enabled` or `disabled`: whether new instances launch with instance tags readable from
    /// instance metadata. Omitted: no preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metadata_tags: Option<Toggle>,

    /// `Enforce` (default) sets the account's defaults with `ModifyInstanceMetadataDefaults`
    /// where they differ; `Audit` only reports the difference.
    #[serde(default)]
    pub mode: PolicyMode,
}

/// What the operator last observed of the account's defaults.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMetadataDefaultsStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Who manages the account's defaults: `account`, or `declarative-policy` (an AWS
    /// Organizations declarative policy; the account cannot change them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,

    /// The account's defaults as EC2 reported them (`no-preference` where none is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_level: Option<AccountLevelDefaults>,

    /// Each option whose account default differs from the spec: the account's value → the
    /// spec's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<String>,

    /// When the operator last read the account's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// kstatus conditions: `Ready` (the account's defaults are as declared), `Reconciling` (a
    /// change is being made), `Stalled` (progress needs a person: Audit drift, a declarative
    /// policy, a denied permission).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The account-level IMDS defaults, each as EC2 spells it (`no-preference` when unset).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountLevelDefaults {
    /// `required`, `optional` or `no-preference`.
    pub http_tokens: String,
    /// 1 to 64, or `no-preference`.
    pub http_put_response_hop_limit: String,
    /// `enabled`, `disabled` or `no-preference`.
    pub http_endpoint: String,
    /// `enabled`, `disabled` or `no-preference`.
    pub instance_metadata_tags: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_the_singleton_rule_at_the_root() {
        let crd = crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "instancemetadatadefaults");
        let json = serde_json::to_value(&crd).expect("serializes");
        let root = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(root["x-kubernetes-validations"][0]["rule"], SINGLETON_RULE);
        let spec = &root["properties"]["spec"]["properties"];
        for field in [
            "httpTokens",
            "httpPutResponseHopLimit",
            "httpEndpoint",
            "instanceMetadataTags",
            "mode",
        ] {
            let description = spec[field]["description"].as_str().unwrap_or_default();
            assert!(!description.is_empty(), "{field} has kubectl explain text");
        }
        assert_eq!(spec["httpPutResponseHopLimit"]["maximum"], 64.0);
    }
}
