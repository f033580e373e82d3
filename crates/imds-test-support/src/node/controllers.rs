//! kube-controller-manager and kube-scheduler beside the control plane (host network namespace,
//! loopback only, no leader election): what turns a Deployment into scheduled pods, a PDB into
//! its status, and a namespace into its `default` service account and `kube-root-ca.crt`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::ControlPlane;
use crate::process::{ChildGuard, wait_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The running kube-controller-manager and kube-scheduler; dropping stops both.
#[derive(Debug)]
pub struct Controllers {
    // Dropped (stopped) in this order.
    scheduler: ChildGuard,
    controller_manager: ChildGuard,
}

/// Flags both share: the admin kubeconfig for the API and for delegated authn/authz of their
/// own `/healthz` server, on 127.0.0.1:`port` with a self-signed certificate in `cert_dir`.
fn common_args(cmd: &mut Command, kubeconfig: &Path, port: u16, cert_dir: &Path) {
    for flag in ["kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"] {
        cmd.arg(format!("--{flag}={}", kubeconfig.display()));
    }
    cmd.arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg("--leader-elect=false")
        .arg("--v=1");
}

impl Controllers {
    /// Starts both against `cp` (logs and certificates in `dir`) and waits for their
    /// `/healthz`.
    pub async fn start(cp: &ControlPlane, dir: &Path) -> Result<Controllers> {
        let ports = crate::free_ports(2)?;
        let pki = cp.dir().join("pki");
        let mut kcm = Command::new(cp.bin_dir().join("kube-controller-manager"));
        common_args(&mut kcm, cp.kubeconfig_path(), ports[0], &dir.join("kcm-certs"));
        kcm.arg(format!(
            "--service-account-private-key-file={}",
            pki.join("sa.key").display()
        ))
        .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
        .arg("--use-service-account-credentials=false")
        .arg("--controllers=*")
        .arg("--cluster-name=imds-e2e");
        let mut controller_manager = ChildGuard::spawn("kube-controller-manager", kcm, dir)?;
        let mut sched = Command::new(cp.bin_dir().join("kube-scheduler"));
        common_args(&mut sched, cp.kubeconfig_path(), ports[1], &dir.join("scheduler-certs"));
        let mut scheduler = ChildGuard::spawn("kube-scheduler", sched, dir)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            // Their serving certificates are self-signed (no CA to verify); /healthz only.
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        for (child, port) in [(&mut controller_manager, ports[0]), (&mut scheduler, ports[1])] {
            let url = format!("https://127.0.0.1:{port}/healthz");
            wait_ready(
                child,
                "healthy (/healthz)",
                READY_TIMEOUT,
                Duration::from_millis(250),
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let resp = http.get(&url).send().await.context("GET /healthz")?;
                        ensure!(resp.status().is_success(), "/healthz: {}", resp.status());
                        Ok(())
                    }
                },
            )
            .await?;
        }
        Ok(Controllers {
            scheduler,
            controller_manager,
        })
    }

    /// The logs (`kube-controller-manager.log`, `kube-scheduler.log`) are in the dir given to
    /// [`Controllers::start`]; this is the tail of both, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "kube-controller-manager:\n{}\nkube-scheduler:\n{}",
            self.controller_manager.log_tail(lines),
            self.scheduler.log_tail(lines)
        )
    }
}

/// The binaries `hack/build-control-plane.sh node` builds, in [`crate::control_plane::bin_dir`].
pub fn node_binaries() -> Result<[PathBuf; 3]> {
    let dir = crate::control_plane::bin_dir();
    let bins = ["kubelet", "kube-controller-manager", "kube-scheduler"].map(|n| dir.join(n));
    let missing: Vec<String> = bins
        .iter()
        .filter(|b| !b.is_file())
        .map(|b| b.display().to_string())
        .collect();
    ensure!(
        missing.is_empty(),
        "missing {missing:?}: run `bash hack/build-control-plane.sh node` (make test-node does)"
    );
    Ok(bins)
}
