//! Real nodes for the rung-5 test (`make test-node`, `tests/e2e/node.rs`): a kubelet and a
//! containerd per node, plus [`Controllers`] (kube-controller-manager, kube-scheduler) beside the
//! [`ControlPlane`], so that a Deployment's pods are scheduled, started by runc and probed.
//!
//! Each [`Node`] lives in a network namespace of its own ([`netns`]), made by the test and held
//! by a descriptor: pods use the host network (the node's), so two replicas on two nodes can bind
//! the same ports; the node's only interface is `lo` (127.0.0.1 and the node IP, which the
//! kubelet requires to be non-loopback: `192.0.2.0/24`, a documentation range, local to that
//! namespace). The API server's and the EC2 endpoint's loopback ports are forwarded into it, so
//! the kubelet and the pods reach them at `127.0.0.1:<same port>`; nothing is ever sent beyond
//! loopback and these namespaces. Needs root, cgroup v1 mounted under /sys/fs/cgroup (the
//! kubelet's cgroupfs driver), Debian's containerd, runc, containernetworking-plugins, umoci,
//! skopeo and a C compiler with static glibc.
//!
//! Every state dir (containerd root/state/sockets, runc root, CNI config, kubelet root and
//! certificates, pod logs) is under the node's temp dir, except what neither lets one move:
//! containerd 1.6's shim sockets in `/run/containerd/s`, the kubelet's links in
//! `/var/log/containers` and its `/var/lib/kubelet/device-plugins/kubelet.sock`. Teardown
//! ([`Node`]'s drop): kubelet, the pods' processes (by the node's cgroup), containerd, its shims
//! (by its socket), those paths outside the dir, the mounts under the dir, the cgroups, the dir. What a killed test process left (no drop ran) is swept by the next
//! node started: its pods by their cgroups, its shims, its mounts.

mod cleanup;
mod containerd;
mod controllers;
mod images;
mod kubelet;
pub mod netns;

pub use controllers::{Controllers, node_binaries};
pub use images::{PAUSE_IMAGE, layout_archive, pause_archive};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;

use self::cleanup::CgroupRoot;
use self::containerd::Containerd;
use self::kubelet::KubeletArgs;
use self::netns::NetNs;
use crate::ControlPlane;
use crate::process::{ChildGuard, wait_ready};
use crate::tcp_proxy::TcpProxy;

const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What makes one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The Node's name (`--hostname-override`).
    pub name: String,
    /// The node IP, inside its own namespace (e.g. 192.0.2.11).
    pub ip: Ipv4Addr,
    /// `spec.providerID` (e.g. `aws:///us-east-1a/i-…` of a moto instance).
    pub provider_id: Option<String>,
    /// Host loopback ports to forward into the node's namespace (the API server's is always).
    pub forward_ports: Vec<u16>,
    /// OCI archives to import into its containerd before the kubelet starts (the sandbox image
    /// among them: nothing can be pulled).
    pub images: Vec<PathBuf>,
}

/// A running node: kubelet + containerd in a network namespace; stopped and cleaned up on drop.
pub struct Node {
    name: String,
    kubelet: Option<ChildGuard>,
    containerd: Option<Containerd>,
    forwarders: Vec<TcpProxy>,
    cgroup: Option<CgroupRoot>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    // Dropped last: the namespace goes with the last process and descriptor in it.
    _netns: NetNs,
}

impl Node {
    /// Starts containerd and the kubelet for `spec` and waits until the Node is `Ready`.
    pub async fn start(cp: &ControlPlane, spec: NodeSpec) -> Result<Node> {
        let [kubelet_bin, _, _] = node_binaries()?;
        cleanup::sweep_stale();
        let dir = crate::temp_dir(&format!("node-{}", spec.name))?;
        let path = dir.path().to_path_buf();
        let netns = NetNs::new(spec.ip)?;
        let mut node = Node {
            name: spec.name.clone(),
            kubelet: None,
            containerd: None,
            forwarders: Vec::new(),
            cgroup: None,
            dir: Some(dir),
            path,
            _netns: netns,
        };
        // From here on an error drops `node`, which tears down what was started.
        for port in std::iter::once(cp.apiserver_addr().port()).chain(spec.forward_ports.iter().copied()) {
            node.forwarders.push(node._netns.forward(port)?);
        }
        let containerd = Containerd::start(&node.path, &node._netns, PAUSE_IMAGE)?;
        for image in &spec.images {
            containerd.import(image)?;
        }
        let cgroup = CgroupRoot::create(&format!("imds-e2e-{}-{}", std::process::id(), spec.name))?;
        let args = KubeletArgs {
            bin: &kubelet_bin,
            dir: &node.path,
            node_name: &spec.name,
            node_ip: spec.ip,
            kubeconfig: cp.kubeconfig_path(),
            runtime_socket: containerd.socket(),
            cgroup_root: cgroup.name(),
            provider_id: spec.provider_id.as_deref(),
        };
        let kubelet = kubelet::start(&args, &node._netns);
        node.containerd = Some(containerd);
        node.cgroup = Some(cgroup);
        node.kubelet = Some(kubelet?);
        node.wait_ready(cp).await?;
        Ok(node)
    }

    async fn wait_ready(&mut self, cp: &ControlPlane) -> Result<()> {
        let nodes: Api<NodeObject> = Api::all(cp.client().await?);
        let name = self.name.clone();
        let kubelet = self.kubelet.as_mut().context("no kubelet")?;
        wait_ready(kubelet, "Ready", NODE_READY_TIMEOUT, Duration::from_millis(500), || {
            let (nodes, name) = (nodes.clone(), name.clone());
            async move {
                let node = nodes.get(&name).await.with_context(|| format!("GET node {name}"))?;
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| (c.status, c.message.unwrap_or_default()));
                match ready {
                    Some((status, _)) if status == "True" => Ok(()),
                    other => anyhow::bail!("node {name} Ready: {other:?}"),
                }
            }
        })
        .await
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's dir (`kubelet.log`, `containerd.log`, `pod-logs/`, configurations).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The tail of the kubelet's log, for failure messages.
    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        self.kubelet.as_ref().map(|k| k.log_tail(lines)).unwrap_or_default()
    }

    fn teardown(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        if let Some(cgroup) = self.cgroup.as_mut() {
            cgroup.remove();
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop();
            cleanup::kill_shims(containerd.socket());
        }
        self.forwarders.clear();
        cleanup::remove_host_leftovers(&self.path);
        cleanup::unmount_under(&self.path);
        if let Some(dir) = self.dir.take() {
            crate::finish_temp_dir(dir);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.teardown();
    }
}
