//! The EC2 client: client-side rate limits that adapt to throttling, full-option
//! ModifyInstanceMetadataOptions behind the write fence (DescribeInstances is `aws::describe`).

use super::attempts::AttemptMetrics;
use super::error::{AwsError, AwsErrorKind, Service, from_sdk};
use super::fence::WriteFence;
use super::ratelimit::RateLimiter;
use crate::telemetry::metrics::Metrics;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsResponse, InstanceMetadataOptionsState,
    InstanceMetadataProtocolState, InstanceMetadataTagsState,
};
use imds_core::api::{HttpTokens, MetadataOptions, Toggle};
use imds_core::options::{ApplyState, FullOptions, ObservedOptions};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

/// `ModifyInstanceMetadataDefaults` calls per second (EC2's bucket: burst 2, 2 per second).
pub const DEFAULTS_MODIFY_RATE: f64 = 1.0;
/// Burst of `ModifyInstanceMetadataDefaults`.
pub const DEFAULTS_MODIFY_BURST: u32 = 2;

pub use super::describe_answer::ORIGINAL_OPTIONS_TAG;

/// How the cluster's instances are listed (`aws::describe`): by their tag key — given
/// (`--cluster-name`) or learnt from the instances read by ID — and how many pages the last
/// listing took (how the next refresh decides whether listing pays). Shared by the clones of one
/// [`Ec2`].
#[derive(Debug, Default)]
pub(super) struct ClusterListing {
    pub(super) tag_key: RwLock<Option<String>>,
    /// Whether `tag_key` was given (then it is never replaced by a learnt one).
    pub(super) given: bool,
    pub(super) last_pages: AtomicUsize,
}

/// Converts EC2's metadata options.
pub fn observed_from(response: Option<&InstanceMetadataOptionsResponse>) -> ObservedOptions {
    let Some(r) = response else {
        return ObservedOptions::default();
    };
    let toggle = |s: &str| Toggle::from_ec2(s);
    ObservedOptions {
        values: MetadataOptions {
            http_tokens: r.http_tokens().and_then(|t| HttpTokens::from_ec2(t.as_str())),
            // EC2 documents 1–64; anything else is unknown (a request never carries it).
            http_put_response_hop_limit: r
                .http_put_response_hop_limit()
                .filter(|h| imds_core::options::HOP_LIMITS.contains(h)),
            http_endpoint: r.http_endpoint().and_then(|v| toggle(v.as_str())),
            http_protocol_ipv6: r.http_protocol_ipv6().and_then(|v| toggle(v.as_str())),
            instance_metadata_tags: r.instance_metadata_tags().and_then(|v| toggle(v.as_str())),
        },
        state: match r.state() {
            Some(InstanceMetadataOptionsState::Pending) => ApplyState::Pending,
            _ => ApplyState::Applied,
        },
    }
}

/// The configuration of an EC2 write: one attempt. A throttled write waits for the (cut) client
/// rate and the next reconcile, not for the SDK's immediate retries (each another throttled call
/// in a shared account); a failed one is retried by the controller's backoff.
pub(super) fn one_attempt() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Config::builder().retry_config(RetryConfig::standard().with_max_attempts(1))
}

/// The EC2 API, rate-limited and counted.
#[derive(Clone, Debug)]
pub struct Ec2 {
    pub(super) client: aws_sdk_ec2::Client,
    pub(super) describe_limit: Arc<RateLimiter>,
    modify_limit: Arc<RateLimiter>,
    /// ModifyInstanceMetadataDefaults (sent by `aws::ec2_defaults`).
    pub(super) defaults_modify_limit: Arc<RateLimiter>,
    pub(super) fence: WriteFence,
    /// The cluster's tag to list by (see [`Ec2::with_cluster_listing`]).
    pub(super) listing: Arc<ClusterListing>,
    metrics: Arc<Metrics>,
}

/// Client-side rate limits.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// DescribeInstances calls per second.
    pub describe_per_second: f64,
    /// DescribeInstances burst.
    pub describe_burst: u32,
    /// ModifyInstanceMetadataOptions calls per second.
    pub modify_per_second: f64,
    /// ModifyInstanceMetadataOptions burst.
    pub modify_burst: u32,
}

impl Ec2 {
    /// Wraps an SDK client.
    pub fn new(client: aws_sdk_ec2::Client, limits: RateLimits, metrics: Arc<Metrics>) -> Ec2 {
        let config = client
            .config()
            .to_builder()
            .interceptor(AttemptMetrics::new(metrics.clone()))
            .build();
        Ec2 {
            client: aws_sdk_ec2::Client::from_conf(config),
            describe_limit: Arc::new(RateLimiter::new(limits.describe_burst, limits.describe_per_second)),
            modify_limit: Arc::new(RateLimiter::new(limits.modify_burst, limits.modify_per_second)),
            defaults_modify_limit: Arc::new(RateLimiter::new(DEFAULTS_MODIFY_BURST, DEFAULTS_MODIFY_RATE)),
            fence: WriteFence::open(),
            listing: Arc::default(),
            metrics,
        }
    }

    /// Sends modifications only while `fence` is open (see [`WriteFence`]).
    pub fn with_fence(self, fence: WriteFence) -> Ec2 {
        Ec2 { fence, ..self }
    }

    /// Reads large selections by listing the instances of cluster `cluster_name` (those tagged
    /// `kubernetes.io/cluster/<cluster_name>`), 1,000 per DescribeInstances call, when that takes
    /// fewer calls than asking for them by ID, 200 per call (see [`Ec2::describe`]). Without it,
    /// the tag is learnt from the instances read by ID when all of them carry the same one.
    pub fn with_cluster_listing(self, cluster_name: &str) -> Ec2 {
        let listing = ClusterListing {
            tag_key: RwLock::new(Some(imds_core::cluster::cluster_tag_key(cluster_name))),
            given: true,
            last_pages: AtomicUsize::new(0),
        };
        Ec2 {
            listing: Arc::new(listing),
            ..self
        }
    }

    /// Modify tokens available now (how many requests can go out without waiting).
    pub async fn modify_tokens(&self) -> u32 {
        self.modify_limit.available().await
    }

    /// The current Modify rate, per second (cut while EC2 throttles).
    pub async fn modify_rate(&self) -> f64 {
        self.modify_limit.rate().await
    }

    /// Waits for a token of `limiter`, then checks the write fence — after the wait, since the
    /// lease may have been lost meanwhile. Every mutating call of `operation` goes through it.
    pub(super) async fn write_permit(&self, limiter: &RateLimiter, operation: &'static str) -> Result<(), AwsError> {
        limiter.acquire().await;
        self.fence
            .check()
            .map_err(|fenced| AwsError::new(operation, AwsErrorKind::NotLeading, "NotLeading", fenced.to_string()))
    }

    /// Counts the outcome and adapts `limiter`: throttling cuts its rate, other answers let it
    /// grow back; the current rate is a gauge.
    pub(super) async fn record<T>(&self, operation: &str, limiter: &RateLimiter, result: &Result<T, AwsError>) {
        match result {
            Ok(_) => self.metrics.aws_call(operation, "ok"),
            Err(e) => self.metrics.aws_call(operation, &e.code),
        }
        let rate = match result {
            Err(e) if e.is_throttling() => limiter.throttled().await,
            _ => limiter.succeeded().await,
        };
        self.metrics.aws_client_rate(operation, rate);
    }

    /// Sends one complete request (all five options). `dry_run` asks EC2 whether the call would
    /// be allowed: the answer is then always an error, `DryRunOk` when it would.
    pub async fn modify(
        &self,
        instance_id: &str,
        options: &FullOptions,
        dry_run: bool,
    ) -> Result<ObservedOptions, AwsError> {
        const OPERATION: &str = "ModifyInstanceMetadataOptions";
        self.write_permit(&self.modify_limit, OPERATION).await?;
        let result = self
            .client
            .modify_instance_metadata_options()
            .instance_id(instance_id)
            .http_tokens(HttpTokensState::from(options.http_tokens.as_str()))
            .http_put_response_hop_limit(options.hop_limit)
            .http_endpoint(InstanceMetadataEndpointState::from(options.http_endpoint.as_str()))
            .http_protocol_ipv6(InstanceMetadataProtocolState::from(options.http_protocol_ipv6.as_str()))
            .instance_metadata_tags(InstanceMetadataTagsState::from(options.instance_metadata_tags.as_str()))
            .dry_run(dry_run)
            .customize()
            .interceptor(self.fence.clone())
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| from_sdk(Service::Ec2, OPERATION, e));
        self.record(OPERATION, &self.modify_limit, &result).await;
        let output = result?;
        if !dry_run {
            self.metrics.modified();
        }
        let mut observed = observed_from(output.instance_metadata_options());
        // A response without options still means EC2 took the request: treat it as pending
        // so the next describe confirms it.
        if output.instance_metadata_options().is_none() {
            observed.values = options.to_options();
            observed.state = ApplyState::Pending;
        }
        Ok(observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_options_from_ec2() {
        let response = InstanceMetadataOptionsResponse::builder()
            .state(InstanceMetadataOptionsState::Pending)
            .http_tokens(HttpTokensState::Required)
            .http_put_response_hop_limit(2)
            .http_endpoint(InstanceMetadataEndpointState::Enabled)
            .build();
        let observed = observed_from(Some(&response));
        assert_eq!(observed.state, ApplyState::Pending);
        assert_eq!(observed.values.http_tokens, Some(HttpTokens::Required));
        assert_eq!(observed.values.http_put_response_hop_limit, Some(2));
        assert_eq!(observed.values.http_protocol_ipv6, None, "not reported stays unknown");
        for out_of_range in [0, -1, 65] {
            let response = InstanceMetadataOptionsResponse::builder()
                .http_put_response_hop_limit(out_of_range)
                .build();
            let hop = observed_from(Some(&response)).values.http_put_response_hop_limit;
            assert_eq!(hop, None, "hop limit {out_of_range} is outside EC2's 1-64");
        }
    }
}
