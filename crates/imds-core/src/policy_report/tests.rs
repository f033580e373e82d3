use super::*;
use crate::plan::tests::fixture;
use crate::reason::Reason;
use proptest::prelude::*;

const POLICY: PolicyIdentity<'static> = PolicyIdentity {
    name: "require-imdsv2",
    uid: "3f1c2b1e-0000-4000-8000-000000000001",
};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).expect("valid time")
}

fn drift(field: &str, observed: &str, desired: &str) -> FieldDrift {
    FieldDrift {
        field: field.into(),
        observed: observed.into(),
        desired: desired.into(),
    }
}

fn plan(name: &str, state: NodeState, reason: Reason) -> NodePlan {
    let mut p = fixture(name, state);
    p.reason = reason;
    p
}

fn drifted(name: &str) -> NodePlan {
    let mut p = plan(name, NodeState::Drifted, Reason::Drifted);
    p.drift = vec![
        drift("httpTokens", "optional", "required"),
        drift("httpPutResponseHopLimit", "1", "2"),
    ];
    p
}

fn build_at(plans: &[NodePlan], previous: &[ClusterPolicyReport], now: i64) -> Vec<ClusterPolicyReport> {
    build_sharded(plans, previous, now, MAX_RESULTS_PER_REPORT)
}

fn build_sharded(
    plans: &[NodePlan],
    previous: &[ClusterPolicyReport],
    now: i64,
    shard_size: usize,
) -> Vec<ClusterPolicyReport> {
    let node_uids: HashMap<String, String> = plans
        .iter()
        .map(|p| (p.node.clone(), format!("uid-{}", p.node)))
        .collect();
    build(&ReportInput {
        policy: POLICY,
        plans,
        node_uids: &node_uids,
        previous,
        now: at(now),
        shard_size,
    })
}

#[test]
fn each_state_has_its_verdict_and_message() {
    let mut blocked = plan("blocked", NodeState::Blocked, Reason::Imdsv1InUse);
    blocked.drift = vec![drift("httpTokens", "optional", "required")];
    blocked.message = Some("12 IMDSv1 calls in 24h".into());
    let mut failed = plan("failed", NodeState::Failed, Reason::PermissionDenied);
    failed.message = Some("UnauthorizedOperation".into());
    let mut skipped = plan("fargate", NodeState::Skipped, Reason::Fargate);
    skipped.instance_id = None;
    skipped.message = Some("an EKS Fargate node".into());
    let mut pending = plan("pending", NodeState::Pending, Reason::Pending);
    pending.message = Some("EC2 reports the last change as pending".into());
    let cases: Vec<(NodePlan, Verdict, &str)> = vec![
        (
            plan("ok", NodeState::Compliant, Reason::Compliant),
            Verdict::Pass,
            "Compliant",
        ),
        (
            drifted("drift"),
            Verdict::Fail,
            "Drifted: httpTokens: optional → required; httpPutResponseHopLimit: 1 → 2",
        ),
        (
            blocked,
            Verdict::Fail,
            "IMDSv1InUse: httpTokens: optional → required; 12 IMDSv1 calls in 24h",
        ),
        (
            pending,
            Verdict::Fail,
            "Pending: EC2 reports the last change as pending",
        ),
        (failed, Verdict::Error, "PermissionDenied: UnauthorizedOperation"),
        (skipped, Verdict::Skip, "Fargate: an EKS Fargate node"),
    ];
    for (p, verdict, message) in cases {
        let r = node_result(POLICY.name, &p, Some("u".into()));
        assert_eq!(r.result, verdict, "{}", p.node);
        assert_eq!(r.message, message, "{}", p.node);
        assert_eq!(r.properties["state"], p.state.name(), "{}", p.node);
        assert_eq!(r.properties["reason"], p.reason.to_string(), "{}", p.node);
        assert_eq!(r.properties.get("instanceId"), p.instance_id.as_ref(), "{}", p.node);
        assert_eq!((r.rule.as_str(), r.source.as_str()), (RULE, SOURCE));
        assert_eq!(
            r.resources,
            vec![ResourceRef {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: p.node.clone(),
                uid: Some("u".into()),
            }]
        );
    }
}

#[test]
fn drift_is_written_as_observed_and_desired_properties() {
    let r = node_result(POLICY.name, &drifted("n"), None);
    assert_eq!(
        r.properties["observed"],
        "httpTokens=optional,httpPutResponseHopLimit=1"
    );
    assert_eq!(r.properties["desired"], "httpTokens=required,httpPutResponseHopLimit=2");
    let ok = node_result(POLICY.name, &plan("n", NodeState::Compliant, Reason::Compliant), None);
    assert!(!ok.properties.contains_key("observed"));
    let json = serde_json::to_value(&ok).expect("json");
    assert!(json["resources"][0].get("uid").is_none(), "no uid written when unknown");
}

#[test]
fn reports_carry_metadata_summary_and_owner() {
    let plans = vec![drifted("b"), plan("a", NodeState::Compliant, Reason::Compliant)];
    let reports = build_at(&plans, &[], 100);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!((r.api_version.as_str(), r.kind.as_str()), (API_VERSION, KIND));
    assert_eq!(r.metadata.name.as_deref(), Some("imp-require-imdsv2-0"));
    let labels = r.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels[POLICY_UID_LABEL], POLICY.uid);
    assert_eq!(labels[POLICY_LABEL], POLICY.name);
    assert_eq!(labels[MANAGED_BY_LABEL], SOURCE);
    let owner = &r.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.api_version.as_str(), owner.kind.as_str(), owner.uid.as_str()),
        ("imds-operator.io/v1alpha1", "InstanceMetadataPolicy", POLICY.uid)
    );
    let names: Vec<&str> = r.results.iter().map(node_of).collect();
    assert_eq!(names, vec!["a", "b"], "sorted by node");
    assert_eq!(
        r.summary,
        Summary {
            pass: 1,
            fail: 1,
            ..Default::default()
        }
    );
    assert_eq!(r.results[0].resources[0].uid.as_deref(), Some("uid-a"));
}

#[test]
fn a_policy_selecting_nothing_has_one_empty_report() {
    let reports = build_at(&[], &[], 100);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].results.is_empty());
    assert_eq!(reports[0].summary, Summary::default());
}

#[test]
fn timestamps_change_only_with_the_result() {
    let first = build_at(&[drifted("a"), drifted("b")], &[], 100);
    let again = build_at(&[drifted("a"), drifted("b")], &first, 200);
    assert_eq!(again, first, "nothing changed: the same reports, nothing to write");
    let fixed = build_at(
        &[plan("a", NodeState::Compliant, Reason::Compliant), drifted("b")],
        &again,
        300,
    );
    assert_eq!(fixed[0].results[0].timestamp.seconds, 300, "a changed");
    assert_eq!(fixed[0].results[1].timestamp.seconds, 100, "b did not");
}

#[test]
fn names_of_reports() {
    assert_eq!(report_name("p", 3), "imp-p-3");
    let long = "x".repeat(253);
    let other = format!("{}y", "x".repeat(252));
    let (a, b) = (report_name(&long, 12), report_name(&other, 12));
    assert!(a.len() <= 253 && b.len() <= 253, "{} {}", a.len(), b.len());
    assert_ne!(a, b, "long names stay apart");
    assert!(a.ends_with("-12"));
    let dotted = format!("{}.{}", "a".repeat(239), "b".repeat(20));
    let name = report_name(&dotted, 0);
    assert!(name.len() <= 253 && !name.contains(".-"), "{name}");
    let labels = labels(PolicyIdentity { name: &long, uid: "u" });
    assert!(
        !labels.contains_key(POLICY_LABEL),
        "a name longer than a label value is left out"
    );
}

/// 5,000 drifted nodes with instance IDs, uids and messages: the objects' size, printed.
#[test]
fn five_thousand_nodes_fit_in_bounded_shards() {
    let plans: Vec<NodePlan> = (0..5000)
        .map(|i| {
            let mut p = drifted(&format!(
                "ip-10-{}-{}-{}.eu-west-1.compute.internal",
                i / 65536,
                (i / 256) % 256,
                i % 256
            ));
            p.instance_id = Some(format!("i-{i:017x}"));
            p.message = Some("waiting for the rollout (maxInFlight 10) or the EC2 rate limit".into());
            p
        })
        .collect();
    let reports = build_at(&plans, &[], 1_700_000_000);
    let sizes: Vec<usize> = reports
        .iter()
        .map(|r| serde_json::to_vec(r).expect("json").len())
        .collect();
    println!(
        "policy reports at 5,000 nodes: {} shards of at most {MAX_RESULTS_PER_REPORT} results; bytes per shard {:?}; total {}",
        reports.len(),
        sizes,
        sizes.iter().sum::<usize>()
    );
    assert_eq!(reports.len(), 5);
    assert!(sizes.iter().all(|&s| s < 1024 * 1024), "{sizes:?}");
}

fn any_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Failed),
        Just(NodeState::Conflict),
        Just(NodeState::Blocked),
        Just(NodeState::Drifted),
        Just(NodeState::Pending),
        Just(NodeState::Skipped),
        Just(NodeState::Compliant),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every selected node appears exactly once across the shards, no shard is over the bound,
    /// and each summary counts its shard's results.
    #[test]
    fn every_node_once_and_summaries_count(
        states in proptest::collection::btree_map("[a-z0-9]{1,12}", any_state(), 0..2500),
        shard_size in prop_oneof![Just(MAX_RESULTS_PER_REPORT), 1usize..300, Just(usize::MAX)],
    ) {
        let plans: Vec<NodePlan> = states.iter().map(|(n, s)| plan(n, *s, Reason::Compliant)).collect();
        let reports = build_sharded(&plans, &[], 1, shard_size);
        let bound = shard_size.clamp(1, MAX_RESULTS_PER_REPORT);
        let mut seen: Vec<&str> = reports.iter().flat_map(|r| r.results.iter().map(node_of)).collect();
        let count = seen.len();
        seen.dedup();
        prop_assert_eq!(count, seen.len(), "a node twice");
        prop_assert_eq!(seen, states.keys().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(reports.len(), states.len().div_ceil(bound).max(1));
        let names: Vec<Option<String>> = reports.iter().map(|r| r.metadata.name.clone()).collect();
        let named: Vec<Option<String>> = super::report_names(POLICY.name, states.len(), shard_size).into_iter().map(Some).collect();
        prop_assert_eq!(names, named, "the status names the reports build makes");
        for (k, r) in reports.iter().enumerate() {
            prop_assert!(r.results.len() <= bound);
            prop_assert_eq!(r.summary, Summary::of(&r.results));
            prop_assert_eq!(r.metadata.name.clone(), Some(report_name(POLICY.name, k)));
            for x in &r.results {
                prop_assert_eq!(x.result, Verdict::of(states[node_of(x)]));
            }
        }
    }
}
