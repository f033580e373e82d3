//! GetInstanceMetadataDefaults and ModifyInstanceMetadataDefaults: the account's IMDS defaults
//! in this region, `managedBy` settable by tests, and the refusal of modifies while an
//! Organizations declarative policy manages them (see `docs/ec2-semantics.md`, "Account-level
//! defaults" and "Declarative policies").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imds_core::api::{HttpTokens, Toggle};
use imds_core::defaults::{AccountDefaults, ManagedBy, NO_PREFERENCE};

use super::error::{Answer, ApiError};
use super::params::{flag, optional, optional_int, parse_toggle, parse_tokens};
use super::state::{Refusal, Shared};
use super::xml::{escape, response_open, return_true};
use super::{Ec2Double, GET_DEFAULTS, MODIFY_DEFAULTS};

impl Ec2Double {
    /// Sets the account's defaults (`managed_by` included) at once.
    pub fn set_account_defaults(&self, defaults: AccountDefaults) {
        self.shared().account_defaults = defaults;
    }

    /// The account's defaults now.
    pub fn account_defaults(&self) -> AccountDefaults {
        self.shared().account_defaults.clone()
    }

    /// While the defaults are `managedBy: declarative-policy`, ModifyInstanceMetadataOptions and
    /// ModifyInstanceMetadataDefaults are refused with HTTP 400 and `code`, and `message` (by
    /// default the policy's `managedExceptionMessage`, else "The instance metadata settings of
    /// this account are managed by your organization and cannot be changed."). Default code:
    /// `UnsupportedOperation` (unverified: AWS documents none).
    pub fn declarative_refusal(&self, code: &str, message: Option<&str>) {
        self.shared().refusal = Refusal {
            code: code.to_string(),
            message: message.map(String::from),
        };
    }
}

/// The refusal, when a declarative policy manages the defaults.
pub(super) fn declarative_refusal(shared: &Shared) -> Option<ApiError> {
    let d = &shared.account_defaults;
    if d.managed_by != ManagedBy::DeclarativePolicy {
        return None;
    }
    let message = shared
        .refusal
        .message
        .clone()
        .or_else(|| d.managed_exception_message.clone())
        .unwrap_or_else(|| {
            "The instance metadata settings of this account are managed by your organization and cannot be changed."
                .to_string()
        });
    Some(ApiError::bad(&shared.refusal.code, message))
}

fn element<T: ToString>(name: &str, value: Option<T>) -> String {
    value.map_or_else(String::new, |v| format!("<{name}>{}</{name}>", escape(&v.to_string())))
}

/// `DryRun` answers `DryRunOperation` (or `UnauthorizedOperation` when denied).
pub(super) fn get_defaults(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let dry_run = flag(params, "DryRun")?;
    if shared.denied.contains(GET_DEFAULTS) {
        return Err(ApiError::unauthorized(GET_DEFAULTS, None));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    let d = &shared.account_defaults;
    let mut xml = response_open("GetInstanceMetadataDefaultsResponse", request_id);
    // Unset defaults are left out (unverified: EC2 may also answer -1 for the hop limit, which
    // the operator reads as no preference too).
    let _ = write!(
        xml,
        "<accountLevel>{}{}{}{}<managedBy>{}</managedBy>{}</accountLevel></GetInstanceMetadataDefaultsResponse>",
        element("httpTokens", d.http_tokens),
        element("httpPutResponseHopLimit", d.hop_limit),
        element("httpEndpoint", d.http_endpoint),
        element("instanceMetadataTags", d.instance_metadata_tags),
        d.managed_by.as_str(),
        element("managedExceptionMessage", d.managed_exception_message.as_deref()),
    );
    Ok(xml)
}

/// A value or `no-preference` (`None` in the outer option: the parameter was not sent).
type Preference<T> = Option<Option<T>>;

fn preference<T>(
    params: &BTreeMap<String, String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Preference<T>, ApiError> {
    optional(params, name, |v| {
        if v == NO_PREFERENCE {
            Ok(None)
        } else {
            parse(v).map(Some)
        }
    })
}

/// Sets the named defaults; the check order is: parameters, authorization, DryRun, the
/// declarative policy.
pub(super) fn modify_defaults(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let tokens: Preference<HttpTokens> = preference(params, "HttpTokens", parse_tokens)?;
    let hop = optional_int(params, "HttpPutResponseHopLimit")?;
    if let Some(h) = hop
        && h != -1
        && !(1..=64).contains(&h)
    {
        return Err(ApiError::invalid(format!(
            "The HttpPutResponseHopLimit value {h} is out of range. It must be between 1 and 64, or -1 for no preference."
        )));
    }
    let endpoint: Preference<Toggle> = preference(params, "HttpEndpoint", |v| parse_toggle("HttpEndpoint", v))?;
    let tags: Preference<Toggle> = preference(params, "InstanceMetadataTags", |v| {
        parse_toggle("InstanceMetadataTags", v)
    })?;
    let dry_run = flag(params, "DryRun")?;
    if shared.denied.contains(MODIFY_DEFAULTS) {
        return Err(ApiError::unauthorized(MODIFY_DEFAULTS, None));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    if let Some(refused) = declarative_refusal(shared) {
        return Err(refused);
    }
    let d = &mut shared.account_defaults;
    if let Some(t) = tokens {
        d.http_tokens = t;
    }
    if let Some(h) = hop {
        d.hop_limit = (h != -1).then_some(h);
    }
    if let Some(e) = endpoint {
        d.http_endpoint = e;
    }
    if let Some(t) = tags {
        d.instance_metadata_tags = t;
    }
    Ok(return_true("ModifyInstanceMetadataDefaultsResponse", request_id))
}
