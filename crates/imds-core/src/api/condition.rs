//! Condition types (kstatus).

/// Every selected instance matches the policy and its options are applied.
pub const READY: &str = "Ready";
/// The operator is changing instances or waiting for changes to apply.
pub const RECONCILING: &str = "Reconciling";
/// Progress needs a person.
pub const STALLED: &str = "Stalled";
