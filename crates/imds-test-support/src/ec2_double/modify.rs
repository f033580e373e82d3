//! ModifyInstanceMetadataOptions: omitted options keep their value, the `pending` apply state,
//! DryRun, `UnsupportedOperation`, and the refusal of instance metadata tags for tag keys IMDS
//! cannot serve (see `docs/ec2-semantics.md`, "ModifyInstanceMetadataOptions").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imds_core::api::{HttpTokens, Toggle};
use imds_core::options::{Field, FullOptions};

use super::error::{Answer, ApiError};
use super::params::{flag, optional, optional_int, parse_toggle, parse_tokens};
use super::rules::{imds_tag_key, instance_arn, invalid_imds_tag_key, well_formed_instance_id};
use super::state::{InstanceState, Shared};
use super::xml::{escape, response_open};
use super::{Ec2Double, MODIFY};

impl Ec2Double {
    /// After a successful modify the instance reports `pending` (with the new values) in the next
    /// `n` DescribeInstances answers that list it, then `applied`. The modify answer itself
    /// always says `pending`, as EC2 does for a running instance. Default 0. Applies to later
    /// modifies only.
    pub fn pending_describes(&self, n: u32) {
        self.shared().pending_describes = n;
    }

    /// The instance cannot take `field`: a modify that sets it to the value that turns
    /// something on is refused with `UnsupportedOperation`. That value is `enabled` for the
    /// three on/off options (e.g. IPv6 on a non-Nitro instance), `optional` for HttpTokens (an
    /// account that enforces IMDSv2), and any change for the hop limit.
    pub fn unsupported(&self, id: &str, field: Field) {
        self.with_instance(id, |i| {
            i.unsupported.insert(field);
        });
    }
}

/// The check order is: parameters, authorization, existence, DryRun, what the instance can
/// take. (EC2 authorizes before it reveals whether a resource exists; unverified for this API.)
pub(super) fn modify_options(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let id = params
        .get("InstanceId")
        .ok_or_else(|| ApiError::missing("InstanceId"))?;
    let tokens = optional(params, "HttpTokens", parse_tokens)?;
    let hop_limit = hop_limit_param(params)?;
    let endpoint = optional(params, "HttpEndpoint", |v| parse_toggle("HttpEndpoint", v))?;
    let ipv6 = optional(params, "HttpProtocolIpv6", |v| parse_toggle("HttpProtocolIpv6", v))?;
    let tags = optional(params, "InstanceMetadataTags", |v| {
        parse_toggle("InstanceMetadataTags", v)
    })?;
    let dry_run = flag(params, "DryRun")?;
    if !well_formed_instance_id(id) {
        return Err(ApiError::malformed(id));
    }
    if shared.denied.contains(MODIFY) {
        return Err(ApiError::unauthorized(MODIFY, Some(&instance_arn(id))));
    }
    let pending_describes = shared.pending_describes;
    let declarative = super::defaults::declarative_refusal(shared);
    let Some(instance) = shared.instances.get_mut(id.as_str()) else {
        return Err(ApiError::not_found(&[id.as_str()]));
    };
    if dry_run {
        return Err(ApiError::dry_run());
    }
    // A declarative policy manages the account's IMDS settings: the options cannot be changed
    // from the account (the error code is unverified, see `defaults`).
    if let Some(refused) = declarative {
        return Err(refused);
    }
    if instance.state == InstanceState::Terminated {
        return Err(ApiError::bad(
            "IncorrectInstanceState",
            format!("The instance '{id}' is not in a state from which it can be modified."),
        ));
    }
    // Omitted parameters keep the current value. EC2 documents that only for the endpoint
    // and the hop limit (see docs/ec2-semantics.md, "ModifyInstanceMetadataOptions", "Omitted
    // parameters"); the operator always sends all five, which the tests check in the request
    // log rather than here.
    let current = instance.options;
    let new = FullOptions {
        http_tokens: tokens.unwrap_or(current.http_tokens),
        hop_limit: hop_limit.unwrap_or(current.hop_limit),
        http_endpoint: endpoint.unwrap_or(current.http_endpoint),
        http_protocol_ipv6: ipv6.unwrap_or(current.http_protocol_ipv6),
        instance_metadata_tags: tags.unwrap_or(current.instance_metadata_tags),
    };
    for field in &instance.unsupported {
        if let Some(message) = unsupported_change(id, *field, &current, &new) {
            return Err(ApiError::bad("UnsupportedOperation", message));
        }
    }
    if new.instance_metadata_tags == Toggle::Enabled
        && let Some((key, _)) = instance.tags.iter().find(|(k, _)| !imds_tag_key(k))
    {
        return Err(invalid_imds_tag_key(key));
    }
    instance.options = new;
    instance.pending_left = pending_describes;

    let mut xml = response_open("ModifyInstanceMetadataOptionsResponse", request_id);
    let _ = write!(
        xml,
        "<instanceId>{}</instanceId><instanceMetadataOptions><state>pending</state>\
         <httpTokens>{}</httpTokens><httpPutResponseHopLimit>{}</httpPutResponseHopLimit>\
         <httpEndpoint>{}</httpEndpoint><httpProtocolIpv6>{}</httpProtocolIpv6>\
         <instanceMetadataTags>{}</instanceMetadataTags></instanceMetadataOptions>\
         </ModifyInstanceMetadataOptionsResponse>",
        escape(id),
        new.http_tokens.as_str(),
        new.hop_limit,
        new.http_endpoint.as_str(),
        new.http_protocol_ipv6.as_str(),
        new.instance_metadata_tags.as_str(),
    );
    Ok(xml)
}

/// `HttpPutResponseHopLimit`, 1 to 64.
fn hop_limit_param(params: &BTreeMap<String, String>) -> Result<Option<i32>, ApiError> {
    let hop_limit = optional_int(params, "HttpPutResponseHopLimit")?;
    if let Some(hop) = hop_limit
        && !(1..=64).contains(&hop)
    {
        return Err(ApiError::invalid(format!(
            "The HttpPutResponseHopLimit value {hop} is out of range. It must be between 1 and 64."
        )));
    }
    Ok(hop_limit)
}

/// The `UnsupportedOperation` message if `new` sets an option this instance cannot take
/// (see [`Ec2Double::unsupported`]). The wording is the double's own (unverified).
fn unsupported_change(id: &str, field: Field, current: &FullOptions, new: &FullOptions) -> Option<String> {
    let refused = match field {
        Field::HttpTokens => new.http_tokens == HttpTokens::Optional,
        Field::HopLimit => new.hop_limit != current.hop_limit,
        Field::HttpEndpoint => new.http_endpoint == Toggle::Enabled,
        Field::HttpProtocolIpv6 => new.http_protocol_ipv6 == Toggle::Enabled,
        Field::InstanceMetadataTags => new.instance_metadata_tags == Toggle::Enabled,
    };
    refused.then(|| match field {
        Field::HttpTokens => {
            "HttpTokens cannot be set to optional: IMDSv2 is enforced for this account (HttpTokensEnforced).".to_string()
        }
        Field::HttpProtocolIpv6 => format!(
            "The IPv6 endpoint of the instance metadata service is not supported for instance '{id}': it is not built on the Nitro System."
        ),
        other => format!("The instance '{id}' does not support this value of {other}."),
    })
}
