//! Leader election: the IO loop around [`imds_core::leader`] (client-go's rules). One task per
//! replica reads and writes the `coordination.k8s.io` Lease every retry period; while it leads,
//! each successful renewal keeps the [`WriteFence`] open until the renew deadline, so EC2 writes
//! stop on their own when renewals stop (an API server partition), before a standby may take
//! over. Losing the lease is reported on a channel; releasing it on shutdown hands over at once.

use crate::aws::fence::WriteFence;
use imds_core::leader::{LeaseRecord, Observer, Step, Timings};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a try of the Lease may fail with.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server answered with an error or could not be reached.
    #[error("lease {name}: {source}")]
    Api {
        /// The Lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Another write to the Lease came first (the resourceVersion precondition failed).
    #[error("lease {name}: changed by someone else meanwhile")]
    Conflict {
        /// The Lease.
        name: String,
    },
    /// The API server did not answer in time.
    #[error("lease {name}: no answer within {timeout:?}")]
    Timeout {
        /// The Lease.
        name: String,
        /// How long the try waited.
        timeout: Duration,
    },
}

/// One replica's candidacy.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    fence: WriteFence,
    /// Added to the wall clock for the times written into the Lease (a test of clock skew).
    clock_offset: SignedDuration,
}

/// A running election: whether this replica leads, how to stop (releasing the lease), and the
/// task.
pub struct Election {
    /// True while leading; turns false when the lease is lost.
    pub leading: watch::Receiver<bool>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Election {
    /// Stops the election; a held lease is released so that a standby takes over at once.
    pub async fn release(self) {
        let _ = self.release.send(true);
        let _ = self.task.await;
    }
}

impl Elector {
    /// A candidate for `name` in `namespace`, opening and closing `fence`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
        fence: WriteFence,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
            fence,
            clock_offset: SignedDuration::ZERO,
        }
    }

    /// Shifts the times this replica writes into the Lease (tests of clock skew).
    pub fn with_clock_offset(self, offset: SignedDuration) -> Elector {
        Elector {
            clock_offset: offset,
            ..self
        }
    }

    /// Starts trying in the background.
    pub fn start(self) -> Election {
        let (leading_tx, leading) = watch::channel(false);
        let (release, release_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(leading_tx, release_rx));
        Election { leading, release, task }
    }

    async fn run(self, leading: watch::Sender<bool>, mut release: watch::Receiver<bool>) {
        let mut observer = Observer::default();
        let mut last_renewal: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let outcome = self.try_once(&mut observer, started).await;
            let lead = match &outcome {
                Ok(held) => *held,
                Err(e) => {
                    tracing::warn!(error = %e, "lease not renewed");
                    false
                }
            };
            let was_leading = *leading.borrow();
            if lead {
                self.fence.renewed(started, &self.timings);
                last_renewal = Some(started);
                if !was_leading {
                    tracing::info!(identity = %self.identity, lease = %self.name, "acquired the lease");
                    let _ = leading.send(true);
                }
            } else if was_leading && self.lost(last_renewal, &outcome) {
                self.fence.close();
                tracing::error!(identity = %self.identity, deadline = ?self.timings.renew_deadline, "lease lost: EC2 writes stopped");
                let _ = leading.send(false);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timings.retry_period) => {}
                _ = release.changed() => {
                    self.fence.close();
                    if *leading.borrow() {
                        self.release_lease().await;
                    }
                    return;
                }
            }
        }
    }

    /// Lost: another replica holds the lease (the try answered), or no renewal succeeded within
    /// the renew deadline (the fence has closed by itself already).
    fn lost(&self, last_renewal: Option<Instant>, outcome: &Result<bool, LeaseError>) -> bool {
        match outcome {
            Ok(_) => true,
            Err(_) => last_renewal.is_none_or(|at| at.elapsed() >= self.timings.renew_deadline),
        }
    }

    /// One read of the Lease and, when the rules allow, one write. True when this replica holds
    /// the lease afterwards.
    async fn try_once(&self, observer: &mut Observer, now: Instant) -> Result<bool, LeaseError> {
        let timeout = (self.timings.retry_period * 2).min(self.timings.renew_deadline / 2);
        match tokio::time::timeout(timeout, self.read_and_write(observer, now)).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::Timeout {
                name: self.name.clone(),
                timeout,
            }),
        }
    }

    async fn read_and_write(&self, observer: &mut Observer, now: Instant) -> Result<bool, LeaseError> {
        let current = self.api.get_opt(&self.name).await.map_err(|e| self.api_error(e))?;
        let record = current.as_ref().map(record_of);
        if let Some(record) = &record {
            observer.observe(record, now);
        }
        let step = observer.decide(record.as_ref(), &self.identity, &self.timings, now);
        let written = match (step, current) {
            (Step::Wait { .. }, _) => return Ok(false),
            (Step::Create, _) => self.api.create(&PostParams::default(), &self.lease(None)).await,
            (Step::Renew, Some(lease)) => self.replace(self.renewed(lease)).await,
            (Step::Acquire, Some(lease)) => self.replace(self.lease(Some(lease))).await,
            (_, None) => return Ok(false),
        };
        match written {
            Ok(lease) => {
                observer.wrote(record_of(&lease), now);
                Ok(true)
            }
            // Someone else wrote first (a 409 on the resourceVersion precondition, or a create
            // that lost the race): read again next time; a leader keeps trying until its
            // deadline.
            Err(kube::Error::Api(status)) if status.code == 409 => Err(LeaseError::Conflict {
                name: self.name.clone(),
            }),
            Err(e) => Err(self.api_error(e)),
        }
    }

    async fn replace(&self, lease: Lease) -> kube::Result<Lease> {
        self.api.replace(&self.name, &PostParams::default(), &lease).await
    }

    fn wall_now(&self) -> MicroTime {
        MicroTime(
            Timestamp::now()
                .saturating_add(self.clock_offset)
                .unwrap_or_else(|_| Timestamp::now()),
        )
    }

    /// This replica's lease: taken over from `previous` (a transition) or new.
    fn lease(&self, previous: Option<Lease>) -> Lease {
        let transitions = match &previous {
            Some(lease) => lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0) + 1,
            None => 0,
        };
        let metadata = previous.map(|l| l.metadata).unwrap_or_else(|| ObjectMeta {
            name: Some(self.name.clone()),
            ..ObjectMeta::default()
        });
        let now = self.wall_now();
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timings.lease_duration.as_secs().try_into().unwrap_or(i32::MAX)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    fn renewed(&self, mut lease: Lease) -> Lease {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(self.wall_now());
        spec.lease_duration_seconds = Some(self.timings.lease_duration.as_secs().try_into().unwrap_or(i32::MAX));
        lease
    }

    /// Gives the lease up: no holder, so a standby acquires it on its next try.
    async fn release_lease(&self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(self.wall_now());
            self.replace(lease).await.map(|_| ())
        };
        match tokio::time::timeout(self.timings.renew_deadline, release).await {
            Ok(Ok(())) => tracing::info!(identity = %self.identity, "released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease; it expires by itself"),
            Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: self.name.clone(),
            source,
        }
    }
}

/// What the rules look at in a Lease.
fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.as_ref();
    LeaseRecord {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        duration: Duration::from_secs(
            spec.and_then(|s| s.lease_duration_seconds)
                .and_then(|d| u64::try_from(d).ok())
                .unwrap_or(0),
        ),
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// Parses a signed duration such as `-8s` or `1m30s` (for `--lease-clock-offset`).
pub fn signed_duration(text: &str) -> Result<SignedDuration, String> {
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let duration = humantime::parse_duration(magnitude).map_err(|e| e.to_string())?;
    let signed = SignedDuration::try_from(duration).map_err(|e| e.to_string())?;
    Ok(if negative { -signed } else { signed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_leases() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        };
        let record = record_of(&lease);
        assert_eq!(record.holder.as_deref(), Some("a"));
        assert_eq!(record.duration, Duration::from_secs(15));
        assert_eq!(record.transitions, 3);
        assert_eq!(record.version, "42");
        let empty = record_of(&Lease::default());
        assert_eq!(empty.holder, None);
        assert_eq!(empty.duration, Duration::ZERO, "a negative or missing duration is zero");
    }

    #[test]
    fn signed_durations() {
        assert_eq!(signed_duration("-8s"), Ok(SignedDuration::from_secs(-8)));
        assert_eq!(signed_duration("+2s"), Ok(SignedDuration::from_secs(2)));
        assert_eq!(signed_duration("1m"), Ok(SignedDuration::from_secs(60)));
        assert!(signed_duration("soon").is_err());
    }
}
