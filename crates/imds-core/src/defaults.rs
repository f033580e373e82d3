//! The region's account-level IMDS defaults (`GetInstanceMetadataDefaults`): how they compare
//! with what a policy enforces, whether a refused modify was a declarative policy's doing, and
//! what the `InstanceMetadataDefaults` singleton should do.

use crate::api::{HttpTokens, MetadataOptions, PolicyMode, Toggle, condition};
use crate::defaults_api::{
    AccountDefaultsReport, AccountLevelDefaults, InstanceMetadataDefaultsSpec, InstanceMetadataDefaultsStatus,
};
use crate::observation::{Failure, FailureKind};
use crate::options::FullOptions;
use crate::reason::Reason;
use crate::status::condition_with_history;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::fmt;

/// EC2's spelling of an unset default.
pub const NO_PREFERENCE: &str = "no-preference";

/// At most this many characters of a message go into status.
pub const MAX_MESSAGE: usize = 512;

/// Who manages the account's defaults (`managedBy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ManagedBy {
    /// The account (the operator may change them).
    #[default]
    Account,
    /// An AWS Organizations declarative policy: the account cannot change them.
    DeclarativePolicy,
}

impl ManagedBy {
    /// EC2's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ManagedBy::Account => "account",
            ManagedBy::DeclarativePolicy => "declarative-policy",
        }
    }

    /// Parses EC2's spelling; anything else (or nothing) is `account`, as EC2 documents only
    /// the two values.
    pub fn from_ec2(value: Option<&str>) -> ManagedBy {
        match value {
            Some("declarative-policy") => ManagedBy::DeclarativePolicy,
            _ => ManagedBy::Account,
        }
    }
}

impl fmt::Display for ManagedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The account-level defaults of one region. `None` is "no preference".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountDefaults {
    /// `HttpTokens`.
    pub http_tokens: Option<HttpTokens>,
    /// `HttpPutResponseHopLimit` (EC2 reports `-1` or nothing for no preference).
    pub hop_limit: Option<i32>,
    /// `HttpEndpoint`.
    pub http_endpoint: Option<Toggle>,
    /// `InstanceMetadataTags`.
    pub instance_metadata_tags: Option<Toggle>,
    /// `ManagedBy`.
    pub managed_by: ManagedBy,
    /// `ManagedExceptionMessage`: the declarative policy's custom error message.
    pub managed_exception_message: Option<String>,
}

/// One option whose account default differs from what is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The option's name, as in the CRDs.
    pub field: &'static str,
    /// What new instances get: the account default, or with none, EC2's launch default
    /// (suffixed `(no account default)`).
    pub account: String,
    /// What is wanted.
    pub wanted: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.account, self.wanted)
    }
}

fn text<T: ToString>(value: Option<T>) -> Option<String> {
    value.map(|v| v.to_string())
}

fn spelled<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NO_PREFERENCE.to_string(), |v| v.to_string())
}

impl AccountDefaults {
    /// The defaults as status shows them.
    pub fn account_level(&self) -> AccountLevelDefaults {
        AccountLevelDefaults {
            http_tokens: spelled(self.http_tokens),
            http_put_response_hop_limit: spelled(self.hop_limit),
            http_endpoint: spelled(self.http_endpoint),
            instance_metadata_tags: spelled(self.instance_metadata_tags),
        }
    }
}

/// Where the account defaults make new instances launch with something else than `policy`
/// enforces, per option the policy sets (`httpProtocolIPv6` has no account default). With no
/// account default, the instance gets EC2's launch default unless its launch template or AMI
/// says otherwise; that counts as a mismatch when it differs, marked as such.
pub fn mismatches(policy: &MetadataOptions, defaults: &AccountDefaults) -> Vec<Mismatch> {
    let launch = FullOptions::EC2_LAUNCH_DEFAULTS;
    let mut out = Vec::new();
    let mut check = |field: &'static str, wanted: Option<String>, set: Option<String>, launch: String| {
        let Some(wanted) = wanted else { return };
        let account = match set {
            Some(value) if value == wanted => return,
            Some(value) => value,
            None if launch == wanted => return,
            None => format!("{launch} (no account default)"),
        };
        out.push(Mismatch { field, account, wanted });
    };
    check(
        "httpTokens",
        text(policy.http_tokens),
        text(defaults.http_tokens),
        launch.http_tokens.to_string(),
    );
    check(
        "httpPutResponseHopLimit",
        policy.http_put_response_hop_limit.map(|v| v.to_string()),
        defaults.hop_limit.map(|v| v.to_string()),
        launch.hop_limit.to_string(),
    );
    check(
        "httpEndpoint",
        policy.http_endpoint.map(|v| v.to_string()),
        defaults.http_endpoint.map(|v| v.to_string()),
        launch.http_endpoint.to_string(),
    );
    check(
        "instanceMetadataTags",
        policy.instance_metadata_tags.map(|v| v.to_string()),
        defaults.instance_metadata_tags.map(|v| v.to_string()),
        launch.instance_metadata_tags.to_string(),
    );
    out
}

/// What a policy's status shows of the account defaults: `None` when they agree with it.
pub fn report_for_policy(policy: &MetadataOptions, defaults: &AccountDefaults) -> Option<AccountDefaultsReport> {
    let found = mismatches(policy, defaults);
    if found.is_empty() {
        return None;
    }
    let fix = match defaults.managed_by {
        ManagedBy::Account => {
            "set the account default (aws ec2 modify-instance-metadata-defaults) or create the InstanceMetadataDefaults singleton"
                .to_string()
        }
        ManagedBy::DeclarativePolicy => {
            "they are managed by an AWS Organizations declarative policy: ask its owners to change it".to_string()
        }
    };
    let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
    let message = format!(
        "the region's account defaults disagree with this policy ({}): new instances launch drifted and are fixed only after they join; {fix}",
        listed.join(", ")
    );
    Some(AccountDefaultsReport {
        managed_by: defaults.managed_by.to_string(),
        mismatches: listed,
        message: bounded(&message),
    })
}

/// `text`, cut to [`MAX_MESSAGE`] characters.
pub fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_MESSAGE - 1).collect();
    cut.push('…');
    cut
}

/// Whether a refused modify (ModifyInstanceMetadataOptions or ModifyInstanceMetadataDefaults)
/// was refused by an Organizations declarative policy. AWS documents no error code for it (see
/// `docs/ec2-semantics.md`, "Declarative policies"), so the signal is what it documents: the
/// account defaults say `managedBy: declarative-policy`, and the error is a refusal of the
/// request (not throttling, not a transient failure, not a missing instance). An
/// `UnauthorizedOperation` counts only when its message carries the declarative policy's
/// `managedExceptionMessage` or names a declarative policy (an IAM denial stays a permission
/// problem). A message that names a declarative policy counts whatever the defaults say.
pub fn is_declarative_refusal(kind: FailureKind, message: &str, defaults: Option<&AccountDefaults>) -> bool {
    if matches!(kind, FailureKind::Transient | FailureKind::DeclarativePolicy) {
        return kind == FailureKind::DeclarativePolicy;
    }
    if message.to_ascii_lowercase().contains("declarative polic") {
        return true;
    }
    let Some(defaults) = defaults.filter(|d| d.managed_by == ManagedBy::DeclarativePolicy) else {
        return false;
    };
    let custom = defaults
        .managed_exception_message
        .as_deref()
        .filter(|m| !m.trim().is_empty())
        .is_some_and(|m| message.contains(m));
    custom || matches!(kind, FailureKind::Unsupported | FailureKind::Other)
}

/// `failure`, reclassified as [`FailureKind::DeclarativePolicy`] when
/// [`is_declarative_refusal`] says so.
pub fn classify_refusal(failure: Failure, defaults: Option<&AccountDefaults>) -> Failure {
    if failure.kind != FailureKind::DeclarativePolicy
        && is_declarative_refusal(failure.kind, &failure.message, defaults)
    {
        Failure {
            kind: FailureKind::DeclarativePolicy,
            message: bounded(&format!(
                "{}; the account's IMDS settings are managed by an AWS Organizations declarative policy; not retried until the policy or the account defaults change",
                failure.message
            )),
        }
    } else {
        failure
    }
}

/// The request `ModifyInstanceMetadataDefaults` takes: only the options the spec sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultsRequest {
    /// `HttpTokens`.
    pub http_tokens: Option<HttpTokens>,
    /// `HttpPutResponseHopLimit`.
    pub hop_limit: Option<i32>,
    /// `HttpEndpoint`.
    pub http_endpoint: Option<Toggle>,
    /// `InstanceMetadataTags`.
    pub instance_metadata_tags: Option<Toggle>,
}

impl DefaultsRequest {
    /// What the spec wants.
    pub fn of(spec: &InstanceMetadataDefaultsSpec) -> DefaultsRequest {
        DefaultsRequest {
            http_tokens: spec.http_tokens,
            hop_limit: spec.http_put_response_hop_limit,
            http_endpoint: spec.http_endpoint,
            instance_metadata_tags: spec.instance_metadata_tags,
        }
    }
}

/// What the singleton's reconcile does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultsDecision {
    /// The object is not named `default` (the API server's rule was bypassed or is older).
    WrongName,
    /// The account's defaults are as declared.
    InSync,
    /// Enforce: send this request (only the options that differ).
    Modify(DefaultsRequest, Vec<Mismatch>),
    /// Audit: report the difference, change nothing.
    AuditDrift(Vec<Mismatch>),
    /// A declarative policy manages the defaults: nothing can be changed from the account.
    DeclarativePolicy(Vec<Mismatch>),
}

/// Each option the spec sets that the account default differs from (here an unset account
/// default differs from any wanted value: the singleton declares the default itself).
pub fn singleton_drift(spec: &InstanceMetadataDefaultsSpec, defaults: &AccountDefaults) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, wanted: Option<String>, set: Option<String>| {
        if let Some(wanted) = wanted
            && set.as_ref() != Some(&wanted)
        {
            let account = set.unwrap_or_else(|| NO_PREFERENCE.to_string());
            out.push(Mismatch { field, account, wanted });
        }
    };
    check("httpTokens", text(spec.http_tokens), text(defaults.http_tokens));
    check(
        "httpPutResponseHopLimit",
        spec.http_put_response_hop_limit.map(|v| v.to_string()),
        defaults.hop_limit.map(|v| v.to_string()),
    );
    check(
        "httpEndpoint",
        spec.http_endpoint.map(|v| v.to_string()),
        defaults.http_endpoint.map(|v| v.to_string()),
    );
    check(
        "instanceMetadataTags",
        spec.instance_metadata_tags.map(|v| v.to_string()),
        defaults.instance_metadata_tags.map(|v| v.to_string()),
    );
    out
}

/// What to do with the singleton named `name` whose spec is `spec`, given the account's
/// defaults.
pub fn decide(name: &str, spec: &InstanceMetadataDefaultsSpec, defaults: &AccountDefaults) -> DefaultsDecision {
    if name != crate::defaults_api::SINGLETON_NAME {
        return DefaultsDecision::WrongName;
    }
    let drift = singleton_drift(spec, defaults);
    if drift.is_empty() {
        return DefaultsDecision::InSync;
    }
    if defaults.managed_by == ManagedBy::DeclarativePolicy {
        return DefaultsDecision::DeclarativePolicy(drift);
    }
    match spec.mode {
        PolicyMode::Audit => DefaultsDecision::AuditDrift(drift),
        PolicyMode::Enforce => {
            let wanted = DefaultsRequest::of(spec);
            let differs = |field: &str| drift.iter().any(|m| m.field == field);
            let request = DefaultsRequest {
                http_tokens: wanted.http_tokens.filter(|_| differs("httpTokens")),
                hop_limit: wanted.hop_limit.filter(|_| differs("httpPutResponseHopLimit")),
                http_endpoint: wanted.http_endpoint.filter(|_| differs("httpEndpoint")),
                instance_metadata_tags: wanted
                    .instance_metadata_tags
                    .filter(|_| differs("instanceMetadataTags")),
            };
            DefaultsDecision::Modify(request, drift)
        }
    }
}

/// What the singleton's reconcile ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SingletonOutcome {
    /// See [`DefaultsDecision::WrongName`].
    WrongName,
    /// The account's defaults are as declared.
    InSync,
    /// EC2 took the request that fixed these options.
    Modified(Vec<Mismatch>),
    /// Audit mode: these options differ.
    AuditDrift(Vec<Mismatch>),
    /// A declarative policy manages the defaults (or refused the request): these differ.
    DeclarativePolicy(Vec<Mismatch>, String),
    /// Reading or modifying the defaults failed.
    Failed(Failure),
}

type Judged = (bool, Reason, String);

fn listed(drift: &[Mismatch]) -> String {
    drift.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The singleton's `Ready`, `Reconciling` and `Stalled` (kstatus), in that order.
pub fn singleton_conditions(outcome: &SingletonOutcome) -> [Judged; 3] {
    let idle = (false, Reason::Idle, "no change in flight".to_string());
    let no_blockers = (false, Reason::NoBlockers, "nothing needs a person".to_string());
    match outcome {
        SingletonOutcome::WrongName => {
            let message = format!(
                "only the InstanceMetadataDefaults named {} is reconciled; delete this one",
                crate::defaults_api::SINGLETON_NAME
            );
            [
                (false, Reason::NotSingleton, message.clone()),
                idle,
                (true, Reason::NotSingleton, message),
            ]
        }
        SingletonOutcome::InSync => [
            (
                true,
                Reason::Compliant,
                "the account's defaults are as declared".to_string(),
            ),
            idle,
            no_blockers,
        ],
        SingletonOutcome::Modified(drift) => [
            (
                true,
                Reason::Compliant,
                format!("set the account's defaults: {}", listed(drift)),
            ),
            idle,
            no_blockers,
        ],
        SingletonOutcome::AuditDrift(drift) => {
            let message = format!("Audit mode: the account's defaults differ: {}", listed(drift));
            [
                (false, Reason::Drifted, message.clone()),
                idle,
                (
                    true,
                    Reason::AuditModeDrift,
                    format!("{message}; switch to Enforce or fix them"),
                ),
            ]
        }
        SingletonOutcome::DeclarativePolicy(drift, note) => {
            let message = bounded(&format!(
                "the account's defaults are managed by an AWS Organizations declarative policy and cannot be changed from the account ({}){note}",
                listed(drift)
            ));
            [
                (false, Reason::DeclarativePolicyEnforced, message.clone()),
                idle,
                (true, Reason::DeclarativePolicyEnforced, message),
            ]
        }
        SingletonOutcome::Failed(failure) => {
            let ready = (false, Reason::Failed, bounded(&failure.message));
            match failure.kind {
                FailureKind::Transient | FailureKind::Other => [
                    ready,
                    (true, Reason::Retrying, "retrying after an EC2 error".to_string()),
                    no_blockers,
                ],
                kind => [ready, idle, (true, kind.reason(), bounded(&failure.message))],
            }
        }
    }
}

/// The singleton's status: the account's defaults as read (`None`: not read), what differs,
/// and the conditions, whose `lastTransitionTime` moves only when their status flips.
pub fn singleton_status(
    outcome: &SingletonOutcome,
    defaults: Option<&AccountDefaults>,
    generation: i64,
    previous: &[Condition],
    now: Time,
) -> InstanceMetadataDefaultsStatus {
    let drifted = match outcome {
        SingletonOutcome::AuditDrift(d) | SingletonOutcome::DeclarativePolicy(d, _) => {
            d.iter().map(ToString::to_string).collect()
        }
        _ => Vec::new(),
    };
    let types = [condition::READY, condition::RECONCILING, condition::STALLED];
    let conditions = types
        .into_iter()
        .zip(singleton_conditions(outcome))
        .map(|(type_, (is_true, reason, message))| {
            condition_with_history(previous, type_, is_true, reason, message, generation, &now)
        })
        .collect();
    InstanceMetadataDefaultsStatus {
        observed_generation: Some(generation),
        managed_by: defaults.map(|d| d.managed_by.to_string()),
        account_level: defaults.map(AccountDefaults::account_level),
        drifted,
        last_sync_time: Some(now),
        conditions,
    }
}

#[cfg(test)]
#[path = "defaults/tests.rs"]
mod tests;
