//! Karpenter's `EC2NodeClass`es (`karpenter.k8s.aws/v1`) and `NodePool`s (`karpenter.sh/v1`),
//! read only (list; the chart's ClusterRole grants get/list/watch and nothing else), at most
//! every [`REFRESH`] for all policies together, and compared by
//! [`imds_core::karpenter::mismatches`]. Without the EC2NodeClass CRD nothing is compared: one
//! log line, and another look every [`ABSENT_RECHECK`].

use imds_core::karpenter::{NodeClass, NodePool};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a read serves every policy.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long the operator waits before looking for the CRD again once it found none.
pub const ABSENT_RECHECK: Duration = Duration::from_secs(300);

/// The node classes and pools in the cluster.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Every `EC2NodeClass`.
    pub classes: Vec<NodeClass>,
    /// Every `NodePool` that names a node class.
    pub pools: Vec<NodePool>,
}

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

/// Lists them; `Ok(None)` when the EC2NodeClass CRD is not installed (a missing NodePool CRD
/// leaves the pools empty).
pub async fn read(client: &kube::Client) -> Result<Option<Inventory>, kube::Error> {
    let classes: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource("karpenter.k8s.aws", "EC2NodeClass", "ec2nodeclasses"),
    );
    let classes = match classes.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e),
    };
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &resource("karpenter.sh", "NodePool", "nodepools"));
    let pools = match pools.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    let spec = |o: &DynamicObject| o.data.get("spec").cloned().unwrap_or_default();
    Ok(Some(Inventory {
        classes: classes
            .iter()
            .map(|o| NodeClass::from_spec(&o.name_any(), &spec(o)))
            .collect(),
        pools: pools
            .iter()
            .filter_map(|o| NodePool::from_spec(&o.name_any(), &spec(o)))
            .collect(),
    }))
}

/// The last read, shared by every reconcile.
#[derive(Default)]
pub struct KarpenterCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    read_at: Option<Instant>,
    /// `None`: no CRD (or never read).
    inventory: Option<Arc<Inventory>>,
    /// The last read found no CRD.
    absent: bool,
}

impl KarpenterCache {
    /// The node classes and pools, read again when the last read is older than [`REFRESH`]
    /// ([`ABSENT_RECHECK`] while the CRD is absent); `None` without the CRD. A failed read keeps
    /// the last one (a warning in the log).
    pub async fn get(&self, client: &kube::Client) -> Option<Arc<Inventory>> {
        let mut state = self.state.lock().await;
        let max_age = if state.absent { ABSENT_RECHECK } else { REFRESH };
        if state.read_at.is_some_and(|at| at.elapsed() < max_age) {
            return state.inventory.clone();
        }
        match read(client).await {
            Ok(Some(inventory)) => {
                state.inventory = Some(Arc::new(inventory));
                state.absent = false;
            }
            Ok(None) => {
                if !state.absent {
                    tracing::info!("no Karpenter EC2NodeClass CRD: node classes are not compared with policies");
                }
                state.absent = true;
                state.inventory = None;
            }
            Err(error) => tracing::warn!(%error, "cannot read Karpenter EC2NodeClasses; keeping the last read"),
        }
        state.read_at = Some(Instant::now());
        state.inventory.clone()
    }
}
