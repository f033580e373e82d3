use super::*;
use crate::api::PolicyMode;
use crate::fixtures::{hop, policy, tokens};
use serde_json::json;

fn class(name: &str, spec: serde_json::Value) -> NodeClass {
    NodeClass::from_spec(name, &spec)
}

fn pool(name: &str, class: &str, labels: &[(&str, &str)]) -> NodePool {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    NodePool::from_spec(
        name,
        &json!({"template": {"metadata": {"labels": labels}, "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": class}}}}),
    )
    .expect("names a node class")
}

/// Karpenter's defaults fill what a node class leaves unset; values EC2 would not know are not
/// compared.
#[test]
fn launch_options_with_karpenter_defaults() {
    let defaults = MetadataOptions {
        http_tokens: Some(HttpTokens::Required),
        http_put_response_hop_limit: Some(1),
        http_endpoint: Some(Toggle::Enabled),
        http_protocol_ipv6: Some(Toggle::Disabled),
        instance_metadata_tags: Some(Toggle::Disabled),
    };
    let cases = [
        ("omitted", json!({}), defaults.clone()),
        ("empty", json!({"metadataOptions": {}}), defaults.clone()),
        (
            "IMDSv1, hop 2",
            json!({"metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 2}}),
            MetadataOptions {
                http_tokens: Some(HttpTokens::Optional),
                http_put_response_hop_limit: Some(2),
                ..defaults.clone()
            },
        ),
        (
            "IPv6 on, endpoint off",
            json!({"metadataOptions": {"httpProtocolIPv6": "enabled", "httpEndpoint": "disabled"}}),
            MetadataOptions {
                http_protocol_ipv6: Some(Toggle::Enabled),
                http_endpoint: Some(Toggle::Disabled),
                ..defaults.clone()
            },
        ),
        (
            "unknown values",
            json!({"metadataOptions": {"httpTokens": "bogus", "httpPutResponseHopLimit": 99}}),
            MetadataOptions {
                http_tokens: None,
                http_put_response_hop_limit: None,
                ..defaults.clone()
            },
        ),
        ("not an object", json!({"metadataOptions": "x"}), defaults.clone()),
    ];
    for (name, spec, want) in cases {
        assert_eq!(class("c", spec).launch_options(), want, "{name}");
    }
}

#[test]
fn node_pools_name_their_class_and_labels() {
    assert_eq!(NodePool::from_spec("p", &json!({"template": {"spec": {}}})), None);
    let p = pool("general", "default", &[("team", "a")]);
    assert_eq!(
        (p.node_class.as_str(), p.labels.get("team").map(String::as_str)),
        ("default", Some("a"))
    );
    let sets = node_labels(&class("default", json!({})), &[p, pool("other", "gpu", &[])]);
    assert_eq!(sets.len(), 1);
    let (name, labels) = &sets[0];
    assert_eq!(name.as_deref(), Some("general"));
    assert_eq!(labels.get(NODE_CLASS_LABEL), Some("default"));
    assert_eq!(labels.get(NODE_POOL_LABEL), Some("general"));
    assert_eq!(labels.get("team"), Some("a"));
    let alone = node_labels(&class("unused", json!({})), &[]);
    assert_eq!(alone[0].0, None);
    assert_eq!(alone[0].1.get(NODE_CLASS_LABEL), Some("unused"));
}

/// Which classes a policy reports: those whose nodes it selects (by the NodePool's labels or
/// Karpenter's) and that launch them with other options than it sets.
#[test]
fn mismatches_by_selection() {
    let v1 = class("legacy", json!({"metadataOptions": {"httpTokens": "optional"}}));
    let fine = class("default", json!({}));
    let hop2 = class("hop2", json!({"metadataOptions": {"httpPutResponseHopLimit": 2}}));
    let pools = [
        pool("old", "legacy", &[("team", "a")]),
        pool("general", "default", &[("team", "a")]),
        pool("web", "hop2", &[("team", "b")]),
    ];
    let classes = [v1, fine, hop2];
    let require = policy("v2", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
    let mut team_b_hop1 = policy("hop1", 0, PolicyMode::Audit, hop(1));
    team_b_hop1.selector = [("team", "b")].into_iter().collect();
    let mut by_pool = policy("by-pool", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
    by_pool.selector = [(NODE_POOL_LABEL, "general")].into_iter().collect();
    let cases = [
        (
            &require,
            vec![("legacy", vec!["old"], vec!["httpTokens: optional → required"])],
        ),
        (
            &team_b_hop1,
            vec![("hop2", vec!["web"], vec!["httpPutResponseHopLimit: 2 → 1"])],
        ),
        (&by_pool, vec![]),
    ];
    for (p, want) in cases {
        let reports = mismatches(p, &classes, &pools);
        let got: Vec<(&str, Vec<&str>, Vec<&str>)> = reports
            .iter()
            .map(|r| {
                (
                    r.node_class.as_str(),
                    r.node_pools.iter().map(String::as_str).collect(),
                    r.mismatches.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(got, want, "{}", p.name);
    }
}

#[test]
fn reports_are_bounded() {
    let classes: Vec<NodeClass> = (0..15)
        .map(|i| {
            class(
                &format!("c{i:02}"),
                json!({"metadataOptions": {"httpTokens": "optional"}}),
            )
        })
        .collect();
    let require = policy("v2", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
    let reports = mismatches(&require, &classes, &[]);
    assert_eq!(reports.len(), MAX_REPORTED);
    assert_eq!(reports[0].node_class, "c00");
    assert!(
        reports[0].node_pools.is_empty(),
        "no NodePool: the node-class label alone"
    );
}
