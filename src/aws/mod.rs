//! The AWS adaptors: the only code that talks to EC2 and CloudWatch.
//!
//! - [`error`]: one classification of AWS errors for both services.
//! - [`ec2`]: the rate-limited EC2 client, full-option ModifyInstanceMetadataOptions.
//! - [`describe`]: DescribeInstances by ID in batches of 200, or by listing the cluster's
//!   instances by its tag when that takes fewer calls.
//! - [`describe_answer`]: DescribeInstances answers read for what the operator keeps, in one
//!   pass (in place of the SDK's full deserializer, which was 42–47% of a quiet resync's CPU).
//! - [`ec2_defaults`]: the region's account-level IMDS defaults (read, and modify for the
//!   `InstanceMetadataDefaults` singleton).
//! - [`cloudwatch`]: `MetadataNoToken` (IMDSv1 usage) through GetMetricData.
//! - [`ratelimit`]: client-side token buckets whose rate adapts to throttling.
//! - [`fence`]: EC2 writes pass only while this replica's leader lease is renewed.
//! - [`attempts`]: an SDK interceptor that counts every attempt (throttled ones and retries).

pub mod attempts;
pub mod cloudwatch;
pub mod describe;
pub mod describe_answer;
pub mod ec2;
pub mod ec2_defaults;
pub mod error;
pub mod fence;
pub mod ratelimit;

pub use error::{AwsError, AwsErrorKind, Service};
