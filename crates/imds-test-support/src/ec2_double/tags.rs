//! CreateTags and DeleteTags, for instances only (see `docs/ec2-semantics.md`, "CreateTags and
//! DeleteTags").

use std::collections::{BTreeMap, BTreeSet};

use imds_core::api::Toggle;

use super::error::{Answer, ApiError};
use super::params::{flag, indexed_list};
use super::rules::{imds_tag_key, instance_arn, invalid_imds_tag_key, well_formed_instance_id};
use super::state::Shared;
use super::xml::return_true;
use super::{CREATE_TAGS, DELETE_TAGS};

/// EC2's limit on user tags per resource.
const MAX_TAGS: usize = 50;

/// `ResourceId.N`: required, instances only, all well-formed and existing.
fn tag_resources(shared: &Shared, params: &BTreeMap<String, String>) -> Result<Vec<String>, ApiError> {
    let ids = indexed_list(params, "ResourceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    if let Some(bad) = ids.iter().find(|id| !well_formed_instance_id(id)) {
        return Err(if bad.starts_with("i-") {
            ApiError::malformed(bad)
        } else {
            // The double holds instances only.
            ApiError::bad("InvalidID", format!("The ID '{bad}' is not valid"))
        });
    }
    shared.all_exist(&ids)?;
    Ok(ids)
}

/// `Tag.N.Key` / `Tag.N.Value`.
fn tag_list(params: &BTreeMap<String, String>) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut tags = Vec::new();
    for n in 1.. {
        let key = params.get(&format!("Tag.{n}.Key"));
        let value = params.get(&format!("Tag.{n}.Value"));
        match (key, value) {
            (Some(key), value) => tags.push((key.clone(), value.cloned())),
            (None, Some(_)) => return Err(ApiError::missing(&format!("Tag.{n}.Key"))),
            (None, None) => break,
        }
    }
    Ok(tags)
}

pub(super) fn create_tags(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let tags = tag_list(params)?;
    let dry_run = flag(params, "DryRun")?;
    if tags.is_empty() {
        return Err(ApiError::missing("Tag"));
    }
    for (key, value) in &tags {
        if key.is_empty() || key.chars().count() > 128 || key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::invalid(format!("Tag key '{key}' is not valid")));
        }
        if value.as_deref().is_some_and(|v| v.chars().count() > 256) {
            return Err(ApiError::invalid(format!("Tag value for key '{key}' is too long")));
        }
    }
    let ids = tag_resources(shared, params)?;
    if shared.denied.contains(CREATE_TAGS) {
        let arn = instance_arn(&ids[0]);
        return Err(ApiError::unauthorized(CREATE_TAGS, Some(&arn)));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    // Check every instance before changing any, so that a refused call changes nothing.
    for id in &ids {
        let Some(instance) = shared.instances.get(id) else {
            continue;
        };
        let mut keys: BTreeSet<&str> = instance.tags.iter().map(|(k, _)| k.as_str()).collect();
        keys.extend(tags.iter().map(|(k, _)| k.as_str()));
        if keys.len() > MAX_TAGS {
            return Err(ApiError::bad(
                "TagLimitExceeded",
                format!("The maximum number of Tags for a resource has been reached ({MAX_TAGS})."),
            ));
        }
        // With tags in metadata on, EC2 refuses keys IMDS cannot serve (unverified for
        // CreateTags; documented for launches and for enabling the option).
        if instance.options.instance_metadata_tags == Toggle::Enabled
            && let Some((key, _)) = tags.iter().find(|(k, _)| !imds_tag_key(k))
        {
            return Err(invalid_imds_tag_key(key));
        }
    }
    for id in &ids {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        for (key, value) in &tags {
            let value = value.clone().unwrap_or_default();
            match instance.tags.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1 = value,
                None => instance.tags.push((key.clone(), value)),
            }
        }
    }
    Ok(return_true("CreateTagsResponse", request_id))
}

/// A tag without a value deletes the key whatever its value; with a value, only if it matches.
/// No `Tag.N` at all deletes every tag.
pub(super) fn delete_tags(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let tags = tag_list(params)?;
    let dry_run = flag(params, "DryRun")?;
    let ids = tag_resources(shared, params)?;
    if shared.denied.contains(DELETE_TAGS) {
        let arn = instance_arn(&ids[0]);
        return Err(ApiError::unauthorized(DELETE_TAGS, Some(&arn)));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    for id in &ids {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        if tags.is_empty() {
            instance.tags.clear();
            continue;
        }
        instance.tags.retain(|(k, v)| {
            !tags
                .iter()
                .any(|(key, value)| key == k && value.as_ref().is_none_or(|value| value == v))
        });
    }
    Ok(return_true("DeleteTagsResponse", request_id))
}
