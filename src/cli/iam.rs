//! IAM policy documents for running imds-operator on AWS.
//!
//! Backs the `imds-operator iam-policy` subcommand. Everything here is pure: the functions build
//! `serde_json::Value` documents from [`IamPolicyOptions`] and never talk to AWS.
//!
//! Two documents are produced:
//!
//! * the **operator policy** ([`operator_policy`]): the identity policy to attach to the role the
//!   operator runs as (IRSA or EKS Pod Identity). It grants exactly what the reconciler needs:
//!   reading instances, changing the metadata options of *this cluster's* instances, and reading
//!   the CloudWatch `MetadataNoToken` metric to report IMDSv1 usage. It writes no tags: its
//!   records are kept in the cluster, where only its ServiceAccount may write them;
//! * the optional **launch guard** ([`launch_guard_policy`]): deny statements meant for a service
//!   control policy (or a permissions boundary / identity policy on the roles that launch nodes)
//!   so that instances cannot be launched without IMDSv2 in the first place, optionally with a
//!   capped hop limit, and — when the operator's role is known — so that nobody but the operator
//!   changes the metadata options of the cluster's instances afterwards.

use imds_core::cluster::{ClusterNameError, cluster_tag_key, validate_cluster_name};
use serde_json::{Value, json};
use thiserror::Error;

/// IAM policy language version used by every document.
pub const POLICY_VERSION: &str = "2012-10-17";

/// Valid range of the IMDS `HttpPutResponseHopLimit`.
pub const HOP_LIMIT_RANGE: std::ops::RangeInclusive<u8> = 1..=64;

/// Inputs of the `iam-policy` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamPolicyOptions {
    /// Name of the cluster, as used in the `kubernetes.io/cluster/<name>` instance tag.
    pub cluster_name: String,
    /// AWS partition used in ARNs: `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    /// Also produce the launch-guard deny statements.
    pub launch_guard: bool,
    /// With `launch_guard`: deny launching instances whose hop limit exceeds this value.
    pub max_hop_limit: Option<u8>,
    /// With `launch_guard`: the operator's role ARN; when given, every other principal is denied
    /// `ec2:ModifyInstanceMetadataOptions` on the cluster's instances.
    pub operator_role_arn: Option<String>,
    /// Also allow `ec2:ModifyInstanceMetadataDefaults`: needed only when the
    /// `InstanceMetadataDefaults` singleton is created (the operator then sets the region's
    /// account-level IMDS defaults).
    pub defaults_singleton: bool,
}

impl Default for IamPolicyOptions {
    fn default() -> Self {
        Self {
            cluster_name: String::new(),
            partition: "aws".to_owned(),
            launch_guard: false,
            max_hop_limit: None,
            operator_role_arn: None,
            defaults_singleton: false,
        }
    }
}

/// Why no policy could be rendered from the given options.
#[derive(Debug, Error)]
pub enum IamPolicyError {
    /// `cluster_name` is empty or cannot be part of a `kubernetes.io/cluster/<name>` tag key.
    #[error(transparent)]
    ClusterName(#[from] ClusterNameError),
    /// `partition` is not an AWS partition name.
    #[error("invalid partition {0:?}: expected an AWS partition such as aws, aws-cn or aws-us-gov")]
    InvalidPartition(String),
    /// `max_hop_limit` is outside [`HOP_LIMIT_RANGE`].
    #[error("--max-hop-limit {0} is outside the valid range 1..=64")]
    HopLimitOutOfRange(u8),
    /// `max_hop_limit` was given without `launch_guard`, where it would be ignored.
    #[error("--max-hop-limit only applies to the launch guard: add --launch-guard")]
    HopLimitWithoutLaunchGuard,
    /// `operator_role_arn` was given without `launch_guard`, where it would be ignored.
    #[error("--operator-role-arn only applies to the launch guard: add --launch-guard")]
    OperatorRoleArnWithoutLaunchGuard,
    /// `operator_role_arn` is not an IAM role ARN of `partition`.
    #[error("invalid operator role ARN {arn:?}: {reason}")]
    InvalidOperatorRoleArn {
        /// The rejected ARN.
        arn: String,
        /// What is wrong with it.
        reason: String,
    },
    /// JSON serialization failed (not expected for these documents).
    #[error("could not serialize the policy: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl IamPolicyOptions {
    /// Checks the options; [`render`] calls this before building anything.
    pub fn validate(&self) -> Result<(), IamPolicyError> {
        validate_cluster_name(&self.cluster_name)?;
        validate_partition(&self.partition)?;
        if let Some(limit) = self.max_hop_limit {
            if !HOP_LIMIT_RANGE.contains(&limit) {
                return Err(IamPolicyError::HopLimitOutOfRange(limit));
            }
            if !self.launch_guard {
                return Err(IamPolicyError::HopLimitWithoutLaunchGuard);
            }
        }
        if let Some(arn) = &self.operator_role_arn {
            validate_role_arn(arn, &self.partition)?;
            if !self.launch_guard {
                return Err(IamPolicyError::OperatorRoleArnWithoutLaunchGuard);
            }
        }
        Ok(())
    }

    /// The tag key marking the cluster's instances: `kubernetes.io/cluster/<name>`.
    pub fn cluster_tag_key(&self) -> String {
        cluster_tag_key(&self.cluster_name)
    }

    /// ARN pattern matching every EC2 instance of the partition.
    fn instance_arn(&self) -> String {
        format!("arn:{}:ec2:*:*:instance/*", self.partition)
    }

    /// Condition block restricting a statement to the cluster's instances.
    ///
    /// `StringEquals` with the two values Kubernetes defines (`owned`, `shared`) rather than
    /// `StringLike "*"`: it is the stricter form (a tag with any other value does not qualify),
    /// and it covers everything that launches nodes — EKS managed node groups, eksctl, Karpenter
    /// and kops tag their instances `owned`; `shared` is what clusters sharing resources use.
    fn cluster_resource_condition(&self) -> Value {
        json!({ format!("aws:ResourceTag/{}", self.cluster_tag_key()): ["owned", "shared"] })
    }
}

/// The identity policy for the operator's IAM role.
///
/// Does not validate `opts`; [`render`] (or [`IamPolicyOptions::validate`]) does.
pub fn operator_policy(opts: &IamPolicyOptions) -> Value {
    let instances = opts.instance_arn();
    let on_cluster = opts.cluster_resource_condition();
    let mut doc = json!({
        "Version": POLICY_VERSION,
        "Statement": [
            {
                // DescribeInstances supports no resource-level permissions or resource tags.
                "Sid": "DescribeInstances",
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances"],
                "Resource": "*"
            },
            {
                "Sid": "ModifyClusterInstanceMetadataOptions",
                "Effect": "Allow",
                "Action": ["ec2:ModifyInstanceMetadataOptions"],
                "Resource": instances,
                "Condition": { "StringEquals": on_cluster }
            },
            {
                // The region's account-level IMDS defaults (shown in report and policy status,
                // and used to tell a declarative policy's refusal). No resource-level permissions.
                "Sid": "ReadAccountMetadataDefaults",
                "Effect": "Allow",
                "Action": ["ec2:GetInstanceMetadataDefaults"],
                "Resource": "*"
            },
            {
                // CloudWatch metric reads support no resource-level permissions.
                "Sid": "ReadImdsv1Usage",
                "Effect": "Allow",
                "Action": ["cloudwatch:GetMetricData"],
                "Resource": "*"
            }
        ]
    });
    if opts.defaults_singleton
        && let Some(statements) = doc["Statement"].as_array_mut()
    {
        // Only with the InstanceMetadataDefaults singleton: an account-level setting, no
        // resource-level permissions.
        statements.push(json!({
            "Sid": "ModifyAccountMetadataDefaults",
            "Effect": "Allow",
            "Action": ["ec2:ModifyInstanceMetadataDefaults"],
            "Resource": "*"
        }));
    }
    doc
}

/// Deny statements that keep IMDSv1 from coming back through new launches or other principals.
///
/// Returns `None` unless `opts.launch_guard` is set. The document is meant for a service control
/// policy or a permissions boundary; `RequireImdsv2AtLaunch` and `CapHopLimitAtLaunch` apply to
/// every instance launched where the policy is attached (not only the cluster's), since an
/// instance carries no cluster tag before it exists.
///
/// * `RequireImdsv2AtLaunch` — always;
/// * `CapHopLimitAtLaunch` — with `max_hop_limit`. A launch that does not set a hop limit carries
///   no `ec2:MetadataHttpPutResponseHopLimit` key and is not denied by it;
/// * `OnlyOperatorModifiesMetadataOptions` — with `operator_role_arn`. `aws:PrincipalArn` is the
///   role ARN for assumed-role sessions (IRSA, Pod Identity), so it matches the operator however
///   its session is named.
pub fn launch_guard_policy(opts: &IamPolicyOptions) -> Option<Value> {
    if !opts.launch_guard {
        return None;
    }
    let instances = opts.instance_arn();
    let mut statements = vec![json!({
        "Sid": "RequireImdsv2AtLaunch",
        "Effect": "Deny",
        "Action": ["ec2:RunInstances"],
        "Resource": instances,
        "Condition": { "StringNotEquals": { "ec2:MetadataHttpTokens": "required" } }
    })];
    if let Some(limit) = opts.max_hop_limit {
        statements.push(json!({
            "Sid": "CapHopLimitAtLaunch",
            "Effect": "Deny",
            "Action": ["ec2:RunInstances"],
            "Resource": instances,
            // IAM numeric condition values are written as strings.
            "Condition": {
                "NumericGreaterThan": { "ec2:MetadataHttpPutResponseHopLimit": limit.to_string() }
            }
        }));
    }
    if let Some(arn) = &opts.operator_role_arn {
        statements.push(json!({
            "Sid": "OnlyOperatorModifiesMetadataOptions",
            "Effect": "Deny",
            "Action": ["ec2:ModifyInstanceMetadataOptions"],
            "Resource": instances,
            "Condition": {
                "StringEquals": opts.cluster_resource_condition(),
                "ArnNotLike": { "aws:PrincipalArn": arn }
            }
        }));
    }
    Some(json!({ "Version": POLICY_VERSION, "Statement": statements }))
}

/// Validates `opts` and renders the output of `imds-operator iam-policy` as pretty JSON (no
/// trailing newline).
///
/// Without the launch guard this is the operator policy document itself, ready for
/// `aws iam create-policy --policy-document`. With it, an object
/// `{"operatorPolicy": ..., "launchGuardPolicy": ...}`.
pub fn render(opts: &IamPolicyOptions) -> Result<String, IamPolicyError> {
    opts.validate()?;
    let operator = operator_policy(opts);
    let document = match launch_guard_policy(opts) {
        Some(guard) => json!({ "operatorPolicy": operator, "launchGuardPolicy": guard }),
        None => operator,
    };
    let mut out = String::new();
    write_ordered(&mut out, &document, 0)?;
    Ok(out)
}

/// Keys printed first, in this order, wherever they appear; other keys follow alphabetically.
/// `serde_json::Value` keeps object keys sorted, which would print `Statement` before `Version`
/// and `Sid` last in each statement — valid, but not how policies are conventionally read.
const KEY_ORDER: &[&str] = &[
    "operatorPolicy",
    "launchGuardPolicy",
    "Version",
    "Statement",
    "Sid",
    "Effect",
    "Action",
    "Resource",
    "Condition",
];

/// Pretty-prints `value` like `serde_json::to_string_pretty` (two-space indent), with object
/// keys in [`KEY_ORDER`].
fn write_ordered(out: &mut String, value: &Value, depth: usize) -> Result<(), serde_json::Error> {
    let indent = |out: &mut String, depth: usize| out.push_str(&"  ".repeat(depth));
    match value {
        Value::Object(map) if !map.is_empty() => {
            let rank = |k: &str| KEY_ORDER.iter().position(|o| *o == k).unwrap_or(usize::MAX);
            let mut entries: Vec<_> = map.iter().collect();
            // Stable sort: keys outside KEY_ORDER keep the map's alphabetical order.
            entries.sort_by_key(|(k, _)| rank(k));
            out.push_str("{\n");
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, depth + 1);
                out.push_str(&serde_json::to_string(key)?);
                out.push_str(": ");
                write_ordered(out, item, depth + 1)?;
            }
            out.push('\n');
            indent(out, depth);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, depth + 1);
                write_ordered(out, item, depth + 1)?;
            }
            out.push('\n');
            indent(out, depth);
            out.push(']');
        }
        scalar_or_empty => out.push_str(&serde_json::to_string(scalar_or_empty)?),
    }
    Ok(())
}

fn validate_partition(partition: &str) -> Result<(), IamPolicyError> {
    // aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-iso-e, aws-iso-f, aws-eusc, ...
    let is_word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let mut words = partition.split('-');
    let valid = words.next() == Some("aws") && words.all(is_word);
    if valid {
        Ok(())
    } else {
        Err(IamPolicyError::InvalidPartition(partition.to_owned()))
    }
}

/// Accepts `arn:<partition>:iam::<account-id>:role/<path/name>` (wildcards allowed in the name,
/// since the ARN is matched with `ArnNotLike`).
fn validate_role_arn(arn: &str, partition: &str) -> Result<(), IamPolicyError> {
    let invalid = |reason: String| IamPolicyError::InvalidOperatorRoleArn {
        arn: arn.to_owned(),
        reason,
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, arn_partition, service, region, account, resource] = parts[..] else {
        return Err(invalid(
            "expected arn:<partition>:iam::<account-id>:role/<name>".to_owned(),
        ));
    };
    if prefix != "arn" {
        return Err(invalid("must start with \"arn:\"".to_owned()));
    }
    if arn_partition != partition {
        return Err(invalid(format!(
            "partition {arn_partition:?} differs from --partition {partition:?}"
        )));
    }
    if service != "iam" || !region.is_empty() {
        return Err(invalid("not an IAM ARN (expected arn:<partition>:iam::...)".to_owned()));
    }
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(format!("account id {account:?} is not 12 digits")));
    }
    match resource.strip_prefix("role/") {
        Some(name) if !name.is_empty() => Ok(()),
        _ => Err(invalid(
            "not a role ARN (expected ...:role/<name>; use the role, not an assumed-role session)".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/imds-operator";

    fn opts(cluster: &str) -> IamPolicyOptions {
        IamPolicyOptions {
            cluster_name: cluster.to_owned(),
            ..IamPolicyOptions::default()
        }
    }

    fn guarded() -> IamPolicyOptions {
        IamPolicyOptions {
            launch_guard: true,
            max_hop_limit: Some(2),
            operator_role_arn: Some(ROLE.to_owned()),
            ..opts("prod")
        }
    }

    fn statements(doc: &Value) -> &Vec<Value> {
        doc["Statement"].as_array().expect("Statement is an array")
    }

    fn sids(doc: &Value) -> Vec<&str> {
        statements(doc).iter().map(|s| s["Sid"].as_str().unwrap()).collect()
    }

    fn statement<'a>(doc: &'a Value, sid: &str) -> &'a Value {
        statements(doc)
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no statement {sid}"))
    }

    fn assert_well_formed(doc: &Value) {
        assert_eq!(doc["Version"], POLICY_VERSION);
        let statements = statements(doc);
        assert!(!statements.is_empty());
        let mut seen = std::collections::HashSet::new();
        for s in statements {
            let sid = s["Sid"].as_str().expect("Sid is a string");
            assert!(
                !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
                "Sid {sid:?} must be alphanumeric"
            );
            assert!(seen.insert(sid.to_owned()), "duplicate Sid {sid}");
            assert!(matches!(s["Effect"].as_str(), Some("Allow" | "Deny")), "{s}");
            let actions = s["Action"].as_array().expect("Action is an array");
            assert!(!actions.is_empty());
            assert!(actions.iter().all(|a| a.as_str().is_some_and(|a| a.contains(':'))));
            assert!(s["Resource"].is_string() || s["Resource"].is_array(), "{s}");
        }
    }

    #[test]
    fn renders_the_operator_policy_as_json() {
        let out = render(&opts("prod")).unwrap();
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert_well_formed(&doc);
        assert_eq!(
            sids(&doc),
            [
                "DescribeInstances",
                "ModifyClusterInstanceMetadataOptions",
                "ReadAccountMetadataDefaults",
                "ReadImdsv1Usage"
            ]
        );
        assert!(out.contains("aws:ResourceTag/kubernetes.io/cluster/prod"));
        assert!(doc.get("operatorPolicy").is_none());
        assert_eq!(doc, operator_policy(&opts("prod")));
    }

    #[test]
    fn modify_is_scoped_to_the_cluster() {
        let doc = operator_policy(&opts("prod"));
        let s = statement(&doc, "ModifyClusterInstanceMetadataOptions");
        assert_eq!(s["Resource"], "arn:aws:ec2:*:*:instance/*");
        assert_eq!(
            s["Condition"]["StringEquals"]["aws:ResourceTag/kubernetes.io/cluster/prod"],
            json!(["owned", "shared"])
        );
        assert_eq!(statement(&doc, "DescribeInstances")["Resource"], "*");
        assert_eq!(
            statement(&doc, "ReadImdsv1Usage")["Action"],
            json!(["cloudwatch:GetMetricData"])
        );
    }

    #[test]
    fn operator_policy_grants_nothing_beyond_its_actions() {
        let doc = operator_policy(&opts("prod"));
        let mut actions: Vec<&str> = statements(&doc)
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap())
            .map(|a| a.as_str().unwrap())
            .collect();
        actions.sort_unstable();
        assert_eq!(
            actions,
            [
                "cloudwatch:GetMetricData",
                "ec2:DescribeInstances",
                "ec2:GetInstanceMetadataDefaults",
                "ec2:ModifyInstanceMetadataOptions"
            ]
        );
        assert!(statements(&doc).iter().all(|s| s["Effect"] == "Allow"));
    }

    #[test]
    fn modify_defaults_only_with_the_singleton() {
        let plain = operator_policy(&opts("prod"));
        assert!(!sids(&plain).contains(&"ModifyAccountMetadataDefaults"));
        let with = IamPolicyOptions {
            defaults_singleton: true,
            ..opts("prod")
        };
        let doc = operator_policy(&with);
        assert_well_formed(&doc);
        let s = statement(&doc, "ModifyAccountMetadataDefaults");
        assert_eq!(s["Action"], json!(["ec2:ModifyInstanceMetadataDefaults"]));
        assert_eq!(s["Resource"], "*");
        assert_eq!(statement(&doc, "ReadAccountMetadataDefaults")["Resource"], "*");
    }

    #[test]
    fn partition_is_used_in_arns() {
        let o = IamPolicyOptions {
            partition: "aws-cn".to_owned(),
            ..opts("prod")
        };
        let out = render(&o).unwrap();
        assert!(out.contains("arn:aws-cn:ec2:*:*:instance/*"));
        assert!(!out.contains("arn:aws:"));
    }

    #[test]
    fn launch_guard_only_with_the_flag() {
        assert!(launch_guard_policy(&opts("prod")).is_none());
        let out = render(&opts("prod")).unwrap();
        assert!(!out.contains("RequireImdsv2AtLaunch"));
        assert!(!out.contains("\"Deny\""));

        let o = IamPolicyOptions {
            launch_guard: true,
            ..opts("prod")
        };
        let doc: Value = serde_json::from_str(&render(&o).unwrap()).unwrap();
        assert_well_formed(&doc["operatorPolicy"]);
        assert_well_formed(&doc["launchGuardPolicy"]);
        assert_eq!(doc["operatorPolicy"], operator_policy(&o));
        assert_eq!(sids(&doc["launchGuardPolicy"]), ["RequireImdsv2AtLaunch"]);
        let s = statement(&doc["launchGuardPolicy"], "RequireImdsv2AtLaunch");
        assert_eq!(s["Effect"], "Deny");
        assert_eq!(s["Action"], json!(["ec2:RunInstances"]));
        assert_eq!(s["Resource"], "arn:aws:ec2:*:*:instance/*");
        assert_eq!(s["Condition"]["StringNotEquals"]["ec2:MetadataHttpTokens"], "required");
    }

    #[test]
    fn full_launch_guard() {
        let o = guarded();
        let guard = launch_guard_policy(&o).unwrap();
        assert_well_formed(&guard);
        assert_eq!(
            sids(&guard),
            [
                "RequireImdsv2AtLaunch",
                "CapHopLimitAtLaunch",
                "OnlyOperatorModifiesMetadataOptions"
            ]
        );
        assert!(statements(&guard).iter().all(|s| s["Effect"] == "Deny"));
        let hop = statement(&guard, "CapHopLimitAtLaunch");
        assert_eq!(
            hop["Condition"]["NumericGreaterThan"]["ec2:MetadataHttpPutResponseHopLimit"],
            "2"
        );
        let only = statement(&guard, "OnlyOperatorModifiesMetadataOptions");
        assert_eq!(only["Action"], json!(["ec2:ModifyInstanceMetadataOptions"]));
        assert_eq!(only["Condition"]["ArnNotLike"]["aws:PrincipalArn"], ROLE);
        assert_eq!(
            only["Condition"]["StringEquals"]["aws:ResourceTag/kubernetes.io/cluster/prod"],
            json!(["owned", "shared"])
        );
        let doc: Value = serde_json::from_str(&render(&o).unwrap()).unwrap();
        assert_eq!(doc["launchGuardPolicy"], guard);
        assert_eq!(doc.as_object().unwrap().len(), 2);
    }

    #[test]
    fn modify_deny_needs_the_operator_role() {
        let o = IamPolicyOptions {
            operator_role_arn: None,
            ..guarded()
        };
        let guard = launch_guard_policy(&o).unwrap();
        assert_eq!(sids(&guard), ["RequireImdsv2AtLaunch", "CapHopLimitAtLaunch"]);
    }

    #[test]
    fn rejects_bad_cluster_names() {
        assert!(matches!(
            render(&opts("")),
            Err(IamPolicyError::ClusterName(ClusterNameError::Empty))
        ));
        for bad in ["-prod", "prod cluster", "prod/x", "prod*", "pröd", &"a".repeat(101)] {
            let err = render(&opts(bad)).unwrap_err();
            assert!(
                matches!(err, IamPolicyError::ClusterName(ClusterNameError::Invalid { .. })),
                "{bad:?}: {err}"
            );
        }
        for good in ["prod", "Prod_1", "k8s.example.com", "a", &"a".repeat(100)] {
            render(&opts(good)).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_partitions() {
        for bad in ["", "AWS", "aws-", "azure", "aws--cn", "aws cn"] {
            let o = IamPolicyOptions {
                partition: bad.to_owned(),
                ..opts("prod")
            };
            assert!(
                matches!(render(&o), Err(IamPolicyError::InvalidPartition(_))),
                "{bad:?}"
            );
        }
        for good in ["aws", "aws-cn", "aws-us-gov", "aws-iso-b"] {
            let o = IamPolicyOptions {
                partition: good.to_owned(),
                ..opts("prod")
            };
            render(&o).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn hop_limit_must_be_in_range() {
        for bad in [0, 65, 255] {
            let o = IamPolicyOptions {
                max_hop_limit: Some(bad),
                ..guarded()
            };
            assert!(matches!(
                render(&o),
                Err(IamPolicyError::HopLimitOutOfRange(n)) if n == bad
            ));
        }
        for good in [1, 64] {
            let o = IamPolicyOptions {
                max_hop_limit: Some(good),
                ..guarded()
            };
            render(&o).unwrap();
        }
    }

    #[test]
    fn guard_options_require_the_guard() {
        let o = IamPolicyOptions {
            max_hop_limit: Some(2),
            ..opts("prod")
        };
        assert!(matches!(render(&o), Err(IamPolicyError::HopLimitWithoutLaunchGuard)));
        let o = IamPolicyOptions {
            operator_role_arn: Some(ROLE.to_owned()),
            ..opts("prod")
        };
        assert!(matches!(
            render(&o),
            Err(IamPolicyError::OperatorRoleArnWithoutLaunchGuard)
        ));
    }

    #[test]
    fn rejects_bad_role_arns() {
        for bad in [
            "imds-operator",
            "arn:aws:iam::123456789012",
            "arn:aws-cn:iam::123456789012:role/x",
            "arn:aws:sts::123456789012:assumed-role/x/session",
            "arn:aws:iam::12345:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam:us-east-1:123456789012:role/x",
        ] {
            let o = IamPolicyOptions {
                operator_role_arn: Some(bad.to_owned()),
                ..guarded()
            };
            let err = render(&o).unwrap_err();
            assert!(
                matches!(err, IamPolicyError::InvalidOperatorRoleArn { .. }),
                "{bad:?}: {err}"
            );
        }
        for good in [
            ROLE,
            "arn:aws:iam::123456789012:role/path/to/imds-operator",
            "arn:aws:iam::123456789012:role/imds-operator-*",
        ] {
            let o = IamPolicyOptions {
                operator_role_arn: Some(good.to_owned()),
                ..guarded()
            };
            render(&o).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }

    #[test]
    fn output_reads_in_conventional_key_order() {
        let out = render(&guarded()).unwrap();
        let pos = |needle: &str| out.find(needle).unwrap_or_else(|| panic!("no {needle}"));
        assert!(out.starts_with("{\n  \"operatorPolicy\": {\n    \"Version\": \"2012-10-17\",\n"));
        assert!(pos("\"operatorPolicy\"") < pos("\"launchGuardPolicy\""));
        let first = &out[pos("{\n        \"Sid\"")..];
        let key = |k: &str| first.find(k).unwrap();
        assert!(key("\"Sid\"") < key("\"Effect\""));
        assert!(key("\"Effect\"") < key("\"Action\""));
        assert!(key("\"Action\"") < key("\"Resource\""));
        // Same content as serde_json's own printer, key order aside.
        let reparsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(serde_json::to_string_pretty(&reparsed).unwrap().len(), out.len());
        assert_eq!(write_empty(json!({})), "{}");
        assert_eq!(write_empty(json!([])), "[]");
    }

    fn write_empty(v: Value) -> String {
        let mut out = String::new();
        write_ordered(&mut out, &v, 0).unwrap();
        out
    }

    #[test]
    fn errors_read_well() {
        let msg = render(&opts("")).unwrap_err().to_string();
        assert_eq!(msg, "the cluster name must not be empty");
        let o = IamPolicyOptions {
            max_hop_limit: Some(0),
            ..guarded()
        };
        assert!(render(&o).unwrap_err().to_string().contains("1..=64"));
    }
}
