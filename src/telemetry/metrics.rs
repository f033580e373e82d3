//! Prometheus metrics, named after controller-runtime's and the AWS Load Balancer Controller's,
//! under an `imds_operator_` prefix. No per-node or per-instance labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsCallLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaunchSourceLabels {
    policy: String,
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyStateLabels {
    policy: String,
    state: String,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<CategoryLabels, Counter>,
    reconcile_time: Histogram,
    aws_calls: Family<AwsCallLabels, Counter>,
    aws_throttled: Family<OperationLabels, Counter>,
    aws_permission_errors: Family<OperationLabels, Counter>,
    aws_retries: Family<OperationLabels, Counter>,
    modifications: Counter,
    policy_nodes: Family<PolicyStateLabels, Gauge>,
    leader: Gauge,
    client_rate: Family<OperationLabels, Gauge<f64, AtomicU64>>,
    held: Counter,
    launch_source_changes: Family<LaunchSourceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The client rate limit and the held triggers (how the operator behaves under faults).
fn register_source_metrics(registry: &mut Registry) -> Family<LaunchSourceLabels, Counter> {
    let changes = Family::<LaunchSourceLabels, Counter>::default();
    registry.register(
        "launch_source_changes",
        "New instances (launched less than an hour before) a policy had to change, by the launch source their tags name (EC2NodeClass, NodeGroup, LaunchTemplate, AutoScalingGroup): fix the source to stop the churn",
        changes.clone(),
    );
    changes
}

fn register_fault_metrics(registry: &mut Registry) -> (Family<OperationLabels, Gauge<f64, AtomicU64>>, Counter) {
    let client_rate = Family::<OperationLabels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "aws_client_rate_limit",
        "The client-side rate limit of an AWS operation, calls per second (cut while AWS throttles, recovers on success)",
        client_rate.clone(),
    );
    let held = Counter::default();
    registry.register(
        "reconciles_held",
        "Triggers (node events, requeues) of a policy whose last reconcile failed as a whole, held until its backoff ends",
        held.clone(),
    );
    (client_rate, held)
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imds_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile",
            "Reconciles of policies by result (success, error, requeue)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by category (kube_api, invalid_policy, cache_not_ready, restore_incomplete)",
            reconcile_errors.clone(),
        );
        let reconcile_time = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_time_seconds",
            "Time a reconcile of one policy takes",
            reconcile_time.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_api_calls",
            "EC2/CloudWatch API calls by operation and outcome (ok or the AWS error code)",
            aws_calls.clone(),
        );
        let aws_throttled = Family::<OperationLabels, Counter>::default();
        registry.register(
            "aws_api_throttled",
            "AWS calls answered with RequestLimitExceeded/Throttling",
            aws_throttled.clone(),
        );
        let aws_permission_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "aws_api_permission_errors",
            "AWS calls denied (UnauthorizedOperation)",
            aws_permission_errors.clone(),
        );
        let aws_retries = Family::<OperationLabels, Counter>::default();
        registry.register(
            "aws_api_retries",
            "Attempts the AWS SDK retried (each one after the first attempt of a call)",
            aws_retries.clone(),
        );
        let modifications = Counter::default();
        registry.register(
            "instance_modifications",
            "ModifyInstanceMetadataOptions requests EC2 accepted",
            modifications.clone(),
        );
        let policy_nodes = Family::<PolicyStateLabels, Gauge>::default();
        registry.register(
            "policy_nodes",
            "Nodes selected by a policy, by state (matched, compliant, drifted, pending, skipped, failed, conflicted)",
            policy_nodes.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let (client_rate, held) = register_fault_metrics(&mut registry);
        let launch_source_changes = register_source_metrics(&mut registry);
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_time,
            aws_calls,
            aws_throttled,
            aws_permission_errors,
            aws_retries,
            modifications,
            policy_nodes,
            leader,
            client_rate,
            held,
            launch_source_changes,
        }
    }

    /// The current client-side rate limit of `operation`.
    pub fn aws_client_rate(&self, operation: &str, per_second: f64) {
        self.client_rate
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .set(per_second);
    }

    /// A trigger that found its policy in backoff.
    pub fn reconcile_held(&self) {
        self.held.inc();
    }

    /// A finished reconcile: `error` is the category of the error it ended in, if any.
    pub fn reconciled(&self, error: Option<&str>, took: Duration) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
        if let Some(category) = error {
            self.reconcile_errors
                .get_or_create(&CategoryLabels {
                    category: category.into(),
                })
                .inc();
        }
        self.reconcile_time.observe(took.as_secs_f64());
    }

    /// An AWS call and its outcome (`ok` or the error code).
    pub fn aws_call(&self, operation: &str, outcome: &str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                operation: operation.into(),
                outcome: outcome.into(),
            })
            .inc();
        let labels = OperationLabels {
            operation: operation.into(),
        };
        if matches!(
            outcome,
            "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException"
        ) {
            self.aws_permission_errors.get_or_create(&labels).inc();
        }
    }

    /// An attempt AWS throttled (counted per attempt, also when the SDK's retry absorbed it).
    pub fn aws_throttled(&self, operation: &str) {
        self.aws_throttled
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .inc();
    }

    /// An attempt the SDK retried.
    pub fn aws_retry(&self, operation: &str) {
        self.aws_retries
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .inc();
    }

    /// A modify request EC2 accepted.
    pub fn modified(&self) {
        self.modifications.inc();
    }

    /// A new instance of launch source `kind`/`name` that `policy` had to change (the labels
    /// are bounded by the account's launch templates, node groups and node classes, not nodes).
    pub fn launch_source_change(&self, policy: &str, kind: &str, name: &str) {
        self.launch_source_changes
            .get_or_create(&LaunchSourceLabels {
                policy: policy.into(),
                kind: kind.into(),
                name: name.into(),
            })
            .inc();
    }

    /// The per-policy gauges.
    pub fn policy_counts(&self, policy: &str, counts: &[(&str, i32)]) {
        for (state, n) in counts {
            self.policy_nodes
                .get_or_create(&PolicyStateLabels {
                    policy: policy.into(),
                    state: (*state).into(),
                })
                .set(i64::from(*n));
        }
    }

    /// Forget a deleted policy's gauges.
    pub fn forget_policy(&self, policy: &str) {
        for state in [
            "matched",
            "compliant",
            "drifted",
            "pending",
            "skipped",
            "failed",
            "conflicted",
            "blocked",
        ] {
            self.policy_nodes.remove(&PolicyStateLabels {
                policy: policy.into(),
                state: state.into(),
            });
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_controller_runtime() {
        let m = Metrics::new();
        m.reconciled(None, Duration::from_millis(20));
        m.reconciled(Some("kube_api"), Duration::from_millis(20));
        m.aws_call("DescribeInstances", "ok");
        m.aws_call("ModifyInstanceMetadataOptions", "RequestLimitExceeded");
        m.aws_throttled("ModifyInstanceMetadataOptions");
        m.aws_retry("ModifyInstanceMetadataOptions");
        m.policy_counts("require-v2", &[("matched", 3), ("compliant", 2)]);
        m.aws_client_rate("ModifyInstanceMetadataOptions", 1.5);
        m.reconcile_held();
        let text = m.encode();
        for want in [
            "imds_operator_reconcile_total{result=\"success\"} 1",
            "imds_operator_reconcile_total{result=\"error\"} 1",
            "imds_operator_reconcile_errors_total{category=\"kube_api\"} 1",
            "imds_operator_reconcile_time_seconds_bucket",
            "imds_operator_aws_api_calls_total{operation=\"DescribeInstances\",outcome=\"ok\"} 1",
            "imds_operator_aws_api_throttled_total{operation=\"ModifyInstanceMetadataOptions\"} 1",
            "imds_operator_aws_api_retries_total{operation=\"ModifyInstanceMetadataOptions\"} 1",
            "imds_operator_policy_nodes{policy=\"require-v2\",state=\"compliant\"} 2",
            "imds_operator_aws_client_rate_limit{operation=\"ModifyInstanceMetadataOptions\"} 1.5",
            "imds_operator_reconciles_held_total 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        m.forget_policy("require-v2");
        assert!(!m.encode().contains("require-v2"));
    }
}
