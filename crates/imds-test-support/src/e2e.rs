//! One end-to-end environment: a control plane with the CRD installed, an EC2 endpoint, the
//! operator binary, and helpers to create nodes and policies and wait for outcomes.

use crate::ControlPlane;
use crate::process::{self, ChildGuard};
use anyhow::{Context, Result, bail};
use imds_core::api::{InstanceMetadataPolicy, InstanceMetadataPolicyStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How long a test waits for the operator to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Polls `probe` until it yields `Some`, failing after `timeout` with the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match probe().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(seen)) => last = seen,
            Err(e) => last = format!("error: {e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The control plane with the CRD applied, and a kube client.
pub struct Cluster {
    pub cp: ControlPlane,
    pub client: kube::Client,
}

impl Cluster {
    pub async fn start() -> Result<Cluster> {
        let cp = ControlPlane::start().await?;
        let client = cp.client().await?;
        let crd = crate::repo_root().join("crds/imds-operator.io_instancemetadatapolicies.yaml");
        let mut apply = cp.kubectl();
        apply.args(["apply", "--server-side", "-f"]).arg(&crd);
        process::run_checked(&mut apply)?;
        let mut wait = cp.kubectl();
        wait.args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/instancemetadatapolicies.imds-operator.io",
        ]);
        process::run_checked(&mut wait)?;
        Ok(Cluster { cp, client })
    }

    /// `kubectl apply -f -` of a YAML document; returns the command's output (not checked).
    pub fn kubectl_apply(&self, yaml: &str) -> Result<Output> {
        let mut cmd = self.cp.kubectl();
        cmd.args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(yaml.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// `kubectl apply` that must succeed.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let out = self.kubectl_apply(yaml)?;
        if !out.status.success() {
            bail!("kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `kubectl <args>` that must succeed; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.cp.kubectl();
        cmd.args(args);
        let out = process::run_checked(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a Node with labels and (optionally) a providerID.
    pub async fn create_node(&self, name: &str, labels: &[(&str, &str)], provider_id: Option<&str>) -> Result<()> {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                provider_id: provider_id.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {name}"))?;
        Ok(())
    }

    pub fn policies(&self) -> Api<InstanceMetadataPolicy> {
        Api::all(self.client.clone())
    }

    /// The policy's status once `accept` holds for it.
    pub async fn wait_status(
        &self,
        policy: &str,
        what: &str,
        accept: impl Fn(&InstanceMetadataPolicy, &InstanceMetadataPolicyStatus) -> bool,
    ) -> Result<InstanceMetadataPolicyStatus> {
        let api = self.policies();
        eventually(&format!("{policy}: {what}"), CONVERGE, || {
            let api = api.clone();
            let accept = &accept;
            async move {
                let p = api.get(policy).await?;
                Ok(match p.status.clone() {
                    Some(s) if accept(&p, &s) => Ok(s),
                    other => Err(format!("{other:?}")),
                })
            }
        })
        .await
    }

    /// The operator's records (instance id → stored JSON), from its ConfigMaps in `default`.
    pub async fn records(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), "default");
        let list = api
            .list(&ListParams::default().labels("imds-operator.io/records=true"))
            .await?;
        let mut out = BTreeMap::new();
        for cm in list.items {
            for (id, text) in cm.data.unwrap_or_default() {
                out.insert(id, serde_json::from_str(&text)?);
            }
        }
        Ok(out)
    }

    /// Events (events.k8s.io) about a policy, as `reason: note` lines.
    pub async fn events_for(&self, policy: &str) -> Result<Vec<String>> {
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(policy))
            .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }
}

/// The condition `type_` of a status as (status, reason).
pub fn condition(s: &InstanceMetadataPolicyStatus, type_: &str) -> (String, String) {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// The operator binary, running against a cluster and an EC2 endpoint.
pub struct Operator {
    child: ChildGuard,
    pub metrics_url: String,
}

impl Operator {
    /// The operator binary: `$CARGO_BIN_EXE_imds-operator` when the test runner sets it at run
    /// time (cargo-nextest does), else `imds-operator` in the profile directory of the running
    /// executable, where cargo builds it for the integration tests and examples
    /// (`target/<profile>/deps/<test>` and `target/<profile>/examples/<example>`: two levels up).
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_imds-operator").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("imds-operator")))
            .unwrap_or_else(|| PathBuf::from("imds-operator"))
    }

    /// Starts `imds-operator run` with the admin kubeconfig (or `kubeconfig`), the AWS
    /// environment and extra flags.
    pub async fn start(cluster: &Cluster, aws_env: &[(String, String)], extra: &[&str]) -> Result<Operator> {
        Operator::start_with(
            cluster,
            cluster.cp.kubeconfig_path().to_path_buf(),
            "operator",
            aws_env,
            extra,
        )
        .await
    }

    pub async fn start_with(
        cluster: &Cluster,
        kubeconfig: PathBuf,
        name: &str,
        aws_env: &[(String, String)],
        extra: &[&str],
    ) -> Result<Operator> {
        let ports = crate::free_ports(2)?;
        let metrics = format!("127.0.0.1:{}", ports[0]);
        let health = format!("127.0.0.1:{}", ports[1]);
        let mut cmd = Command::new(Operator::binary());
        cmd.arg("run")
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--health-addr={health}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,imds_operator=debug")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME");
        for (k, v) in aws_env {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::spawn(name, cmd, cluster.cp.dir())?;
        let health_url = format!("http://{health}");
        let http = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("{health_url}/healthz");
        process::wait_ready(
            &mut child,
            "serving /healthz",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let resp = http.get(&url).send().await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    Ok(())
                }
            },
        )
        .await?;
        Ok(Operator {
            child,
            metrics_url: format!("http://{metrics}/metrics"),
        })
    }

    pub async fn metrics(&self) -> Result<String> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(http.get(&self.metrics_url).send().await?.text().await?)
    }

    /// The operator's pid (for `/proc` readings, see [`crate::procstat`]).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.child.ensure_running()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    /// SIGKILL: the process gets no chance to clean up (a crash, an OOM kill).
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.pid() as libc::pid_t, libc::SIGKILL);
        }
        self.child.stop_with_grace(Duration::from_secs(5));
    }

    /// SIGTERM, then wait up to `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.child.stop_with_grace(grace);
    }
}

/// A metric's value from Prometheus text (sum over label sets that contain `labels`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The providerID of a node on `id` (zone us-east-1a).
pub fn provider_id(id: &str) -> String {
    format!("aws:///us-east-1a/{id}")
}

/// (httpTokens, hop limit) of an instance, as the EC2 endpoint reports them.
pub async fn imds(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<(String, i32)> {
    let out = ec2.describe_instances().instance_ids(id).send().await?;
    let opts = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.metadata_options().cloned())
        .with_context(|| format!("{id} has no metadata options"))?;
    Ok((
        opts.http_tokens().map(|t| t.as_str().to_string()).unwrap_or_default(),
        opts.http_put_response_hop_limit().unwrap_or_default(),
    ))
}

/// Waits until an instance has `want` = (httpTokens, hop limit).
pub async fn wait_imds(ec2: &aws_sdk_ec2::Client, id: &str, want: (&str, i32), timeout: Duration) -> Result<()> {
    eventually(&format!("{id} to have {want:?}"), timeout, || async {
        let got = imds(ec2, id).await?;
        Ok(if (got.0.as_str(), got.1) == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        })
    })
    .await
}
