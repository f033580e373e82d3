use super::*;
use crate::api::{HttpTokens, MetadataOptions, PolicyMode, Toggle};
use crate::fixtures::{hop, policy, tokens};
use crate::options::ApplyState;
use crate::selection::{PolicyInput, decide};
use proptest::prelude::*;

const DEFAULTS: FullOptions = FullOptions::EC2_LAUNCH_DEFAULTS;

fn v2(hop_limit: i32) -> FullOptions {
    FullOptions {
        http_tokens: HttpTokens::Required,
        hop_limit,
        ..DEFAULTS
    }
}

fn entry(original: &str, by: &[&str]) -> OptionRecord {
    OptionRecord {
        original: original.into(),
        by: by.iter().map(|s| s.to_string()).collect(),
    }
}

fn record(entries: &[(&str, OptionRecord)]) -> InstanceRecord {
    InstanceRecord {
        options: entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        change: None,
        reverted: None,
    }
}

fn decisions(policies: &[PolicyInput]) -> Decisions {
    decide(policies.iter())
}

#[test]
fn before_change_records_originals_once() {
    let live = |p: &str| p != "gone";
    let deciders: BTreeMap<Field, BTreeSet<String>> = [
        (Field::HttpTokens, ["a".to_string()].into()),
        (Field::HopLimit, ["b".to_string(), "c".to_string()].into()),
    ]
    .into();
    let cases = vec![
        (
            "first change: current values become the originals, attributed to the deciders",
            InstanceRecord::default(),
            DEFAULTS,
            v2(2),
            record(&[
                ("httpTokens", entry("optional", &["a"])),
                ("httpPutResponseHopLimit", entry("1", &["b", "c"])),
            ]),
        ),
        (
            "an original of a live policy is never overwritten; the decider joins",
            record(&[("httpTokens", entry("optional", &["x"]))]),
            FullOptions {
                http_tokens: HttpTokens::Optional,
                ..v2(2)
            },
            v2(2),
            record(&[("httpTokens", entry("optional", &["a", "x"]))]),
        ),
        (
            "an entry whose policies are gone is the new baseline",
            record(&[("httpPutResponseHopLimit", entry("1", &["gone"]))]),
            v2(3),
            v2(2),
            record(&[("httpPutResponseHopLimit", entry("3", &["b", "c"]))]),
        ),
        (
            "options the request leaves alone keep their entries as they are",
            record(&[("httpEndpoint", entry("disabled", &["gone"]))]),
            DEFAULTS,
            FullOptions {
                http_tokens: HttpTokens::Required,
                ..DEFAULTS
            },
            record(&[
                ("httpEndpoint", entry("disabled", &["gone"])),
                ("httpTokens", entry("optional", &["a"])),
            ]),
        ),
        (
            "an option without a known decider is attributed to the sender",
            InstanceRecord::default(),
            DEFAULTS,
            FullOptions {
                instance_metadata_tags: Toggle::Enabled,
                ..DEFAULTS
            },
            record(&[("instanceMetadataTags", entry("disabled", &["sender"]))]),
        ),
    ];
    for (name, before, current, request, want) in cases {
        assert_eq!(
            before_change(&before, &current, &request, &deciders, "sender", live),
            want,
            "{name}"
        );
    }
}

#[test]
fn restore_puts_back_only_what_the_deleted_policy_changed() {
    let a_tokens = policy("a", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
    let c_hop3 = policy("c", 0, PolicyMode::Enforce, hop(3));
    let audit_hop = policy("audit", 0, PolicyMode::Audit, hop(2));
    let q_hop = policy("q", 5, PolicyMode::Enforce, hop(4));
    let r_hop = policy("r", 5, PolicyMode::Enforce, hop(5));
    let both = record(&[
        ("httpTokens", entry("optional", &["a"])),
        ("httpPutResponseHopLimit", entry("1", &["b"])),
    ]);
    struct Case<'a> {
        name: &'a str,
        record: InstanceRecord,
        current: FullOptions,
        remaining: Vec<PolicyInput>,
        want_request: Option<FullOptions>,
        want_record: InstanceRecord,
    }
    let cases = vec![
        Case {
            name: "A (Retain, tokens) deleted before B (Restore, hop): tokens stay required",
            record: both.clone(),
            current: v2(2),
            remaining: vec![],
            want_request: Some(v2(1)),
            want_record: record(&[("httpTokens", entry("optional", &["a"]))]),
        },
        Case {
            name: "B deleted while A remains: only the hop limit goes back",
            record: both.clone(),
            current: v2(2),
            remaining: vec![a_tokens.clone()],
            want_request: Some(v2(1)),
            want_record: record(&[("httpTokens", entry("optional", &["a"]))]),
        },
        Case {
            name: "a remaining policy enforces the option: it passes on, the value stays",
            record: both.clone(),
            current: v2(2),
            remaining: vec![c_hop3.clone()],
            want_request: None,
            want_record: record(&[
                ("httpTokens", entry("optional", &["a"])),
                ("httpPutResponseHopLimit", entry("1", &["c"])),
            ]),
        },
        Case {
            name: "an audit policy enforces nothing: restored",
            record: both.clone(),
            current: v2(2),
            remaining: vec![audit_hop],
            want_request: Some(v2(1)),
            want_record: record(&[("httpTokens", entry("optional", &["a"]))]),
        },
        Case {
            name: "remaining policies in conflict: left alone, passed to the claimants",
            record: both.clone(),
            current: v2(2),
            remaining: vec![q_hop, r_hop],
            want_request: None,
            want_record: record(&[
                ("httpTokens", entry("optional", &["a"])),
                ("httpPutResponseHopLimit", entry("1", &["q", "r"])),
            ]),
        },
        Case {
            name: "a co-owner deleted with Retain keeps the value: entry dropped, nothing sent",
            record: record(&[("httpTokens", entry("optional", &["b", "gone"]))]),
            current: v2(2),
            remaining: vec![],
            want_request: None,
            want_record: InstanceRecord::default(),
        },
        Case {
            name: "a co-owner still being deleted (live) does not keep it",
            record: record(&[("httpPutResponseHopLimit", entry("1", &["b", "x"]))]),
            current: v2(2),
            remaining: vec![],
            want_request: Some(v2(1)),
            want_record: InstanceRecord::default(),
        },
        Case {
            name: "already at the original: entry dropped, nothing sent",
            record: record(&[("httpPutResponseHopLimit", entry("2", &["b"]))]),
            current: v2(2),
            remaining: vec![],
            want_request: None,
            want_record: InstanceRecord::default(),
        },
        Case {
            name: "nothing attributed to the deleted policy: nothing happens",
            record: record(&[("httpTokens", entry("optional", &["a"]))]),
            current: v2(2),
            remaining: vec![],
            want_request: None,
            want_record: record(&[("httpTokens", entry("optional", &["a"]))]),
        },
    ];
    for c in cases {
        let got = restore(&c.record, &c.current, "b", &decisions(&c.remaining), |p| p != "gone");
        assert_eq!(got.request, c.want_request, "{}: request", c.name);
        assert_eq!(got.record, c.want_record, "{}: record", c.name);
    }
}

#[test]
fn two_restore_policies_on_one_option() {
    // A (priority 10, hop 2) changed the hop limit from 1; B (hop 3) remains when A goes.
    let b = policy("b", 0, PolicyMode::Enforce, hop(3));
    let first = record(&[("httpPutResponseHopLimit", entry("1", &["a"]))]);
    let live = |p: &str| p == "a" || p == "b";
    let after_a = restore(&first, &v2(2), "a", &decisions(std::slice::from_ref(&b)), live);
    assert_eq!(after_a.request, None, "B still decides the hop limit");
    // B enforces 3: its change keeps the original of 1.
    let deciders = deciders(&decisions(std::slice::from_ref(&b)));
    let changed = before_change(&after_a.record, &v2(2), &v2(3), &deciders, "b", |p| p == "b");
    assert_eq!(changed, record(&[("httpPutResponseHopLimit", entry("1", &["b"]))]));
    let after_b = restore(&changed, &v2(3), "b", &decisions(&[]), live);
    assert_eq!(
        after_b.request,
        Some(v2(1)),
        "back to the value before the first change"
    );
    assert_eq!(after_b.restored, vec![Field::HopLimit]);
}

#[test]
fn stored_records_are_checked() {
    let valid = record(&[("httpTokens", entry("optional", &["a"]))]);
    assert_eq!(InstanceRecord::parse("i-1", &valid.to_json()), Ok(valid));
    let cases = [
        ("not json", "httpTokens=optional", "expected value"),
        (
            "unknown option",
            r#"{"options":{"httpTokenz":{"original":"optional","by":["a"]}}}"#,
            "unknown option",
        ),
        (
            "bad value",
            r#"{"options":{"httpTokens":{"original":"maybe","by":["a"]}}}"#,
            "not a valid value",
        ),
        (
            "hop out of range",
            r#"{"options":{"httpPutResponseHopLimit":{"original":"65","by":["a"]}}}"#,
            "not a valid value",
        ),
        (
            "nobody",
            r#"{"options":{"httpTokens":{"original":"optional","by":[]}}}"#,
            "no policy",
        ),
        (
            "bad request",
            r#"{"change":{"policy":"a","node":"n","at":"2026-01-01T00:00:00Z","wasReady":true,"request":"x","state":"Sent"}}"#,
            "not a request",
        ),
    ];
    for (name, text, want) in cases {
        let err = InstanceRecord::parse("i-1", text).expect_err(name);
        assert!(err.why.contains(want), "{name}: {}", err.why);
        assert!(err.to_string().contains("i-1"), "{name}");
    }
}

fn change(state: ChangeState, at: i64, request: FullOptions) -> ChangeRecord {
    ChangeRecord {
        policy: "p".into(),
        node: "n".into(),
        at: Timestamp::from_second(at).expect("valid"),
        was_ready: true,
        request: request.to_tag_value(),
        state,
    }
}

#[test]
fn sent_requests_are_settled_by_describes() {
    let observed = |o: FullOptions, state| ObservedOptions {
        values: o.to_options(),
        state,
    };
    let t = |s| Timestamp::from_second(s).expect("valid");
    let sent = change(ChangeState::Sent, 100, v2(2));
    let accepted = ChangeRecord {
        state: ChangeState::Accepted,
        ..sent.clone()
    };
    let cases = [
        (
            "shows the request",
            &sent,
            observed(v2(2), ApplyState::Applied),
            t(101),
            Some(accepted.clone()),
        ),
        (
            "pending",
            &sent,
            observed(DEFAULTS, ApplyState::Pending),
            t(101),
            Some(accepted.clone()),
        ),
        (
            "a later describe shows otherwise: dropped",
            &sent,
            observed(DEFAULTS, ApplyState::Applied),
            t(106),
            None,
        ),
        (
            "within the margin: kept",
            &sent,
            observed(DEFAULTS, ApplyState::Applied),
            t(104),
            Some(sent.clone()),
        ),
        (
            "an earlier describe says nothing",
            &sent,
            observed(DEFAULTS, ApplyState::Applied),
            t(99),
            Some(sent.clone()),
        ),
        (
            "accepted stays",
            &accepted,
            observed(DEFAULTS, ApplyState::Applied),
            t(101),
            Some(accepted.clone()),
        ),
    ];
    for (name, change, observed, issued, want) in cases {
        assert_eq!(settle_sent(change, &observed, issued), want, "{name}");
    }
}

#[test]
fn in_flight_until_answered_and_settled() {
    let t = |s| Timestamp::from_second(s).expect("valid");
    let settle = Duration::from_secs(30);
    let cases = [
        (
            "sent, no answer, long ago",
            change(ChangeState::Sent, 0, v2(2)),
            t(10_000),
            true,
        ),
        (
            "accepted, settling",
            change(ChangeState::Accepted, 100, v2(2)),
            t(129),
            true,
        ),
        (
            "accepted, settled",
            change(ChangeState::Accepted, 100, v2(2)),
            t(130),
            false,
        ),
        (
            "accepted in the future (clock skew)",
            change(ChangeState::Accepted, 200, v2(2)),
            t(100),
            true,
        ),
    ];
    for (name, change, now, want) in cases {
        assert_eq!(in_flight(&change, now, settle), want, "{name}");
    }
    // Verification: a change that required IMDSv2 counts until its window is over.
    let verify = Some(Duration::from_secs(900));
    let required = change(ChangeState::Accepted, 100, v2(2));
    assert!(requires_tokens(&required));
    assert!(
        in_flight_until_verified(&required, t(999), settle, verify),
        "still verifying"
    );
    assert!(
        !in_flight_until_verified(&required, t(1_000), settle, verify),
        "verified"
    );
    assert!(
        !in_flight_until_verified(&required, t(130), settle, None),
        "not verified: settled"
    );
    let mut optional = required.clone();
    optional.request = FullOptions::EC2_LAUNCH_DEFAULTS.to_tag_value();
    assert!(!requires_tokens(&optional));
    assert!(
        !in_flight_until_verified(&optional, t(130), settle, verify),
        "not an IMDSv2 change"
    );
    assert_eq!(age(t(200), t(100)), Duration::ZERO);
    let ancient = Timestamp::MIN;
    assert!(
        age(ancient, Timestamp::MAX) > Duration::from_secs(1 << 33),
        "no overflow to zero"
    );
}

fn any_options() -> impl Strategy<Value = FullOptions> {
    (any::<bool>(), 1..=4i32, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(t, h, e, i, m)| {
        let toggle = |on: bool| if on { Toggle::Enabled } else { Toggle::Disabled };
        FullOptions {
            http_tokens: if t { HttpTokens::Required } else { HttpTokens::Optional },
            hop_limit: h,
            http_endpoint: toggle(e),
            http_protocol_ipv6: toggle(i),
            instance_metadata_tags: toggle(m),
        }
    })
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn any_record() -> impl Strategy<Value = InstanceRecord> {
    proptest::collection::vec((any_options(), proptest::sample::subsequence(NAMES.to_vec(), 1..=3)), 5).prop_map(
        |entries| {
            let mut record = InstanceRecord::default();
            for (field, (originals, by)) in Field::ALL.into_iter().zip(entries) {
                // Some fields have no entry.
                if by.len() == 3 && field != Field::HttpTokens {
                    continue;
                }
                let by: Vec<&str> = by.into_iter().collect();
                record
                    .options
                    .insert(field.name().into(), entry(&originals.get(field).to_string(), &by));
            }
            record
        },
    )
}

fn any_policy(name: &'static str) -> impl Strategy<Value = PolicyInput> {
    (
        any_options(),
        proptest::sample::subsequence(Field::ALL.to_vec(), 0..=5),
        0..2i32,
        any::<bool>(),
    )
        .prop_map(move |(values, fields, priority, audit)| {
            let mut options = MetadataOptions::default();
            for f in fields {
                options.set(f, values.get(f));
            }
            let mode = if audit { PolicyMode::Audit } else { PolicyMode::Enforce };
            policy(name, priority, mode, options)
        })
}

proptest! {
    /// Restore never changes an option the deleted policy did not decide, and what it changes
    /// goes back exactly to the recorded original.
    #[test]
    fn restore_touches_only_what_the_deleted_policy_decided(
        record in any_record(),
        current in any_options(),
        deleted in proptest::sample::select(NAMES.to_vec()),
        others in proptest::collection::vec(any_policy("x"), 0..3),
    ) {
        let remaining: Vec<PolicyInput> = others
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| { p.name = format!("remaining-{i}"); p })
            .collect();
        let outcome = restore(&record, &current, deleted, &decide(remaining.iter()), |p| p != "c");
        let request = outcome.request.unwrap_or(current);
        for field in Field::ALL {
            if request.get(field) == current.get(field) {
                continue;
            }
            let entry = record.options.get(field.name());
            prop_assert!(entry.is_some_and(|e| e.by.contains(deleted)), "{field} changed without an entry of {deleted}");
            prop_assert_eq!(Some(request.get(field)), record.original(field));
            prop_assert!(outcome.restored.contains(&field));
        }
        for (name, entry) in &outcome.record.options {
            prop_assert!(!entry.by.contains(deleted), "{name} still attributed to the deleted policy");
        }
    }
}

#[test]
fn answers_settle_the_written_record() {
    let t = |s| Timestamp::from_second(s).expect("valid");
    let before = record(&[("httpTokens", entry("optional", &["a"]))]);
    let mut written = record(&[
        ("httpTokens", entry("optional", &["a", "b"])),
        ("httpPutResponseHopLimit", entry("1", &["b"])),
    ]);
    written.change = Some(change(ChangeState::Sent, 100, v2(2)));
    // Meanwhile another policy's deletion handed httpTokens over to c.
    let mut stored = written.clone();
    stored.options.insert("httpTokens".into(), entry("optional", &["c"]));

    let accepted = after_answer(&stored, &before, &written, Answer::Accepted(t(105)));
    assert_eq!(accepted.options, stored.options, "entries as stored");
    let c = accepted.change.expect("a change");
    assert_eq!((c.state, c.at), (ChangeState::Accepted, t(105)));

    assert_eq!(after_answer(&stored, &before, &written, Answer::MaybeApplied), stored);

    let refused = after_answer(&written, &before, &written, Answer::Refused);
    assert_eq!(refused, before, "a refused request leaves the record as it was");
}
