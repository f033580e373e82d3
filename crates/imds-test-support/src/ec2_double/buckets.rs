//! EC2's request throttling as token buckets, per-call latency, and per-action call counters
//! (see `docs/ec2-semantics.md`, "Throttling" and "Latency").
//!
//! EC2 meters each API of an account and region with a token bucket: a request takes a token,
//! the bucket refills at a fixed rate up to its size, and a request that finds it empty is
//! refused with `RequestLimitExceeded`. The double models that when a test asks for it
//! ([`Ec2Double::set_bucket`]); without a bucket, nothing is throttled but what a test injects
//! (`faults`). Buckets are keyed by an action's name or by a category (the `BUCKET_*`
//! constants); one double stands for one account and region, so every client of it shares its
//! buckets.
//!
//! Latency ([`Ec2Double::set_latency`]) delays each answer; the request is carried out when it
//! arrives, and the wait happens without the double's lock, so the server answers many requests
//! at once. Counters ([`Ec2Double::counters`]) count calls and throttled calls per action, and per
//! access key, cheaply enough for a benchmark to read them often.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Range, RangeInclusive};
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::{CREATE_TAGS, DELETE_TAGS, Ec2Double};

/// The bucket of every non-mutating action (`Describe*`, `Get*`, `List*`, `Search*`) that has
/// no bucket of its own.
pub const BUCKET_NON_MUTATING: &str = "non-mutating";
/// The bucket of non-mutating calls without filters, IDs or pagination, when the action has no
/// `<Action>:unfiltered` bucket of its own (e.g. `DescribeInstances:unfiltered`).
pub const BUCKET_UNFILTERED: &str = "unfiltered-non-mutating";
/// The bucket of CreateTags and DeleteTags when neither has a bucket of its own.
pub const BUCKET_TAGGING: &str = "tagging";
/// The bucket of every mutating action without a bucket of its own (or, for tag writes, without
/// a tagging bucket).
pub const BUCKET_MUTATING: &str = "mutating";
/// The key of [`Ec2Double::set_latency`] that applies to every action without a latency of its
/// own.
pub const ALL_ACTIONS: &str = "*";

/// A token bucket: `capacity` tokens at most, refilled continuously at `refill_per_second`.
#[derive(Clone, Debug)]
pub(super) struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    fn new(capacity: u32, refill_per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(capacity),
            refill_per_second: refill_per_second.max(0.0),
            tokens: f64::from(capacity),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes one token if there is one.
    fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long the double waits before it sends an answer: uniformly drawn from `min..=max` for
/// each answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    min: Duration,
    max: Duration,
}

impl Latency {
    /// No delay.
    pub const NONE: Latency = Latency {
        min: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Latency {
        Latency { min: delay, max: delay }
    }

    /// Uniformly drawn from `min..=max` (swapped when given the wrong way round).
    pub fn uniform(min: Duration, max: Duration) -> Latency {
        Latency {
            min: min.min(max),
            max: min.max(max),
        }
    }

    /// The shortest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// A delay for one answer, from a uniform `u64`.
    fn draw(&self, random: u64) -> Duration {
        let span = self.max.saturating_sub(self.min).as_nanos() as u64;
        if span == 0 {
            return self.min;
        }
        self.min + Duration::from_nanos(random % (span + 1))
    }
}

impl From<Duration> for Latency {
    fn from(delay: Duration) -> Latency {
        Latency::fixed(delay)
    }
}

impl From<Range<Duration>> for Latency {
    fn from(range: Range<Duration>) -> Latency {
        Latency::uniform(range.start, range.end)
    }
}

impl From<RangeInclusive<Duration>> for Latency {
    fn from(range: RangeInclusive<Duration>) -> Latency {
        Latency::uniform(*range.start(), *range.end())
    }
}

/// Calls of one action (by one access key, or by all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Requests received (answered or not, DryRun included).
    pub calls: u64,
    /// Of those, answered with `RequestLimitExceeded` (an empty bucket or an injected throttle).
    pub throttled: u64,
    /// Of those, answered with any other error (DryRun's `DryRunOperation` included).
    pub errors: u64,
}

impl CallCounts {
    /// Calls answered with success.
    pub fn ok(&self) -> u64 {
        self.calls.saturating_sub(self.throttled + self.errors)
    }

    fn add(&mut self, other: &CallCounts) {
        self.calls += other.calls;
        self.throttled += other.throttled;
        self.errors += other.errors;
    }
}

/// What the double's shared state keeps for this module.
#[derive(Debug, Default)]
pub(super) struct Metering {
    buckets: HashMap<String, TokenBucket>,
    latency: HashMap<String, Latency>,
    /// By (access key, action).
    counts: HashMap<(String, String), CallCounts>,
    random: u64,
}

impl Ec2Double {
    /// Meters `key` with a token bucket of `capacity` tokens (it starts full) refilled at
    /// `refill_per_second`: a request that draws from it and finds it empty is answered with
    /// 503 `RequestLimitExceeded` (and counted in [`CallCounts::throttled`]). `key` is an
    /// action (`ModifyInstanceMetadataOptions`), `<Action>:unfiltered` (a non-mutating call
    /// without filters, IDs or pagination), or a category ([`BUCKET_NON_MUTATING`],
    /// [`BUCKET_UNFILTERED`], [`BUCKET_TAGGING`], [`BUCKET_MUTATING`]). A request draws from the
    /// most specific bucket that is set, and from none when none is: buckets are off by
    /// default. Setting a bucket again refills it.
    pub fn set_bucket(&self, key: &str, capacity: u32, refill_per_second: f64) {
        let bucket = TokenBucket::new(capacity, refill_per_second, Instant::now());
        self.shared().metering.buckets.insert(key.to_string(), bucket);
    }

    /// Removes the bucket of `key` (its requests fall back to a less specific one, if set).
    pub fn remove_bucket(&self, key: &str) {
        self.shared().metering.buckets.remove(key);
    }

    /// Removes every bucket: nothing is throttled but what a test injects.
    pub fn clear_buckets(&self) {
        self.shared().metering.buckets.clear();
    }

    /// The tokens left in the bucket of `key` now, if it is set.
    pub fn bucket_tokens(&self, key: &str) -> Option<f64> {
        let mut shared = self.shared();
        let bucket = shared.metering.buckets.get_mut(key)?;
        bucket.refill(Instant::now());
        Some(bucket.tokens)
    }

    /// The buckets of an account at EC2's documented rates for the actions the operator calls
    /// (see `docs/ec2-semantics.md`, "Throttling"): ModifyInstanceMetadataOptions 100 / 5 per
    /// second, DescribeInstances 100 / 20 (filtered or paginated) and 50 / 10 (unfiltered and
    /// unpaginated), and a tagging bucket for CreateTags and DeleteTags of 50 / 5 (unverified).
    pub fn set_account_buckets(&self) {
        self.set_bucket(super::MODIFY, 100, 5.0);
        self.set_bucket(super::DESCRIBE, 100, 20.0);
        self.set_bucket(&format!("{}:unfiltered", super::DESCRIBE), 50, 10.0);
        self.set_bucket(BUCKET_TAGGING, 50, 5.0);
    }

    /// Delays every answer to `action` (or, with [`ALL_ACTIONS`], to every action without a
    /// latency of its own) by `latency`: a [`Duration`], a range of them (uniformly drawn per
    /// answer), or a [`Latency`]. The request is carried out when it arrives; only its answer
    /// waits, without holding the double's lock. Errors and throttled answers wait too.
    pub fn set_latency(&self, action: &str, latency: impl Into<Latency>) {
        self.shared()
            .metering
            .latency
            .insert(action.to_string(), latency.into());
    }

    /// Removes every latency: answers are sent at once.
    pub fn clear_latency(&self) {
        self.shared().metering.latency.clear();
    }

    /// Calls per action, over every access key.
    pub fn counters(&self) -> BTreeMap<String, CallCounts> {
        let shared = self.shared();
        let mut out: BTreeMap<String, CallCounts> = BTreeMap::new();
        for ((_, action), counts) in &shared.metering.counts {
            out.entry(action.clone()).or_default().add(counts);
        }
        out
    }

    /// Calls of one action, over every access key.
    pub fn counter(&self, action: &str) -> CallCounts {
        self.counters().remove(action).unwrap_or_default()
    }

    /// Calls per access key (as [`super::Recorded::access_key`]) and action.
    pub fn counters_by_key(&self) -> BTreeMap<String, BTreeMap<String, CallCounts>> {
        let shared = self.shared();
        let mut out: BTreeMap<String, BTreeMap<String, CallCounts>> = BTreeMap::new();
        for ((key, action), counts) in &shared.metering.counts {
            out.entry(key.clone()).or_default().insert(action.clone(), *counts);
        }
        out
    }

    /// Sets every counter back to zero.
    pub fn reset_counters(&self) {
        self.shared().metering.counts.clear();
    }
}

/// Whether a call of `action` has no filter, ID or pagination parameter.
fn unfiltered(params: &BTreeMap<String, String>) -> bool {
    !params.keys().any(|k| {
        k.starts_with("Filter.")
            || k.starts_with("InstanceId.")
            || k.starts_with("ResourceId.")
            || k == "MaxResults"
            || k == "NextToken"
    })
}

fn non_mutating(action: &str) -> bool {
    ["Describe", "Get", "List", "Search"]
        .iter()
        .any(|p| action.starts_with(p))
}

/// The buckets a call of `action` may draw from, most specific first.
fn bucket_keys(action: &str, params: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys = Vec::with_capacity(4);
    if non_mutating(action) {
        if unfiltered(params) {
            keys.push(format!("{action}:unfiltered"));
            keys.push(BUCKET_UNFILTERED.to_string());
        }
        keys.push(action.to_string());
        keys.push(BUCKET_NON_MUTATING.to_string());
    } else {
        keys.push(action.to_string());
        if action == CREATE_TAGS || action == DELETE_TAGS {
            keys.push(BUCKET_TAGGING.to_string());
        }
        keys.push(BUCKET_MUTATING.to_string());
    }
    keys
}

/// Takes a token for a call of `action` that arrived at `now` from the most specific bucket
/// that is set; `RequestLimitExceeded` if that bucket is empty.
pub(super) fn take_token(
    metering: &mut Metering,
    action: &str,
    params: &BTreeMap<String, String>,
    now: Instant,
) -> Result<(), ApiError> {
    let buckets = &mut metering.buckets;
    if buckets.is_empty() {
        return Ok(());
    }
    let key = bucket_keys(action, params)
        .into_iter()
        .find(|key| buckets.contains_key(key));
    let Some(bucket) = key.and_then(|key| buckets.get_mut(&key)) else {
        return Ok(());
    };
    if bucket.try_take(now) {
        Ok(())
    } else {
        Err(super::InjectedError::request_limit_exceeded().api_error())
    }
}

/// Counts a call of `action` by `access_key` and its outcome (`Some(code)` for an error); returns
/// how long its answer waits.
pub(super) fn count_and_delay(
    metering: &mut Metering,
    access_key: &str,
    action: &str,
    error: Option<&str>,
) -> Duration {
    let counts = metering
        .counts
        .entry((access_key.to_string(), action.to_string()))
        .or_default();
    counts.calls += 1;
    match error {
        Some("RequestLimitExceeded") => counts.throttled += 1,
        Some(_) => counts.errors += 1,
        None => {}
    }
    let Some(latency) = metering
        .latency
        .get(action)
        .or_else(|| metering.latency.get(ALL_ACTIONS))
        .copied()
    else {
        return Duration::ZERO;
    };
    metering.random = splitmix64(metering.random);
    latency.draw(metering.random)
}

/// One step of SplitMix64: a cheap, well-mixed sequence of `u64` (no crate needed).
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_size() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3, 2.0, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_millis(400)));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        bucket.refill(t0 + Duration::from_secs(60));
        assert_eq!(bucket.tokens, 3.0);
    }

    #[test]
    fn calls_draw_from_the_most_specific_bucket() {
        let none = BTreeMap::new();
        let filtered = BTreeMap::from([("Filter.1.Name".to_string(), "instance-id".to_string())]);
        assert_eq!(
            bucket_keys("DescribeInstances", &none),
            [
                "DescribeInstances:unfiltered",
                BUCKET_UNFILTERED,
                "DescribeInstances",
                BUCKET_NON_MUTATING
            ]
        );
        assert_eq!(
            bucket_keys("DescribeInstances", &filtered),
            ["DescribeInstances", BUCKET_NON_MUTATING]
        );
        assert_eq!(
            bucket_keys("CreateTags", &none),
            ["CreateTags", BUCKET_TAGGING, BUCKET_MUTATING]
        );
        assert_eq!(
            bucket_keys("ModifyInstanceMetadataOptions", &none),
            ["ModifyInstanceMetadataOptions", BUCKET_MUTATING]
        );
    }

    #[test]
    fn latency_is_drawn_within_its_range() {
        let latency = Latency::from(Duration::from_millis(50)..Duration::from_millis(100));
        let mut random = 0;
        for _ in 0..1000 {
            random = splitmix64(random);
            let d = latency.draw(random);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
        assert_eq!(
            Latency::fixed(Duration::from_millis(7)).draw(12345),
            Duration::from_millis(7)
        );
    }
}
