//! EC2's rules that more than one action applies: instance IDs, the tag keys IMDS can serve
//! (see `docs/ec2-semantics.md`, "Tag keys and `instanceMetadataTags`"), ARNs.

use super::error::ApiError;
use super::{ACCOUNT_ID, REGION};

/// `i-` and 8 or 17 lowercase hex digits.
pub(super) fn well_formed_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Whether IMDS can serve a tag key: `[0-9a-zA-Z\-_+=,.@:]{1,255}` and not a reserved name.
/// Keys with `/` (e.g. `kubernetes.io/cluster/<name>`) or a space fail.
pub(super) fn imds_tag_key(key: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_+=,.@:".contains(c);
    (1..=255).contains(&key.len()) && key.chars().all(allowed) && !matches!(key, "." | ".." | "_index")
}

/// EC2's answer when instance metadata tags meet a key IMDS cannot serve (the message as EC2
/// words it).
pub(super) fn invalid_imds_tag_key(key: &str) -> ApiError {
    ApiError::invalid(format!(
        "'{key}' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{{1,255}}), \
         and must not be a reserved name ('.', '..', '_index')"
    ))
}

/// The ARN of an instance of the double's account and region.
pub(super) fn instance_arn(id: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/{id}")
}
