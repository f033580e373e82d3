//! What the EC2 adaptor's tier-2 tests share (`tests/ec2_adaptor.rs`,
//! `tests/ec2_cluster_listing.rs`): client limits that never slow a test, the options instances
//! start from, and instance IDs.

use imds_core::api::{HttpTokens, Toggle};
use imds_core::options::FullOptions;
use imds_operator::aws::ec2::RateLimits;

/// Client-side limits high enough never to slow a test down.
pub const FAST: RateLimits = RateLimits {
    describe_per_second: 1000.0,
    describe_burst: 1000,
    modify_per_second: 1000.0,
    modify_burst: 1000,
};

/// What an instance launched without metadata options has.
pub const LAUNCH_DEFAULTS: FullOptions = FullOptions {
    http_tokens: HttpTokens::Optional,
    hop_limit: 1,
    http_endpoint: Toggle::Enabled,
    http_protocol_ipv6: Toggle::Disabled,
    instance_metadata_tags: Toggle::Disabled,
};

/// A typical target: IMDSv2 only, hop limit 2 for pods.
pub const HARDENED: FullOptions = FullOptions {
    http_tokens: HttpTokens::Required,
    hop_limit: 2,
    http_endpoint: Toggle::Enabled,
    http_protocol_ipv6: Toggle::Disabled,
    instance_metadata_tags: Toggle::Disabled,
};

/// A well-formed (17 hex digits) instance ID.
pub fn instance_id(n: u64) -> String {
    format!("i-{n:017x}")
}
