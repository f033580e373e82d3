//! State shared by every reconcile: clients, stores, the instance cache, metrics, backoff.

use crate::api::InstanceMetadataPolicy;
use crate::cache::InstanceCache;
use crate::ec2::Ec2;
use crate::imdsv1_usage::UsageReader;
use crate::metrics::Metrics;
use crate::plan::FailureKind;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::Mutex;

/// Tunables of the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// How often every policy is re-checked against EC2 even when nothing changed in the cluster.
    pub resync_period: Duration,
    /// Policies reconciled at once.
    pub concurrency: u16,
    /// At most this many modify requests per reconcile; the rest follow in the next one.
    pub max_modifies_per_reconcile: usize,
}

/// The clients a context talks through.
pub struct Clients {
    /// Kubernetes.
    pub client: kube::Client,
    /// EC2.
    pub ec2: Ec2,
    /// CloudWatch.
    pub imdsv1: UsageReader,
    /// Events.
    pub recorder: Recorder,
}

/// The reflector stores.
pub struct Stores {
    /// Stripped Nodes.
    pub nodes: Store<Node>,
    /// Policies.
    pub policies: Store<InstanceMetadataPolicy>,
}

/// The shared context.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The EC2 adaptor.
    pub ec2: Ec2,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events (events.k8s.io).
    pub recorder: Recorder,
    /// Stripped Nodes.
    pub node_store: Store<Node>,
    /// Policies.
    pub policy_store: Store<InstanceMetadataPolicy>,
    /// Instances.
    pub cache: Mutex<InstanceCache>,
    /// Tunables.
    pub config: ControllerConfig,
    /// CloudWatch, for the IMDSv1-usage guard.
    pub imdsv1: UsageReader,
    preflight: SyncMutex<HashSet<(String, i64)>>,
    membership: SyncMutex<HashMap<String, BTreeSet<String>>>,
    backoff: SyncMutex<HashMap<(String, FailureKind), u32>>,
}

impl Context {
    /// Builds the context.
    pub fn new(clients: Clients, stores: Stores, metrics: Arc<Metrics>, config: ControllerConfig) -> Context {
        let Clients {
            client,
            ec2,
            imdsv1,
            recorder,
        } = clients;
        let Stores {
            nodes: node_store,
            policies: policy_store,
        } = stores;
        Context {
            client,
            ec2,
            metrics,
            recorder,
            node_store,
            policy_store,
            cache: Mutex::new(InstanceCache::default()),
            config,
            imdsv1,
            preflight: SyncMutex::default(),
            membership: SyncMutex::default(),
            backoff: SyncMutex::default(),
        }
    }

    /// Remembers which nodes a policy selected in its last reconcile, so that a node whose
    /// labels move it away from the policy still triggers that policy.
    pub fn record_membership(&self, policy: &str, nodes: BTreeSet<String>) {
        if let Ok(mut m) = self.membership.lock() {
            m.insert(policy.to_string(), nodes);
        }
    }

    /// The policies whose last reconcile selected `node`.
    pub fn policies_that_selected(&self, node: &str) -> Vec<String> {
        self.membership
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, nodes)| nodes.contains(node))
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the DryRun preflight passed for this policy generation.
    pub fn preflight_passed(&self, key: &(String, i64)) -> bool {
        self.preflight.lock().map(|p| p.contains(key)).unwrap_or(false)
    }

    /// Records a passed preflight.
    pub fn set_preflight_passed(&self, key: (String, i64)) {
        if let Ok(mut p) = self.preflight.lock() {
            p.insert(key);
        }
    }

    /// Drops everything kept for a deleted policy.
    pub fn forget_policy(&self, policy: &str) {
        if let Ok(mut p) = self.preflight.lock() {
            p.retain(|(name, _)| name != policy);
        }
        if let Ok(mut m) = self.membership.lock() {
            m.remove(policy);
        }
        if let Ok(mut b) = self.backoff.lock() {
            b.retain(|(p, _), _| p != policy);
        }
        self.metrics.forget_policy(policy);
    }

    /// The next delay for a policy failing with `kind`: `base` doubled per consecutive
    /// failure, capped at 10 minutes.
    pub fn backoff(&self, policy: &str, kind: FailureKind, base: Duration) -> Duration {
        let attempts = self
            .backoff
            .lock()
            .map(|mut b| {
                let n = b.entry((policy.to_string(), kind)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff_delay(base, attempts)
    }

    /// Resets the counters of kinds that no longer fail.
    pub fn reset_backoff(&self, policy: &str, still_failing: &HashSet<FailureKind>) {
        if let Ok(mut b) = self.backoff.lock() {
            b.retain(|(p, k), _| p != policy || still_failing.contains(k));
        }
    }
}

/// `base × 2^(attempts-1)`, capped at 10 minutes.
pub fn backoff_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::backoff_delay;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(10);
        let got: Vec<u64> = (1..=8).map(|n| backoff_delay(base, n).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff_delay(base, u32::MAX), Duration::from_secs(600));
    }
}
