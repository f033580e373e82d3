//! Bad input is rejected by the API server with a message that says what to fix, and nothing
//! is created (so nothing can be modified).

use anyhow::Result;
use imds_test_support::e2e::Cluster;

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: imds-operator.io/v1alpha1\nkind: InstanceMetadataPolicy\nmetadata:\n  name: bad\nspec:\n{spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_with_a_useful_message() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no options at all",
            policy("  nodeSelector: {}\n  metadataOptions: {}\n"),
            "set at least one of httpTokens",
        ),
        (
            "metadataOptions missing",
            policy("  nodeSelector: {}\n"),
            "spec.metadataOptions: Required value",
        ),
        (
            "nodeSelector missing",
            policy("  metadataOptions: {httpTokens: required}\n"),
            "spec.nodeSelector: Required value",
        ),
        (
            "unknown httpTokens",
            policy("  nodeSelector: {}\n  metadataOptions: {httpTokens: always}\n"),
            "spec.metadataOptions.httpTokens: Unsupported value: \"always\"",
        ),
        (
            "hop limit 0",
            policy("  nodeSelector: {}\n  metadataOptions: {httpPutResponseHopLimit: 0}\n"),
            "should be greater than or equal to 1",
        ),
        (
            "hop limit 65",
            policy("  nodeSelector: {}\n  metadataOptions: {httpPutResponseHopLimit: 65}\n"),
            "should be less than or equal to 64",
        ),
        (
            "hop limit not a number",
            policy("  nodeSelector: {}\n  metadataOptions: {httpPutResponseHopLimit: two}\n"),
            "httpPutResponseHopLimit",
        ),
        (
            "tags on while the endpoint is off",
            policy("  nodeSelector: {}\n  metadataOptions: {httpEndpoint: disabled, instanceMetadataTags: enabled}\n"),
            "cannot be enabled while httpEndpoint is disabled",
        ),
        (
            "unknown mode",
            policy("  mode: Enforcing\n  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n"),
            "spec.mode: Unsupported value: \"Enforcing\"",
        ),
        (
            "bad selector operator",
            policy(
                "  nodeSelector:\n    matchExpressions: [{key: pool, operator: Equals, values: [a]}]\n  metadataOptions: {httpTokens: required}\n",
            ),
            "operator must be In, NotIn, Exists or DoesNotExist",
        ),
        (
            "In without values",
            policy(
                "  nodeSelector:\n    matchExpressions: [{key: pool, operator: In}]\n  metadataOptions: {httpTokens: required}\n",
            ),
            "In and NotIn need at least one value",
        ),
        (
            "endpoint disabled without acknowledgement",
            policy("  nodeSelector: {}\n  metadataOptions: {httpEndpoint: disabled}\n"),
            "set spec.guards.allowEndpointDisabled: true to confirm",
        ),
        (
            "maxInFlight 0%",
            policy("  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n  rollout: {maxInFlight: \"0%\"}\n"),
            "rollout.maxInFlight must be a positive count or a percentage",
        ),
        (
            "maxInFlight 0",
            policy("  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n  rollout: {maxInFlight: 0}\n"),
            "rollout.maxInFlight must be a positive count or a percentage",
        ),
        (
            "lookback too short",
            policy(
                "  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n  guards: {imdsv1Usage: {lookback: 5m}}\n",
            ),
            "lookback must be between 1h and 336h",
        ),
        (
            "unknown onDelete",
            policy("  nodeSelector: {}\n  metadataOptions: {httpTokens: required}\n  onDelete: Delete\n"),
            "spec.onDelete: Unsupported value: \"Delete\"",
        ),
        (
            "misspelled option",
            policy("  nodeSelector: {}\n  metadataOptions: {httpToken: required}\n"),
            "unknown field \"spec.metadataOptions.httpToken\"",
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, want) in &cases {
        let out = cluster.kubectl_apply(yaml)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{name}: accepted"));
        } else if !stderr.contains(want) {
            failures.push(format!("{name}: message {stderr:?} lacks {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let left = cluster.kubectl(&["get", "imp", "-o", "name"])?;
    assert!(left.trim().is_empty(), "nothing may be created: {left}");

    // Disabling the endpoint with the acknowledgement is accepted.
    let acknowledged = policy(
        "  nodeSelector: {matchLabels: {role: isolated}}\n  metadataOptions: {httpEndpoint: disabled}\n  guards: {allowEndpointDisabled: true}\n",
    );
    let out = cluster.kubectl_apply(&acknowledged)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.kubectl(&["delete", "imp", "bad"])?;

    // The examples in the repository are valid.
    for entry in std::fs::read_dir(imds_test_support::repo_root().join("examples/policies"))? {
        let path = entry?.path();
        let yaml = std::fs::read_to_string(&path)?;
        let out = cluster.kubectl_apply(&yaml)?;
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
