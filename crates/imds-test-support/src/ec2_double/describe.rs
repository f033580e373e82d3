//! DescribeInstances: `InstanceId.N`, the filters the double knows, `MaxResults` and
//! `NextToken` pagination over instances (see `docs/ec2-semantics.md`, "DescribeInstances").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::error::{Answer, ApiError};
use super::params::{flag, indexed_list, optional_int};
use super::rules::well_formed_instance_id;
use super::state::{Instance, Shared};
use super::xml::{escape, response_open};
use super::{ACCOUNT_ID, DESCRIBE, Ec2Double};

/// EC2's limit on the values of one filter.
const MAX_FILTER_VALUES: usize = 200;
/// EC2's limit on the length of one filter value.
const MAX_FILTER_VALUE_LEN: usize = 255;

impl Ec2Double {
    /// DescribeInstances returns at most `n` instances per page (with a `nextToken` when more
    /// match), even when `MaxResults` is larger or absent: EC2 may return fewer items than
    /// asked, and clients must follow `nextToken`. `n` is at least 1.
    pub fn max_page_size(&self, n: usize) {
        self.shared().max_page_size = Some(n.max(1));
    }

    /// DescribeInstances answers carry everything else EC2 says of an instance (network
    /// interfaces and their addresses, block devices, placement…, laid out as EC2 does): ~9×
    /// the bytes, none of it read by the operator. Off by default.
    pub fn detailed_answers(&self, on: bool) {
        self.shared().detailed_answers = on;
    }
}

/// One `Filter.N`.
#[derive(Debug)]
struct Filter {
    name: String,
    values: Vec<String>,
}

impl Filter {
    /// Whether the instance matches (values are ORed). Only the filters the double knows are
    /// accepted by [`parse_filters`].
    fn matches(&self, id: &str, instance: &Instance) -> bool {
        let any = |value: &str| self.values.iter().any(|v| v == value);
        match self.name.as_str() {
            "instance-id" => any(id),
            "instance-state-name" => any(instance.state.name()),
            "tag-key" => instance.tags.iter().any(|(k, _)| any(k)),
            name => match name.strip_prefix("tag:") {
                Some(key) => instance.tags.iter().any(|(k, v)| k == key && any(v)),
                None => false,
            },
        }
    }
}

pub(super) fn describe_instances(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let ids = indexed_list(params, "InstanceId")?;
    let filters = parse_filters(params)?;
    let max_results = optional_int(params, "MaxResults")?;
    let dry_run = flag(params, "DryRun")?;
    if shared.denied.contains(DESCRIBE) {
        return Err(ApiError::unauthorized(DESCRIBE, None));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    if let Some(max) = max_results {
        if !ids.is_empty() {
            return Err(ApiError::bad(
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }
        if !(5..=1000).contains(&max) {
            return Err(ApiError::invalid(format!(
                "Value ( {max} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000."
            )));
        }
    }
    // One invalid ID in InstanceId.N fails the whole call.
    if let Some(bad) = ids.iter().find(|id| !well_formed_instance_id(id)) {
        return Err(ApiError::malformed(bad));
    }
    shared.all_exist(&ids)?;
    let start = match params.get("NextToken") {
        Some(token) => parse_next_token(token)?,
        None => 0,
    };

    let matching = matching_ids(shared, &ids, &filters);
    let page_size = match (max_results, shared.max_page_size) {
        (Some(max), Some(cap)) => (max as usize).min(cap),
        (Some(max), None) => max as usize,
        (None, Some(cap)) => cap,
        (None, None) => usize::MAX,
    };
    let end = start.saturating_add(page_size).min(matching.len());
    let page = matching.get(start..end).unwrap_or_default();

    let detailed = shared.detailed_answers;
    let mut xml = response_open("DescribeInstancesResponse", request_id);
    xml.push_str("<reservationSet>");
    for id in page {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        let state = if instance.pending_left > 0 {
            instance.pending_left -= 1;
            "pending"
        } else {
            "applied"
        };
        write_reservation(&mut xml, id, instance, state, detailed);
    }
    xml.push_str("</reservationSet>");
    if end < matching.len() {
        let _ = write!(xml, "<nextToken>{}</nextToken>", next_token(end));
    }
    xml.push_str("</DescribeInstancesResponse>");
    Ok(xml)
}

/// The IDs of the instances that `ids` (all when empty) and `filters` select, sorted. The
/// candidates come from `ids` or an `instance-id` filter when there is one (a lookup each, not a
/// scan of every instance), so that a batch of 200 IDs costs the same in a fleet of 20,000.
fn matching_ids(shared: &Shared, ids: &[String], filters: &[Filter]) -> Vec<String> {
    let named: Option<BTreeSet<&str>> = if ids.is_empty() {
        let id_filter = filters.iter().find(|f| f.name == "instance-id");
        id_filter.map(|f| f.values.iter().map(String::as_str).collect())
    } else {
        Some(ids.iter().map(String::as_str).collect())
    };
    let candidates: Vec<(&String, &Instance)> = match &named {
        Some(named) => named
            .iter()
            .filter_map(|id| shared.instances.get_key_value(*id))
            .collect(),
        None => shared.instances.iter().collect(),
    };
    candidates
        .into_iter()
        .filter(|(id, instance)| filters.iter().all(|f| f.matches(id, instance)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// `Filter.N.Name` and `Filter.N.Value.M`.
fn parse_filters(params: &BTreeMap<String, String>) -> Result<Vec<Filter>, ApiError> {
    let mut filters = Vec::new();
    for n in 1.. {
        let prefix = format!("Filter.{n}");
        let name = params.get(&format!("{prefix}.Name"));
        let values = indexed_list(params, &format!("{prefix}.Value"))?;
        let Some(name) = name else {
            if values.is_empty() {
                break;
            }
            return Err(ApiError::missing(&format!("{prefix}.Name")));
        };
        let known =
            matches!(name.as_str(), "instance-id" | "instance-state-name" | "tag-key") || name.starts_with("tag:");
        if !known {
            // EC2 knows many more filters; the double refuses the ones it does not model
            // rather than ignoring them.
            return Err(ApiError::invalid(format!("The filter '{name}' is invalid")));
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(ApiError::bad(
                "FilterLimitExceeded",
                format!("The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"),
            ));
        }
        if let Some(long) = values.iter().find(|v| v.len() > MAX_FILTER_VALUE_LEN) {
            return Err(ApiError::invalid(format!(
                "The filter value '{long}' is longer than {MAX_FILTER_VALUE_LEN} characters"
            )));
        }
        filters.push(Filter {
            name: name.clone(),
            values,
        });
    }
    Ok(filters)
}

/// Pagination tokens are opaque to clients; the double's carry the offset of the next page.
fn next_token(offset: usize) -> String {
    format!("ec2-double-page-{offset}")
}

fn parse_next_token(token: &str) -> Result<usize, ApiError> {
    token
        .strip_prefix("ec2-double-page-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::invalid(format!("Invalid value '{token}' for NextToken")))
}

/// `LaunchTime` as EC2 writes it (ISO 8601, UTC, milliseconds: `2026-12-01T14:00:00.000Z`).
fn launch_time(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let at = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or_default();
    at.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()
}

/// One instance in its own reservation.
fn write_reservation(xml: &mut String, id: &str, instance: &Instance, apply_state: &str, detailed: bool) {
    let o = &instance.options;
    let _ = write!(
        xml,
        "<item><reservationId>{reservation}</reservationId><ownerId>{ACCOUNT_ID}</ownerId>\
         <groupSet/><instancesSet><item>\
         <instanceId>{id}</instanceId>\
         <imageId>ami-12c6146b</imageId>\
         <instanceState><code>{code}</code><name>{state}</name></instanceState>\
         <instanceType>m5.large</instanceType><launchTime>{launched}</launchTime>",
        reservation = escape(&instance.reservation_id),
        id = escape(id),
        code = instance.state.code(),
        state = instance.state.name(),
        launched = launch_time(instance.launched),
    );
    if detailed {
        super::instance_detail::write_detail(xml, instance.serial);
    }
    xml.push_str("<tagSet>");
    for (key, value) in &instance.tags {
        let _ = write!(
            xml,
            "<item><key>{}</key><value>{}</value></item>",
            escape(key),
            escape(value)
        );
    }
    xml.push_str("</tagSet>");
    let _ = write!(
        xml,
        "<metadataOptions><state>{apply_state}</state><httpTokens>{}</httpTokens>\
         <httpPutResponseHopLimit>{}</httpPutResponseHopLimit><httpEndpoint>{}</httpEndpoint>\
         <httpProtocolIpv6>{}</httpProtocolIpv6><instanceMetadataTags>{}</instanceMetadataTags>\
         </metadataOptions>",
        o.http_tokens.as_str(),
        o.hop_limit,
        o.http_endpoint.as_str(),
        o.http_protocol_ipv6.as_str(),
        o.instance_metadata_tags.as_str(),
    );
    xml.push_str("</item></instancesSet></item>");
}
