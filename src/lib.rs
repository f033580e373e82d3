//! imds-operator: keeps the EC2 Instance Metadata Service options of a cluster's nodes where
//! its `InstanceMetadataPolicy` objects declare them.
//!
//! Layout, one layer of the pipeline per folder; dependencies point down this list only:
//! - [`cli`]: the commands (`run`, `report`, `iam-policy`, `crd`).
//! - [`controller`]: the IO shell — watches, observe, apply, cleanup, status and events.
//! - [`leadership`]: leader election over a Lease; opens and closes the EC2 write fence.
//! - [`aws`]: the EC2 and CloudWatch adaptors, rate limits, the write fence, one error
//!   classification.
//! - [`telemetry`]: logging, metrics, health endpoints.
//! - [`imds_core`] (crate `crates/imds-core`): every decision, pure — API types, options,
//!   providerID, selection, planning and guards, rollout, requeue, restore, status.

pub mod aws;
pub mod cli;
pub mod controller;
pub mod leadership;
pub mod telemetry;
