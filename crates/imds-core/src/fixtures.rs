//! Builders for tests of code that reads policies (this crate's and, through the `fixtures`
//! feature, the operator's).

use crate::api::{GuardMode, Guards, HttpTokens, Imdsv1UsageGuard, MetadataOptions, PolicyMode};
use crate::selection::PolicyInput;
use k8s_openapi::api::core::v1::Node;

/// A policy selecting every node, with the IMDSv1-usage guard off.
pub fn policy(name: &str, priority: i32, mode: PolicyMode, options: MetadataOptions) -> PolicyInput {
    PolicyInput {
        name: name.into(),
        priority,
        mode,
        options,
        selector: Default::default(),
        guards: Guards {
            imdsv1_usage: Imdsv1UsageGuard {
                mode: GuardMode::Off,
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// Options that set only `httpTokens`.
pub fn tokens(t: HttpTokens) -> MetadataOptions {
    MetadataOptions {
        http_tokens: Some(t),
        ..Default::default()
    }
}

/// Options that set only the hop limit.
pub fn hop(h: i32) -> MetadataOptions {
    MetadataOptions {
        http_put_response_hop_limit: Some(h),
        ..Default::default()
    }
}

/// A Node as the API server sends it: labels, annotations, managedFields, conditions, images.
pub fn big_node() -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "ip-10-0-1-2.ec2.internal",
            "labels": {"karpenter.sh/nodepool": "general"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {"providerID": "aws:///us-east-1a/i-0123456789abcdef0", "podCIDR": "10.0.0.0/24"},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z", "message": "kubelet is posting ready status"}
            ],
            "images": [{"names": ["registry/image:tag"], "sizeBytes": 12345}]
        }
    }))
    .expect("valid node")
}
