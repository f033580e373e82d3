//! What the observe step hands to planning: nodes reduced to what decisions read, what EC2
//! said of each instance, and failures classified by how they are handled.

use crate::labels::Labels;
use crate::options::{FullOptions, ObservedOptions};
use crate::reason::Reason;
use std::collections::HashMap;

/// A Node, reduced to what the decisions need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInput {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
}

/// What kind of failure an EC2 error is, which decides how it is retried and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// `UnauthorizedOperation`: reported, retried with a long backoff.
    PermissionDenied,
    /// `UnsupportedOperation`, `InvalidParameterValue`: not retried until the request changes.
    Unsupported,
    /// Throttling, 5xx, timeouts: retried with backoff.
    Transient,
    /// Refused because an AWS Organizations declarative policy manages the account's IMDS
    /// settings (see [`crate::defaults::is_declarative_refusal`]): not retried until the
    /// policy (its generation) or the account defaults change.
    DeclarativePolicy,
    /// Anything else: retried with backoff.
    Other,
}

impl FailureKind {
    /// The CamelCase reason for status and events.
    pub fn reason(self) -> Reason {
        match self {
            FailureKind::PermissionDenied => Reason::PermissionDenied,
            FailureKind::Unsupported => Reason::UnsupportedOption,
            FailureKind::Transient => Reason::TransientError,
            FailureKind::DeclarativePolicy => Reason::DeclarativePolicyEnforced,
            FailureKind::Other => Reason::Ec2Error,
        }
    }
}

/// A failed EC2 call, as far as planning and status care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// How it is handled.
    pub kind: FailureKind,
    /// The EC2 error code and message.
    pub message: String,
}

/// What is known about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// DescribeInstances reported it.
    Found(ObservedOptions),
    /// DescribeInstances does not know it (terminated, another account or region).
    NotFound,
    /// Reading it failed.
    Failed(Failure),
}

/// Remembers modify requests that EC2 refused for good, so they are not sent again until the
/// request (the policy or the node's selection) changes.
/// Where planning reads the last observation of an instance (none: not read yet). The
/// controller's instance cache is one, so a reconcile does not copy every observation of its
/// selection into a map first.
pub trait ObservationSource {
    /// The last observation of `instance_id`, when it has been read.
    fn observation(&self, instance_id: &str) -> Option<&Observation>;
}

impl ObservationSource for HashMap<String, Observation> {
    fn observation(&self, instance_id: &str) -> Option<&Observation> {
        self.get(instance_id)
    }
}

pub trait RefusalMemo {
    /// The refusal of exactly this request for this instance, if there was one.
    fn refused(&self, instance_id: &str, request: &FullOptions) -> Option<Failure>;
}

impl RefusalMemo for HashMap<String, (FullOptions, Failure)> {
    fn refused(&self, instance_id: &str, request: &FullOptions) -> Option<Failure> {
        self.get(instance_id)
            .filter(|(refused, _)| refused == request)
            .map(|(_, failure)| failure.clone())
    }
}
