//! The controller: the IO shell around the pure core. One reconcile of one policy is
//! observe → plan → apply → write status ([`reconcile`]), or cleanup for a policy being deleted.
//!
//! - [`watches`]: the policy and Node watches and what triggers which policy.
//! - [`node_store`]: what is kept of each Node, from its watch, and the changes that matter.
//! - [`decode`]: policies decoded one by one, so one a version cannot read stops no other.
//! - [`account_defaults`]: the region's account IMDS defaults, read at most every few minutes.
//! - [`singleton`]: the `InstanceMetadataDefaults` singleton's controller (only when it exists).
//! - [`context`]: clients, stores, cache, memory and tunables every reconcile shares.
//! - [`cache`]: what is known of instances between reconciles.
//! - [`memo`]: what is remembered per policy (preflights, membership, backoff).
//! - [`records`]: what the operator changed, kept in ConfigMaps (originals, last requests).
//! - [`observe`]: nodes and policies from the stores, instances from EC2, IMDSv1 usage; planning.
//! - [`rollout`]: the staged rollout's inputs for the core's decisions.
//! - [`revert`]: `onRejectedCalls: Revert`, and the holds it leaves.
//! - [`karpenter`], [`node_classes`]: Karpenter's node classes read, and compared per policy.
//! - [`apply`]: claims, records originals, sends modify requests, records outcomes.
//! - [`preflight`]: the DryRun check before a policy's first request.
//! - [`cleanup`]: deletion, and restore-on-delete.
//! - [`events`]: Events on policies.
//! - [`fault_hook`]: the injected panic the end-to-end tests of containment use.
//! - [`policy_reports`]: the plans reconciles hand to the policy-report writer (no IO).
//! - [`policy_report_writer`]: wg-policy `ClusterPolicyReport`s, written off the reconcile's path.
//! - [`policy_writes`]: the status patch, the finalizer, the gauges.
//! - [`error`]: errors that end a reconcile, with their categories.
//! - [`reconcile`]: the driver.

pub mod account_defaults;
pub mod apply;
pub mod cache;
pub mod cleanup;
pub mod context;
pub mod decode;
pub mod error;
pub mod events;
pub mod fault_hook;
pub mod karpenter;
pub mod memo;
pub mod node_classes;
pub mod node_store;
pub mod observe;
pub mod policy_report_writer;
pub mod policy_reports;
pub mod policy_writes;
pub mod preflight;
pub mod reconcile;
pub mod records;
pub mod revert;
pub mod rollout;
pub mod singleton;
pub mod watches;

pub use context::{Clients, Context, ControllerConfig, Stores};
pub use error::ReconcileError;
pub use watches::run;
