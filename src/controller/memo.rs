//! What the controller remembers per policy between reconciles, in memory: the DryRun
//! preflights that passed or were denied, which nodes each policy selected last, the backoff
//! counters, the hold that keeps every trigger of a policy in backoff from reaching EC2, and
//! when each Warning was last published.

use imds_core::api::InstanceMetadataPolicy;
use imds_core::launch_source::{LaunchSource, LaunchSourceCount, SourceTally};
use imds_core::observation::{Failure, FailureKind};
use imds_core::requeue::{backoff_base, backoff_delay};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The same Warning (policy, node, reason, action) is published at most once per this window;
/// the repeats are counted into the next one.
pub const WARNING_WINDOW: Duration = Duration::from_secs(300);

/// What triggers a reconcile of a policy on its own: its spec (generation), its annotations
/// (rollout resume, abandon restore) and its deletion. A change of these ends a hold.
pub fn trigger_of(policy: &InstanceMetadataPolicy) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    policy.meta().generation.hash(&mut h);
    policy.annotations().hash(&mut h);
    policy.meta().deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// A policy in backoff: nothing is sent for it before `until` unless its trigger changes.
#[derive(Clone, Copy, Debug)]
struct Hold {
    until: Instant,
    trigger: u64,
}

/// A preflight denied for a policy generation: not re-run before `until`.
#[derive(Clone, Debug)]
struct Denial {
    until: Instant,
    attempts: u32,
    failure: Failure,
}

/// The key of a Warning for [`PolicyMemo::warning_due`].
pub type WarningKey = (String, Option<String>, String, String);

/// A policy generation: the key of a passed preflight.
pub type PolicyGeneration = (String, i64);

/// Per-policy memory. Every method tolerates a poisoned lock (it then remembers nothing), so a
/// panic elsewhere can never stop reconciles.
#[derive(Debug, Default)]
pub struct PolicyMemo {
    preflight: Mutex<HashSet<PolicyGeneration>>,
    denied: Mutex<HashMap<PolicyGeneration, Denial>>,
    membership: Mutex<HashMap<String, BTreeSet<String>>>,
    backoff: Mutex<HashMap<(String, FailureKind), u32>>,
    holds: Mutex<HashMap<String, Hold>>,
    triggers: Mutex<HashMap<String, u64>>,
    warnings: Mutex<HashMap<WarningKey, (Instant, u32)>>,
    launch_sources: Mutex<HashMap<String, SourceTally>>,
}

impl PolicyMemo {
    /// Counts a change `policy` made at `at` to a new instance of `source`.
    pub fn record_launch_source(&self, policy: &str, source: LaunchSource, at: Timestamp) {
        if let Ok(mut s) = self.launch_sources.lock() {
            let tally = s.entry(policy.to_string()).or_default();
            tally.expire(at);
            tally.record(source, at);
        }
    }

    /// The launch sources of `policy`'s changes to new instances in the window at `now`.
    pub fn launch_sources(&self, policy: &str, now: Timestamp) -> Vec<LaunchSourceCount> {
        self.launch_sources
            .lock()
            .ok()
            .and_then(|s| s.get(policy).map(|t| t.counts(now)))
            .unwrap_or_default()
    }

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
        if let Ok(mut d) = self.denied.lock() {
            d.remove(&key);
        }
        if let Ok(mut p) = self.preflight.lock() {
            p.insert(key);
        }
    }

    /// The remembered denial of this generation's preflight, while its backoff lasts.
    pub fn preflight_denied(&self, key: &PolicyGeneration, now: Instant) -> Option<Failure> {
        let denied = self.denied.lock().ok()?;
        denied.get(key).filter(|d| now < d.until).map(|d| d.failure.clone())
    }

    /// Records a denied preflight; it is not re-run before its backoff (the permission-denied
    /// base, doubled per denial) ends. Returns how many times it was denied in a row.
    pub fn set_preflight_denied(&self, key: PolicyGeneration, failure: Failure, now: Instant) -> u32 {
        let Ok(mut denied) = self.denied.lock() else {
            return 1;
        };
        let attempts = denied.get(&key).map_or(0, |d| d.attempts).saturating_add(1);
        let base = backoff_base(FailureKind::PermissionDenied).unwrap_or(Duration::from_secs(60));
        let until = now + backoff_delay(base, attempts);
        denied.insert(
            key,
            Denial {
                until,
                attempts,
                failure,
            },
        );
        attempts
    }

    /// Whether the policy's own trigger ([`trigger_of`]) changed since the last call (true the
    /// first time). A person who edits or annotates a policy wants it tried again now: the
    /// caller then ends the backoffs of its instances and forgets its denied preflights.
    pub fn trigger_changed(&self, policy: &str, trigger: u64) -> bool {
        let Ok(mut triggers) = self.triggers.lock() else {
            return true;
        };
        triggers.insert(policy.to_string(), trigger) != Some(trigger)
    }

    /// Forgets the denied preflights of a policy (all generations).
    pub fn forget_denials(&self, policy: &str) {
        if let Ok(mut d) = self.denied.lock() {
            d.retain(|(name, _), _| name != policy);
        }
    }

    /// Holds the policy until `until`: triggers before then send nothing, unless the policy's
    /// own trigger ([`trigger_of`]) changed.
    pub fn hold(&self, policy: &str, trigger: u64, until: Instant) {
        if let Ok(mut h) = self.holds.lock() {
            h.insert(policy.to_string(), Hold { until, trigger });
        }
    }

    /// Ends a hold (the policy no longer fails).
    pub fn release(&self, policy: &str) {
        if let Ok(mut h) = self.holds.lock() {
            h.remove(policy);
        }
    }

    /// How long the policy is still held at `now`, if it is, for this trigger.
    pub fn held(&self, policy: &str, trigger: u64, now: Instant) -> Option<Duration> {
        let holds = self.holds.lock().ok()?;
        let hold = holds.get(policy)?;
        (hold.trigger == trigger && now < hold.until).then(|| hold.until - now)
    }

    /// Whether a Warning with this key may be published at `now`, and how many identical
    /// ones were held back since the last one. At most one per [`WARNING_WINDOW`].
    pub fn warning_due(&self, key: WarningKey, now: Instant) -> Option<u32> {
        let Ok(mut warnings) = self.warnings.lock() else {
            return Some(0);
        };
        warnings.retain(|_, (at, _)| now.saturating_duration_since(*at) < WARNING_WINDOW * 2);
        match warnings.get_mut(&key) {
            Some((at, held_back)) if now.saturating_duration_since(*at) < WARNING_WINDOW => {
                *held_back = held_back.saturating_add(1);
                None
            }
            Some((at, held_back)) => {
                let repeats = std::mem::take(held_back);
                *at = now;
                Some(repeats)
            }
            None => {
                warnings.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// Drops everything kept for a deleted policy.
    pub fn forget_policy(&self, policy: &str) {
        if let Ok(mut s) = self.launch_sources.lock() {
            s.remove(policy);
        }
        if let Ok(mut p) = self.preflight.lock() {
            p.retain(|(name, _)| name != policy);
        }
        self.forget_denials(policy);
        if let Ok(mut t) = self.triggers.lock() {
            t.remove(policy);
        }
        self.release(policy);
        if let Ok(mut w) = self.warnings.lock() {
            w.retain(|(name, ..), _| name != policy);
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
    fn a_hold_lasts_until_its_end_or_a_new_trigger() {
        let memo = PolicyMemo::default();
        let t0 = Instant::now();
        memo.hold("p", 1, t0 + Duration::from_secs(40));
        assert_eq!(
            memo.held("p", 1, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(memo.held("p", 2, t0), None, "a spec or annotation change goes through");
        assert_eq!(memo.held("p", 1, t0 + Duration::from_secs(40)), None, "over");
        assert_eq!(memo.held("q", 1, t0), None);
        memo.release("p");
        assert_eq!(memo.held("p", 1, t0), None);
        assert!(memo.trigger_changed("p", 1), "first sight");
        assert!(!memo.trigger_changed("p", 1));
        assert!(memo.trigger_changed("p", 2));
    }

    #[test]
    fn a_denied_preflight_is_remembered_with_a_growing_backoff() {
        let memo = PolicyMemo::default();
        let t0 = Instant::now();
        let key: PolicyGeneration = ("p".into(), 1);
        let denied = Failure {
            kind: FailureKind::PermissionDenied,
            message: "UnauthorizedOperation".into(),
        };
        assert_eq!(memo.set_preflight_denied(key.clone(), denied.clone(), t0), 1);
        assert_eq!(
            memo.preflight_denied(&key, t0 + Duration::from_secs(59)),
            Some(denied.clone())
        );
        assert_eq!(
            memo.preflight_denied(&key, t0 + Duration::from_secs(60)),
            None,
            "re-run after 60s"
        );
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(memo.set_preflight_denied(key.clone(), denied.clone(), t1), 2);
        assert!(
            memo.preflight_denied(&key, t1 + Duration::from_secs(119)).is_some(),
            "then 120s"
        );
        assert!(
            memo.preflight_denied(&("p".into(), 2), t1).is_none(),
            "a new generation re-runs"
        );
        memo.set_preflight_passed(key.clone());
        assert!(memo.preflight_denied(&key, t1).is_none());
    }

    #[test]
    fn the_same_warning_is_published_once_per_window_with_the_repeats_counted() {
        let memo = PolicyMemo::default();
        let t0 = Instant::now();
        let key = |node: &str| -> WarningKey { ("p".into(), Some(node.into()), "Throttled".into(), "Modify".into()) };
        assert_eq!(memo.warning_due(key("a"), t0), Some(0));
        assert_eq!(memo.warning_due(key("b"), t0), Some(0), "another node");
        for s in 1..=3 {
            assert_eq!(memo.warning_due(key("a"), t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(memo.warning_due(key("a"), t0 + WARNING_WINDOW), Some(3));
        assert_eq!(memo.warning_due(key("a"), t0 + WARNING_WINDOW), None);
        memo.forget_policy("p");
        assert_eq!(memo.warning_due(key("a"), t0 + WARNING_WINDOW), Some(0));
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
