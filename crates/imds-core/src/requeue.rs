//! When to look at a policy again, pure: soon while work is in flight, with a growing backoff
//! per failure kind, otherwise at the resync period (which catches changes made outside the
//! cluster).

use crate::observation::FailureKind;
use crate::plan::{NodePlan, NodeState};
use std::collections::BTreeSet;
use std::time::Duration;

/// Requeue delay while changes are pending in EC2 (Terraform polls every 10 s; EC2 usually
/// applies within seconds).
pub const PENDING_RECHECK: Duration = Duration::from_secs(5);
/// Requeue delay while requests wait for the rollout or the rate limit.
pub const DEFERRED_RECHECK: Duration = Duration::from_secs(2);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The first backoff after a reconcile failed as a whole.
pub const RECONCILE_ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// The first backoff for a failure kind; `None` for kinds that wait for a change of the
/// request instead of a retry (`Unsupported`).
pub fn backoff_base(kind: FailureKind) -> Option<Duration> {
    match kind {
        FailureKind::PermissionDenied => Some(Duration::from_secs(60)),
        FailureKind::Unsupported | FailureKind::DeclarativePolicy => None,
        FailureKind::Transient | FailureKind::Other => Some(Duration::from_secs(10)),
    }
}

/// The failure kinds among the plans that are retried with a backoff, each with its base.
pub fn retried_failures(plans: &[NodePlan]) -> Vec<(FailureKind, Duration)> {
    let kinds: BTreeSet<FailureKind> = plans.iter().filter_map(|p| p.failure).collect();
    kinds
        .into_iter()
        .filter_map(|kind| Some((kind, backoff_base(kind)?)))
        .collect()
}

/// What the requeue decision looks at, besides the backoffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// Some node's change is pending in EC2.
    pub pending: bool,
    /// The rollout is halted.
    pub halted: bool,
    /// Requests waiting for the rollout, the rate limit or the next reconcile.
    pub deferred: usize,
}

impl Work {
    /// The work left by these plans.
    pub fn of(plans: &[NodePlan], halted: bool, deferred: usize) -> Work {
        Work {
            pending: plans.iter().any(|p| p.state == NodeState::Pending),
            halted,
            deferred,
        }
    }
}

/// The delay until the next reconcile: the resync period, cut to the shortest backoff of what
/// is failing, and — unless halted — to a short recheck while changes are pending or deferred.
/// Deferred work never cuts a backoff short.
pub fn requeue_delay(resync: Duration, backoffs: &[Duration], work: &Work) -> Duration {
    let mut delay = backoffs.iter().copied().fold(resync, Duration::min);
    if !work.halted {
        if work.pending {
            delay = delay.min(PENDING_RECHECK);
        }
        if work.deferred > 0 && backoffs.is_empty() {
            delay = delay.min(DEFERRED_RECHECK);
        }
    }
    delay
}

/// `base × 2^(attempts-1)`, capped at [`MAX_BACKOFF`].
pub fn backoff_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(10);
        let got: Vec<u64> = (1..=8).map(|n| backoff_delay(base, n).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff_delay(base, u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn requeue_delays() {
        let resync = Duration::from_secs(300);
        let s = Duration::from_secs;
        let work = |pending, halted, deferred| Work {
            pending,
            halted,
            deferred,
        };
        let cases = [
            ("idle: resync", vec![], work(false, false, 0), s(300)),
            ("pending: recheck soon", vec![], work(true, false, 0), s(5)),
            ("deferred: recheck sooner", vec![], work(true, false, 3), s(2)),
            (
                "failing: the shortest backoff",
                vec![s(40), s(20)],
                work(false, false, 0),
                s(20),
            ),
            (
                "deferred never cuts a backoff",
                vec![s(20)],
                work(false, false, 3),
                s(20),
            ),
            ("pending still cuts a backoff", vec![s(20)], work(true, false, 3), s(5)),
            ("halted: nothing is rechecked", vec![], work(true, true, 3), s(300)),
            ("halted keeps backoffs", vec![s(60)], work(true, true, 0), s(60)),
            (
                "backoff longer than resync",
                vec![s(600)],
                work(false, false, 0),
                s(300),
            ),
        ];
        for (name, backoffs, work, want) in cases {
            assert_eq!(requeue_delay(resync, &backoffs, &work), want, "{name}");
        }
    }

    #[test]
    fn retried_failures_have_bases() {
        let plan = |failure| NodePlan {
            failure,
            ..crate::plan::tests::fixture("n", NodeState::Failed)
        };
        let plans = vec![
            plan(Some(FailureKind::Unsupported)),
            plan(Some(FailureKind::Transient)),
            plan(Some(FailureKind::PermissionDenied)),
            plan(Some(FailureKind::Transient)),
            plan(None),
        ];
        assert_eq!(
            retried_failures(&plans),
            vec![
                (FailureKind::PermissionDenied, Duration::from_secs(60)),
                (FailureKind::Transient, Duration::from_secs(10)),
            ]
        );
    }
}
