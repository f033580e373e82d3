//! Realistic EKS worker Nodes, and fast bulk creation of them on the local control plane.
//!
//! A Node as an EKS worker's kubelet registers it weighs ~13 KB of JSON: ~30 labels (managed
//! node group or Karpenter, topology, instance type, architecture), annotations, a providerID,
//! capacity and allocatable, four conditions with heartbeats, addresses, nodeInfo, 42 container
//! images with digests and three attached EBS volumes. [`EksFleet`] generates such Nodes
//! deterministically (the same index gives the same Node), with instance IDs that are distinct
//! across fleets, and the EC2 tags their instances carry; [`create_nodes`] creates many of them
//! with bounded concurrency and marks them Ready.
//!
//! Two of every five nodes are Karpenter nodes (`karpenter.sh/nodepool`, no node group); the
//! rest belong to one of three managed node groups. Every node has a providerID
//! (`aws:///<zone>/<instance ID>`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const REGION: &str = crate::ec2_double::REGION;
const ZONES: [(&str, &str); 3] = [
    ("us-east-1a", "use1-az1"),
    ("us-east-1b", "use1-az2"),
    ("us-east-1c", "use1-az4"),
];
/// Instance type, architecture, vCPUs, memory in KiB, max pods (VPC CNI).
const TYPES: [(&str, &str, u32, u64, u32); 5] = [
    ("m6i.xlarge", "amd64", 4, 15_896_772, 58),
    ("m6i.2xlarge", "amd64", 8, 32_386_132, 58),
    ("c6i.2xlarge", "amd64", 8, 15_896_772, 58),
    ("r6i.xlarge", "amd64", 4, 32_386_132, 58),
    ("m7g.xlarge", "arm64", 4, 15_896_772, 58),
];
const NODE_GROUPS: [&str; 3] = ["system", "general", "memory"];
const NODE_POOLS: [&str; 2] = ["default", "spot"];
const KUBELET_VERSION: &str = "v1.33.0-eks-802817d";
const HEARTBEAT: &str = "2026-11-30T10:04:12Z";
const BOOTED: &str = "2026-11-30T08:01:37Z";

/// A cluster's worth of EKS worker Nodes and their instances.
#[derive(Clone, Debug)]
pub struct EksFleet {
    cluster: String,
    seed: u64,
}

impl EksFleet {
    /// The fleet of cluster `cluster`: fleets of different names have different instance IDs.
    pub fn new(cluster: &str) -> EksFleet {
        let seed = cluster.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        EksFleet {
            cluster: cluster.to_string(),
            seed,
        }
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Node `index`'s instance: `i-0` and 16 hex digits, distinct for every index and fleet.
    pub fn instance_id(&self, index: usize) -> String {
        format!("i-0{:016x}", mix(self.seed ^ index as u64))
    }

    /// Node `index`'s name, as EKS names nodes (`ip-10-x-y-z.ec2.internal`).
    pub fn node_name(&self, index: usize) -> String {
        let (a, b, c) = ip_octets(index);
        format!("ip-10-{a}-{b}-{c}.ec2.internal")
    }

    /// Node `index`'s `spec.providerID`.
    pub fn provider_id(&self, index: usize) -> String {
        format!("aws:///{}/{}", ZONES[index % ZONES.len()].0, self.instance_id(index))
    }

    /// The EC2 tags of node `index`'s instance (what EKS, Auto Scaling and Karpenter put there).
    pub fn instance_tags(&self, index: usize) -> Vec<(String, String)> {
        let mut tags = vec![
            (format!("kubernetes.io/cluster/{}", self.cluster), "owned".to_string()),
            ("Name".to_string(), format!("{}-node", self.cluster)),
        ];
        match group(index) {
            Group::Managed(ng) => tags.extend([
                ("eks:cluster-name".to_string(), self.cluster.clone()),
                ("eks:nodegroup-name".to_string(), ng.to_string()),
                (
                    "aws:autoscaling:groupName".to_string(),
                    format!("eks-{ng}-{:08x}", self.seed as u32),
                ),
                (
                    "aws:ec2launchtemplate:id".to_string(),
                    format!("lt-0{:016x}", mix(self.seed)),
                ),
                ("aws:ec2launchtemplate:version".to_string(), "3".to_string()),
            ]),
            Group::Karpenter(pool) => tags.extend([
                ("karpenter.sh/nodepool".to_string(), pool.to_string()),
                ("karpenter.k8s.aws/ec2nodeclass".to_string(), "default".to_string()),
                ("karpenter.sh/nodeclaim".to_string(), format!("{pool}-{:05x}", index)),
                ("eks:eks-cluster-name".to_string(), self.cluster.clone()),
            ]),
        }
        tags
    }

    /// Node `index` as its kubelet registers it, Ready.
    pub fn node(&self, index: usize) -> Node {
        serde_json::from_value(self.node_json(index)).expect("the generated Node is a valid Node")
    }

    /// Node `index` as JSON (what [`EksFleet::node`] deserializes).
    pub fn node_json(&self, index: usize) -> Value {
        let name = self.node_name(index);
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": self.labels(index),
                "annotations": self.annotations(index),
            },
            "spec": {"providerID": self.provider_id(index)},
            "status": self.status(index),
        })
    }

    fn labels(&self, index: usize) -> Value {
        let (zone, zone_id) = ZONES[index % ZONES.len()];
        let (itype, arch, _, _, _) = TYPES[index % TYPES.len()];
        let (family, size) = itype.split_once('.').unwrap_or((itype, ""));
        let mut labels = json!({
            "beta.kubernetes.io/arch": arch,
            "beta.kubernetes.io/instance-type": itype,
            "beta.kubernetes.io/os": "linux",
            "failure-domain.beta.kubernetes.io/region": REGION,
            "failure-domain.beta.kubernetes.io/zone": zone,
            "k8s.io/cloud-provider-aws": format!("{:032x}", u128::from(mix(self.seed)) << 64 | u128::from(self.seed)),
            "kubernetes.io/arch": arch,
            "kubernetes.io/hostname": self.node_name(index),
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": itype,
            "topology.ebs.csi.aws.com/zone": zone,
            "topology.k8s.aws/zone-id": zone_id,
            "topology.kubernetes.io/region": REGION,
            "topology.kubernetes.io/zone": zone,
        });
        let extra = match group(index) {
            Group::Managed(ng) => json!({
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "eks.amazonaws.com/nodegroup": ng,
                "eks.amazonaws.com/nodegroup-image": format!("ami-0{:016x}", mix(self.seed ^ 7)),
                "eks.amazonaws.com/sourceLaunchTemplateId": format!("lt-0{:016x}", mix(self.seed)),
                "eks.amazonaws.com/sourceLaunchTemplateVersion": "3",
            }),
            Group::Karpenter(pool) => json!({
                "karpenter.sh/nodepool": pool,
                "karpenter.sh/capacity-type": if pool == "spot" { "spot" } else { "on-demand" },
                "karpenter.sh/initialized": "true",
                "karpenter.sh/registered": "true",
                "karpenter.k8s.aws/ec2nodeclass": "default",
                "karpenter.k8s.aws/instance-category": &family[..1],
                "karpenter.k8s.aws/instance-family": family,
                "karpenter.k8s.aws/instance-generation": &family[1..2],
                "karpenter.k8s.aws/instance-size": size,
                "karpenter.k8s.aws/instance-hypervisor": "nitro",
                "karpenter.k8s.aws/instance-encryption-in-transit-supported": "true",
            }),
        };
        if let (Some(labels), Value::Object(extra)) = (labels.as_object_mut(), extra) {
            labels.extend(extra);
        }
        labels
    }

    fn annotations(&self, index: usize) -> Value {
        let (a, b, c) = ip_octets(index);
        let mut annotations = json!({
            "alpha.kubernetes.io/provided-node-ip": format!("10.{a}.{b}.{c}"),
            "csi.volume.kubernetes.io/nodeid": format!("{{\"ebs.csi.aws.com\":\"{}\"}}", self.instance_id(index)),
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        });
        if let (Group::Karpenter(_), Some(map)) = (group(index), annotations.as_object_mut()) {
            let hash = |salt: u64| (mix(self.seed ^ salt) % 10_000_000_000_000_000_000).to_string();
            map.insert("karpenter.k8s.aws/ec2nodeclass-hash".into(), hash(1).into());
            map.insert("karpenter.k8s.aws/ec2nodeclass-hash-version".into(), "v4".into());
            map.insert("karpenter.sh/nodepool-hash".into(), hash(2).into());
            map.insert("karpenter.sh/nodepool-hash-version".into(), "v3".into());
        }
        annotations
    }

    fn status(&self, index: usize) -> Value {
        let (_, arch, cpus, mem_kib, pods) = TYPES[index % TYPES.len()];
        let (a, b, c) = ip_octets(index);
        let ip = format!("10.{a}.{b}.{c}");
        let machine = mix(self.seed ^ (index as u64) << 1);
        json!({
            "capacity": {
                "cpu": cpus.to_string(), "ephemeral-storage": "83873772Ki", "hugepages-1Gi": "0",
                "hugepages-2Mi": "0", "memory": format!("{mem_kib}Ki"), "pods": pods.to_string(),
            },
            "allocatable": {
                "cpu": format!("{}m", cpus * 1000 - 80), "ephemeral-storage": "76224326324",
                "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                "memory": format!("{}Ki", mem_kib - 1_015_808), "pods": pods.to_string(),
            },
            "conditions": conditions(),
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "InternalDNS", "address": self.node_name(index)},
                {"type": "Hostname", "address": self.node_name(index)},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": arch,
                "bootID": uuid(machine),
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": format!("6.1.134-152.225.amzn2023.{}", if arch == "arm64" { "aarch64" } else { "x86_64" }),
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": format!("ec2{:029x}", machine >> 12),
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2023.7.20250512",
                "systemUUID": format!("ec2{}", &uuid(machine ^ 1)[3..]),
            },
            "images": images(index),
            "volumesAttached": (0..VOLUMES_PER_NODE)
                .map(|v| json!({"name": self.volume(index, v), "devicePath": ""}))
                .collect::<Vec<_>>(),
            "volumesInUse": (0..VOLUMES_PER_NODE).map(|v| self.volume(index, v)).collect::<Vec<_>>(),
        })
    }

    /// The EBS volume `v` of node `index`, as the attach-detach controller names it.
    fn volume(&self, index: usize, v: usize) -> String {
        let id = mix(self.seed ^ (index as u64) << 8 ^ v as u64);
        format!("kubernetes.io/csi/ebs.csi.aws.com^vol-0{id:016x}")
    }
}

/// EBS volumes attached to each node (persistent volumes of its pods).
const VOLUMES_PER_NODE: usize = 3;

/// Which group launched node `index`.
enum Group {
    Managed(&'static str),
    Karpenter(&'static str),
}

fn group(index: usize) -> Group {
    match index % 5 {
        0..=2 => Group::Managed(NODE_GROUPS[index % NODE_GROUPS.len()]),
        _ => Group::Karpenter(NODE_POOLS[index % NODE_POOLS.len()]),
    }
}

fn ip_octets(index: usize) -> (usize, usize, usize) {
    // 10.<a>.<b>.<c>, skipping .0 and .255 in the last octet.
    let c = index % 254 + 1;
    let rest = index / 254;
    (rest / 256 % 256, rest % 256, c)
}

fn conditions() -> Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": HEARTBEAT, "lastTransitionTime": BOOTED,
        })
    };
    json!([
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ])
}

/// A pool of images the nodes pull (EKS add-ons and common workloads): repository, tag, size.
const IMAGES: [(&str, &str, u64); 48] = [
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni",
        "v1.19.5-eksbuild.1",
        45_862_111,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon-k8s-cni-init",
        "v1.19.5-eksbuild.1",
        62_310_980,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/amazon/aws-network-policy-agent",
        "v1.2.1-eksbuild.1",
        30_711_312,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/kube-proxy",
        "v1.33.0-minimal-eksbuild.2",
        31_508_802,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/coredns",
        "v1.12.1-eksbuild.2",
        24_812_630,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/aws-ebs-csi-driver",
        "v1.44.0",
        34_502_210,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/csi-node-driver-registrar",
        "v2.13.0-eks-1-33-3",
        8_421_004,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/livenessprobe",
        "v2.15.0-eks-1-33-3",
        8_012_545,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/eks-pod-identity-agent",
        "v0.1.29",
        21_400_931,
    ),
    (
        "602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/pause",
        "3.10",
        299_513,
    ),
    ("public.ecr.aws/eks/aws-load-balancer-controller", "v2.13.2", 40_111_005),
    ("public.ecr.aws/karpenter/controller", "1.5.0", 45_221_934),
    (
        "public.ecr.aws/aws-observability/aws-for-fluent-bit",
        "2.32.5",
        88_712_044,
    ),
    (
        "public.ecr.aws/aws-secrets-manager/secrets-store-csi-driver-provider-aws",
        "1.0.r2-80",
        11_034_567,
    ),
    ("registry.k8s.io/csi-secrets-store/driver", "v1.5.1", 30_456_721),
    ("quay.io/prometheus/node-exporter", "v1.9.1", 12_402_118),
    (
        "quay.io/prometheus-operator/prometheus-config-reloader",
        "v0.82.2",
        14_930_221,
    ),
    (
        "registry.k8s.io/kube-state-metrics/kube-state-metrics",
        "v2.15.0",
        18_210_333,
    ),
    ("docker.io/grafana/alloy", "v1.8.3", 160_402_018),
    ("docker.io/datadog/agent", "7.66.1", 310_554_201),
    ("docker.io/istio/proxyv2", "1.26.1", 98_114_026),
    ("docker.io/istio/pilot", "1.26.1", 76_004_002),
    ("quay.io/jetstack/cert-manager-controller", "v1.17.2", 21_778_001),
    ("quay.io/jetstack/cert-manager-cainjector", "v1.17.2", 15_002_338),
    ("quay.io/jetstack/cert-manager-webhook", "v1.17.2", 17_889_120),
    ("registry.k8s.io/ingress-nginx/controller", "v1.12.3", 105_221_990),
    ("docker.io/hashicorp/vault", "1.19.4", 175_993_120),
    ("ghcr.io/external-secrets/external-secrets", "v0.17.0", 41_887_002),
    ("docker.io/bitnami/redis", "7.4.3-debian-12-r0", 48_021_771),
    ("docker.io/library/postgres", "17.5-bookworm", 151_668_339),
    ("docker.io/library/nginx", "1.27.5-alpine", 20_552_610),
    ("docker.io/library/busybox", "1.37.0", 2_155_011),
    ("docker.io/envoyproxy/envoy", "v1.34.1", 64_551_907),
    ("ghcr.io/fluxcd/source-controller", "v1.6.0", 40_018_215),
    ("ghcr.io/fluxcd/kustomize-controller", "v1.6.0", 38_812_554),
    ("quay.io/argoproj/argocd", "v3.0.6", 190_331_210),
    ("docker.io/otel/opentelemetry-collector-contrib", "0.127.0", 99_030_411),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/payments/api",
        "2026.11.28-4f1c2ab",
        210_664_092,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/payments/worker",
        "2026.11.28-4f1c2ab",
        205_118_006,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/search/indexer",
        "2026.11.27-9ab03de",
        330_774_120,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/web/frontend",
        "2026.11.29-77ce0a1",
        95_301_877,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/web/bff",
        "2026.11.29-77ce0a1",
        88_004_512,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/data/etl-runner",
        "2026.11.20-0c9e111",
        501_228_930,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/platform/auth-proxy",
        "v3.8.2",
        33_210_442,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/platform/feature-flags",
        "v1.22.0",
        28_441_019,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/inference-server",
        "2026.11.25-5d0ab47",
        1_850_771_002,
    ),
    (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/feature-store",
        "2026.11.25-5d0ab47",
        402_119_883,
    ),
    ("docker.io/library/python", "3.13.4-slim-bookworm", 45_002_811),
];

/// How many images a node has pulled.
const IMAGES_PER_NODE: usize = 42;

/// Node `index`'s images (42 of the pool, the add-ons always), biggest first as the kubelet
/// reports them.
fn images(index: usize) -> Value {
    let skip = index % (IMAGES.len() - 12);
    let mut chosen: Vec<&(&str, &str, u64)> = IMAGES[..12]
        .iter()
        .chain(IMAGES[12..].iter().cycle().skip(skip).take(IMAGES_PER_NODE - 12))
        .collect();
    chosen.sort_by_key(|image| std::cmp::Reverse(image.2));
    chosen
        .into_iter()
        .map(|(repo, tag, size)| {
            let digest = digest(repo, tag);
            json!({"names": [format!("{repo}@sha256:{digest}"), format!("{repo}:{tag}")], "sizeBytes": size})
        })
        .collect()
}

/// A sha256-like digest (64 hex digits) of an image, the same on every node.
fn digest(repo: &str, tag: &str) -> String {
    let mut h = repo.bytes().chain(tag.bytes()).fold(0x8422_2325_cbf2_9ce4_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..4)
        .map(|_| {
            h = mix(h);
            format!("{h:016x}")
        })
        .collect()
}

fn uuid(x: u64) -> String {
    let y = mix(x);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        x >> 32,
        x >> 16 & 0xffff,
        x & 0xfff,
        y >> 52,
        y & 0xffff_ffff_ffff
    )
}

/// SplitMix64's finalizer: a bijection on `u64` (distinct inputs, distinct outputs).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What [`create_nodes`] did.
#[derive(Clone, Copy, Debug)]
pub struct Created {
    /// Nodes created.
    pub nodes: usize,
    /// Of those, the ones whose status had to be written in a second request (the API server
    /// dropped the status sent with the create).
    pub status_patched: usize,
    /// How long it took.
    pub took: Duration,
}

/// Creates `nodes` with at most `concurrency` requests in flight, each Ready (the status sent
/// with the create is written again through the status subresource if the API server dropped
/// it). Each request is tried up to 3 times; fails on the first Node that cannot be created.
pub async fn create_nodes(client: &kube::Client, nodes: Vec<Node>, concurrency: usize) -> Result<Created> {
    let started = Instant::now();
    let api: Api<Node> = Api::all(client.clone());
    let mut pending = nodes.into_iter();
    let mut running = JoinSet::new();
    let (mut created, mut patched) = (0, 0);
    loop {
        while running.len() < concurrency.max(1) {
            let Some(node) = pending.next() else { break };
            let api = api.clone();
            running.spawn(async move { create_ready(&api, node).await });
        }
        let Some(done) = running.join_next().await else { break };
        let status_patched = done.context("a node-creating task panicked")??;
        created += 1;
        patched += usize::from(status_patched);
    }
    Ok(Created {
        nodes: created,
        status_patched: patched,
        took: started.elapsed(),
    })
}

/// Creates one Node and makes sure its status is the one it was sent with; whether that took a
/// second request.
async fn create_ready(api: &Api<Node>, node: Node) -> Result<bool> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.clone();
    let post = PostParams::default();
    let created = with_retries(&format!("creating node {name}"), || api.create(&post, &node)).await?;
    let has_conditions = created
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| !c.is_empty());
    if has_conditions || status.is_none() {
        return Ok(false);
    }
    let patch = Patch::Merge(json!({"status": status}));
    let params = PatchParams::default();
    with_retries(&format!("writing node {name}'s status"), || {
        api.patch_status(&name, &params, &patch)
    })
    .await?;
    Ok(true)
}

async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Err(anyhow::anyhow!("{what}: it exists already ({})", e.message));
            }
            Err(e) if attempt < 3 => {
                eprintln!("{what} (attempt {attempt}): {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nodes_weigh_about_13_kb_and_their_instances_are_distinct() {
        let fleet = EksFleet::new("bench");
        let sizes: Vec<usize> = (0..50)
            .map(|i| serde_json::to_vec(&fleet.node(i)).expect("json").len())
            .collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((11_500..=14_500).contains(&mean), "mean {mean} bytes: {sizes:?}");
        let other = EksFleet::new("other");
        let ids: HashSet<String> = (0..10_000)
            .map(|i| fleet.instance_id(i))
            .chain((0..10_000).map(|i| other.instance_id(i)))
            .collect();
        assert_eq!(ids.len(), 20_000);
        let names: HashSet<String> = (0..70_000).map(|i| fleet.node_name(i)).collect();
        assert_eq!(names.len(), 70_000);
    }

    #[test]
    fn nodes_are_ready_eks_workers_with_a_provider_id() {
        let fleet = EksFleet::new("bench");
        let node = fleet.node(3);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("karpenter.sh/nodepool").map(String::as_str), Some("spot"));
        assert!(
            fleet
                .node(0)
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key("eks.amazonaws.com/nodegroup")
        );
        let status = node.status.expect("status");
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.status), Some("True".to_string()));
        assert_eq!(status.images.map(|i| i.len()), Some(IMAGES_PER_NODE));
        let provider_id = node.spec.and_then(|s| s.provider_id).unwrap_or_default();
        assert_eq!(provider_id, format!("aws:///us-east-1a/{}", fleet.instance_id(3)));
        assert!(
            fleet
                .instance_tags(3)
                .iter()
                .any(|(k, _)| k == "kubernetes.io/cluster/bench")
        );
    }
}
