//! Every selected node's result, as wg-policy `ClusterPolicyReport`s (`wgpolicyk8s.io/v1alpha2`,
//! the format Kyverno and Policy Reporter read). Pure: from a policy's node plans (the ones its
//! status and `imds-operator report` are made of) to report objects, sharded at
//! [`MAX_RESULTS_PER_REPORT`] results each so that no object nears etcd's 1.5 MiB limit.
//!
//! A result's `timestamp` is when the node's result last changed (carried over from the
//! previous reports), never "now": an unchanged fleet builds byte-identical reports, so the
//! operator writes nothing.

use crate::api::{FieldDrift, InstanceMetadataPolicy};
use crate::plan::{NodePlan, NodeState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube_core::Resource as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The reports' API version.
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// The reports' kind.
pub const KIND: &str = "ClusterPolicyReport";
/// `results[].source` of every result the operator writes.
pub const SOURCE: &str = "imds-operator";
/// `results[].rule`: one rule per policy, "the node's instance has the options the policies
/// decide".
pub const RULE: &str = "imds-options";
/// Results per report object. A drifted node's result is ~650 bytes of JSON, so a full shard is
/// ~0.65 MB (measured at 5,000 nodes by a unit test): under half of etcd's default 1.5 MiB
/// request limit, with room for longer messages and managedFields.
pub const MAX_RESULTS_PER_REPORT: usize = 1000;
/// Label on every report: the policy's uid (always a valid label value).
pub const POLICY_UID_LABEL: &str = "imds-operator.io/policy-uid";
/// Label on every report: the policy's name (when it fits in a label value, 63 characters).
pub const POLICY_LABEL: &str = "imds-operator.io/policy";
/// `app.kubernetes.io/managed-by` on every report.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// A `ClusterPolicyReport`: some of one policy's results.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicyReport {
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`KIND`].
    pub kind: String,
    /// Name, labels, the owner reference to the policy.
    pub metadata: ObjectMeta,
    /// One result per node in this shard, by node name.
    #[serde(default)]
    pub results: Vec<ReportResult>,
    /// The results of this shard, counted.
    #[serde(default)]
    pub summary: Summary,
}

/// One node's result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    /// The policy's name.
    pub policy: String,
    /// [`RULE`].
    #[serde(default)]
    pub rule: String,
    /// pass, fail, warn, error or skip.
    #[serde(default)]
    pub result: Verdict,
    /// The reason, then each option observed → desired, then details.
    #[serde(default)]
    pub message: String,
    /// [`SOURCE`].
    #[serde(default)]
    pub source: String,
    /// The Node.
    #[serde(default)]
    pub resources: Vec<ResourceRef>,
    /// `state`, `reason`, `instanceId`, `observed` and `desired` (`option=value,…`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// When the node's result last changed.
    #[serde(default)]
    pub timestamp: ResultTime,
}

/// A result's outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The node complies.
    #[default]
    Pass,
    /// The node does not comply (drifted, blocked, conflicting, or its change still pending).
    Fail,
    /// Not part of this format's use here; read for completeness.
    Warn,
    /// The operator could not read or change the instance.
    Error,
    /// The node has no instance the operator can manage.
    Skip,
}

impl Verdict {
    /// The verdict of a node in `state`.
    pub fn of(state: NodeState) -> Verdict {
        match state {
            NodeState::Compliant => Verdict::Pass,
            NodeState::Drifted | NodeState::Blocked | NodeState::Conflict | NodeState::Pending => Verdict::Fail,
            NodeState::Failed => Verdict::Error,
            NodeState::Skipped => Verdict::Skip,
        }
    }
}

/// The Node a result is about.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    /// `v1`.
    pub api_version: String,
    /// `Node`.
    pub kind: String,
    /// The Node's name.
    pub name: String,
    /// The Node's uid, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A protobuf-style timestamp, as the format has it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResultTime {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

impl From<Timestamp> for ResultTime {
    fn from(t: Timestamp) -> ResultTime {
        ResultTime {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond().max(0),
        }
    }
}

/// Results counted by verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Compliant nodes.
    #[serde(default)]
    pub pass: u32,
    /// Non-compliant nodes.
    #[serde(default)]
    pub fail: u32,
    /// Always 0.
    #[serde(default)]
    pub warn: u32,
    /// Nodes whose instance could not be read or changed.
    #[serde(default)]
    pub error: u32,
    /// Nodes without a manageable instance.
    #[serde(default)]
    pub skip: u32,
}

impl Summary {
    /// The counts of `results`.
    pub fn of<'a>(results: impl IntoIterator<Item = &'a ReportResult>) -> Summary {
        let mut s = Summary::default();
        for r in results {
            let n = match r.result {
                Verdict::Pass => &mut s.pass,
                Verdict::Fail => &mut s.fail,
                Verdict::Warn => &mut s.warn,
                Verdict::Error => &mut s.error,
                Verdict::Skip => &mut s.skip,
            };
            *n += 1;
        }
        s
    }
}

/// The policy the reports are about.
#[derive(Clone, Copy, Debug)]
pub struct PolicyIdentity<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.uid` (the owner reference and the uid label).
    pub uid: &'a str,
}

/// Everything the reports are built from.
pub struct ReportInput<'a> {
    /// The policy.
    pub policy: PolicyIdentity<'a>,
    /// Its node plans (one per selected node).
    pub plans: &'a [NodePlan],
    /// Node uids by node name.
    pub node_uids: &'a HashMap<String, String>,
    /// The reports as last written (their timestamps are carried over).
    pub previous: &'a [ClusterPolicyReport],
    /// The time of a result that changed.
    pub now: Timestamp,
    /// Results per report, at most [`MAX_RESULTS_PER_REPORT`] (and at least 1).
    pub shard_size: usize,
}

/// The reports of one policy: one result per plan, sorted by node name, in shards of at most
/// `shard_size` results named [`report_name`]`(policy, k)`. A policy that selects no node
/// has one empty report, so readers see that it exists.
pub fn build(input: &ReportInput<'_>) -> Vec<ClusterPolicyReport> {
    let earlier: HashMap<&str, &ReportResult> = input
        .previous
        .iter()
        .flat_map(|r| &r.results)
        .filter_map(|r| Some((r.resources.first()?.name.as_str(), r)))
        .collect();
    let now = ResultTime::from(input.now);
    let mut results: Vec<ReportResult> = input
        .plans
        .iter()
        .map(|plan| {
            let uid = input.node_uids.get(&plan.node).cloned();
            let mut result = node_result(input.policy.name, plan, uid);
            result.timestamp = match earlier.get(plan.node.as_str()) {
                Some(before) if same_but_time(before, &result) => before.timestamp,
                _ => now,
            };
            result
        })
        .collect();
    results.sort_by(|a, b| node_of(a).cmp(node_of(b)));
    let mut chunks: Vec<Vec<ReportResult>> = Vec::new();
    let shard_size = input.shard_size.clamp(1, MAX_RESULTS_PER_REPORT);
    let mut rest = results.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(shard_size).collect());
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(k, results)| ClusterPolicyReport {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: metadata(input.policy, k),
            summary: Summary::of(&results),
            results,
        })
        .collect()
}

/// The names of the reports [`build`] makes for `results` results in shards of `shard_size`.
pub fn report_names(policy: &str, results: usize, shard_size: usize) -> Vec<String> {
    let shards = results.div_ceil(shard_size.clamp(1, MAX_RESULTS_PER_REPORT)).max(1);
    (0..shards).map(|k| report_name(policy, k)).collect()
}

/// One node's result (timestamp unset).
pub fn node_result(policy: &str, plan: &NodePlan, node_uid: Option<String>) -> ReportResult {
    let mut properties = BTreeMap::new();
    properties.insert("state".to_string(), plan.state.name().to_string());
    properties.insert("reason".to_string(), plan.reason.to_string());
    if let Some(id) = &plan.instance_id {
        properties.insert("instanceId".to_string(), id.clone());
    }
    if !plan.drift.is_empty() {
        let values = |pick: fn(&FieldDrift) -> &str| {
            let pairs: Vec<String> = plan.drift.iter().map(|d| format!("{}={}", d.field, pick(d))).collect();
            pairs.join(",")
        };
        properties.insert("observed".to_string(), values(|d| &d.observed));
        properties.insert("desired".to_string(), values(|d| &d.desired));
    }
    ReportResult {
        policy: policy.to_string(),
        rule: RULE.to_string(),
        result: Verdict::of(plan.state),
        message: message(plan),
        source: SOURCE.to_string(),
        resources: vec![ResourceRef {
            api_version: "v1".to_string(),
            kind: "Node".to_string(),
            name: plan.node.clone(),
            uid: node_uid,
        }],
        properties,
        timestamp: ResultTime::default(),
    }
}

/// `reason: option: observed → desired; …; details`.
fn message(plan: &NodePlan) -> String {
    let mut parts: Vec<String> = plan.drift.iter().map(ToString::to_string).collect();
    parts.extend(plan.report_message());
    if parts.is_empty() {
        return plan.reason.to_string();
    }
    format!("{}: {}", plan.reason, parts.join("; "))
}

fn same_but_time(a: &ReportResult, b: &ReportResult) -> bool {
    ReportResult {
        timestamp: b.timestamp,
        ..a.clone()
    } == *b
}

fn node_of(r: &ReportResult) -> &str {
    r.resources.first().map_or("", |n| n.name.as_str())
}

/// The longest object name Kubernetes takes.
const MAX_NAME: usize = 253;

/// The name of a policy's `k`th report: `imp-<policy>-<k>`; a policy name too long for that is
/// cut and followed by a hash of the whole name, so two long names never share reports.
pub fn report_name(policy: &str, k: usize) -> String {
    let suffix = format!("-{k}");
    let room = MAX_NAME - "imp-".len() - suffix.len();
    if policy.len() <= room {
        return format!("imp-{policy}{suffix}");
    }
    let hash = format!("{:08x}", fnv1a(policy));
    let keep = policy
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i < room - hash.len())
        .last()
        .unwrap_or(0);
    let head = policy[..keep].trim_end_matches(['-', '.']);
    format!("imp-{head}-{hash}{suffix}")
}

fn fnv1a(text: &str) -> u32 {
    text.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The labels every report of `policy` carries (the uid label selects them all).
pub fn labels(policy: PolicyIdentity<'_>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(MANAGED_BY_LABEL.to_string(), SOURCE.to_string());
    labels.insert(POLICY_UID_LABEL.to_string(), policy.uid.to_string());
    if policy.name.len() <= 63 {
        labels.insert(POLICY_LABEL.to_string(), policy.name.to_string());
    }
    labels
}

fn metadata(policy: PolicyIdentity<'_>, k: usize) -> ObjectMeta {
    ObjectMeta {
        name: Some(report_name(policy.name, k)),
        labels: Some(labels(policy)),
        // Deleting the policy deletes its reports (the garbage collector).
        owner_references: Some(vec![OwnerReference {
            api_version: InstanceMetadataPolicy::api_version(&()).into_owned(),
            kind: InstanceMetadataPolicy::kind(&()).into_owned(),
            name: policy.name.to_string(),
            uid: policy.uid.to_string(),
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        ..Default::default()
    }
}

pub mod status;

#[cfg(test)]
mod tests;
