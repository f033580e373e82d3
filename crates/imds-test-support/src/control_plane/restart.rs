//! Stopping and starting the control plane's processes, for fault tests (an API server that
//! restarts under the operator, etcd going away and coming back).
//!
//! A process started again runs the same command: the same arguments, ports, certificates and
//! data directory (etcd keeps its data, kube-apiserver its serving certificate and
//! service-account keys), so every client and kubeconfig made before keeps working once it is
//! ready again. Its log (`<dir>/<name>.log`) is appended to, with a line marking each kill.
//!
//! Processes are stopped with SIGKILL, not SIGTERM:
//! - it is the harsher case, and the one a crash, an OOM kill or a lost node produce: open
//!   connections drop without a graceful drain (no HTTP/2 GOAWAY, watches cut mid-stream,
//!   in-flight requests unanswered). An operator that survives that survives a graceful restart.
//! - it is fast and deterministic: kube-apiserver's graceful shutdown waits for in-flight
//!   requests and long-running ones for a variable time, ChildGuard's would then add up to its
//!   3 s grace.
//! - it loses no data: etcd's acknowledged writes are in the page cache (also with
//!   `--unsafe-no-fsync`), which outlives the process.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{APISERVER_TIMEOUT, ControlPlane, RESTART_PORT_RETRIES, RESTART_PORT_WAIT, etcd};
use crate::process::wait_ready;

impl ControlPlane {
    /// Kills kube-apiserver (SIGKILL, see the module docs) and reaps it. Until
    /// [`ControlPlane::start_apiserver`], connecting to [`ControlPlane::server_url`] is refused.
    /// No-op when it is stopped already.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
            self.note_in_log("kube-apiserver", "killed (SIGKILL) by the test harness");
        }
    }

    /// Starts kube-apiserver again, with the same command line and port, and waits until it is
    /// ready (`/readyz` and the `default` namespace), at most 180 s per attempt; retries (up to
    /// 10 times, 0.5 s apart) while its port is still taken. Returns how long it took. Fails if
    /// it is running.
    pub async fn start_apiserver(&mut self) -> Result<Duration> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver is running already");
        }
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_apiserver().await {
                Ok(apiserver) => {
                    self.apiserver = Some(apiserver);
                    return Ok(started.elapsed());
                }
                Err(e) if attempt < RESTART_PORT_RETRIES && crate::is_port_conflict(&format!("{e:#}")) => {
                    eprintln!(
                        "kube-apiserver: port {} still taken, retrying: {e:#}",
                        self.apiserver_port
                    );
                    tokio::time::sleep(RESTART_PORT_WAIT).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`ControlPlane::stop_apiserver`], then [`ControlPlane::start_apiserver`]. Returns the time
    /// from the kill until it was ready again.
    pub async fn restart_apiserver(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.stop_apiserver();
        self.start_apiserver().await?;
        Ok(started.elapsed())
    }

    /// Kills etcd (SIGKILL, see the module docs) and reaps it. kube-apiserver keeps running:
    /// requests that need etcd fail or hang until [`ControlPlane::start_etcd`], and `/readyz`
    /// fails. No-op when it is stopped already.
    pub fn stop_etcd(&mut self) {
        if let Some(mut etcd) = self.etcd.take() {
            etcd.kill();
            self.note_in_log("etcd", "killed (SIGKILL) by the test harness");
        }
    }

    /// Starts etcd again with the same ports and data dir and waits until it is healthy (at
    /// most 60 s per attempt, retried while a port is still taken), then, if kube-apiserver runs,
    /// until that is ready again (it reconnects by itself; at most 180 s). Returns how long it
    /// took. Fails if etcd is running.
    pub async fn start_etcd(&mut self) -> Result<Duration> {
        if self.etcd.is_some() {
            bail!("etcd is running already");
        }
        let started = Instant::now();
        self.etcd = Some(etcd::restart(&self.bin_dir, &self.path, &self.etcd_config).await?);
        self.wait_apiserver_ready("ready again after etcd restarted").await?;
        Ok(started.elapsed())
    }

    /// [`ControlPlane::stop_etcd`], then [`ControlPlane::start_etcd`]. Returns the time from the
    /// kill until the control plane was ready again.
    pub async fn restart_etcd(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.stop_etcd();
        self.start_etcd().await?;
        Ok(started.elapsed())
    }

    /// Waits until the running kube-apiserver is ready; nothing to wait for when it is stopped.
    async fn wait_apiserver_ready(&mut self, what: &str) -> Result<()> {
        let probe = self.probe().await?;
        let Some(apiserver) = self.apiserver.as_mut() else {
            return Ok(());
        };
        wait_ready(apiserver, what, APISERVER_TIMEOUT, Duration::from_millis(100), || {
            probe.ready()
        })
        .await
    }

    /// Appends a line to `<dir>/<name>.log`, so that a reader can tell the runs apart.
    fn note_in_log(&self, name: &str, what: &str) {
        let path = self.path.join(format!("{name}.log"));
        if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(log, "===== imds-test-support: {name} {what} =====");
        }
    }
}
