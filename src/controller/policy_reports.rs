//! Policy reports (`--policy-reports`): every selected node's result as wg-policy
//! `ClusterPolicyReport`s ([`imds_core::policy_report`] builds them). A reconcile only hands
//! its plans over ([`PolicyReports::offer`], no IO); the writer
//! ([`super::policy_report_writer`]) takes them from here at most once per
//! `--policy-report-interval` per policy.

use imds_core::api::InstanceMetadataPolicy;
use imds_core::plan::NodePlan;
use imds_core::policy_report::ClusterPolicyReport;
use imds_core::policy_report::status::PolicyReportsStatus;
use imds_core::policy_report::{self, MAX_RESULTS_PER_REPORT};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The default of `--policy-report-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The latest plans of a policy, not written yet.
pub(super) struct Offer {
    pub(super) uid: String,
    pub(super) plans: Vec<NodePlan>,
}

/// What was last written for a policy.
pub(super) struct Written {
    pub(super) uid: String,
    pub(super) at: Instant,
    pub(super) reports: Vec<ClusterPolicyReport>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) offers: HashMap<String, Offer>,
    pub(super) written: HashMap<String, Written>,
    /// `Some(t)`: the CRD was missing; look again at `t`.
    pub(super) crd_missing_until: Option<Instant>,
}

/// The reports' shared state: the reconciles' offers and what the writer wrote.
pub struct PolicyReports {
    pub(super) interval: Option<Duration>,
    /// Results per report (`--policy-report-shard-size`, a test knob).
    pub(super) shard_size: usize,
    state: Mutex<State>,
    pub(super) wake: Notify,
}

impl PolicyReports {
    /// Reports written at most once per `interval` per policy; `None`: no reports.
    pub fn new(interval: Option<Duration>) -> PolicyReports {
        PolicyReports {
            interval,
            shard_size: MAX_RESULTS_PER_REPORT,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    /// Hands a reconcile's plans to the writer (only the latest plans of a policy are kept).
    pub fn offer(&self, policy: &InstanceMetadataPolicy, plans: &[NodePlan]) {
        let (Some(_), Some(uid)) = (self.interval, policy.meta().uid.clone()) else {
            return;
        };
        let offer = Offer {
            uid,
            plans: plans.to_vec(),
        };
        self.lock().offers.insert(policy.name_any(), offer);
        self.wake.notify_one();
    }

    /// At most `shard_size` results per report (tests use a few to get several shards).
    pub fn with_shard_size(mut self, shard_size: usize) -> PolicyReports {
        self.shard_size = shard_size;
        self
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the status of a policy that selects `selected` nodes says of its reports: the
    /// reports its results go to (written within an interval), or that their CRD is missing;
    /// `None` when reports are off.
    pub fn status_of(&self, policy: &str, selected: usize) -> Option<PolicyReportsStatus> {
        self.interval?;
        if self.lock().crd_missing_until.is_some() {
            let message = format!(
                "the ClusterPolicyReport CRD ({}) is not installed: no policy reports are written",
                policy_report::API_VERSION
            );
            return Some(PolicyReportsStatus {
                reports: Vec::new(),
                message: Some(message),
            });
        }
        Some(PolicyReportsStatus {
            reports: policy_report::report_names(policy, selected, self.shard_size),
            message: None,
        })
    }

    /// The offers whose policy may be written now, taken out of the state.
    pub(super) fn take_due(&self, now: Instant) -> Vec<(String, Offer)> {
        let Some(interval) = self.interval else {
            return Vec::new();
        };
        let mut state = self.lock();
        if state.crd_missing_until.is_some_and(|until| now < until) {
            return Vec::new();
        }
        let due: Vec<String> = state
            .offers
            .keys()
            .filter(|name| state.written.get(*name).is_none_or(|w| now >= w.at + interval))
            .cloned()
            .collect();
        due.into_iter()
            .filter_map(|name| state.offers.remove(&name).map(|o| (name, o)))
            .collect()
    }

    /// How long the writer may sleep: until the first offer is due (or the CRD check).
    pub(super) fn next_wake(&self, now: Instant) -> Duration {
        let interval = self.interval.unwrap_or(DEFAULT_INTERVAL);
        let state = self.lock();
        if let Some(until) = state.crd_missing_until.filter(|until| *until > now) {
            return until - now;
        }
        state
            .offers
            .keys()
            .map(|name| match state.written.get(name) {
                Some(w) => (w.at + interval).saturating_duration_since(now),
                None => Duration::ZERO,
            })
            .min()
            .unwrap_or(interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str) -> InstanceMetadataPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "imds-operator.io/v1alpha1",
            "kind": "InstanceMetadataPolicy",
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"nodeSelector": {}, "metadataOptions": {"httpTokens": "required"}}
        }))
        .expect("a policy")
    }

    fn written(reports: &PolicyReports, name: &str, at: Instant) {
        let w = Written {
            uid: format!("uid-{name}"),
            at,
            reports: Vec::new(),
        };
        reports.lock().written.insert(name.to_string(), w);
    }

    #[test]
    fn off_keeps_nothing() {
        let reports = PolicyReports::new(None);
        reports.offer(&policy("p"), &[]);
        assert!(reports.take_due(Instant::now()).is_empty());
    }

    #[test]
    fn a_policy_is_written_at_most_once_per_interval_with_its_latest_plans() {
        let interval = Duration::from_secs(30);
        let reports = PolicyReports::new(Some(interval));
        let t0 = Instant::now();
        assert_eq!(reports.next_wake(t0), interval, "nothing offered: the tick");
        reports.offer(&policy("p"), &[]);
        assert_eq!(reports.next_wake(t0), Duration::ZERO, "never written: at once");
        let due = reports.take_due(t0);
        assert_eq!(due.len(), 1);
        written(&reports, "p", t0);
        reports.offer(&policy("p"), &[]);
        reports.offer(&policy("p"), &[]);
        assert!(
            reports.take_due(t0 + Duration::from_secs(10)).is_empty(),
            "within the interval"
        );
        assert_eq!(reports.next_wake(t0 + Duration::from_secs(10)), Duration::from_secs(20));
        let due = reports.take_due(t0 + interval);
        assert_eq!(due.len(), 1, "two offers, one write");
        assert_eq!(due[0].1.uid, "uid-p");
    }

    #[test]
    fn the_status_names_the_reports_or_says_the_crd_is_missing() {
        let reports = PolicyReports::new(Some(Duration::from_secs(1))).with_shard_size(2);
        let status = reports.status_of("p", 3).unwrap_or_default();
        assert_eq!(
            (status.reports, status.message),
            (vec!["imp-p-0".to_string(), "imp-p-1".to_string()], None)
        );
        assert_eq!(
            reports.status_of("p", 0).map(|s| s.reports),
            Some(vec!["imp-p-0".to_string()])
        );
        reports.lock().crd_missing_until = Some(Instant::now());
        let missing = reports.status_of("p", 3).unwrap_or_default();
        assert!(missing.reports.is_empty());
        assert!(missing.message.unwrap_or_default().contains("is not installed"));
        assert_eq!(PolicyReports::new(None).status_of("p", 3), None, "off: no field");
    }

    #[test]
    fn without_the_crd_nothing_is_due_until_the_recheck() {
        let reports = PolicyReports::new(Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        reports.lock().crd_missing_until = Some(t0 + Duration::from_secs(300));
        reports.offer(&policy("p"), &[]);
        assert!(reports.take_due(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(
            reports.next_wake(t0 + Duration::from_secs(60)),
            Duration::from_secs(240)
        );
        assert_eq!(reports.take_due(t0 + Duration::from_secs(300)).len(), 1);
        assert_eq!(
            reports.next_wake(t0 + Duration::from_secs(301)),
            Duration::from_secs(1),
            "a recheck in the past does not spin"
        );
    }
}
