//! Realistic EKS Nodes created in bulk on the local control plane (the real binaries, see
//! `imds_test_support::control_plane::bin_dir`): every one exists, Ready, with its providerID,
//! and weighs about 13 KB as the API server serves it.

use std::time::Duration;

use anyhow::{Result, ensure};
use imds_test_support::ControlPlane;
use imds_test_support::nodes::{EksFleet, create_nodes};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_created_nodes_are_ready_eks_workers() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let fleet = EksFleet::new("bulk");
    let created = create_nodes(&client, (0..300).map(|i| fleet.node(i)).collect(), 16).await?;
    eprintln!(
        "created {} nodes in {:?} ({} status writes)",
        created.nodes, created.took, created.status_patched
    );
    ensure!(created.nodes == 300);
    ensure!(created.took < Duration::from_secs(120), "took {:?}", created.took);

    let list = Api::<Node>::all(client).list(&ListParams::default()).await?;
    ensure!(list.items.len() == 300, "{} nodes listed", list.items.len());
    let bytes = serde_json::to_vec(&list.items)?.len() / list.items.len();
    eprintln!("{bytes} bytes of JSON per node as served");
    ensure!((11_000..=20_000).contains(&bytes), "{bytes} bytes per node");
    for node in &list.items {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        ensure!(ready == Some("True"), "{:?} is not Ready", node.metadata.name);
        let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        ensure!(provider_id.is_some_and(|p| p.starts_with("aws:///us-east-1")));
    }
    Ok(())
}
