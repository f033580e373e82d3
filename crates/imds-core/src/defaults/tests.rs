use super::*;
use crate::api::{HttpTokens::*, Toggle::*};

fn account(tokens: Option<HttpTokens>, hop: Option<i32>) -> AccountDefaults {
    AccountDefaults {
        http_tokens: tokens,
        hop_limit: hop,
        ..AccountDefaults::default()
    }
}

fn policy(tokens: Option<HttpTokens>, hop: Option<i32>) -> MetadataOptions {
    MetadataOptions {
        http_tokens: tokens,
        http_put_response_hop_limit: hop,
        ..MetadataOptions::default()
    }
}

#[test]
fn policy_against_account_defaults() {
    struct Case {
        name: &'static str,
        policy: MetadataOptions,
        account: AccountDefaults,
        want: Vec<&'static str>,
    }
    let cases = [
        Case {
            name: "account requires IMDSv2 too",
            policy: policy(Some(Required), None),
            account: account(Some(Required), None),
            want: vec![],
        },
        Case {
            name: "account default optional",
            policy: policy(Some(Required), None),
            account: account(Some(Optional), None),
            want: vec!["httpTokens: optional → required"],
        },
        Case {
            name: "no account default: EC2's launch default (optional) applies",
            policy: policy(Some(Required), None),
            account: account(None, None),
            want: vec!["httpTokens: optional (no account default) → required"],
        },
        Case {
            name: "no account default equal to the launch default",
            policy: policy(Some(Optional), Some(1)),
            account: account(None, None),
            want: vec![],
        },
        Case {
            name: "hop limit differs, tokens agree",
            policy: policy(Some(Required), Some(2)),
            account: account(Some(Required), Some(1)),
            want: vec!["httpPutResponseHopLimit: 1 → 2"],
        },
        Case {
            name: "options the policy leaves alone never count",
            policy: policy(None, Some(2)),
            account: account(Some(Optional), Some(2)),
            want: vec![],
        },
        Case {
            name: "endpoint and tags",
            policy: MetadataOptions {
                http_endpoint: Some(Enabled),
                instance_metadata_tags: Some(Enabled),
                http_protocol_ipv6: Some(Enabled),
                ..MetadataOptions::default()
            },
            account: AccountDefaults {
                http_endpoint: Some(Disabled),
                ..AccountDefaults::default()
            },
            want: vec![
                "httpEndpoint: disabled → enabled",
                "instanceMetadataTags: disabled (no account default) → enabled",
            ],
        },
    ];
    for case in cases {
        let got: Vec<String> = mismatches(&case.policy, &case.account)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, case.want, "{}", case.name);
        let report = report_for_policy(&case.policy, &case.account);
        assert_eq!(report.is_some(), !case.want.is_empty(), "{}", case.name);
    }
}

#[test]
fn the_policy_report_says_what_to_do_and_is_bounded() {
    let report = report_for_policy(&policy(Some(Required), None), &account(Some(Optional), None)).expect("mismatch");
    assert_eq!(report.managed_by, "account");
    assert!(
        report.message.contains("new instances launch drifted"),
        "{}",
        report.message
    );
    assert!(
        report.message.contains("InstanceMetadataDefaults"),
        "{}",
        report.message
    );
    let managed = AccountDefaults {
        managed_by: ManagedBy::DeclarativePolicy,
        ..account(Some(Optional), None)
    };
    let report = report_for_policy(&policy(Some(Required), None), &managed).expect("mismatch");
    assert_eq!(report.managed_by, "declarative-policy");
    assert!(report.message.contains("declarative policy"), "{}", report.message);
    let long = "x".repeat(2 * MAX_MESSAGE);
    assert_eq!(bounded(&long).chars().count(), MAX_MESSAGE);
    assert_eq!(bounded("short"), "short");
}

#[test]
fn declarative_policy_refusals() {
    let managed = AccountDefaults {
        managed_by: ManagedBy::DeclarativePolicy,
        managed_exception_message: Some("Contact cloud-platform@example.com".into()),
        ..AccountDefaults::default()
    };
    let managed_silent = AccountDefaults {
        managed_by: ManagedBy::DeclarativePolicy,
        ..AccountDefaults::default()
    };
    let by_account = AccountDefaults::default();
    use FailureKind::*;
    let cases: [(FailureKind, &str, Option<&AccountDefaults>, bool); 11] = [
        (Unsupported, "UnsupportedOperation: refused", Some(&managed), true),
        (Other, "OperationNotPermitted: refused", Some(&managed_silent), true),
        (
            PermissionDenied,
            "UnauthorizedOperation: no identity-based policy",
            Some(&managed),
            false,
        ),
        (
            PermissionDenied,
            "UnauthorizedOperation: Contact cloud-platform@example.com",
            Some(&managed),
            true,
        ),
        (Transient, "RequestLimitExceeded: slow down", Some(&managed), false),
        (Unsupported, "UnsupportedOperation: not Nitro", Some(&by_account), false),
        (Unsupported, "UnsupportedOperation: not Nitro", None, false),
        (Other, "X: blocked by a declarative policy", None, true),
        (
            PermissionDenied,
            "UnauthorizedOperation: Declarative Policies forbid it",
            Some(&by_account),
            true,
        ),
        (Transient, "InternalError: declarative policy service down", None, false),
        (DeclarativePolicy, "already classified", None, true),
    ];
    for (kind, message, defaults, want) in cases {
        assert_eq!(
            is_declarative_refusal(kind, message, defaults),
            want,
            "{kind:?} {message}"
        );
    }
    let failure = Failure {
        kind: Unsupported,
        message: "UnsupportedOperation: refused".into(),
    };
    let classified = classify_refusal(failure.clone(), Some(&managed));
    assert_eq!(classified.kind, DeclarativePolicy);
    assert!(classified.message.starts_with("UnsupportedOperation: refused; "));
    assert_eq!(classify_refusal(failure.clone(), Some(&by_account)), failure);
    assert_eq!(
        DeclarativePolicy.reason(),
        crate::reason::Reason::DeclarativePolicyEnforced
    );
}

fn spec(mode: PolicyMode) -> InstanceMetadataDefaultsSpec {
    InstanceMetadataDefaultsSpec {
        http_tokens: Some(Required),
        http_put_response_hop_limit: Some(2),
        mode,
        ..InstanceMetadataDefaultsSpec::default()
    }
}

#[test]
fn singleton_decisions() {
    let in_sync = account(Some(Required), Some(2));
    let drifted = AccountDefaults {
        http_endpoint: Some(Disabled),
        ..account(Some(Optional), Some(2))
    };
    let managed = AccountDefaults {
        managed_by: ManagedBy::DeclarativePolicy,
        ..drifted.clone()
    };
    assert_eq!(
        decide("other", &spec(PolicyMode::Enforce), &in_sync),
        DefaultsDecision::WrongName
    );
    assert_eq!(
        decide("default", &spec(PolicyMode::Enforce), &in_sync),
        DefaultsDecision::InSync
    );
    let managed_in_sync = AccountDefaults {
        managed_by: ManagedBy::DeclarativePolicy,
        ..in_sync.clone()
    };
    assert_eq!(
        decide("default", &spec(PolicyMode::Enforce), &managed_in_sync),
        DefaultsDecision::InSync,
        "a declarative policy that already says the same is fine"
    );
    let DefaultsDecision::Modify(request, drift) = decide("default", &spec(PolicyMode::Enforce), &drifted) else {
        panic!("enforce modifies");
    };
    assert_eq!(
        request,
        DefaultsRequest {
            http_tokens: Some(Required),
            ..DefaultsRequest::default()
        },
        "only what differs is sent; the endpoint the spec leaves alone is not touched"
    );
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0].to_string(), "httpTokens: optional → required");
    assert!(matches!(
        decide("default", &spec(PolicyMode::Audit), &drifted),
        DefaultsDecision::AuditDrift(d) if d.len() == 1
    ));
    assert!(matches!(
        decide("default", &spec(PolicyMode::Enforce), &managed),
        DefaultsDecision::DeclarativePolicy(_)
    ));
    let unset = account(None, None);
    let drift = singleton_drift(&spec(PolicyMode::Enforce), &unset);
    let drift: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert_eq!(
        drift,
        vec![
            "httpTokens: no-preference → required",
            "httpPutResponseHopLimit: no-preference → 2"
        ]
    );
    assert_eq!(
        unset.account_level().http_put_response_hop_limit,
        NO_PREFERENCE,
        "status spells unset as EC2 does"
    );
}

#[test]
fn managed_by_spelling() {
    assert_eq!(
        ManagedBy::from_ec2(Some("declarative-policy")),
        ManagedBy::DeclarativePolicy
    );
    assert_eq!(ManagedBy::from_ec2(Some("account")), ManagedBy::Account);
    assert_eq!(ManagedBy::from_ec2(None), ManagedBy::Account);
    assert_eq!(ManagedBy::DeclarativePolicy.to_string(), "declarative-policy");
}
