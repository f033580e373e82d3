//! A local OCI registry (CNCF distribution's `registry`, built from the Go module proxy by
//! `hack/setup.d/20-image.sh`) on a free 127.0.0.1 port, plain HTTP, storage in a temp dir.
//! The binary comes from `IMDS_OPERATOR_REGISTRY`; tests fail when it is not set.

use crate::oci::required_env;
use crate::process::{self, ChildGuard};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running registry, stopped on drop.
pub struct Registry {
    server: ChildGuard,
    addr: String,
    dir: Option<tempfile::TempDir>,
}

impl Registry {
    /// Starts the registry and waits for `GET /v2/` to answer 200.
    pub async fn start() -> Result<Registry> {
        let binary = PathBuf::from(required_env("IMDS_OPERATOR_REGISTRY")?);
        let dir = crate::temp_dir("registry")?;
        for attempt in 0..3 {
            let port = crate::free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(&config, config_yaml(&dir.path().join("storage"), &addr))?;
            let mut cmd = Command::new(&binary);
            cmd.arg("serve")
                .arg(&config)
                // No telemetry exporters: nothing leaves the machine.
                .env("OTEL_TRACES_EXPORTER", "none")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_SDK_DISABLED", "true");
            let mut server = ChildGuard::spawn(&format!("registry-{attempt}"), cmd, dir.path())?;
            let http = reqwest::Client::builder().no_proxy().build()?;
            let url = format!("http://{addr}/v2/");
            let ready = process::wait_ready(
                &mut server,
                "serving /v2/",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let resp = http.get(&url).send().await?;
                        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                        Ok(())
                    }
                },
            )
            .await;
            match ready {
                Ok(()) => {
                    return Ok(Registry {
                        server,
                        addr,
                        dir: Some(dir),
                    });
                }
                Err(e) if crate::is_port_conflict(&server.log_tail(20)) => {
                    eprintln!("registry: port {port} taken, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("the registry lost the race for a free port three times")
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The digest the registry serves for `name:reference` (HEAD of the manifest, OCI and
    /// Docker media types accepted): the `Docker-Content-Digest` header.
    pub async fn manifest_digest(&self, name: &str, reference: &str) -> Result<String> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let resp = http
            .head(format!("http://{}/v2/{name}/manifests/{reference}", self.addr))
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "HEAD {name}:{reference}: {}", resp.status());
        resp.headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .context("no Docker-Content-Digest header")
    }

    /// The registry's log so far.
    pub fn log_tail(&self, lines: usize) -> String {
        self.server.log_tail(lines)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(dir) = self.dir.take() {
            crate::finish_temp_dir(dir);
        }
    }
}

fn config_yaml(storage: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
         rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}
