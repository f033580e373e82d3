//! Prints how long planning takes for clusters of growing size, and the ratio between sizes
//! measured in the same run (absolute times on shared machines are noise; the ratio shows
//! whether the work grows linearly). Run: `cargo bench --bench plan`.

use imds_core::api::{HttpTokens, MetadataOptions, PolicyMode, Toggle};
use imds_core::labels::Labels;
use imds_core::observation::{NodeInput, Observation};
use imds_core::options::{ApplyState, ObservedOptions};
use imds_core::plan::{self, PlanInput};
use imds_core::selection::PolicyInput;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

fn policies(n: usize) -> Vec<PolicyInput> {
    (0..n)
        .map(|i| {
            let policy: imds_core::api::InstanceMetadataPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "imds-operator.io/v1alpha1",
                "kind": "InstanceMetadataPolicy",
                "metadata": {"name": format!("p{i}")},
                "spec": {
                    "nodeSelector": if i == 0 { serde_json::json!({}) } else { serde_json::json!({"matchLabels": {"pool": format!("pool-{}", i % 10)}}) },
                    "metadataOptions": if i == 0 { serde_json::json!({"httpTokens": "required"}) } else { serde_json::json!({"httpPutResponseHopLimit": 2}) },
                    "priority": i,
                    "guards": {"imdsv1Usage": {"mode": "Off"}}
                }
            }))
            .expect("valid policy");
            PolicyInput::from_policy(&policy).expect("valid selector")
        })
        .collect()
}

fn cluster(nodes: usize) -> (Vec<NodeInput>, HashMap<String, Observation>) {
    let mut list = Vec::with_capacity(nodes);
    let mut obs = HashMap::with_capacity(nodes);
    for i in 0..nodes {
        let id = format!("i-{i:017x}");
        list.push(NodeInput {
            name: format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250),
            labels: Labels::from(&BTreeMap::from([
                ("pool".to_string(), format!("pool-{}", i % 10)),
                ("topology.kubernetes.io/zone".to_string(), "us-east-1a".to_string()),
            ])),
            provider_id: Some(format!("aws:///us-east-1a/{id}")),
        });
        let tokens = if i % 3 == 0 {
            HttpTokens::Optional
        } else {
            HttpTokens::Required
        };
        obs.insert(
            id,
            Observation::Found(ObservedOptions {
                values: MetadataOptions {
                    http_tokens: Some(tokens),
                    http_put_response_hop_limit: Some(1),
                    http_endpoint: Some(Toggle::Enabled),
                    http_protocol_ipv6: Some(Toggle::Disabled),
                    instance_metadata_tags: Some(Toggle::Disabled),
                },
                state: ApplyState::Applied,
            }),
        );
    }
    (list, obs)
}

fn time_plan(nodes: usize, policies: &[PolicyInput], rounds: u32) -> Duration {
    let (list, obs) = cluster(nodes);
    let refusals = HashMap::new();
    let facts = imds_core::plan::guards::NoGuardFacts;
    let start = Instant::now();
    let mut planned = 0;
    for _ in 0..rounds {
        for p in policies {
            let input = PlanInput {
                policy: p,
                policies,
                observations: &obs,
                refusals: &refusals,
                guard_facts: &facts,
            };
            planned += plan::plan(&input, &list).len();
        }
    }
    assert!(planned > 0 || policies.is_empty());
    start.elapsed() / rounds
}

fn main() {
    let ps = policies(11);
    let _ = PolicyMode::Enforce;
    println!("planning every policy (11 policies, per-option priorities), mean of several rounds:");
    let small = time_plan(500, &ps, 10);
    let large = time_plan(5000, &ps, 3);
    println!("  500 nodes:  {:>8.2} ms for all policies", small.as_secs_f64() * 1e3);
    println!("  5000 nodes: {:>8.2} ms for all policies", large.as_secs_f64() * 1e3);
    println!(
        "  ratio 5000/500 = {:.1} (linear would be 10.0)",
        large.as_secs_f64() / small.as_secs_f64().max(1e-9)
    );
}
