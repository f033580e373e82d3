//! The account-defaults part of `imds-operator report`: the region's account-level IMDS
//! defaults (GetInstanceMetadataDefaults), and per policy where they disagree with it.

use crate::aws::AwsError;
use imds_core::defaults::{self, AccountDefaults};
use imds_core::defaults_api::AccountLevelDefaults;
use imds_core::selection::PolicyInput;
use serde::Serialize;

/// What the report shows of the account defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountDefaultsSection {
    /// `account` or `declarative-policy` (absent when they could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    /// The defaults (`no-preference` where unset; absent when they could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_level: Option<AccountLevelDefaults>,
    /// The declarative policy's custom message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_exception_message: Option<String>,
    /// Why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per policy that disagrees: `option: account → policy`.
    pub mismatches: Vec<PolicyMismatch>,
}

/// Where one policy and the account defaults disagree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMismatch {
    /// The policy.
    pub policy: String,
    /// `option: what new instances get → what the policy enforces`.
    pub mismatches: Vec<String>,
}

/// Pure: the section from what GetInstanceMetadataDefaults answered.
pub fn section(read: Result<AccountDefaults, AwsError>, policies: &[PolicyInput]) -> AccountDefaultsSection {
    match read {
        Err(e) => AccountDefaultsSection {
            error: Some(format!("{}: {}", e.code, e.message)),
            ..AccountDefaultsSection::default()
        },
        Ok(d) => AccountDefaultsSection {
            managed_by: Some(d.managed_by.to_string()),
            account_level: Some(d.account_level()),
            managed_exception_message: d.managed_exception_message.clone(),
            error: None,
            mismatches: policies
                .iter()
                .filter_map(|p| {
                    let found = defaults::mismatches(&p.options, &d);
                    (!found.is_empty()).then(|| PolicyMismatch {
                        policy: p.name.clone(),
                        mismatches: found.iter().map(ToString::to_string).collect(),
                    })
                })
                .collect(),
        },
    }
}

/// The section as text, after the table.
pub fn text(s: &AccountDefaultsSection) -> String {
    let mut out = String::from("\naccount IMDS defaults (this region): ");
    match (&s.account_level, &s.error) {
        (Some(a), _) => out.push_str(&format!(
            "httpTokens={} hopLimit={} httpEndpoint={} instanceMetadataTags={}; managedBy={}\n",
            a.http_tokens,
            a.http_put_response_hop_limit,
            a.http_endpoint,
            a.instance_metadata_tags,
            s.managed_by.as_deref().unwrap_or("account")
        )),
        (None, Some(e)) => out.push_str(&format!("unknown ({e})\n")),
        (None, None) => out.push_str("unknown\n"),
    }
    if let Some(m) = &s.managed_exception_message {
        out.push_str(&format!("  declarative policy message: {m}\n"));
    }
    for p in &s.mismatches {
        out.push_str(&format!(
            "  policy {}: new instances launch drifted: {}\n",
            p.policy,
            p.mismatches.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::AwsErrorKind;
    use imds_core::api::{HttpTokens, MetadataOptions};
    use imds_core::defaults::ManagedBy;

    fn policy(name: &str, tokens: HttpTokens) -> PolicyInput {
        PolicyInput {
            name: name.into(),
            priority: 0,
            mode: Default::default(),
            options: MetadataOptions {
                http_tokens: Some(tokens),
                ..MetadataOptions::default()
            },
            selector: Default::default(),
            guards: Default::default(),
        }
    }

    #[test]
    fn defaults_and_mismatches_per_policy() {
        let read = AccountDefaults {
            http_tokens: Some(HttpTokens::Optional),
            managed_by: ManagedBy::DeclarativePolicy,
            managed_exception_message: Some("ask platform".into()),
            ..AccountDefaults::default()
        };
        let policies = [policy("v2", HttpTokens::Required), policy("v1", HttpTokens::Optional)];
        let s = section(Ok(read), &policies);
        assert_eq!(s.managed_by.as_deref(), Some("declarative-policy"));
        assert_eq!(s.mismatches.len(), 1);
        assert_eq!(s.mismatches[0].policy, "v2");
        assert_eq!(s.mismatches[0].mismatches, ["httpTokens: optional → required"]);
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["accountLevel"]["httpPutResponseHopLimit"], "no-preference");
        let t = text(&s);
        assert!(
            t.contains("httpTokens=optional") && t.contains("managedBy=declarative-policy"),
            "{t}"
        );
        assert!(t.contains("policy v2: new instances launch drifted"), "{t}");
        let denied = AwsError::new(
            "GetInstanceMetadataDefaults",
            AwsErrorKind::PermissionDenied,
            "UnauthorizedOperation",
            "no",
        );
        let s = section(Err(denied), &policies);
        assert!(text(&s).contains("unknown (UnauthorizedOperation: no)"));
    }
}
