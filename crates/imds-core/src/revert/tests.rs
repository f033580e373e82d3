use super::*;
use crate::api::{HttpTokens, RejectedCallsAction};
use crate::options::{ApplyState, FullOptions, ObservedOptions};
use crate::record::{ChangeRecord, ChangeState, InstanceRecord, OptionRecord};
use std::collections::BTreeMap;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("valid")
}

fn required() -> FullOptions {
    FullOptions {
        http_tokens: HttpTokens::Required,
        hop_limit: 2,
        ..FullOptions::EC2_LAUNCH_DEFAULTS
    }
}

fn observed(options: FullOptions, state: ApplyState) -> ObservedOptions {
    ObservedOptions {
        values: options.to_options(),
        state,
    }
}

fn entry(original: &str, by: &str) -> OptionRecord {
    OptionRecord {
        original: original.into(),
        by: [by.to_string()].into(),
    }
}

/// A record of `v2` moving the instance from optional/1 to required/2 at `at`.
fn record(policy: &str, at: i64, state: ChangeState, request: FullOptions) -> InstanceRecord {
    let options: BTreeMap<String, OptionRecord> = [
        ("httpTokens".to_string(), entry("optional", "v2")),
        ("httpPutResponseHopLimit".to_string(), entry("1", "hop")),
    ]
    .into();
    InstanceRecord {
        options,
        change: Some(ChangeRecord::new(policy, "n1", ts(at), true, &request, state)),
        reverted: None,
    }
}

/// The decision, table-driven: only `Revert`, only this policy's accepted move to IMDSv2 within
/// the window, only with refused calls, only to recorded originals of live policies.
#[test]
fn revert_decisions() {
    let window = Duration::from_secs(900);
    let base = record("v2", 1_000, ChangeState::Accepted, required());
    let v1 = FullOptions {
        http_tokens: HttpTokens::Optional,
        ..required()
    };
    let no_entries = InstanceRecord {
        options: BTreeMap::new(),
        ..base.clone()
    };
    struct Case {
        name: &'static str,
        action: RejectedCallsAction,
        record: InstanceRecord,
        current: ObservedOptions,
        rejected: Option<f64>,
        now: i64,
        dead: &'static [&'static str],
        want: Result<Vec<Field>, Keep>,
    }
    let on = observed(required(), ApplyState::Applied);
    let cases = vec![
        Case {
            name: "revert: tokens and hop limit back",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Ok(vec![Field::HopLimit, Field::HttpTokens]),
        },
        Case {
            name: "an original only a deleted policy holds is the baseline",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &["hop"],
            want: Ok(vec![Field::HttpTokens]),
        },
        Case {
            name: "Halt does not revert",
            action: RejectedCallsAction::Halt,
            record: base.clone(),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotChosen),
        },
        Case {
            name: "another policy's change",
            action: RejectedCallsAction::Revert,
            record: record("other", 1_000, ChangeState::Accepted, required()),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotThisChange),
        },
        Case {
            name: "outside the window",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_900,
            dead: &[],
            want: Err(Keep::NotThisChange),
        },
        Case {
            name: "not accepted yet",
            action: RejectedCallsAction::Revert,
            record: record("v2", 1_000, ChangeState::Sent, required()),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotThisChange),
        },
        Case {
            name: "the change did not require IMDSv2",
            action: RejectedCallsAction::Revert,
            record: record("v2", 1_000, ChangeState::Accepted, v1),
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotThisChange),
        },
        Case {
            name: "no refused calls",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: on.clone(),
            rejected: Some(0.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NoRejectedCalls),
        },
        Case {
            name: "no verdict",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: on.clone(),
            rejected: None,
            now: 1_300,
            dead: &[],
            want: Err(Keep::NoRejectedCalls),
        },
        Case {
            name: "a change is pending",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: observed(required(), ApplyState::Pending),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotRevertible),
        },
        Case {
            name: "someone already allowed IMDSv1 again",
            action: RejectedCallsAction::Revert,
            record: base.clone(),
            current: observed(v1, ApplyState::Applied),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NotRevertible),
        },
        Case {
            name: "no original recorded",
            action: RejectedCallsAction::Revert,
            record: no_entries,
            current: on.clone(),
            rejected: Some(4.0),
            now: 1_300,
            dead: &[],
            want: Err(Keep::NothingRecorded),
        },
    ];
    for case in cases {
        let live = |p: &str| !case.dead.contains(&p);
        let input = RevertInput {
            action: case.action,
            policy: "v2",
            window,
            record: &case.record,
            current: &case.current,
            rejected: case.rejected,
            live: &live,
            now: ts(case.now),
        };
        let got = decide(&input).map(|r| {
            let mut fields = r.restored.clone();
            fields.sort();
            fields
        });
        let mut want = case.want;
        if let Ok(fields) = &mut want {
            fields.sort();
        }
        assert_eq!(got, want, "{}", case.name);
    }
}

#[test]
fn the_request_is_the_recorded_originals_with_all_five_options() {
    let record = record("v2", 1_000, ChangeState::Accepted, required());
    let current = observed(required(), ApplyState::Applied);
    let live = |_: &str| true;
    let input = RevertInput {
        action: RejectedCallsAction::Revert,
        policy: "v2",
        window: Duration::from_secs(900),
        record: &record,
        current: &current,
        rejected: Some(2.6),
        live: &live,
        now: ts(1_100),
    };
    let revert = decide(&input).expect("reverted");
    assert_eq!(revert.request, FullOptions::EC2_LAUNCH_DEFAULTS);
    assert_eq!(revert.rejected_calls, 3);
    let hold = hold("v2", 4, None);
    let change = ChangeRecord::new("v2", "n1", ts(1_100), true, &revert.request, ChangeState::Sent);
    let next = before_revert(&record, change.clone(), hold.clone());
    assert_eq!(next.options, record.options, "the originals stay recorded");
    assert_eq!((next.change, next.reverted), (Some(change), Some(hold)));
}

fn hold(policy: &str, generation: i64, seen: Option<&str>) -> RevertHold {
    RevertHold {
        policy: policy.into(),
        generation,
        node: "n1".into(),
        at: ts(1_100),
        rejected_calls: 3,
        options: FullOptions::EC2_LAUNCH_DEFAULTS.to_tag_value(),
        reenforce_seen: seen.map(str::to_string),
    }
}

/// The hold lasts until a person acts: a new generation, a new annotation value, or the policy's
/// deletion releases it; nothing else does.
#[test]
fn holds_last_until_a_person_acts() {
    let now = |generation, reenforce| Some(PolicyNow { generation, reenforce });
    let cases = [
        (
            "same generation, no annotation",
            hold("v2", 4, None),
            now(4, None),
            true,
        ),
        (
            "same annotation value",
            hold("v2", 4, Some("1")),
            now(4, Some("1")),
            true,
        ),
        ("spec changed", hold("v2", 4, None), now(5, None), false),
        ("annotation set", hold("v2", 4, None), now(4, Some("x")), false),
        ("annotation changed", hold("v2", 4, Some("1")), now(4, Some("2")), false),
        ("annotation removed", hold("v2", 4, Some("1")), now(4, None), false),
        ("policy deleted", hold("v2", 4, None), None, false),
    ];
    for (name, hold, policy, want) in cases {
        assert_eq!(in_force(&hold, policy), want, "{name}");
    }
}

#[test]
fn a_held_plan_sends_nothing_and_says_how_to_release() {
    let node = crate::observation::NodeInput {
        name: "n1".into(),
        ..Default::default()
    };
    let mut drifted = NodePlan::new(&node, Some("i-1".into()), NodeState::Drifted, Reason::Drifted);
    drifted.action = Some(required());
    hold_plan(&mut drifted, &hold("v2", 4, None));
    assert_eq!(
        (drifted.state, drifted.reason, drifted.action),
        (NodeState::Blocked, Reason::Reverted, None)
    );
    let message = drifted.message.unwrap_or_default();
    assert!(
        message.contains("3 refused IMDSv1 calls") && message.contains(crate::api::REENFORCE_ANNOTATION),
        "{message}"
    );
    let mut compliant = NodePlan::new(&node, Some("i-1".into()), NodeState::Compliant, Reason::Compliant);
    hold_plan(&mut compliant, &hold("v2", 4, None));
    assert_eq!(compliant.reason, Reason::Compliant, "nothing to hold back");
}

/// A revert EC2 refused leaves the record as it was (no hold: the instance was not put back); an
/// accepted one keeps the hold.
#[test]
fn a_refused_revert_leaves_no_hold() {
    let before = record("v2", 1_000, ChangeState::Accepted, required());
    let request = FullOptions::EC2_LAUNCH_DEFAULTS;
    let change = ChangeRecord::new("v2", "n1", ts(1_100), true, &request, ChangeState::Sent);
    let ahead = before_revert(&before, change, hold("v2", 4, None));
    let refused = record::after_answer(&ahead, &before, &ahead, record::Answer::Refused);
    assert_eq!(refused, before, "entries, last change and (no) hold as before");
    let accepted = record::after_answer(&ahead, &before, &ahead, record::Answer::Accepted(ts(1_101)));
    assert!(accepted.reverted.is_some());
    assert_eq!(accepted.change.map(|c| c.state), Some(ChangeState::Accepted));
}

/// A revert whose answer was lost and that a describe shows did not take leaves no hold.
#[test]
fn an_untaken_revert_leaves_no_hold() {
    let request = FullOptions::EC2_LAUNCH_DEFAULTS;
    let sent = ChangeRecord::new("v2", "n1", ts(1_100), true, &request, ChangeState::Sent);
    let held = before_revert(
        &record("v2", 1_000, ChangeState::Accepted, required()),
        sent.clone(),
        hold("v2", 4, None),
    );
    let mut untaken = InstanceRecord {
        change: None,
        ..held.clone()
    };
    forget_untaken(&mut untaken, &sent);
    assert_eq!(untaken.reverted, None);
    let mut taken = InstanceRecord {
        change: Some(ChangeRecord {
            state: ChangeState::Accepted,
            ..sent.clone()
        }),
        ..held
    };
    forget_untaken(&mut taken, &sent);
    assert!(taken.reverted.is_some(), "it took: the hold stays");
}
