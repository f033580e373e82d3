//! What the operator remembers about instances between reconciles: the last observation (so a
//! reconcile triggered by one node reads only that node's instance), requests EC2 refused for
//! good, and the per-instance backoff after a failed read or request — so that node events,
//! however many, never send a failing instance's request again before its backoff ends.
//! Shared by every policy's reconcile.

use crate::aws::describe::Described;
use imds_core::launch_source::LaunchSource;
use imds_core::observation::{Failure, FailureKind, Observation, ObservationSource};
use imds_core::options::{ApplyState, FullOptions};
use imds_core::plan::guards::{GuardFacts, GuardFactsSource};
use imds_core::requeue::{backoff_base, backoff_delay};
use imds_core::usage::UsageSeries;
use k8s_openapi::jiff::Timestamp;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Debug)]
struct Entry {
    observation: Observation,
    tag_keys: Vec<String>,
    launched: Option<Timestamp>,
    launch_source: Option<LaunchSource>,
    fetched: Instant,
    /// Reads that failed in a row (0 after a successful one).
    failed_reads: u32,
}

/// A request that failed (not for good): not sent again before `until` unless it changes.
#[derive(Clone, Debug)]
struct Backoff {
    request: FullOptions,
    failure: Failure,
    until: Instant,
    attempts: u32,
}

/// How long a CloudWatch answer about IMDSv1 usage is reused.
const USAGE_TTL: Duration = Duration::from_secs(300);
/// How long a failed CloudWatch read is reused before trying again.
const USAGE_ERROR_TTL: Duration = Duration::from_secs(60);

/// The guard facts of the cached instances, for the IMDSv1-usage lookbacks of the policies that
/// decide; read by planning only for the instances it plans a request for.
pub struct CachedGuardFacts<'c> {
    cache: &'c InstanceCache,
    lookbacks: Vec<Duration>,
    now: Instant,
}

impl GuardFactsSource for CachedGuardFacts<'_> {
    fn facts_of(&self, id: &str) -> GuardFacts {
        GuardFacts {
            tag_keys: self.cache.tag_keys(id).map(<[String]>::to_vec).unwrap_or_default(),
            imdsv1_calls: self
                .lookbacks
                .iter()
                .filter_map(|l| Some((*l, self.cache.usage(id, *l, self.now)?)))
                .collect(),
            launched: self.cache.launched(id),
        }
    }
}

/// Planning reads the cached observations in place.
impl ObservationSource for InstanceCache {
    fn observation(&self, instance_id: &str) -> Option<&Observation> {
        self.entries.get(instance_id).map(|e| &e.observation)
    }
}

/// The shared instance cache.
#[derive(Debug, Default)]
pub struct InstanceCache {
    entries: HashMap<String, Entry>,
    refusals: HashMap<String, (FullOptions, Failure)>,
    backoffs: HashMap<String, Backoff>,
    in_flight: HashSet<String>,
    record_tags_seen: HashSet<String>,
    usage: HashMap<(String, u64), (Result<UsageSeries, Failure>, Instant)>,
    /// The revision of the account defaults the declarative-policy refusals were made under.
    defaults_revision: u64,
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
                            Observation::Failed(f) => now >= e.fetched + read_backoff(f, e.failed_reads),
                        }
                }
            })
            .cloned()
            .collect()
    }

    /// Records an observation.
    pub fn observe(&mut self, id: &str, observation: Observation, tag_keys: Vec<String>, now: Instant) {
        let failed_reads = self.failed_reads_after(id, &observation);
        let launched = self.launched(id);
        let launch_source = self.launch_source(id);
        self.entries.insert(
            id.to_string(),
            Entry {
                observation,
                tag_keys,
                launched,
                launch_source,
                fetched: now,
                failed_reads,
            },
        );
    }

    fn failed_reads_after(&self, id: &str, observation: &Observation) -> u32 {
        match observation {
            Observation::Failed(_) => self.entries.get(id).map_or(0, |e| e.failed_reads).saturating_add(1),
            _ => 0,
        }
    }

    /// Records what a DescribeInstances issued at `issued` said — unless the entry was updated after that (a modify answer from another reconcile
    /// is newer than a describe that was already on its way).
    pub fn observe_described(&mut self, id: &str, described: Described, issued: Instant) {
        if self.entries.get(id).is_some_and(|e| e.fetched > issued) {
            return;
        }
        let now = issued;
        let failed_reads = self.failed_reads_after(id, &described.observation);
        let launched = described.launched.or_else(|| self.launched(id));
        let launch_source = described.launch_source.or_else(|| self.launch_source(id));
        let entry = Entry {
            observation: described.observation,
            tag_keys: described.tag_keys,
            launched,
            launch_source,
            fetched: now,
            failed_reads,
        };
        match self.entries.get_mut(id) {
            Some(cached) => *cached = entry,
            None => {
                self.entries.insert(id.to_string(), entry);
            }
        }
    }

    /// IMDSv1 usage read from CloudWatch for this lookback, while still fresh.
    pub fn usage(&self, id: &str, lookback: Duration, now: Instant) -> Option<Result<UsageSeries, Failure>> {
        let (value, at) = self.usage.get(&(id.to_string(), lookback.as_secs()))?;
        let ttl = if value.is_ok() { USAGE_TTL } else { USAGE_ERROR_TTL };
        (now.saturating_duration_since(*at) < ttl).then(|| value.clone())
    }

    /// Stores IMDSv1 usage.
    pub fn set_usage(&mut self, id: &str, lookback: Duration, value: Result<UsageSeries, Failure>, now: Instant) {
        self.usage.insert((id.to_string(), lookback.as_secs()), (value, now));
    }

    /// The guard facts of the cached instances over `lookbacks` (sorted, without repeats), at
    /// `now`.
    pub fn guard_facts(&self, lookbacks: Vec<Duration>, now: Instant) -> CachedGuardFacts<'_> {
        CachedGuardFacts {
            cache: self,
            lookbacks,
            now,
        }
    }

    /// The observations of `ids` that are known.
    pub fn observations<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> HashMap<String, Observation> {
        ids.into_iter()
            .filter_map(|id| self.entries.get(id).map(|e| (id.clone(), e.observation.clone())))
            .collect()
    }

    /// Where an instance was launched from, when known.
    pub fn launch_source(&self, id: &str) -> Option<LaunchSource> {
        self.entries.get(id).and_then(|e| e.launch_source.clone())
    }

    /// When an instance was launched, when known.
    pub fn launched(&self, id: &str) -> Option<Timestamp> {
        self.entries.get(id).and_then(|e| e.launched)
    }

    /// The tag keys of an instance, when known.
    pub fn tag_keys(&self, id: &str) -> Option<&[String]> {
        self.entries.get(id).map(|e| e.tag_keys.as_slice())
    }

    /// Requests not to send now: refused for good, or failed and still in their backoff at
    /// `now` (the planner reports their failure and sends nothing).
    pub fn refusals(&self, now: Instant) -> HashMap<String, (FullOptions, Failure)> {
        let mut out = self.refusals.clone();
        for (id, b) in self.backoffs.iter().filter(|(_, b)| now < b.until) {
            out.entry(id.clone()).or_insert_with(|| (b.request, b.failure.clone()));
        }
        out
    }

    /// A request failed in a way worth retrying: it waits its failure kind's backoff, doubled
    /// per failure in a row of the same request.
    pub fn back_off(&mut self, id: &str, request: FullOptions, failure: Failure, now: Instant) {
        let Some(base) = backoff_base(failure.kind) else {
            return;
        };
        let attempts = match self.backoffs.get(id) {
            Some(b) if b.request == request => b.attempts.saturating_add(1),
            _ => 1,
        };
        let until = now + backoff_delay(base, attempts);
        self.backoffs.insert(
            id.to_string(),
            Backoff {
                request,
                failure,
                until,
                attempts,
            },
        );
    }

    /// How long until the first of `ids` that waits out a backoff (a failed read or request)
    /// may be tried again; `None` when none waits.
    pub fn next_retry<'a>(&self, ids: impl IntoIterator<Item = &'a String>, now: Instant) -> Option<Duration> {
        ids.into_iter()
            .filter_map(|id| {
                let read = self.entries.get(id).and_then(|e| match &e.observation {
                    Observation::Failed(f) => Some(e.fetched + read_backoff(f, e.failed_reads)),
                    _ => None,
                });
                let request = self.backoffs.get(id).map(|b| b.until);
                read.into_iter().chain(request).min()
            })
            .map(|at| at.saturating_duration_since(now))
            .min()
    }

    /// The account defaults are at `revision`: when they changed, every refusal made by a
    /// declarative policy is forgotten (the request is tried again).
    pub fn account_defaults_at(&mut self, revision: u64) {
        if revision != self.defaults_revision {
            self.defaults_revision = revision;
            self.refusals
                .retain(|_, (_, failure)| failure.kind != FailureKind::DeclarativePolicy);
        }
    }

    /// Ends the backoffs of `ids` (their policy changed: try again now), and forgets their
    /// declarative-policy refusals.
    pub fn end_backoffs<'a>(&mut self, ids: impl IntoIterator<Item = &'a String>) {
        for id in ids {
            self.backoffs.remove(id);
            if self
                .refusals
                .get(id)
                .is_some_and(|(_, f)| f.kind == FailureKind::DeclarativePolicy)
            {
                self.refusals.remove(id);
            }
            // A failed read is forgotten: the instance is read on the next pass.
            if self
                .entries
                .get(id)
                .is_some_and(|e| matches!(e.observation, Observation::Failed(_)))
            {
                self.entries.remove(id);
            }
        }
    }

    /// A request was accepted: its backoff is over.
    pub fn succeeded(&mut self, id: &str) {
        self.backoffs.remove(id);
    }

    /// Remembers that EC2 refused `request` for `id` for good.
    pub fn refuse(&mut self, id: &str, request: FullOptions, failure: Failure) {
        self.refusals.insert(id.to_string(), (request, failure));
    }

    /// Claims an instance for a modify request; false when another reconcile has it.
    pub fn claim(&mut self, id: &str) -> bool {
        self.in_flight.insert(id.to_string())
    }

    /// Whether a request to the instance is being sent by this process.
    pub fn is_claimed(&self, id: &str) -> bool {
        self.in_flight.contains(id)
    }

    /// Releases a claim.
    pub fn release(&mut self, id: &str) {
        self.in_flight.remove(id);
    }

    /// True the first time an instance is seen with the tag older versions recorded originals
    /// in (so it is reported once per process).
    pub fn first_sight_of_record_tag(&mut self, id: &str) -> bool {
        self.record_tags_seen.insert(id.to_string())
    }

    /// Forgets an instance whose node is gone.
    pub fn forget(&mut self, id: &str) {
        self.entries.remove(id);
        self.refusals.remove(id);
        self.backoffs.remove(id);
        self.usage.retain(|(i, _), _| i != id);
    }
}

/// How long a failed read waits before the instance is read again: the failure kind's backoff,
/// doubled per failure in a row.
fn read_backoff(failure: &Failure, failed_reads: u32) -> Duration {
    backoff_base(failure.kind).map_or(Duration::ZERO, |base| backoff_delay(base, failed_reads.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_core::observation::FailureKind;
    use imds_core::options::ObservedOptions;

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
        assert_eq!(
            stale,
            vec!["never", "old", "pending"],
            "a failed read waits its backoff"
        );
        let mut stale = cache.stale(&ids, t0 + Duration::from_secs(10), max_age);
        stale.sort();
        assert_eq!(
            stale,
            vec!["failed", "never", "old", "pending"],
            "10s later it is read again"
        );
    }

    #[test]
    fn failed_reads_back_off_longer_in_a_row_and_reset_on_success() {
        let t0 = Instant::now();
        let failed = || {
            Observation::Failed(Failure {
                kind: FailureKind::Transient,
                message: "RequestLimitExceeded".into(),
            })
        };
        let ids = vec!["i".to_string()];
        let mut cache = InstanceCache::default();
        cache.observe("i", failed(), vec![], t0);
        cache.observe("i", failed(), vec![], t0);
        let hour = Duration::from_secs(3600);
        assert!(
            cache.stale(&ids, t0 + Duration::from_secs(19), hour).is_empty(),
            "20s after two"
        );
        assert_eq!(cache.stale(&ids, t0 + Duration::from_secs(20), hour), ids);
        cache.observe("i", found(ApplyState::Applied), vec![], t0);
        cache.observe("i", failed(), vec![], t0);
        assert_eq!(
            cache.stale(&ids, t0 + Duration::from_secs(10), hour),
            ids,
            "reset by a success"
        );
    }

    #[test]
    fn a_failed_request_waits_its_backoff_unless_it_changes() {
        let t0 = Instant::now();
        let mut cache = InstanceCache::default();
        let request = FullOptions::EC2_LAUNCH_DEFAULTS;
        let throttled = Failure {
            kind: FailureKind::Transient,
            message: "RequestLimitExceeded".into(),
        };
        cache.back_off("i", request, throttled.clone(), t0);
        assert_eq!(
            cache.refusals(t0 + Duration::from_secs(9)).get("i"),
            Some(&(request, throttled.clone()))
        );
        assert!(cache.refusals(t0 + Duration::from_secs(10)).is_empty(), "10s, then");
        cache.back_off("i", request, throttled.clone(), t0);
        assert!(
            !cache.refusals(t0 + Duration::from_secs(19)).is_empty(),
            "20s for the second"
        );
        assert_eq!(
            cache.next_retry(&["i".to_string()], t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(15))
        );
        cache.succeeded("i");
        assert!(cache.refusals(t0).is_empty());
        assert_eq!(cache.next_retry(&["i".to_string()], t0), None);
        let unsupported = Failure {
            kind: FailureKind::Unsupported,
            message: "no".into(),
        };
        cache.back_off("i", request, unsupported, t0);
        assert!(cache.refusals(t0).is_empty(), "refusals for good are not backoffs");
    }

    #[test]
    fn usage_expires() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut cache = InstanceCache::default();
        let three = UsageSeries::single(300, 0, 3.0);
        cache.set_usage("i-1", day, Ok(three.clone()), t0);
        let denied = Failure {
            kind: FailureKind::PermissionDenied,
            message: "denied".into(),
        };
        cache.set_usage("i-2", day, Err(denied), t0);
        assert_eq!(cache.usage("i-1", day, t0 + Duration::from_secs(10)), Some(Ok(three)));
        assert_eq!(
            cache.usage("i-1", Duration::from_secs(3600), t0),
            None,
            "other lookback"
        );
        assert_eq!(cache.usage("i-1", day, t0 + USAGE_TTL), None);
        assert_eq!(cache.usage("i-2", day, t0 + USAGE_ERROR_TTL), None);
    }

    #[test]
    fn an_older_describe_does_not_overwrite_a_newer_answer() {
        let t0 = Instant::now();
        let mut cache = InstanceCache::default();
        cache.observe("i-1", found(ApplyState::Pending), vec![], t0 + Duration::from_secs(2));
        let stale = Described {
            observation: found(ApplyState::Applied),
            tag_keys: vec![],
            launched: None,
            launch_source: None,
        };
        cache.observe_described("i-1", stale.clone(), t0 + Duration::from_secs(1));
        assert_eq!(cache.observation("i-1").cloned(), Some(found(ApplyState::Pending)));
        cache.observe_described("i-1", stale, t0 + Duration::from_secs(3));
        assert_eq!(cache.observation("i-1").cloned(), Some(found(ApplyState::Applied)));
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
