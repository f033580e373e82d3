//! What the operator remembers about instances between reconciles: the last observation (so a
//! reconcile triggered by one node reads only that node's instance), and requests EC2 refused
//! for good. Shared by every policy's reconcile.

use crate::options::{ApplyState, FullOptions};
use crate::plan::{Failure, Observation};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Debug)]
struct Entry {
    observation: Observation,
    tag_keys: Vec<String>,
    fetched: Instant,
}

/// The shared instance cache.
#[derive(Debug, Default)]
pub struct InstanceCache {
    entries: HashMap<String, Entry>,
    refusals: HashMap<String, (FullOptions, Failure)>,
    in_flight: HashSet<String>,
}

impl InstanceCache {
    /// The instances among `ids` that must be (re-)read: never read, read more than `max_age`
    /// ago, failed, or with a change pending.
    pub fn stale<'a>(&self, ids: impl IntoIterator<Item = &'a String>, now: Instant, max_age: Duration) -> Vec<String> {
        ids.into_iter()
            .filter(|id| match self.entries.get(*id) {
                None => true,
                Some(e) => {
                    now.saturating_duration_since(e.fetched) >= max_age
                        || match &e.observation {
                            Observation::Found(o) => o.state == ApplyState::Pending,
                            Observation::NotFound => false,
                            Observation::Failed(_) => true,
                        }
                }
            })
            .cloned()
            .collect()
    }

    /// Records an observation.
    pub fn observe(&mut self, id: &str, observation: Observation, tag_keys: Vec<String>, now: Instant) {
        self.entries.insert(
            id.to_string(),
            Entry {
                observation,
                tag_keys,
                fetched: now,
            },
        );
    }

    /// The observations of `ids` that are known.
    pub fn observations<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> HashMap<String, Observation> {
        ids.into_iter()
            .filter_map(|id| self.entries.get(id).map(|e| (id.clone(), e.observation.clone())))
            .collect()
    }

    /// The tag keys of an instance, when known.
    pub fn tag_keys(&self, id: &str) -> Option<&[String]> {
        self.entries.get(id).map(|e| e.tag_keys.as_slice())
    }

    /// Requests EC2 refused for good.
    pub fn refusals(&self) -> &HashMap<String, (FullOptions, Failure)> {
        &self.refusals
    }

    /// Remembers that EC2 refused `request` for `id` for good.
    pub fn refuse(&mut self, id: &str, request: FullOptions, failure: Failure) {
        self.refusals.insert(id.to_string(), (request, failure));
    }

    /// Claims an instance for a modify request; false when another reconcile has it.
    pub fn claim(&mut self, id: &str) -> bool {
        self.in_flight.insert(id.to_string())
    }

    /// Releases a claim.
    pub fn release(&mut self, id: &str) {
        self.in_flight.remove(id);
    }

    /// Forgets an instance whose node is gone.
    pub fn forget(&mut self, id: &str) {
        self.entries.remove(id);
        self.refusals.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::ObservedOptions;
    use crate::plan::FailureKind;

    fn found(state: ApplyState) -> Observation {
        Observation::Found(ObservedOptions {
            values: Default::default(),
            state,
        })
    }

    #[test]
    fn staleness() {
        let t0 = Instant::now();
        let max_age = Duration::from_secs(60);
        let mut cache = InstanceCache::default();
        let ids: Vec<String> = ["fresh", "pending", "old", "failed", "gone", "never"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cache.observe("fresh", found(ApplyState::Applied), vec![], t0);
        cache.observe("pending", found(ApplyState::Pending), vec![], t0);
        cache.observe("old", found(ApplyState::Applied), vec![], t0 - Duration::from_secs(61));
        cache.observe(
            "failed",
            Observation::Failed(Failure {
                kind: FailureKind::Transient,
                message: "x".into(),
            }),
            vec![],
            t0,
        );
        cache.observe("gone", Observation::NotFound, vec![], t0);
        let mut stale = cache.stale(&ids, t0 + Duration::from_secs(1), max_age);
        stale.sort();
        assert_eq!(stale, vec!["failed", "never", "old", "pending"]);
    }

    #[test]
    fn claims_are_exclusive() {
        let mut cache = InstanceCache::default();
        assert!(cache.claim("i-1"));
        assert!(!cache.claim("i-1"));
        cache.release("i-1");
        assert!(cache.claim("i-1"));
    }

    #[test]
    fn forget_drops_dead_instances() {
        let t0 = Instant::now();
        let mut cache = InstanceCache::default();
        cache.observe("a", found(ApplyState::Applied), vec!["k".into()], t0);
        cache.observe("b", found(ApplyState::Applied), vec![], t0);
        cache.forget("b");
        assert_eq!(cache.tag_keys("a"), Some(&["k".to_string()][..]));
        assert!(cache.tag_keys("b").is_none());
    }
}
