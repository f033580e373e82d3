//! The pure core of imds-operator: every decision the operator makes, as functions of what was
//! observed. Nothing here does IO (the dependency list has no tokio, AWS SDK or Kubernetes
//! client); time is a parameter.
//!
//! - [`api`]: the `InstanceMetadataPolicy` custom resource (spec, status, condition types).
//! - [`defaults_api`]: the `InstanceMetadataDefaults` singleton (the account's IMDS defaults).
//! - [`defaults`]: the account defaults against policies, declarative-policy refusals, the
//!   singleton's decisions and status.
//! - [`reason`]: every reason written to status and Events.
//! - [`options`]: the five metadata options, EC2's launch defaults, the original-options record.
//! - [`provider_id`]: Node `spec.providerID` → EC2 instance.
//! - [`karpenter`]: Karpenter `EC2NodeClass` options against the policies that would select its nodes.
//! - [`labels`]: node labels kept interned and shared, and the selectors that match them.
//! - [`launch_source`]: which launch template, node group or `EC2NodeClass` keeps launching drifted instances.
//! - [`node`]: what the operator keeps of a Node.
//! - [`observation`]: what observe hands to planning (nodes, instances, classified failures).
//! - [`selection`]: which policies select a node and which one decides each option.
//! - [`plan`]: per node, its state and the request to send; [`plan::guards`] checks requests.
//! - [`policy_report`]: node plans → wg-policy `ClusterPolicyReport`s (sharded, timestamps kept).
//! - [`rollout`]: staged rollout budget, settle and halt decisions.
//! - [`requeue`]: when to look again (backoff per failure kind).
//! - [`record`]: what the operator changed on an instance (originals, who, the last request).
//! - [`restore`]: what an instance needs when its `Restore` policy is deleted.
//! - [`revert`]: putting an instance back after refused IMDSv1 calls, and holding it there.
//! - [`status`]: node plans → the policy's status and kstatus conditions.
//! - [`usage`]: IMDSv1 usage per CloudWatch period, and what counts after an instance's boot window.
//! - [`leader`]: leader-election decisions (client-go's rules) and the leader's write window.
//! - `fixtures` (tests, or the `fixtures` feature): policy builders for tests.

pub mod api;
pub mod cluster;
pub mod defaults;
pub mod defaults_api;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod karpenter;
pub mod labels;
pub mod launch_source;
pub mod leader;
pub mod node;
pub mod observation;
pub mod options;
pub mod plan;
pub mod policy_report;
pub mod provider_id;
pub mod reason;
pub mod record;
pub mod requeue;
pub mod restore;
pub mod revert;
pub mod rollout;
pub mod selection;
pub mod status;
pub mod usage;
