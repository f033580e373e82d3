//! Client-side token buckets for the operator's own EC2 calls. EC2 throttles per account and
//! region with buckets every tool in the account shares; these keep the operator's share small.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The arithmetic of a token bucket, with time passed in (pure, testable).
#[derive(Clone, Debug)]
pub struct Bucket {
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
}

/// A shared, async token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// `burst` tokens, refilled at `per_second`.
    pub fn new(burst: u32, per_second: f64) -> RateLimiter {
        RateLimiter {
            bucket: Mutex::new(Bucket::new(burst, per_second, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut bucket = self.bucket.lock().await;
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
        self.bucket.lock().await.available(Instant::now())
    }

    /// Called when EC2 throttled a call.
    pub async fn throttled(&self) {
        self.bucket.lock().await.drain(Instant::now());
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
