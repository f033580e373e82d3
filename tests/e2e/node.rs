//! A real node (issue 12, rung 5; `make test-node`, not part of `make test`): two kubelets with
//! containerd (each node in a network namespace of the test's, see `imds_test_support::node`),
//! kube-controller-manager and kube-scheduler beside the local control plane. `helm install` of
//! the chart with `hostNetwork=true` runs the Deployment for real: two replicas scheduled on the
//! two nodes, started by runc from the operator's OCI image, probes passing, one leader, the PDB
//! allowing one disruption; a policy converges the nodes' instances in moto (their providerIDs);
//! the leader's pod deleted → the other replica takes the Lease and converges a change.
//!
//! Runs only with `IMDS_E2E_NODE=1` (and as root, with `IMDS_OPERATOR_IMAGE_DIR`); otherwise it
//! returns at once, saying so.

use anyhow::{Context, Result, ensure};
use imds_test_support::e2e::{Cluster, condition, eventually, provider_id, wait_imds};
use imds_test_support::node::{Controllers, Node, NodeSpec, layout_archive, node_binaries, pause_archive};
use imds_test_support::oci::ImageLayout;
use imds_test_support::process::run_checked;
use imds_test_support::{ControlPlane, Moto, repo_root};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams};
use std::net::Ipv4Addr;
use std::time::Duration;

const NAMESPACE: &str = "imds-system";
const IMAGE: &str = "localhost/imds-e2e/imds-operator";
const LEASE: &str = "imds-operator";
/// Scheduling, image unpacking and the first probes on two busy cores.
const PODS_READY: Duration = Duration::from_secs(180);
const HANDOVER: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(90);

struct Env {
    // Fields drop in order: the nodes first, the control plane last.
    nodes: Vec<Node>,
    controllers: Controllers,
    moto: Moto,
    instances: Vec<String>,
    cluster: Cluster,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_runs_on_real_kubelets_with_leader_failover() -> Result<()> {
    if std::env::var("IMDS_E2E_NODE").as_deref() != Ok("1") {
        eprintln!("skipped: a real node needs IMDS_E2E_NODE=1 (make test-node)");
        return Ok(());
    }
    ensure!(unsafe { libc::geteuid() } == 0, "kubelet and containerd need root");
    let layout = ImageLayout::from_env()?;
    node_binaries()?;
    let work = tempfile::tempdir()?;
    let env = start(&layout, work.path()).await?;
    let result = scenario(&env, &layout).await;
    if result.is_err() {
        eprintln!("{}", diagnostics(&env));
    }
    drop(env);
    result
}

async fn start(layout: &ImageLayout, work: &std::path::Path) -> Result<Env> {
    let cp = ControlPlane::start_for_nodes().await?;
    let client = cp.client().await?;
    let moto = Moto::start()?;
    let instances = moto.run_instances(2, &[]).await?;
    let moto_port: u16 = moto
        .endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("moto's endpoint has no port")?;
    let images = vec![
        pause_archive(work)?,
        layout_archive(layout, work, &format!("{IMAGE}:{}", layout.tag))?,
    ];
    let controllers = Controllers::start(&cp, cp.dir()).await?;
    let mut nodes = Vec::new();
    for (i, id) in instances.iter().enumerate() {
        let spec = NodeSpec {
            name: format!("node-{}", ["a", "b"][i]),
            ip: Ipv4Addr::new(192, 0, 2, 11 + i as u8),
            provider_id: Some(provider_id(id)),
            forward_ports: vec![moto_port],
            images: images.clone(),
        };
        nodes.push(Node::start(&cp, spec).await?);
    }
    Ok(Env {
        nodes,
        controllers,
        moto,
        instances,
        cluster: Cluster { cp, client },
    })
}

/// `helm install` of the chart from this checkout: host network, the imported image (never
/// pulled), the API server at its loopback address (no kube-proxy: the Service IP leads
/// nowhere), moto as the EC2 endpoint, short leases.
fn helm_install(env: &Env, layout: &ImageLayout) -> Result<()> {
    let api = env.cluster.cp.apiserver_addr();
    let mut extra_env = vec![
        serde_json::json!({"name": "KUBERNETES_SERVICE_HOST", "value": api.ip().to_string()}),
        serde_json::json!({"name": "KUBERNETES_SERVICE_PORT", "value": api.port().to_string()}),
    ];
    extra_env.extend(
        env.moto
            .aws_env()
            .into_iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value})),
    );
    let mut helm = env.cluster.cp.helm();
    helm.args(["install", "imds"])
        .arg(repo_root().join("charts/imds-operator"))
        .args(["--namespace", NAMESPACE, "--create-namespace"])
        .args(["--set", "hostNetwork=true", "--set", "leaderElection.leaseDuration=4s"])
        .args(["--set", &format!("image.repository={IMAGE}")])
        .args(["--set", &format!("image.tag={}", layout.tag)])
        .args(["--set", "image.pullPolicy=Never"])
        .args([
            "--set-json",
            &format!("extraEnv={}", serde_json::Value::Array(extra_env)),
        ]);
    run_checked(&mut helm)?;
    Ok(())
}

async fn scenario(env: &Env, layout: &ImageLayout) -> Result<()> {
    helm_install(env, layout)?;
    let pods = ready_pods(env, &[]).await?;
    let nodes: Vec<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    ensure!(nodes[0] != nodes[1], "both replicas on one node: {pods:?}");
    eprintln!("pods Ready, probes passing, no restarts: {pods:?}");
    let leader = lease_holder(env, None).await?;
    ensure!(
        pods.iter().any(|p| p.0 == leader),
        "leader {leader} is not a pod: {pods:?}"
    );
    pdb_allows_one(env).await?;

    apply_policy(env, 2)?;
    converged(env, 2).await?;
    eprintln!("policy converged by {leader}");

    // The leader's pod deleted: the other replica takes the Lease, the ReplicaSet replaces the
    // pod (on the node whose ports it freed), and the new leader converges a change.
    Api::<Pod>::namespaced(env.cluster.client.clone(), NAMESPACE)
        .delete(&leader, &DeleteParams::default())
        .await?;
    let successor = lease_holder(env, Some(&leader)).await?;
    ensure!(
        pods.iter().any(|p| p.0 == successor),
        "the Lease went to {successor}, not to the standby: {pods:?}"
    );
    eprintln!("{leader} deleted, {successor} leads");
    apply_policy(env, 3)?;
    converged(env, 3).await?;
    let after = ready_pods(env, &[leader.as_str()]).await?;
    eprintln!("policy change converged by {successor}; replicas again: {after:?}");
    pdb_allows_one(env).await?;
    Ok(())
}

/// The release's two pods once both are Ready with no restarts, on host network (pod IP = the
/// node's), none of them named in `gone`: (name, node, pod IP).
async fn ready_pods(env: &Env, gone: &[&str]) -> Result<Vec<(String, String, String)>> {
    let api: Api<Pod> = Api::namespaced(env.cluster.client.clone(), NAMESPACE);
    eventually("two Ready replicas", PODS_READY, || async {
        let list = api.list(&Default::default()).await?;
        let mut ready = Vec::new();
        let mut seen = Vec::new();
        for pod in &list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            let is_ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let restarts: i32 = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let (pod_ip, host_ip) = (status.pod_ip.unwrap_or_default(), status.host_ip.unwrap_or_default());
            seen.push(format!(
                "{name} on {node:?} phase {:?} ready {is_ready} restarts {restarts}",
                status.phase
            ));
            if is_ready && restarts == 0 && pod_ip == host_ip && !gone.contains(&name.as_str()) {
                ready.push((name, node, pod_ip));
            }
        }
        Ok(if ready.len() == 2 && list.items.len() == 2 {
            Ok(ready)
        } else {
            Err(seen.join("; "))
        })
    })
    .await
}

/// The Lease's holder once there is one (other than `not`).
async fn lease_holder(env: &Env, not: Option<&str>) -> Result<String> {
    let api: Api<Lease> = Api::namespaced(env.cluster.client.clone(), NAMESPACE);
    eventually("a lease holder", HANDOVER, || async {
        let holder = api
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        Ok(match holder {
            Some(h) if Some(h.as_str()) != not => Ok(h),
            other => Err(format!("{other:?}")),
        })
    })
    .await
}

/// The PDB (maxUnavailable 1) sees both replicas healthy and allows one disruption.
async fn pdb_allows_one(env: &Env) -> Result<()> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(env.cluster.client.clone(), NAMESPACE);
    eventually("the PDB to allow one disruption", PODS_READY, || async {
        let pdbs = api.list(&Default::default()).await?;
        let status: Vec<_> = pdbs.items.iter().filter_map(|p| p.status.clone()).collect();
        Ok(match status.as_slice() {
            [s] if (s.current_healthy, s.expected_pods, s.disruptions_allowed) == (Some(2), Some(2), Some(1)) => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await
}

/// The policy on both nodes at once: staged rollouts, guards and verification have tests of
/// their own; this one is about the pods.
fn apply_policy(env: &Env, hop_limit: i32) -> Result<()> {
    env.cluster.apply(&format!(
        "apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: require-imdsv2
spec:
  nodeSelector: {{}}
  guards:
    imdsv1Usage:
      mode: \"Off\"
  rollout:
    maxInFlight: \"100%\"
    settleSeconds: 0
    verify:
      onRejectedCalls: Ignore
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: {hop_limit}
"
    ))
}

/// Both nodes' instances have the options, and the policy says Ready.
async fn converged(env: &Env, hop_limit: i32) -> Result<()> {
    let ec2 = env.moto.ec2_client().await;
    for id in &env.instances {
        wait_imds(&ec2, id, ("required", hop_limit), CONVERGE).await?;
    }
    env.cluster
        .wait_status("require-imdsv2", "Ready with both nodes compliant", |p, s| {
            s.observed_generation == p.metadata.generation
                && s.compliant_nodes == 2
                && condition(s, "Ready").0 == "True"
        })
        .await?;
    Ok(())
}

/// Pods, events and the tails of the node and controller logs, for a failure.
fn diagnostics(env: &Env) -> String {
    let mut out = String::new();
    for args in [
        &["get", "nodes,pods,pdb,lease", "-A", "-o", "wide"][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
    ] {
        out += &env.cluster.kubectl(args).unwrap_or_else(|e| format!("{e:#}"));
    }
    for node in &env.nodes {
        out += &format!(
            "\n--- kubelet {} ({})\n{}",
            node.name(),
            node.dir().display(),
            node.kubelet_log_tail(30)
        );
        let logs = node.dir().join("pod-logs");
        if let Ok(out_ls) = run_checked(std::process::Command::new("find").arg(&logs).args(["-name", "*.log"])) {
            for log in String::from_utf8_lossy(&out_ls.stdout).lines() {
                out += &format!(
                    "\n--- {log}\n{}",
                    imds_test_support::process::log_tail(log.as_ref(), 20)
                );
            }
        }
    }
    out + "\n" + &env.controllers.log_tails(20)
}
