//! Client-side token buckets for the operator's own EC2 calls. EC2 throttles per account and
//! region with buckets every tool in the account shares; these keep the operator's share small.
//!
//! The rate adapts: a throttled answer cuts it ([`AdaptiveRate`], the AWS SDKs' "adaptive" retry
//! mode's CUBIC rule), successes bring it back toward the configured rate, so that the operator
//! gives budget back while the account is under pressure.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The arithmetic of a token bucket, with time passed in (pure, testable).
#[derive(Clone, Debug)]
pub struct Bucket {
    burst: f64,
    capacity: f64,
    refill_per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: u32, refill_per_second: f64, now: Instant) -> Bucket {
        let capacity = f64::from(capacity.max(1));
        Bucket {
            burst: capacity,
            capacity,
            refill_per_second: refill_per_second.max(0.001),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes one token, or says how long to wait for one.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.refill_per_second))
        }
    }

    /// Tokens available now, whole.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    /// Empties the bucket: after EC2 said "throttled", back off for a full refill of one token.
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    /// Refills at `per_second` from now on. Below the configured rate the burst shrinks with
    /// it (at least one token), so a quiet moment does not bring back a full burst.
    pub fn set_rate(&mut self, per_second: f64, full_rate: f64, now: Instant) {
        self.refill(now);
        self.refill_per_second = per_second.max(0.001);
        self.capacity = if per_second >= full_rate {
            self.burst
        } else {
            per_second.clamp(1.0, self.burst)
        };
        self.tokens = self.tokens.min(self.capacity);
    }
}

/// The AWS SDKs' adaptive rate (CUBIC, as in `aws-smithy-runtime`'s `ClientRateLimiter` and
/// the SDK reference guide's "adaptive" retry mode): on throttling the rate drops to `BETA` times
/// the rate it had, then grows back along `C × (t − K)³ + W` (W the rate before the cut), never
/// above the configured rate nor below a floor. Unlike the SDKs (a fixed C = 0.4, back at W after
/// about a second), the recovery is slow on purpose: C is chosen so that the rate is back at W
/// after [`AdaptiveRate::RECOVERY`] (`C = W(1−BETA)/K³`). Operators of several clusters share one
/// account's bucket; with a quick recovery they all climb back at once and are throttled again
/// and again (measured: 30% of their calls throttled with three of them).
#[derive(Clone, Debug)]
pub struct AdaptiveRate {
    full: f64,
    floor: f64,
    rate: f64,
    before_cut: f64,
    last_cut: Option<Instant>,
}

impl AdaptiveRate {
    /// The SDKs' multiplicative decrease.
    pub const BETA: f64 = 0.7;
    /// How long the rate takes to grow back to where it was cut from.
    pub const RECOVERY: Duration = Duration::from_secs(10);
    /// The lowest rate, per second: one call every 20 s.
    pub const FLOOR: f64 = 0.05;

    /// Starts at the configured rate.
    pub fn new(full: f64) -> AdaptiveRate {
        let full = full.max(AdaptiveRate::FLOOR);
        AdaptiveRate {
            full,
            floor: AdaptiveRate::FLOOR.min(full),
            rate: full,
            before_cut: full,
            last_cut: None,
        }
    }

    /// The current rate, per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The configured rate.
    pub fn full(&self) -> f64 {
        self.full
    }

    /// A call was throttled at `now`: cut the rate.
    pub fn throttled(&mut self, now: Instant) -> f64 {
        self.before_cut = self.rate;
        self.rate = (self.rate * AdaptiveRate::BETA).max(self.floor);
        self.last_cut = Some(now);
        self.rate
    }

    /// A call succeeded at `now`: grow back along the cubic curve.
    pub fn succeeded(&mut self, now: Instant) -> f64 {
        let Some(cut) = self.last_cut else {
            return self.rate;
        };
        let k = AdaptiveRate::RECOVERY.as_secs_f64();
        let scale = self.before_cut * (1.0 - AdaptiveRate::BETA) / k.powi(3);
        let t = now.saturating_duration_since(cut).as_secs_f64();
        let cubic = scale * (t - k).powi(3) + self.before_cut;
        self.rate = cubic.clamp(self.rate, self.full);
        if self.rate >= self.full {
            self.last_cut = None;
        }
        self.rate
    }
}

/// A shared, async token bucket whose rate adapts to throttling.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<(Bucket, AdaptiveRate)>,
}

impl RateLimiter {
    /// `burst` tokens, refilled at `per_second` (less while EC2 throttles).
    pub fn new(burst: u32, per_second: f64) -> RateLimiter {
        let rate = AdaptiveRate::new(per_second);
        RateLimiter {
            state: Mutex::new((Bucket::new(burst, rate.full(), Instant::now()), rate)),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let (bucket, _) = &mut *self.state.lock().await;
                match bucket.try_take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Tokens available right now.
    pub async fn available(&self) -> u32 {
        self.state.lock().await.0.available(Instant::now())
    }

    /// Called when EC2 throttled a call: empties the bucket and cuts the rate. Returns the new
    /// rate.
    pub async fn throttled(&self) -> f64 {
        let now = Instant::now();
        let (bucket, rate) = &mut *self.state.lock().await;
        bucket.drain(now);
        let cut = rate.throttled(now);
        bucket.set_rate(cut, rate.full(), now);
        cut
    }

    /// Called when a call was answered without throttling. Returns the rate.
    pub async fn succeeded(&self) -> f64 {
        let now = Instant::now();
        let (bucket, rate) = &mut *self.state.lock().await;
        let before = rate.rate();
        let after = rate.succeeded(now);
        if after != before {
            bucket.set_rate(after, rate.full(), now);
        }
        after
    }

    /// The current rate, per second.
    pub async fn rate(&self) -> f64 {
        self.state.lock().await.1.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2.0, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(b.available(t0 + Duration::from_secs(100)), 3, "capped at capacity");
    }

    #[test]
    fn drain_after_throttling() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5.0, t0);
        b.drain(t0);
        assert_eq!(b.available(t0), 0);
        assert!(b.try_take(t0 + Duration::from_millis(200)).is_ok());
    }

    #[test]
    fn throttling_cuts_the_rate_and_successes_bring_it_back_slowly() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut rate = AdaptiveRate::new(5.0);
        assert_eq!(rate.succeeded(t0), 5.0, "no cut yet: stays");
        assert!((rate.throttled(t0) - 3.5).abs() < 1e-9);
        assert!((rate.throttled(t0) - 2.45).abs() < 1e-9, "cuts compound");
        // The curve starts at the cut rate: barely up 100 ms later, about halfway after 2 s
        // (the cubic's steep start), back at the rate before the last cut after 10 s, then above.
        let soon = rate.succeeded(at(100));
        assert!((2.45..2.5).contains(&soon), "{soon}");
        let two = rate.succeeded(at(2000));
        assert!((2.9..3.3).contains(&two), "{two}");
        let k = rate.succeeded(at(10_000));
        assert!((k - 3.5).abs() < 0.01, "{k}");
        assert!(rate.succeeded(at(20_000)) > 3.5);
        assert_eq!(rate.succeeded(at(60_000)), 5.0, "never above the configured rate");
        for _ in 0..200 {
            rate.throttled(t0);
        }
        assert_eq!(rate.rate(), AdaptiveRate::FLOOR, "never below the floor");
    }

    #[test]
    fn a_cut_rate_shrinks_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(20, 5.0, t0);
        b.set_rate(1.5, 5.0, t0);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 1, "burst at most the rate");
        b.set_rate(5.0, 5.0, t0);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 20, "full burst at full rate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_limiter_sends_slower() {
        let limiter = RateLimiter::new(5, 5.0);
        for _ in 0..5 {
            limiter.acquire().await;
        }
        for _ in 0..5 {
            limiter.throttled().await;
        }
        let cut = limiter.rate().await;
        assert!(cut < 1.0, "{cut}");
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_secs_f64(1.9 / cut),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_refill() {
        let limiter = RateLimiter::new(2, 1.0);
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2),
            "two waited a second each: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(3));
    }
}
