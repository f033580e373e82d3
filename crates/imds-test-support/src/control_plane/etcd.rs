//! The control plane's etcd: one member on two loopback ports (client and peer), its data in the
//! control plane's temp dir. The ports and the data dir are chosen once, when the control plane
//! starts, so that a restarted etcd is the same member with the same data at the same address.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::{ETCD_TIMEOUT, PORT_RETRIES, RESTART_PORT_RETRIES, RESTART_PORT_WAIT};
use crate::process::{ChildGuard, wait_ready};

/// Where the etcd member listens and keeps its data.
#[derive(Clone, Debug)]
pub(super) struct EtcdConfig {
    /// `http://127.0.0.1:<client port>`, what kube-apiserver's `--etcd-servers` names.
    pub(super) client_url: String,
    peer_url: String,
    data_dir: PathBuf,
}

impl EtcdConfig {
    fn command(&self, bin_dir: &Path) -> Command {
        let (client_url, peer_url) = (&self.client_url, &self.peer_url);
        let mut cmd = Command::new(bin_dir.join("etcd"));
        cmd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // Ignored by etcd once the data dir holds a member (a restart).
            "--initial-cluster-state=new".into(),
            // Tests do not need durability; fsync dominates etcd's latency on slow disks. A
            // killed etcd loses nothing by it: its writes are in the page cache, which outlives
            // the process (only a machine crash would lose them).
            "--unsafe-no-fsync".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=250".into(),
            "--log-level=warn".into(),
        ]);
        cmd
    }

    /// Starts etcd with this config (and whatever its data dir holds) and waits until it is
    /// healthy. Logs to `<dir>/etcd.log`.
    async fn run(&self, bin_dir: &Path, dir: &Path) -> Result<ChildGuard> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut etcd = ChildGuard::spawn("etcd", self.command(bin_dir), dir)?;
        let health = format!("{}/health", self.client_url);
        wait_ready(
            &mut etcd,
            "healthy",
            ETCD_TIMEOUT,
            Duration::from_millis(50),
            || async {
                let body = http.get(&health).send().await?.text().await?;
                anyhow::ensure!(body.contains(r#""health":"true""#), "{body}");
                Ok(())
            },
        )
        .await?;
        Ok(etcd)
    }
}

/// Starts a new etcd member with an empty data dir in `dir` on free ports, retrying with other
/// ports when it loses a race for one.
pub(super) async fn start_new(bin_dir: &Path, dir: &Path) -> Result<(ChildGuard, EtcdConfig)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ports = crate::free_ports(2)?;
        let config = EtcdConfig {
            client_url: format!("http://127.0.0.1:{}", ports[0]),
            peer_url: format!("http://127.0.0.1:{}", ports[1]),
            data_dir: dir.join("etcd-data"),
        };
        let _ = std::fs::remove_dir_all(&config.data_dir);
        match config.run(bin_dir, dir).await {
            Ok(etcd) => return Ok((etcd, config)),
            Err(e) if attempt < PORT_RETRIES && crate::is_port_conflict(&format!("{e:#}")) => {
                eprintln!("etcd lost a race for a port, retrying: {e:#}");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts etcd again with `config`: the same ports and data. A port the killed etcd held may
/// still be taken for a moment; that is retried on the same port (clients know no other).
pub(super) async fn restart(bin_dir: &Path, dir: &Path, config: &EtcdConfig) -> Result<ChildGuard> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match config.run(bin_dir, dir).await {
            Ok(etcd) => return Ok(etcd),
            Err(e) if attempt < RESTART_PORT_RETRIES && crate::is_port_conflict(&format!("{e:#}")) => {
                eprintln!("etcd: its port is still taken, retrying: {e:#}");
                tokio::time::sleep(RESTART_PORT_WAIT).await;
            }
            Err(e) => return Err(e),
        }
    }
}
