//! The `InstanceMetadataPolicy` custom resource: its spec (what the cluster's owners declare), its
//! status (what the operator observed), and the vocabulary of conditions and reasons.
//!
//! Every field's doc comment becomes its `kubectl explain` text.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Group of the operator's API.
pub const GROUP: &str = "imds-operator.io";
/// Name under which the operator writes (field manager, event reporter).
pub const MANAGER: &str = "imds-operator";

/// The at-least-one-option rule, shared by the schema and the README.
const AT_LEAST_ONE_OPTION: &str = "has(self.httpTokens) || has(self.httpPutResponseHopLimit) || has(self.httpEndpoint) || has(self.httpProtocolIPv6) || has(self.instanceMetadataTags)";

/// Turning features on while the endpoint is off makes no sense.
const ENDPOINT_DISABLED_COMBINATION: &str = "!has(self.httpEndpoint) || self.httpEndpoint != 'disabled' || ((!has(self.instanceMetadataTags) || self.instanceMetadataTags != 'enabled') && (!has(self.httpProtocolIPv6) || self.httpProtocolIPv6 != 'enabled'))";

/// Disabling the endpoint needs an explicit acknowledgement.
const ENDPOINT_DISABLED_ACK: &str = "!has(self.metadataOptions.httpEndpoint) || self.metadataOptions.httpEndpoint != 'disabled' || (has(self.guards) && has(self.guards.allowEndpointDisabled) && self.guards.allowEndpointDisabled)";

/// maxInFlight is a positive count or a percentage 1–100.
const MAX_IN_FLIGHT: &str = "!has(self.rollout) || !has(self.rollout.maxInFlight) || (type(self.rollout.maxInFlight) == int ? self.rollout.maxInFlight > 0 : self.rollout.maxInFlight.matches('^(100|[1-9][0-9]?)%$'))";

/// Label selector operators the API accepts.
const SELECTOR_OPERATORS: &str = "!has(self.nodeSelector.matchExpressions) || self.nodeSelector.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])";

/// In/NotIn take values, Exists/DoesNotExist none.
const SELECTOR_VALUES: &str = "!has(self.nodeSelector.matchExpressions) || self.nodeSelector.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))";

/// Desired EC2 Instance Metadata Service (IMDS) options for the instances behind a set of nodes.
///
/// The operator maps every selected Node to its EC2 instance through `spec.providerID`, reads the
/// instance's live metadata options and, in `Enforce` mode, calls
/// `ModifyInstanceMetadataOptions` where they drifted. Compliance is reported in `status`.
// kube's derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imds-operator.io",
    version = "v1alpha1",
    kind = "InstanceMetadataPolicy",
    plural = "instancemetadatapolicies",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    ),
    shortname = "imp",
    shortname = "imdspolicy",
    category = "imds",
    status = "InstanceMetadataPolicyStatus",
    doc = "Declares the EC2 instance metadata (IMDS) options that the instances of the selected nodes must have.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matchedNodes"),
    printcolumn(name = "Compliant", type_ = "integer", json_path = ".status.compliantNodes"),
    printcolumn(name = "Drifted", type_ = "integer", json_path = ".status.driftedNodes"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new(ENDPOINT_DISABLED_ACK).message("httpEndpoint: disabled breaks everything on the node that reads instance metadata; set spec.guards.allowEndpointDisabled: true to confirm"),
    validation = Rule::new(MAX_IN_FLIGHT).message("rollout.maxInFlight must be a positive count or a percentage from 1% to 100%"),
    validation = Rule::new(SELECTOR_OPERATORS).message("nodeSelector.matchExpressions[].operator must be In, NotIn, Exists or DoesNotExist"),
    validation = Rule::new(SELECTOR_VALUES).message("nodeSelector.matchExpressions[]: In and NotIn need at least one value; Exists and DoesNotExist take none")
)]
pub struct InstanceMetadataPolicySpec {
    /// Which nodes this policy applies to: a standard label selector (matchLabels and
    /// matchExpressions). `{}` selects every node. Typical keys: `eks.amazonaws.com/nodegroup`,
    /// `karpenter.sh/nodepool`, `node.kubernetes.io/instance-type`.
    pub node_selector: LabelSelector,

    /// The metadata options the selected instances must have. An omitted option means "this
    /// policy does not care"; at least one must be set.
    pub metadata_options: MetadataOptions,

    /// `Enforce` (default) modifies instances whose options drifted. `Audit` only observes and
    /// reports drift; it never modifies an instance.
    #[serde(default)]
    pub mode: PolicyMode,

    /// When several policies select the same node and set the same option, the policy with the
    /// highest priority wins for that option. Two policies of equal priority that set the same
    /// option to different values are a conflict: that option is left alone on that node and
    /// both policies report it. Default 0.
    #[serde(default)]
    pub priority: i32,

    /// Safety checks before an instance is changed.
    #[serde(default)]
    pub guards: Guards,

    /// How many instances may be changing at once, and when a rollout halts.
    #[serde(default)]
    pub rollout: Rollout,

    /// What happens to the instances when this policy is deleted: `Retain` (default) leaves
    /// their options as they are; `Restore` puts back, on each instance, only the options this
    /// policy decided and the operator changed, to the value they had before the operator first
    /// changed them, and only where no remaining policy decides them (options another policy set
    /// are left alone). The record is kept in ConfigMaps in the operator's namespace. A restore is
    /// a staged rollout (maxInFlight, settle, halt); the annotation
    /// `imds-operator.io/abandon-restore` ends one that cannot finish.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// Safety checks before an instance is changed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct Guards {
    /// Before an instance is moved to `httpTokens: required`, read its CloudWatch metric
    /// `MetadataNoToken` (IMDSv1 calls) over a lookback window. `Block` (default) leaves an
    /// instance that made IMDSv1 calls alone and reports it (`IMDSv1InUse`); `Warn` changes it
    /// and reports; `Off` skips the check.
    #[serde(default)]
    pub imdsv1_usage: Imdsv1UsageGuard,

    /// Must be `true` for `httpEndpoint: disabled`: turning the endpoint off breaks everything
    /// on the node that reads instance metadata (kubelet credential providers, the VPC CNI,
    /// AWS SDKs, the node's own bootstrap).
    #[serde(default)]
    pub allow_endpoint_disabled: bool,
}

/// The IMDSv1-usage guard.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(crates(kube_core = "::kube_core"), validation = Rule::new("duration(self.lookback) >= duration('1h') && duration(self.lookback) <= duration('336h')").message("guards.imdsv1Usage.lookback must be between 1h and 336h (14 days)"), validation = Rule::new("!has(self.ignoreAfterLaunch) || duration(self.ignoreAfterLaunch) <= duration('1h')").message("guards.imdsv1Usage.ignoreAfterLaunch must be at most 1h"))]
pub struct Imdsv1UsageGuard {
    /// `Block` (default), `Warn` or `"Off"` (quote it: unquoted, YAML reads Off as false).
    #[serde(default)]
    pub mode: GuardMode,
    /// How far back to look for IMDSv1 calls, as a duration (`24h`, `72h`). Default 24h;
    /// CloudWatch keeps 5-minute data for 63 days.
    #[serde(default = "default_lookback")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    pub lookback: String,
    /// IMDSv1 calls in an instance's first minutes after launch (its `LaunchTime`) do not block,
    /// as a duration (default `10m`; `0s` judges every call): new nodes often make a few at first
    /// boot (the VPC CNI's first start does), and such a node would otherwise stay on IMDSv1 for
    /// the whole lookback. Calls after this window block as before; pair it with
    /// `rollout.verify` to catch what breaks after the change. At most 1h.
    #[serde(default = "default_boot_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    pub ignore_after_launch: String,
}

impl Default for Imdsv1UsageGuard {
    fn default() -> Self {
        Imdsv1UsageGuard {
            mode: GuardMode::Block,
            lookback: default_lookback(),
            ignore_after_launch: default_boot_window(),
        }
    }
}

fn default_lookback() -> String {
    "24h".to_string()
}

fn default_boot_window() -> String {
    "10m".to_string()
}

// What a guard does when it finds a problem.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GuardMode {
    /// Leave the instance alone and report it.
    #[default]
    Block,
    /// Change the instance and report.
    Warn,
    /// Do not check.
    Off,
}

/// Staged rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// How many selected instances may be changing at once: a count (`5`) or a percentage of
    /// the selected nodes (`"25%"`, rounded up, at least 1). An instance is changing from the
    /// modify request until EC2 reports it `applied` and `settleSeconds` have passed.
    /// Default `"25%"`.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: IntOrString,
    /// Seconds a modified instance still counts as changing after EC2 applied the change, so
    /// that a node that breaks has time to turn NotReady before the next batch. Default 30.
    #[serde(default = "default_settle_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub settle_seconds: i32,
    /// If a node this policy modified turns NotReady within this many seconds of the change,
    /// the rollout halts (`Stalled`, reason `RolloutHalted`) until a person resumes it by
    /// setting the annotation `imds-operator.io/resume-rollout` to a new value, or changes the
    /// spec. Default 600; 0 turns halting off.
    #[serde(default = "default_halt_window")]
    #[schemars(range(min = 0, max = 86400))]
    pub halt_on_not_ready_within_seconds: i32,
    /// Verification after the change: IMDSv1 calls that EC2 refused (CloudWatch
    /// `MetadataNoTokenRejected`) on an instance this policy moved to `httpTokens: required`
    /// mean something on that node just broke.
    #[serde(default)]
    pub verify: Verify,
}

/// Verification of instances moved to `httpTokens: required`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(crates(kube_core = "::kube_core"), validation = Rule::new("!has(self.window) || (duration(self.window) >= duration('1m') && duration(self.window) <= duration('24h'))").message("rollout.verify.window must be between 1m and 24h"))]
pub struct Verify {
    /// How long after its change an instance is watched for rejected IMDSv1 calls, as a duration
    /// (default `15m`, 1m to 24h). An instance counts as changing (toward `maxInFlight`) until its
    /// window ends, so the next batch waits for the verdict; CloudWatch publishes EC2 metrics
    /// every 5 minutes.
    #[serde(default = "default_verify_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    pub window: String,
    /// What rejected calls within the window do: `Halt` (default) halts the rollout like a node
    /// turning NotReady (`Stalled`, `IMDSv1CallsRejected`, an Event; resume with the annotation
    /// `imds-operator.io/resume-rollout` or a spec change); `Revert` also puts each instance that
    /// refused calls back to its recorded original options (`Reverted`) and holds it until a spec
    /// change or a new `imds-operator.io/reenforce-reverted` value; `Ignore` reads nothing.
    #[serde(default)]
    pub on_rejected_calls: RejectedCallsAction,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            window: default_verify_window(),
            on_rejected_calls: RejectedCallsAction::default(),
        }
    }
}

fn default_verify_window() -> String {
    "15m".to_string()
}

/// What IMDSv1 calls refused after the change do to the rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RejectedCallsAction {
    /// Halt the rollout.
    #[default]
    Halt,
    /// Halt the rollout and put the instance back to its recorded options.
    Revert,
    /// Do not verify.
    Ignore,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_in_flight: default_max_in_flight(),
            settle_seconds: default_settle_seconds(),
            halt_on_not_ready_within_seconds: default_halt_window(),
            verify: Verify::default(),
        }
    }
}

fn default_max_in_flight() -> IntOrString {
    IntOrString::String("25%".to_string())
}

fn default_settle_seconds() -> i32 {
    30
}

fn default_halt_window() -> i32 {
    600
}

// What happens to instances when the policy is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnDelete {
    /// Leave the instances' options as they are.
    #[default]
    Retain,
    /// Restore the options recorded before the operator first changed each instance.
    Restore,
}

/// The five instance metadata options of an EC2 instance. Each is optional: an omitted option is
/// left as it is on the instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new(AT_LEAST_ONE_OPTION).message("set at least one of httpTokens, httpPutResponseHopLimit, httpEndpoint, httpProtocolIPv6, instanceMetadataTags"),
    validation = Rule::new(ENDPOINT_DISABLED_COMBINATION).message("instanceMetadataTags and httpProtocolIPv6 cannot be enabled while httpEndpoint is disabled")
)]
pub struct MetadataOptions {
    /// `required` allows only IMDSv2 (session tokens); `optional` also allows IMDSv1 calls
    /// without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<HttpTokens>,

    /// The maximum number of network hops a PUT response (the IMDSv2 token) may travel, 1 to 64.
    /// Pods that are not on the host network need 2 to reach IMDSv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: Option<i32>,

    /// `enabled` or `disabled`: whether the instance metadata endpoint answers at all. Disabling
    /// it breaks everything on the node that reads instance metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<Toggle>,

    /// `enabled` or `disabled`: whether the IPv6 endpoint of the metadata service is on (Nitro
    /// instances only).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "httpProtocolIPv6")]
    pub http_protocol_ipv6: Option<Toggle>,

    /// `enabled` or `disabled`: whether instance tags are readable from instance metadata. EC2
    /// refuses `enabled` on instances with a tag key containing `/` or a space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metadata_tags: Option<Toggle>,
}

// IMDS token requirement. (No doc comment: it would replace the fields' descriptions.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// Only IMDSv2 (session-token) requests are answered.
    Required,
    /// IMDSv1 requests without a token are answered too.
    Optional,
}

// An on/off metadata option.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

// Whether a policy modifies instances or only reports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyMode {
    /// Modify drifted instances.
    #[default]
    Enforce,
    /// Observe and report drift, never modify.
    Audit,
}

impl HttpTokens {
    /// The value as EC2 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Required => "required",
            HttpTokens::Optional => "optional",
        }
    }

    /// Parses EC2's spelling; `None` for anything else.
    pub fn from_ec2(value: &str) -> Option<HttpTokens> {
        [HttpTokens::Required, HttpTokens::Optional]
            .into_iter()
            .find(|t| t.as_str() == value)
    }
}

impl Toggle {
    /// The value as EC2 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Toggle::Enabled => "enabled",
            Toggle::Disabled => "disabled",
        }
    }

    /// Parses EC2's spelling; `None` for anything else.
    pub fn from_ec2(value: &str) -> Option<Toggle> {
        [Toggle::Enabled, Toggle::Disabled]
            .into_iter()
            .find(|t| t.as_str() == value)
    }
}

impl fmt::Display for HttpTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Toggle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyMode::Enforce => "Enforce",
            PolicyMode::Audit => "Audit",
        })
    }
}

/// What the operator observed the last time it reconciled this policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMetadataPolicyStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Nodes selected by `spec.nodeSelector`.
    #[serde(default)]
    pub matched_nodes: i32,
    /// Selected nodes whose instance has every option this policy decides, applied.
    #[serde(default)]
    pub compliant_nodes: i32,
    /// Selected nodes whose instance differs from what this policy decides.
    #[serde(default)]
    pub drifted_nodes: i32,
    /// Selected nodes whose instance has a metadata change in flight (`pending` in EC2).
    #[serde(default)]
    pub pending_nodes: i32,
    /// Selected nodes the operator cannot manage: no providerID yet, not an EC2 instance
    /// (Fargate, another cloud), a malformed providerID, or a terminated instance.
    #[serde(default)]
    pub skipped_nodes: i32,
    /// Selected nodes where reading or modifying the instance failed.
    #[serde(default)]
    pub failed_nodes: i32,
    /// Selected nodes where this policy and another of equal priority set an option to
    /// different values; that option is left alone.
    #[serde(default)]
    pub conflicted_nodes: i32,

    /// Selected nodes a guard keeps the operator from changing (IMDSv1 still in use, a tag key
    /// EC2 refuses with instanceMetadataTags, …).
    #[serde(default)]
    pub blocked_nodes: i32,

    /// Set while the staged rollout is halted because a node this policy changed turned
    /// NotReady. Resume with the annotation `imds-operator.io/resume-rollout` set to a new
    /// value, or by changing the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_halt: Option<RolloutHalt>,

    /// The value of the `imds-operator.io/resume-rollout` annotation the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resume: Option<String>,

    /// While an `onDelete: Restore` policy is being deleted: nodes whose options are still to be
    /// put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restoring_nodes: Option<i32>,

    /// While an `onDelete: Restore` policy is being deleted: nodes whose options were put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_nodes: Option<i32>,
    /// The launch sources (Karpenter `EC2NodeClass`, EKS node group, launch template, Auto
    /// Scaling group, from the instances' tags) whose new instances this policy had to change in
    /// the last 24 hours, most first, at most 10: fix the source (e.g. `httpTokens: required` in
    /// the launch template) and the churn stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_sources: Vec<crate::launch_source::LaunchSourceCount>,

    /// Up to 20 selected nodes that are not compliant, with the reason and each drifted option
    /// (observed → desired). Failures and conflicts are listed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_compliant_nodes: Vec<NodeReport>,

    /// Set when the region's account-level IMDS defaults (what new instances launch with)
    /// disagree with what this policy enforces: new instances then launch drifted. Fix the
    /// account defaults (or create the InstanceMetadataDefaults singleton).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_defaults: Option<AccountDefaultsReport>,

    /// Karpenter EC2NodeClasses whose nodes this policy would select and whose
    /// `spec.metadataOptions` (Karpenter's defaults where unset) launch them with other options
    /// than it sets, at most 10: fix the node class before its nodes launch drifted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_classes: Vec<crate::karpenter::report::NodeClassReport>,

    /// With `--policy-reports`: the wg-policy reports that list every selected node's result,
    /// or why there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_reports: Option<crate::policy_report::status::PolicyReportsStatus>,

    /// When the operator last finished reconciling this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// kstatus conditions: `Ready` (every selected instance matches and is applied),
    /// `Reconciling` (changes in flight), `Stalled` (progress needs a person).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// In a policy's status: where the region's account defaults disagree with what the policy
/// enforces (so new instances launch drifted and are fixed only after they appear).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountDefaultsReport {
    /// Who manages the account's defaults: `account` or `declarative-policy`.
    pub managed_by: String,
    /// Up to 4 options: the value new instances get from the account default → the policy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// What it means and what to do (at most 512 characters).
    pub message: String,
}

/// Why a staged rollout halted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHalt {
    /// The node that turned NotReady (or refused IMDSv1 calls) after the operator changed its
    /// instance.
    pub node: String,
    /// Its instance.
    pub instance_id: String,
    /// When the operator halted the rollout.
    pub since: Time,
    /// The policy generation the halt applies to; a spec change resumes the rollout.
    pub generation: i64,
    /// Set when the rollout halted because IMDSv1 calls were refused on the node's instance
    /// after its change (`MetadataNoTokenRejected`, reason `IMDSv1CallsRejected`): how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_calls: Option<u64>,
}

/// Annotation that resumes a halted rollout when set to a value the operator has not acted on.
pub const RESUME_ANNOTATION: &str = "imds-operator.io/resume-rollout";

/// A new value re-enforces the instances the policy reverted (`onRejectedCalls: Revert`).
pub const REENFORCE_ANNOTATION: &str = "imds-operator.io/reenforce-reverted";

/// Finalizer of policies with `onDelete: Restore`.
pub const RESTORE_FINALIZER: &str = "imds-operator.io/restore";

/// Set (to any value) on a `Restore` policy being deleted to give up restoring: the finalizer
/// goes, the instances keep the options they have, and a Warning event names them.
pub const ABANDON_RESTORE_ANNOTATION: &str = "imds-operator.io/abandon-restore";

/// One node that is not compliant with the policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The Node's name.
    pub node: String,
    /// The EC2 instance ID from the Node's providerID, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Why the node is not compliant: `Drifted`, `Pending`, `Conflict`, a skip reason or an
    /// error reason.
    pub reason: String,
    /// Each option that differs, observed → desired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<FieldDrift>,
    /// Details for people (the EC2 error message, the conflicting policies…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One option whose observed value differs from the desired one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldDrift {
    /// The option's name, as in `spec.metadataOptions`.
    pub field: String,
    /// The value on the instance now (`unset` when EC2 did not report it).
    pub observed: String,
    /// The value the policies want.
    pub desired: String,
}

pub mod condition;

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::CustomResourceExt;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(InstanceMetadataPolicy::crd()).expect("crd serializes")
    }

    #[test]
    fn crd_is_cluster_scoped_with_names_and_status() {
        let crd = crd_json();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["imp", "imdspolicy"])
        );
        assert_eq!(crd["spec"]["names"]["categories"], serde_json::json!(["imds"]));
        assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    }

    #[test]
    fn crd_schema_carries_rules_and_ranges() {
        let text = serde_json::to_string(&crd_json()).expect("json");
        assert!(text.contains("set at least one of httpTokens"));
        assert!(text.contains("\"maximum\":64"));
        assert!(text.contains("\"minimum\":1"));
        assert!(text.contains("httpProtocolIPv6"));
    }

    #[test]
    fn options_round_trip_with_ec2_spelling() {
        let opts: MetadataOptions = serde_json::from_value(serde_json::json!({
            "httpTokens": "required", "httpPutResponseHopLimit": 2, "httpProtocolIPv6": "disabled"
        }))
        .expect("valid options");
        assert_eq!(opts.http_tokens, Some(HttpTokens::Required));
        assert_eq!(opts.http_put_response_hop_limit, Some(2));
        assert_eq!(opts.http_protocol_ipv6, Some(Toggle::Disabled));
        assert_eq!(opts.http_endpoint, None);
    }
}
