//! The kubelet of one node: a KubeletConfiguration for this machine (cgroup v1 with the
//! cgroupfs driver, its own cgroup root, no swap check, eviction and image GC thresholds low
//! enough for a nearly full disk, no anonymous or read-only access), every state dir under the
//! node's dir, started inside the node's network namespace.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::json;

use super::netns::NetNs;
use crate::process::ChildGuard;

/// What one kubelet needs to know.
pub(super) struct KubeletArgs<'a> {
    pub(super) bin: &'a Path,
    pub(super) dir: &'a Path,
    pub(super) node_name: &'a str,
    pub(super) node_ip: Ipv4Addr,
    pub(super) kubeconfig: &'a Path,
    pub(super) runtime_socket: &'a Path,
    pub(super) cgroup_root: &'a str,
    pub(super) provider_id: Option<&'a str>,
}

/// The KubeletConfiguration (JSON is YAML).
fn config(args: &KubeletArgs<'_>) -> serde_json::Value {
    let mut config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": args.node_ip.to_string(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": false}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": format!("unix://{}", args.runtime_socket.display()),
        // cgroup v1 here: the kubelet refuses it unless told otherwise.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": args.cgroup_root,
        "failSwapOn": false,
        // Lowering an OOM score needs CAP_SYS_RESOURCE, which this machine's root may not have.
        "oomScoreAdj": 0,
        "podLogsDir": args.dir.join("pod-logs").display().to_string(),
        // The machine's disk is shared and often ~85% full: no DiskPressure taint, no image GC
        // (which would delete the imported images that cannot be pulled again).
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "registerNode": true,
    });
    if let Some(id) = args.provider_id {
        config["providerID"] = json!(id);
    }
    config
}

/// Writes the configuration and starts the kubelet in `netns`.
pub(super) fn start(args: &KubeletArgs<'_>, netns: &NetNs) -> Result<ChildGuard> {
    std::fs::create_dir_all(args.dir.join("pod-logs"))?;
    std::fs::create_dir_all(args.dir.join("kubelet"))?;
    let config_path = args.dir.join("kubelet-config.yaml");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config(args))?)?;
    let mut cmd = Command::new(args.bin);
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--kubeconfig")
        .arg(args.kubeconfig)
        .arg("--root-dir")
        .arg(args.dir.join("kubelet"))
        .arg("--cert-dir")
        .arg(args.dir.join("kubelet-pki"))
        .arg(format!("--hostname-override={}", args.node_name))
        .arg(format!("--node-ip={}", args.node_ip))
        .arg("--v=2");
    netns.enter_on_exec(&mut cmd);
    ChildGuard::spawn("kubelet", cmd, args.dir)
}
