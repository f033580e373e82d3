//! The one-command demo (`make demo`): a local control plane and moto's EC2, five nodes whose
//! instances allow IMDSv1 with hop limit 1, the operator, and the policy "require IMDSv2, hop
//! limit 2". Prints the instances before and after, and `kubectl get imp`.
//!
//! By default everything is stopped at the end. With `--keep` it stays up until Ctrl-C and
//! prints how to poke at it.

use anyhow::Result;
use imds_test_support::Moto;
use imds_test_support::e2e::{Cluster, Operator, eventually};
use std::time::{Duration, Instant};

const POLICY: &str = r#"apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: require-imdsv2
spec:
  nodeSelector: {}
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: 2
  rollout:
    maxInFlight: 2        # at most two instances changing at once
    settleSeconds: 3      # each counts as changing until 3 s after EC2 applied it
"#;

async fn table(ec2: &aws_sdk_ec2::Client, nodes: &[(String, String)]) -> Result<String> {
    let mut out = format!(
        "  {:<27} {:<21} {:<11} {:<9} {}\n",
        "NODE", "INSTANCE", "HTTPTOKENS", "HOPLIMIT", "STATE"
    );
    for (node, id) in nodes {
        let described = ec2.describe_instances().instance_ids(id).send().await?;
        let opts = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.metadata_options().cloned())
            .unwrap_or_else(|| aws_sdk_ec2::types::InstanceMetadataOptionsResponse::builder().build());
        out.push_str(&format!(
            "  {:<27} {:<21} {:<11} {:<9} {}\n",
            node,
            id,
            opts.http_tokens().map(|t| t.as_str()).unwrap_or("?"),
            opts.http_put_response_hop_limit()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "?".into()),
            opts.state().map(|s| s.as_str()).unwrap_or("?"),
        ));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let started = Instant::now();
    println!("==> starting etcd + kube-apiserver and moto (EC2)");
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    println!(
        "    control plane at {} ({:.1}s)",
        cluster.cp.server_url(),
        started.elapsed().as_secs_f64()
    );

    println!("==> creating 5 instances that allow IMDSv1 (httpTokens=optional, hop limit 1) and their nodes");
    let ids = moto
        .run_instances(5, &[("kubernetes.io/cluster/demo", "owned")])
        .await?;
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let group = if i < 3 { "general" } else { "system" };
        let name = format!("ip-10-0-0-{}.ec2.internal", 10 + i);
        cluster
            .create_node(
                &name,
                &[("eks.amazonaws.com/nodegroup", group)],
                Some(&format!("aws:///us-east-1a/{id}")),
            )
            .await?;
        nodes.push((name, id.clone()));
    }
    println!("\nBEFORE\n{}", table(&ec2, &nodes).await?);

    println!("==> starting the operator and applying the policy:\n\n{POLICY}");
    let mut operator = Operator::start(
        &cluster,
        &moto.aws_env(),
        &["--leader-election=false", "--resync-period=30s"],
    )
    .await?;
    let applied = Instant::now();
    cluster.apply(POLICY)?;
    eventually("the policy to be Ready", Duration::from_secs(60), || {
        let api = cluster.policies();
        async move {
            let p = api.get("require-imdsv2").await?;
            let ready = p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Reconciling" && c.status == "False")
            });
            Ok(if ready { Ok(()) } else { Err(format!("{:?}", p.status)) })
        }
    })
    .await?;
    println!(
        "AFTER ({:.1}s after kubectl apply)\n{}",
        applied.elapsed().as_secs_f64(),
        table(&ec2, &nodes).await?
    );
    println!("$ kubectl get imp\n{}", cluster.kubectl(&["get", "imp"])?);
    println!(
        "$ kubectl get events -n default --field-selector reason=Modified\n{}",
        cluster.kubectl(&["get", "events", "-n", "default", "--field-selector", "reason=Modified"])?
    );
    operator.ensure_running()?;

    if keep {
        println!("==> left running. In another shell:");
        println!("    export KUBECONFIG={}", cluster.cp.kubeconfig_path().display());
        println!("    export PATH={}:$PATH", cluster.cp.bin_dir().display());
        println!("    kubectl get imp -o yaml; kubectl describe imp require-imdsv2");
        println!(
            "    AWS endpoint (moto): {}  (region us-east-1, any credentials)",
            moto.endpoint()
        );
        println!("    operator metrics: {}", operator.metrics_url);
        println!("Press Ctrl-C to stop everything.");
        tokio::signal::ctrl_c().await?;
    }
    println!("==> stopping the operator, moto and the control plane");
    operator.stop(Duration::from_secs(5));
    drop(moto);
    drop(cluster);
    println!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
