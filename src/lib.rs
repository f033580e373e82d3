//! imds-operator: keeps the EC2 Instance Metadata Service options of a cluster's nodes where
//! its `InstanceMetadataPolicy` objects declare them.
//!
//! Layout: the pure core ([`provider_id`], [`options`], [`selection`], [`plan`], [`status`]) makes
//! every decision; [`ec2`] and [`reconcile`]/[`controller`] are the IO edges.

pub mod api;
pub mod aws_attempts;
pub mod cache;
pub mod context;
pub mod controller;
pub mod ec2;
pub mod iam;
pub mod imdsv1_usage;
pub mod metrics;
pub mod nodes;
pub mod options;
pub mod plan;
pub mod provider_id;
pub mod ratelimit;
pub mod reconcile;
pub mod report;
pub mod restore;
pub mod rollout;
pub mod run;
pub mod selection;
pub mod server;
pub mod status;
pub mod telemetry;
