//! Staged rollout, pure: how many instances may start changing now, and whether a node the
//! policy changed has turned NotReady soon after, or refused IMDSv1 calls after it was moved to
//! `httpTokens: required` (either halts the rollout).

use crate::api::RolloutHalt;
use crate::plan::{NodePlan, NodeState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
    /// Whether the request required IMDSv2 (`httpTokens: required`): only such a change is
    /// verified for rejected IMDSv1 calls.
    pub requires_tokens: bool,
}

/// How long after a change its node is watched: for NotReady (`haltOnNotReadyWithinSeconds`),
/// and for rejected IMDSv1 calls (`rollout.verify.window`; `None`: not verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The NotReady window (0: not watched).
    pub not_ready: Duration,
    /// The verification window.
    pub verify: Option<Duration>,
}

/// The changes being verified: they required IMDSv2 less than `window` ago.
pub fn verifying(recent: &[RecentChange], window: Option<Duration>) -> impl Iterator<Item = &RecentChange> {
    recent
        .iter()
        .filter(move |c| c.requires_tokens && window.is_some_and(|w| c.age < w))
}

/// The first change (by node name) being verified whose instance refused IMDSv1 calls since
/// it (`rejected`: the calls counted from the change on; `None` when unknown), with the count.
pub fn rejecting_node(
    recent: &[RecentChange],
    window: Option<Duration>,
    rejected: impl Fn(&RecentChange) -> Option<f64>,
) -> Option<(&RecentChange, f64)> {
    let mut rejecting: Vec<(&RecentChange, f64)> = verifying(recent, window)
        .filter_map(|c| Some((c, rejected(c)?)))
        .filter(|(_, calls)| *calls > 0.0)
        .collect();
    rejecting.sort_by(|a, b| a.0.node.cmp(&b.0.node));
    rejecting.first().copied()
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

/// What the last status and the resume annotation say of the rollout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HaltRecord {
    /// `status.rolloutHalt`.
    pub halt: Option<RolloutHalt>,
    /// `status.lastResume`: the resume annotation value last acted on.
    pub last_resume: Option<String>,
    /// The resume annotation's value now.
    pub annotation: Option<String>,
}

/// The rollout's state for this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutState {
    /// The halt in force (carried over or new).
    pub halt: Option<RolloutHalt>,
    /// The resume annotation value acted on, for the next status.
    pub last_resume: Option<String>,
    /// A halt was lifted in this reconcile (a person resumed, or the spec changed): the
    /// changes remembered so far no longer count.
    pub lifted: bool,
}

/// Carries a halt over from the last status unless a person resumed (a new annotation value) or
/// the spec changed (a new generation); otherwise halts when a node changed within
/// `watch.not_ready` turned NotReady, or an instance moved to IMDSv2 within `watch.verify`
/// refused IMDSv1 calls (`rejected`). `now` stamps a new halt.
pub fn rollout_state(
    record: &HaltRecord,
    generation: i64,
    recent: &[RecentChange],
    watch: Watch,
    is_ready: impl Fn(&str) -> Option<bool>,
    rejected: impl Fn(&RecentChange) -> Option<f64>,
    now: Time,
) -> RolloutState {
    if let Some(halt) = &record.halt {
        let resumed = record.annotation.is_some() && record.annotation != record.last_resume;
        if !resumed && halt.generation == generation {
            return RolloutState {
                halt: Some(halt.clone()),
                last_resume: record.last_resume.clone(),
                lifted: false,
            };
        }
        let last_resume = if resumed {
            record.annotation.clone()
        } else {
            record.last_resume.clone()
        };
        return RolloutState {
            halt: None,
            last_resume,
            lifted: true,
        };
    }
    let not_ready = halting_node(recent, watch.not_ready, is_ready).map(|c| (c, None));
    let rejecting = || rejecting_node(recent, watch.verify, rejected).map(|(c, calls)| (c, Some(calls)));
    let halt = not_ready.or_else(rejecting).map(|(c, calls)| RolloutHalt {
        node: c.node.clone(),
        instance_id: c.instance_id.clone(),
        since: now.clone(),
        generation,
        rejected_calls: calls.map(|n: f64| n.round() as u64),
    });
    // Only a value set after this halt resumes it, not one left over from an earlier resume.
    let last_resume = if halt.is_some() {
        record.annotation.clone()
    } else {
        record.last_resume.clone()
    };
    RolloutState {
        halt,
        last_resume,
        lifted: false,
    }
}

/// The selected instances that are changing: pending in EC2, or with a last change that still
/// counts (`changing`, by instance id: not answered yet, or settling), or being verified after a
/// move to IMDSv2 (`verifying`) — unless it needs a request again (changed back behind the
/// operator's back): its own verification does not hold its slot from it.
pub fn in_flight(plans: &[NodePlan], changing: impl Fn(&str) -> bool, verifying: impl Fn(&str) -> bool) -> usize {
    plans
        .iter()
        .filter(|p| {
            let id = p.instance_id.as_deref();
            p.state == NodeState::Pending
                || id.is_some_and(&changing)
                || (p.action.is_none() && id.is_some_and(&verifying))
        })
        .count()
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
            requires_tokens: true,
        }
    }

    fn not_ready_only(window: Duration) -> Watch {
        Watch {
            not_ready: window,
            verify: None,
        }
    }

    /// Verification: a change that required IMDSv2 within the window whose instance refused
    /// calls halts; outside the window, without a verdict, or for a change that did not require
    /// IMDSv2, it does not; NotReady comes first.
    #[test]
    fn rejected_calls_halt_within_the_verify_window() {
        let watch = Watch {
            not_ready: Duration::from_secs(600),
            verify: Some(Duration::from_secs(900)),
        };
        let no_tokens = RecentChange {
            requires_tokens: false,
            ..change("a", 30, true)
        };
        let recent = vec![
            no_tokens,
            change("b", 60, true),
            change("c", 1_000, true),
            change("d", 30, true),
        ];
        let rejected = |calls: &'static [(&'static str, f64)]| {
            move |c: &RecentChange| calls.iter().find(|(n, _)| *n == c.node).map(|(_, v)| *v)
        };
        let halted_at = |state: RolloutState| state.halt.map(|h| (h.node, h.rejected_calls));
        let run = |calls: &'static [(&'static str, f64)], ready: &'static [(&'static str, bool)]| {
            halted_at(rollout_state(
                &record(None, None, None),
                1,
                &recent,
                watch,
                readiness(ready),
                rejected(calls),
                at(5_000),
            ))
        };
        assert_eq!(run(&[("b", 3.0)], &[]), Some(("b".into(), Some(3))));
        assert_eq!(
            run(&[("a", 3.0), ("c", 5.0)], &[]),
            None,
            "not verified, or the window is over"
        );
        assert_eq!(run(&[("b", 0.0)], &[]), None, "no rejected calls");
        assert_eq!(
            run(&[("d", 1.0), ("b", 2.0)], &[]),
            Some(("b".into(), Some(2))),
            "the first by name"
        );
        assert_eq!(
            run(&[("b", 3.0)], &[("d", false)]),
            Some(("d".into(), None)),
            "NotReady first"
        );
        let unverified = rollout_state(
            &record(None, None, None),
            1,
            &recent,
            not_ready_only(watch.not_ready),
            readiness(&[]),
            rejected(&[("b", 3.0)]),
            at(5_000),
        );
        assert_eq!(unverified.halt, None, "verification off (Ignore)");
        let ids: Vec<&str> = verifying(&recent, watch.verify).map(|c| c.node.as_str()).collect();
        assert_eq!(ids, vec!["b", "d"]);
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

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("valid"))
    }

    fn halt(node: &str, generation: i64) -> RolloutHalt {
        RolloutHalt {
            node: node.into(),
            instance_id: format!("i-{node}"),
            since: at(500),
            generation,
            rejected_calls: None,
        }
    }

    fn record(halt: Option<RolloutHalt>, last_resume: Option<&str>, annotation: Option<&str>) -> HaltRecord {
        HaltRecord {
            halt,
            last_resume: last_resume.map(String::from),
            annotation: annotation.map(String::from),
        }
    }

    fn state(halt: Option<RolloutHalt>, last_resume: Option<&str>, lifted: bool) -> RolloutState {
        RolloutState {
            halt,
            last_resume: last_resume.map(String::from),
            lifted,
        }
    }

    /// Readiness from a list of `(node, ready)`; a node not listed is gone.
    fn readiness(nodes: &[(&str, bool)]) -> impl Fn(&str) -> Option<bool> {
        let nodes: Vec<(String, bool)> = nodes.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        move |node: &str| nodes.iter().find(|(n, _)| n == node).map(|(_, r)| *r)
    }

    #[test]
    fn rollout_states() {
        const NOW: i64 = 1_000;
        const GEN: i64 = 3;
        struct Case {
            name: &'static str,
            record: HaltRecord,
            generation: i64,
            recent: Vec<RecentChange>,
            window: Duration,
            ready: &'static [(&'static str, bool)],
            want: RolloutState,
        }
        let window = Duration::from_secs(600);
        let new_halt = |node: &str| RolloutHalt {
            node: node.into(),
            instance_id: format!("i-{node}"),
            since: at(NOW),
            generation: GEN,
            rejected_calls: None,
        };
        let broken = vec![change("n1", 30, true)];
        let cases = vec![
            // A halt from the last status.
            Case {
                name: "halt carried over: same generation, annotation already acted on",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r1")),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[],
                want: state(Some(halt("old", GEN)), Some("r1"), false),
            },
            Case {
                name: "halt carried over: no annotation at all",
                record: record(Some(halt("old", GEN)), None, None),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[],
                want: state(Some(halt("old", GEN)), None, false),
            },
            Case {
                name: "halt carried over: removing the annotation does not resume",
                record: record(Some(halt("old", GEN)), Some("r1"), None),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[],
                want: state(Some(halt("old", GEN)), Some("r1"), false),
            },
            Case {
                name: "halt carried over: not replaced by another broken node",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r1")),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", false)],
                want: state(Some(halt("old", GEN)), Some("r1"), false),
            },
            Case {
                name: "lifted by a new annotation value",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r2")),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[],
                want: state(None, Some("r2"), true),
            },
            Case {
                name: "lifted by a first annotation",
                record: record(Some(halt("old", GEN)), None, Some("go")),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[],
                want: state(None, Some("go"), true),
            },
            Case {
                name: "lifted by a new generation: last resume unchanged",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r1")),
                generation: GEN + 1,
                recent: vec![],
                window,
                ready: &[],
                want: state(None, Some("r1"), true),
            },
            Case {
                name: "lifted by a new generation without any annotation",
                record: record(Some(halt("old", GEN)), None, None),
                generation: GEN + 1,
                recent: vec![],
                window,
                ready: &[],
                want: state(None, None, true),
            },
            Case {
                name: "lifted by a new generation and a new annotation: the annotation is acted on",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r2")),
                generation: GEN + 1,
                recent: vec![],
                window,
                ready: &[],
                want: state(None, Some("r2"), true),
            },
            Case {
                name: "lifted: the changes so far do not halt again in the same reconcile",
                record: record(Some(halt("old", GEN)), Some("r1"), Some("r2")),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", false)],
                want: state(None, Some("r2"), true),
            },
            // No halt in the last status.
            Case {
                name: "new halt: a node Ready when changed is now NotReady",
                record: record(None, Some("r1"), Some("r1")),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", false)],
                want: state(Some(new_halt("n1")), Some("r1"), false),
            },
            Case {
                name: "new halt: a left-over annotation becomes the last resume",
                record: record(None, Some("r1"), Some("r2")),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", false)],
                want: state(Some(new_halt("n1")), Some("r2"), false),
            },
            Case {
                name: "new halt: no annotation clears the last resume",
                record: record(None, Some("r1"), None),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", false)],
                want: state(Some(new_halt("n1")), None, false),
            },
            Case {
                name: "new halt names the first broken node by name",
                record: record(None, None, None),
                generation: GEN,
                recent: vec![change("n2", 10, true), change("n1", 500, true), change("n0", 20, true)],
                window,
                ready: &[("n0", true), ("n1", false), ("n2", false)],
                want: state(Some(new_halt("n1")), None, false),
            },
            Case {
                name: "no halt: window 0 turns halting off",
                record: record(None, Some("r1"), Some("r2")),
                generation: GEN,
                recent: broken.clone(),
                window: Duration::ZERO,
                ready: &[("n1", false)],
                want: state(None, Some("r1"), false),
            },
            Case {
                name: "no halt: nobody broke",
                record: record(None, Some("r1"), Some("r2")),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[("n1", true)],
                want: state(None, Some("r1"), false),
            },
            Case {
                name: "no halt: no recent changes",
                record: record(None, None, Some("r2")),
                generation: GEN,
                recent: vec![],
                window,
                ready: &[("n1", false)],
                want: state(None, None, false),
            },
            Case {
                name: "no halt: changed longer ago than the window",
                record: record(None, None, None),
                generation: GEN,
                recent: vec![change("n1", 600, true)],
                window,
                ready: &[("n1", false)],
                want: state(None, None, false),
            },
            Case {
                name: "no halt: the node was already NotReady when changed",
                record: record(None, None, None),
                generation: GEN,
                recent: vec![change("n1", 30, false)],
                window,
                ready: &[("n1", false)],
                want: state(None, None, false),
            },
            Case {
                name: "no halt: the node is gone",
                record: record(None, None, None),
                generation: GEN,
                recent: broken.clone(),
                window,
                ready: &[],
                want: state(None, None, false),
            },
        ];
        for Case {
            name,
            record,
            generation,
            recent,
            window,
            ready,
            want,
        } in cases
        {
            let no_verdict = |_: &RecentChange| None;
            let got = rollout_state(
                &record,
                generation,
                &recent,
                not_ready_only(window),
                readiness(ready),
                no_verdict,
                at(NOW),
            );
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn new_halt_is_not_resumed_by_a_left_over_annotation() {
        let window = Duration::from_secs(600);
        let recent = vec![change("n1", 30, true)];
        let first = rollout_state(
            &record(None, Some("r1"), Some("r2")),
            3,
            &recent,
            not_ready_only(window),
            readiness(&[("n1", false)]),
            |_: &RecentChange| None,
            at(1_000),
        );
        assert!(first.halt.is_some());
        let again = |annotation: Option<&str>| {
            let next = HaltRecord {
                halt: first.halt.clone(),
                last_resume: first.last_resume.clone(),
                annotation: annotation.map(String::from),
            };
            rollout_state(
                &next,
                3,
                &[],
                not_ready_only(window),
                readiness(&[]),
                |_: &RecentChange| None,
                at(2_000),
            )
        };
        let cases = vec![
            (
                "the same left-over annotation",
                Some("r2"),
                state(first.halt.clone(), Some("r2"), false),
            ),
            (
                "the annotation removed",
                None,
                state(first.halt.clone(), Some("r2"), false),
            ),
            ("an older value again", Some("r1"), state(None, Some("r1"), true)),
            ("a new value", Some("r3"), state(None, Some("r3"), true)),
        ];
        for (name, annotation, want) in cases {
            let got = again(annotation);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn in_flight_counts() {
        use crate::plan::tests::fixture;
        use NodeState::*;
        let settle = Duration::from_secs(30);
        let no_id = |name: &str, state: NodeState| NodePlan {
            instance_id: None,
            ..fixture(name, state)
        };
        struct Case {
            name: &'static str,
            plans: Vec<NodePlan>,
            /// How long ago the operator changed each instance (by instance ID).
            ages: &'static [(&'static str, u64)],
            settle: Duration,
            want: usize,
        }
        let cases = vec![
            Case {
                name: "no plans",
                plans: vec![],
                ages: &[],
                settle,
                want: 0,
            },
            Case {
                name: "pending counts",
                plans: vec![fixture("a", Pending), fixture("b", Pending)],
                ages: &[],
                settle,
                want: 2,
            },
            Case {
                name: "changed less than settle ago counts",
                plans: vec![fixture("a", Compliant), fixture("b", Drifted)],
                ages: &[("i-a", 5), ("i-b", 29)],
                settle,
                want: 2,
            },
            Case {
                name: "changed settle ago or longer does not count",
                plans: vec![fixture("a", Compliant), fixture("b", Compliant)],
                ages: &[("i-a", 30), ("i-b", 3_600)],
                settle,
                want: 0,
            },
            Case {
                name: "never changed does not count",
                plans: vec![fixture("a", Compliant), fixture("b", Drifted), fixture("c", Blocked)],
                ages: &[("i-other", 1)],
                settle,
                want: 0,
            },
            Case {
                name: "pending and settling counts once",
                plans: vec![fixture("a", Pending)],
                ages: &[("i-a", 1)],
                settle,
                want: 1,
            },
            Case {
                name: "pending counts whenever it was changed",
                plans: vec![fixture("a", Pending)],
                ages: &[("i-a", 3_600)],
                settle,
                want: 1,
            },
            Case {
                name: "settle 0: only pending counts",
                plans: vec![fixture("a", Pending), fixture("b", Compliant)],
                ages: &[("i-b", 0)],
                settle: Duration::ZERO,
                want: 1,
            },
            Case {
                name: "no instance id: not settling",
                plans: vec![no_id("a", Skipped), no_id("b", Compliant)],
                ages: &[("i-a", 1), ("i-b", 1)],
                settle,
                want: 0,
            },
            Case {
                name: "no instance id but pending still counts",
                plans: vec![no_id("a", Pending)],
                ages: &[],
                settle,
                want: 1,
            },
            Case {
                name: "mixed",
                plans: vec![
                    fixture("pending", Pending),
                    fixture("settling", Compliant),
                    fixture("settled", Compliant),
                    fixture("untouched", Drifted),
                    no_id("skipped", Skipped),
                ],
                ages: &[("i-settling", 10), ("i-settled", 31)],
                settle,
                want: 2,
            },
        ];
        for Case {
            name,
            plans,
            ages,
            settle,
            want,
        } in cases
        {
            let age = |id: &str| {
                ages.iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, s)| Duration::from_secs(*s))
            };
            let changing = |id: &str| age(id).is_some_and(|a| still_settling(a, settle));
            let got = in_flight(&plans, changing, |_: &str| false);
            assert_eq!(got, want, "{name}");
        }
    }

    /// A verified instance holds its slot, unless it needs a request again.
    #[test]
    fn verifying_instances_count_unless_they_need_a_request_again() {
        use crate::plan::tests::fixture;
        let plan = |id: &str, action: bool| {
            let mut p = NodePlan {
                instance_id: Some(id.into()),
                ..fixture(&format!("n-{id}"), NodeState::Compliant)
            };
            if action {
                p.state = NodeState::Drifted;
                p.action = Some(crate::options::FullOptions::EC2_LAUNCH_DEFAULTS);
            }
            p
        };
        let plans = vec![plan("a", false), plan("b", true), plan("c", false)];
        let verifying = |id: &str| id == "a" || id == "b";
        assert_eq!(
            in_flight(&plans, |_: &str| false, verifying),
            1,
            "a holds a slot; b (changed back) does not"
        );
        assert_eq!(
            in_flight(&plans, |id: &str| id == "b", verifying),
            2,
            "b still settling counts"
        );
    }
}
