//! What the controller remembers per policy between reconciles, in memory: the DryRun
//! preflights that passed, which nodes each policy selected last, and the backoff counters.

use imds_core::observation::FailureKind;
use imds_core::requeue::backoff_delay;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// A policy generation: the key of a passed preflight.
pub type PolicyGeneration = (String, i64);

/// Per-policy memory. Every method tolerates a poisoned lock (it then remembers nothing), so a
/// panic elsewhere can never stop reconciles.
#[derive(Debug, Default)]
pub struct PolicyMemo {
    preflight: Mutex<HashSet<PolicyGeneration>>,
    membership: Mutex<HashMap<String, BTreeSet<String>>>,
    backoff: Mutex<HashMap<(String, FailureKind), u32>>,
}

impl PolicyMemo {
    /// Remembers which nodes a policy selected in its last reconcile, so that a node whose
    /// labels move it away from the policy still triggers that policy.
    pub fn record_membership(&self, policy: &str, nodes: BTreeSet<String>) {
        if let Ok(mut m) = self.membership.lock() {
            m.insert(policy.to_string(), nodes);
        }
    }

    /// The policies whose last reconcile selected `node`.
    pub fn policies_that_selected(&self, node: &str) -> Vec<String> {
        self.membership
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, nodes)| nodes.contains(node))
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the DryRun preflight passed for this policy generation.
    pub fn preflight_passed(&self, key: &PolicyGeneration) -> bool {
        self.preflight.lock().map(|p| p.contains(key)).unwrap_or(false)
    }

    /// Records a passed preflight.
    pub fn set_preflight_passed(&self, key: PolicyGeneration) {
        if let Ok(mut p) = self.preflight.lock() {
            p.insert(key);
        }
    }

    /// Drops everything kept for a deleted policy.
    pub fn forget_policy(&self, policy: &str) {
        if let Ok(mut p) = self.preflight.lock() {
            p.retain(|(name, _)| name != policy);
        }
        if let Ok(mut m) = self.membership.lock() {
            m.remove(policy);
        }
        if let Ok(mut b) = self.backoff.lock() {
            b.retain(|(p, _), _| p != policy);
        }
    }

    /// The next delay for a policy failing with `kind`: `base` doubled per consecutive
    /// failure, capped (see [`backoff_delay`]).
    pub fn backoff(&self, policy: &str, kind: FailureKind, base: Duration) -> Duration {
        let attempts = self
            .backoff
            .lock()
            .map(|mut b| {
                let n = b.entry((policy.to_string(), kind)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff_delay(base, attempts)
    }

    /// Resets the counters of kinds that no longer fail.
    pub fn reset_backoff(&self, policy: &str, still_failing: &HashSet<FailureKind>) {
        if let Ok(mut b) = self.backoff.lock() {
            b.retain(|(p, k), _| p != policy || still_failing.contains(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_kind_and_resets() {
        let memo = PolicyMemo::default();
        let base = Duration::from_secs(10);
        let secs = |d: Duration| d.as_secs();
        assert_eq!(secs(memo.backoff("p", FailureKind::Transient, base)), 10);
        assert_eq!(secs(memo.backoff("p", FailureKind::Transient, base)), 20);
        assert_eq!(secs(memo.backoff("p", FailureKind::PermissionDenied, base)), 10);
        assert_eq!(secs(memo.backoff("q", FailureKind::Transient, base)), 10);
        memo.reset_backoff("p", &[FailureKind::PermissionDenied].into());
        assert_eq!(secs(memo.backoff("p", FailureKind::Transient, base)), 10, "reset");
        assert_eq!(secs(memo.backoff("p", FailureKind::PermissionDenied, base)), 20, "kept");
        memo.forget_policy("q");
        assert_eq!(secs(memo.backoff("q", FailureKind::Transient, base)), 10, "forgotten");
    }

    #[test]
    fn membership_and_preflight_are_forgotten_with_the_policy() {
        let memo = PolicyMemo::default();
        memo.record_membership("p", ["a".to_string(), "b".to_string()].into());
        memo.record_membership("q", ["b".to_string()].into());
        let mut selected = memo.policies_that_selected("b");
        selected.sort();
        assert_eq!(selected, vec!["p", "q"]);
        memo.set_preflight_passed(("p".into(), 3));
        assert!(memo.preflight_passed(&("p".into(), 3)));
        assert!(!memo.preflight_passed(&("p".into(), 4)));
        memo.forget_policy("p");
        assert!(!memo.preflight_passed(&("p".into(), 3)));
        assert_eq!(memo.policies_that_selected("a"), Vec::<String>::new());
    }
}
