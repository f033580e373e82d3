//! Staged rollout, pure: how many instances may start changing now, and whether a node the
//! policy changed has turned NotReady soon after (which halts the rollout).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

/// `maxInFlight` as a number of instances for `selected` selected nodes: a count, or a
/// percentage rounded up; at least 1. A malformed value (the API server's schema prevents it)
/// counts as 1, the safe end.
pub fn max_in_flight(value: &IntOrString, selected: usize) -> usize {
    let n = match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(1),
        IntOrString::String(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u64>()) {
            Some(Ok(percent)) => {
                let percent = percent.min(100) as usize;
                (selected * percent).div_ceil(100)
            }
            _ => s.trim().parse::<usize>().unwrap_or(1),
        },
    };
    n.max(1)
}

/// How many new modify requests may go out: the limit less what is already changing.
pub fn budget(limit: usize, in_flight: usize) -> usize {
    limit.saturating_sub(in_flight)
}

/// A modification this policy made, remembered to watch the node's health afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentChange {
    /// The node.
    pub node: String,
    /// The instance.
    pub instance_id: String,
    /// How long ago the request was accepted.
    pub age: Duration,
    /// Whether the node was Ready when it was modified (a node that was already NotReady does
    /// not halt a rollout).
    pub was_ready: bool,
}

/// The first node (by name) that was Ready when modified less than `window` ago and is now
/// NotReady. `is_ready` answers for nodes still in the cluster (`None`: gone, or no Ready
/// condition at all).
pub fn halting_node(
    recent: &[RecentChange],
    window: Duration,
    is_ready: impl Fn(&str) -> Option<bool>,
) -> Option<&RecentChange> {
    if window.is_zero() {
        return None;
    }
    let mut broken: Vec<&RecentChange> = recent
        .iter()
        .filter(|c| c.was_ready && c.age < window && is_ready(&c.node) == Some(false))
        .collect();
    broken.sort_by(|a, b| a.node.cmp(&b.node));
    broken.first().copied()
}

/// Whether a change made `age` ago still counts as in flight: until `settle` has passed.
pub fn still_settling(age: Duration, settle: Duration) -> bool {
    age < settle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_in_flight_values() {
        let cases = [
            (IntOrString::Int(5), 100, 5),
            (IntOrString::Int(0), 100, 1),
            (IntOrString::Int(-3), 100, 1),
            (IntOrString::String("25%".into()), 100, 25),
            (IntOrString::String("25%".into()), 5, 2),
            (IntOrString::String("25%".into()), 0, 1),
            (IntOrString::String("100%".into()), 7, 7),
            (IntOrString::String("1%".into()), 5000, 50),
            (IntOrString::String("250%".into()), 4, 4),
            (IntOrString::String("3".into()), 10, 3),
            (IntOrString::String("lots".into()), 10, 1),
        ];
        for (value, selected, want) in cases {
            assert_eq!(max_in_flight(&value, selected), want, "{value:?} of {selected}");
        }
    }

    #[test]
    fn budget_never_negative() {
        assert_eq!(budget(5, 2), 3);
        assert_eq!(budget(2, 5), 0);
    }

    fn change(node: &str, age_s: u64, was_ready: bool) -> RecentChange {
        RecentChange {
            node: node.into(),
            instance_id: format!("i-{node}"),
            age: Duration::from_secs(age_s),
            was_ready,
        }
    }

    #[test]
    fn halting() {
        let recent = vec![
            change("b", 30, true),
            change("a", 30, true),
            change("old", 700, true),
            change("was-broken", 10, false),
            change("fine", 10, true),
            change("gone", 10, true),
        ];
        let ready = |n: &str| match n {
            "a" | "b" | "old" | "was-broken" => Some(false),
            "fine" => Some(true),
            _ => None,
        };
        let window = Duration::from_secs(600);
        assert_eq!(halting_node(&recent, window, ready).map(|c| c.node.as_str()), Some("a"));
        assert_eq!(
            halting_node(&recent, Duration::ZERO, ready),
            None,
            "0 turns halting off"
        );
        let healthy = |_: &str| Some(true);
        assert_eq!(halting_node(&recent, window, healthy), None);
    }

    #[test]
    fn settling() {
        assert!(still_settling(Duration::from_secs(5), Duration::from_secs(30)));
        assert!(!still_settling(Duration::from_secs(30), Duration::from_secs(30)));
        assert!(!still_settling(Duration::ZERO, Duration::ZERO));
    }
}
