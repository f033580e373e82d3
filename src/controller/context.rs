//! What every reconcile shares: the clients, the reflector stores, the instance cache, the
//! per-policy memory, metrics and tunables.

use super::account_defaults::AccountDefaultsCache;
use super::cache::InstanceCache;
use super::karpenter::KarpenterCache;
use super::memo::PolicyMemo;
use super::node_store::NodeStore;
use super::policy_reports::PolicyReports;
use super::records::RecordStore;
use crate::aws::cloudwatch::UsageReader;
use crate::aws::ec2::Ec2;
use crate::telemetry::metrics::Metrics;
use imds_core::api::InstanceMetadataPolicy;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use std::sync::Arc;
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
    /// How often the region's account IMDS defaults are read (for every policy together).
    pub account_defaults_refresh: Duration,
    /// Policy reports written at most this often per policy; `None`: not written.
    pub policy_reports: Option<Duration>,
    /// Results per policy report object.
    pub policy_report_shard_size: usize,
}

/// The clients a reconcile talks through.
pub struct Clients {
    /// Kubernetes.
    pub kube: kube::Client,
    /// EC2.
    pub ec2: Ec2,
    /// CloudWatch, for the IMDSv1-usage guard.
    pub usage: UsageReader,
    /// Events (events.k8s.io).
    pub recorder: Recorder,
}

/// The reflector stores.
pub struct Stores {
    /// What is kept of each Node.
    pub nodes: NodeStore,
    /// Policies.
    pub policies: Store<InstanceMetadataPolicy>,
}

/// The shared context.
pub struct Context {
    /// Kubernetes, EC2, CloudWatch, Events.
    pub clients: Clients,
    /// Nodes and policies as the watches last saw them.
    pub stores: Stores,
    /// What is known of instances.
    pub cache: Mutex<InstanceCache>,
    /// The region's account IMDS defaults.
    pub account_defaults: AccountDefaultsCache,
    /// Karpenter's node classes and pools, when Karpenter is installed.
    pub karpenter: KarpenterCache,
    /// What the operator changed, persisted (originals, who, the last requests).
    pub records: RecordStore,
    /// What is remembered per policy.
    pub memo: PolicyMemo,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The plans handed to the policy-report writer.
    pub policy_reports: PolicyReports,
    /// Tunables.
    pub config: ControllerConfig,
}

impl Context {
    /// Builds the context.
    pub fn new(
        clients: Clients,
        stores: Stores,
        records: RecordStore,
        metrics: Arc<Metrics>,
        config: ControllerConfig,
    ) -> Context {
        Context {
            clients,
            stores,
            cache: Mutex::new(InstanceCache::default()),
            account_defaults: AccountDefaultsCache::new(config.account_defaults_refresh),
            karpenter: KarpenterCache::default(),
            records,
            memo: PolicyMemo::default(),
            metrics,
            policy_reports: PolicyReports::new(config.policy_reports).with_shard_size(config.policy_report_shard_size),
            config,
        }
    }

    /// Drops everything kept for a deleted policy.
    pub fn forget_policy(&self, policy: &str) {
        self.memo.forget_policy(policy);
        self.metrics.forget_policy(policy);
    }

    /// Every policy that exists, those being deleted included.
    pub fn live_policies(&self) -> std::collections::HashSet<String> {
        use kube::ResourceExt;
        self.stores.policies.state().iter().map(|p| p.name_any()).collect()
    }
}
