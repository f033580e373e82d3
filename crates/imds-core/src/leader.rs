//! Leader election over a `coordination.k8s.io` Lease, decided the way client-go's
//! `leaderelection` package decides it, so that two replicas never write to EC2 at once.
//!
//! - A standby judges expiry by **its own monotonic clock**: the lease is free when its record
//!   (seen through `resourceVersion`) has not changed for `lease_duration` since this replica
//!   first saw it. The holder's `renewTime` is never compared with the local wall clock, so a
//!   clock offset between replicas cannot make a standby take a lease early.
//! - The leader may write only until `renew_deadline` after the start of its last successful
//!   renewal. A standby can take over no earlier than `lease_duration` after that renewal was
//!   stored, which was after it started: the gap `lease_duration - renew_deadline` covers the
//!   last request still in flight at the deadline.
//!
//! Time is a parameter (`Instant`) everywhere; the IO loop lives in the operator crate.

use std::time::{Duration, Instant};

/// The three durations of an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease is valid after its last renewal, for the other replicas.
    pub lease_duration: Duration,
    /// How long the leader may keep writing after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry_period: Duration,
}

/// Why a set of [`Timings`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingsError {
    /// A lease shorter than the floor.
    #[error("the lease duration {0:?} is shorter than 3s")]
    TooShort(Duration),
    /// The deadline leaves no margin before the lease could be taken.
    #[error("the renew deadline {deadline:?} must be shorter than the lease duration {lease:?} by at least 1s")]
    DeadlineTooLong {
        /// The renew deadline.
        deadline: Duration,
        /// The lease duration.
        lease: Duration,
    },
    /// Fewer than two renewals fit before the deadline.
    #[error("the renew deadline {deadline:?} must be at least twice the retry period {retry:?}")]
    RetryTooLong {
        /// The renew deadline.
        deadline: Duration,
        /// The retry period.
        retry: Duration,
    },
}

impl Timings {
    /// client-go's proportions (15s / 10s / 2s): the deadline two thirds of the lease, a retry
    /// every 2/15 of it.
    pub fn for_lease(lease_duration: Duration) -> Result<Timings, TimingsError> {
        Timings::new(lease_duration, lease_duration * 2 / 3, lease_duration * 2 / 15)
    }

    /// Checked timings: a lease of at least 3s, a deadline at least 1s shorter than the lease,
    /// and at least two retries before the deadline.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Timings, TimingsError> {
        if lease_duration < Duration::from_secs(3) {
            return Err(TimingsError::TooShort(lease_duration));
        }
        if renew_deadline + Duration::from_secs(1) > lease_duration {
            return Err(TimingsError::DeadlineTooLong {
                deadline: renew_deadline,
                lease: lease_duration,
            });
        }
        if retry_period.is_zero() || retry_period * 2 > renew_deadline {
            return Err(TimingsError::RetryTooLong {
                deadline: renew_deadline,
                retry: retry_period,
            });
        }
        Ok(Timings {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// What a replica read of the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity` (an empty string counts as none: a released lease).
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` as the holder wrote it.
    pub duration: Duration,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `metadata.resourceVersion`: changes with every write, whoever makes it.
    pub version: String,
}

impl LeaseRecord {
    fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// What to do after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it, held by this replica.
    Create,
    /// This replica holds it: write a new `renewTime`.
    Renew,
    /// Free or expired: take it (a transition: `acquireTime` now, `leaseTransitions` + 1).
    Acquire,
    /// Another replica holds it and it has not expired by this replica's clock.
    Wait {
        /// The holder.
        holder: String,
        /// How long at least until it could expire.
        expires_in: Duration,
    },
}

/// A standby's memory of the Lease: the last record seen and when (local monotonic time) it
/// was first seen.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    last: Option<(LeaseRecord, Instant)>,
}

impl Observer {
    /// Remembers `record` as read at `now`; the clock restarts only when the record changed.
    pub fn observe(&mut self, record: &LeaseRecord, now: Instant) {
        let changed = self
            .last
            .as_ref()
            .is_none_or(|(seen, _)| seen.version != record.version);
        if changed {
            self.last = Some((record.clone(), now));
        }
    }

    /// Records this replica's own successful write (it is now the record everyone sees).
    pub fn wrote(&mut self, record: LeaseRecord, now: Instant) {
        self.last = Some((record, now));
    }

    /// The decision for `me` at `now`, given the Lease just read (`None`: there is none).
    /// Call [`Observer::observe`] with the same record first.
    pub fn decide(&self, record: Option<&LeaseRecord>, me: &str, timings: &Timings, now: Instant) -> Step {
        let Some(record) = record else {
            return Step::Create;
        };
        let Some(holder) = record.holder() else {
            return Step::Acquire;
        };
        if holder == me {
            return Step::Renew;
        }
        // Our own notion of the duration wins when the holder wrote a shorter one: a replica
        // never takes a lease sooner than its own settings allow.
        let duration = record.duration.max(timings.lease_duration);
        let first_seen = match &self.last {
            Some((seen, at)) if seen.version == record.version => *at,
            _ => now,
        };
        let expires = first_seen + duration;
        if now >= expires {
            Step::Acquire
        } else {
            Step::Wait {
                holder: holder.to_string(),
                expires_in: expires - now,
            }
        }
    }
}

/// The leader's permission to write: open until `renew_deadline` after the start of its last
/// successful renewal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteWindow {
    until: Option<Instant>,
}

impl WriteWindow {
    /// Extends the window after a renewal that started at `attempt_started` and succeeded.
    pub fn renewed(&mut self, attempt_started: Instant, timings: &Timings) {
        let until = attempt_started + timings.renew_deadline;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// Closes the window (lease released or lost).
    pub fn close(&mut self) {
        self.until = None;
    }

    /// Whether a write may start at `now`.
    pub fn open_at(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// When the window closes, if it is open.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_string()),
            duration: Duration::from_secs(15),
            transitions: 0,
            version: version.to_string(),
        }
    }

    fn timings() -> Timings {
        Timings::for_lease(Duration::from_secs(15)).expect("valid")
    }

    #[test]
    fn client_go_proportions_and_refusals() {
        let t = timings();
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        let s = Duration::from_secs;
        assert!(matches!(Timings::for_lease(s(2)), Err(TimingsError::TooShort(_))));
        assert!(Timings::for_lease(s(3)).is_ok());
        assert!(matches!(
            Timings::new(s(10), s(10), s(1)),
            Err(TimingsError::DeadlineTooLong { .. })
        ));
        assert!(matches!(
            Timings::new(s(10), s(9), s(5)),
            Err(TimingsError::RetryTooLong { .. })
        ));
        assert!(matches!(
            Timings::new(s(10), s(5), s(0)),
            Err(TimingsError::RetryTooLong { .. })
        ));
    }

    #[test]
    fn decisions() {
        let t = timings();
        let t0 = Instant::now();
        let standby = Observer::default();
        assert_eq!(standby.decide(None, "b", &t, t0), Step::Create);
        let released = LeaseRecord {
            holder: Some(String::new()),
            ..record("", "1")
        };
        assert_eq!(standby.decide(Some(&released), "b", &t, t0), Step::Acquire);
        let mine = record("b", "2");
        assert_eq!(standby.decide(Some(&mine), "b", &t, t0), Step::Renew);
    }

    #[test]
    fn a_standby_takes_over_only_after_the_record_stood_still_for_the_lease_duration() {
        let t = timings();
        let t0 = Instant::now();
        let mut standby = Observer::default();
        let held = record("a", "7");
        standby.observe(&held, t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(
            matches!(standby.decide(Some(&held), "b", &t, at(14)), Step::Wait { expires_in, .. } if expires_in == Duration::from_secs(1))
        );
        // The holder renewed at 10s: the clock restarts from when the standby saw it.
        let renewed = record("a", "8");
        standby.observe(&renewed, at(10));
        standby.observe(&renewed, at(12)); // the same record again: no restart
        assert!(matches!(
            standby.decide(Some(&renewed), "b", &t, at(24)),
            Step::Wait { .. }
        ));
        assert_eq!(standby.decide(Some(&renewed), "b", &t, at(25)), Step::Acquire);
    }

    #[test]
    fn a_shorter_duration_written_by_the_holder_does_not_shorten_the_wait() {
        let t = timings();
        let t0 = Instant::now();
        let mut standby = Observer::default();
        let held = LeaseRecord {
            duration: Duration::from_secs(2),
            ..record("a", "1")
        };
        standby.observe(&held, t0);
        assert!(matches!(
            standby.decide(Some(&held), "b", &t, t0 + Duration::from_secs(5)),
            Step::Wait { .. }
        ));
    }

    /// The safety property: for any renewal schedule of the leader, the leader's last write
    /// starts before any moment at which a standby (whose observation of that renewal can only
    /// be later than the renewal's start) may acquire.
    #[test]
    fn the_write_window_closes_before_a_standby_may_acquire() {
        let t = timings();
        let t0 = Instant::now();
        for renew_at_ms in [0u64, 700, 1999, 5000, 9999] {
            for seen_after_ms in [0u64, 1, 250, 3000] {
                let started = t0 + Duration::from_millis(renew_at_ms);
                let mut window = WriteWindow::default();
                window.renewed(started, &t);
                let mut standby = Observer::default();
                let rec = record("a", "9");
                let seen = started + Duration::from_millis(seen_after_ms);
                standby.observe(&rec, seen);
                let until = window.until().expect("open");
                assert!(!window.open_at(until));
                // At the last moment the window is open, the standby still waits, with the
                // margin lease_duration - renew_deadline left at least.
                let last = until - Duration::from_millis(1);
                assert!(window.open_at(last));
                match standby.decide(Some(&rec), "b", &t, last) {
                    Step::Wait { expires_in, .. } => {
                        assert!(expires_in >= t.lease_duration - t.renew_deadline, "{expires_in:?}")
                    }
                    other => panic!("standby acquires while the leader may write: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_window_only_grows_and_closes() {
        let t = timings();
        let t0 = Instant::now();
        let mut window = WriteWindow::default();
        assert!(!window.open_at(t0));
        window.renewed(t0 + Duration::from_secs(4), &t);
        window.renewed(t0, &t); // a late answer to an older attempt does not shorten it
        assert!(window.open_at(t0 + Duration::from_secs(13)));
        window.close();
        assert!(!window.open_at(t0));
    }
}
