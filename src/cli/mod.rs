//! The commands of the `imds-operator` binary.
//!
//! - [`run`]: the operator (leader election, health and metrics, the controller).
//! - [`report`]: a one-shot compliance report of every node.
//! - [`report_defaults`]: the report's account-defaults section.
//! - [`report_fleet`]: the report's refused IMDSv1 calls per node and launch sources.
//! - [`iam`]: the IAM policy documents the operator's role (and a launch guard) need.
//! - [`crd`]: the CustomResourceDefinition as YAML.

pub mod crd;
pub mod iam;
pub mod report;
pub mod report_defaults;
pub mod report_fleet;
pub mod run;
