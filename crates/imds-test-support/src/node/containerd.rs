//! containerd (Debian's package) for one node: root, state, sockets, the runc root and the CNI
//! configuration in the node's dir; the CRI plugin with the offline sandbox image and a
//! loopback-only CNI network (enough for NetworkReady; the pods use the host network, so no
//! CNI plugin ever runs for them and no bridge or veth exists).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::netns::NetNs;
use crate::process::{ChildGuard, run_checked, wait_ready_blocking};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Debian's containernetworking-plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CRI namespace of containerd that the kubelet's pods live in.
pub(super) const K8S_NAMESPACE: &str = "k8s.io";

/// A running containerd.
#[derive(Debug)]
pub(super) struct Containerd {
    child: ChildGuard,
    socket: PathBuf,
}

fn config(dir: &Path, sandbox_image: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here: no OOM score below containerd's own (the kubelet asks -998 for
  # the sandbox of a system-cluster-critical pod).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni"
    max_conf_num = 1
"#
    )
}

const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion": "1.0.0", "name": "imds-e2e-loopback", "plugins": [{"type": "loopback"}]}"#;

impl Containerd {
    /// Writes the configuration into `dir` and starts containerd inside `netns` (host-network
    /// pods share the network namespace of the runtime that starts them); waits until it
    /// answers on its socket.
    pub(super) fn start(dir: &Path, netns: &NetNs, sandbox_image: &str) -> Result<Containerd> {
        anyhow::ensure!(
            Path::new(CNI_BIN_DIR).join("loopback").is_file(),
            "{CNI_BIN_DIR}/loopback missing (apt-get install containernetworking-plugins)"
        );
        std::fs::create_dir_all(dir.join("cni"))?;
        std::fs::write(dir.join("cni/10-loopback.conflist"), LOOPBACK_CONFLIST)?;
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config(dir, sandbox_image))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config_path);
        netns.enter_on_exec(&mut cmd);
        let mut child = ChildGuard::spawn("containerd", cmd, dir)?;
        let socket = dir.join("containerd.sock");
        let probe_socket = socket.clone();
        wait_ready_blocking(
            &mut child,
            "answering `ctr version`",
            READY_TIMEOUT,
            Duration::from_millis(200),
            || run_checked(ctr_at(&probe_socket).arg("version")).map(|_| ()),
        )?;
        Ok(Containerd { child, socket })
    }

    /// The gRPC socket (the kubelet's container runtime endpoint is `unix://` this).
    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Imports an OCI archive (`skopeo copy ... oci-archive:...`) into the CRI namespace.
    pub(super) fn import(&self, archive: &Path) -> Result<()> {
        run_checked(ctr_at(&self.socket).args(["images", "import"]).arg(archive))
            .with_context(|| format!("importing {} into containerd", archive.display()))?;
        Ok(())
    }

    /// Stops containerd (its shims outlive it: see `cleanup::kill_shims`).
    pub(super) fn stop(&mut self) {
        self.child.stop();
    }
}

/// `ctr --address <socket> -n k8s.io`.
fn ctr_at(socket: &Path) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(socket).args(["-n", K8S_NAMESPACE]);
    cmd
}
