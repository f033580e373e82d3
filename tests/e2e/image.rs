//! The container image (issue 12, rungs 1 and 2): `hack/image.sh` builds it daemonless and
//! reproducibly (same commit and binary, same digest), it is minimal (a static binary, CA
//! certificates, passwd/group; no shell), and it runs under runc exactly as the chart's
//! Deployment specifies: args, env, user, read-only root, no capabilities, seccomp
//! RuntimeDefault, the chart's ports and probes, and in-cluster configuration from a service
//! account volume — converging a policy and releasing its Lease on SIGTERM.
//!
//! The image comes from `hack/setup.d/20-image.sh` (`IMDS_OPERATOR_IMAGE_DIR`,
//! `IMDS_OPERATOR_IMAGE_BIN`); without them these tests fail, naming the variable.

use anyhow::{Context, Result, ensure};
use imds_test_support::e2e::{CONVERGE, Cluster, eventually, metric_sum, provider_id, wait_imds};
use imds_test_support::oci::{ImageLayout, build_image, operator_version, required_env};
use imds_test_support::process::{self, run_checked};
use imds_test_support::runc::{self, BindMount, Container, PodIdentity};
use imds_test_support::{Moto, repo_root};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde::Deserialize as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NAMESPACE: &str = "imds-system";
const POD_NAME: &str = "imds-imds-operator-5d9c7b8f6-x2k4q";
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The EC2 endpoint's host name inside the container (in its /etc/hosts only).
const EC2_HOST: &str = "ec2.imds-e2e.test";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn git_head() -> Result<String> {
    let out = run_checked(
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(["rev-parse", "HEAD"]),
    )?;
    Ok(text(&out.stdout).trim().to_string())
}

/// The Dockerfile's final-stage instruction `name` (e.g. `USER`), as written.
fn dockerfile_instruction(dockerfile: &str, name: &str) -> Option<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")))
        .next_back()
        .map(|v| v.trim().to_string())
}

#[test]
fn image_is_minimal_and_reproducible() -> Result<()> {
    let layout = ImageLayout::from_env()?;
    let binary = std::path::PathBuf::from(required_env("IMDS_OPERATOR_IMAGE_BIN")?);
    let config = layout.config()?;
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{c}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/imds-operator"]),
        "{c}"
    );
    assert_eq!(c["Cmd"], serde_json::json!(["run"]), "{c}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], operator_version()?.as_str());
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://"))
    );
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or_default();
    assert_eq!(revision.len(), 40, "revision label {revision:?}");
    assert_eq!(config["created"], labels["org.opencontainers.image.created"]);

    // One layer: the static binary, the CA bundle, passwd/group, empty /tmp and home. No shell,
    // nothing else; every entry has the same (commit) timestamp.
    let listing = layout.layer_listing()?;
    let paths: Vec<&str> = listing.iter().filter_map(|l| l.split_whitespace().last()).collect();
    for want in [
        "usr/local/bin/imds-operator",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
    ] {
        assert!(paths.contains(&want), "{want} not in the image: {paths:?}");
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("bin") || p.starts_with("sbin") || p.ends_with("/sh")),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 14, "{listing:#?}");
    let dates: std::collections::BTreeSet<String> = listing
        .iter()
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(dates.len(), 1, "entries with different timestamps: {listing:#?}");
    let dynamic = run_checked(Command::new("readelf").arg("-dW").arg(&binary))?;
    assert!(
        !text(&dynamic.stdout).contains("NEEDED"),
        "the binary needs shared libraries"
    );

    // Reproducible: two more builds from the same binary (the second from a copy with another
    // mtime) give the same digest; and the one from setup too when it was built at this commit.
    let tmp = tempfile::tempdir()?;
    let (_, first) = build_image(&tmp.path().join("a"), &binary)?;
    let copy = tmp.path().join("imds-operator");
    std::fs::copy(&binary, &copy)?;
    let touched = std::fs::File::options().write(true).open(&copy)?;
    touched.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))?;
    drop(touched);
    let (_, second) = build_image(&tmp.path().join("b"), &copy)?;
    assert_eq!(first, second, "two builds of the same binary differ");
    if revision == git_head()? {
        assert_eq!(
            layout.digest()?,
            first,
            "the setup's image and a rebuild at the same commit differ"
        );
    }

    // The Dockerfile describes the same image.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    assert_eq!(
        dockerfile_instruction(&dockerfile, "USER").as_deref(),
        Some("65532:65532")
    );
    assert_eq!(
        dockerfile_instruction(&dockerfile, "ENTRYPOINT").as_deref(),
        Some(r#"["/usr/local/bin/imds-operator"]"#)
    );
    assert_eq!(
        dockerfile_instruction(&dockerfile, "CMD").as_deref(),
        Some(r#"["run"]"#)
    );
    eprintln!(
        "image {} {first}: {} bytes compressed, {} entries",
        layout.reference(),
        layout.blobs_size()?,
        paths.len()
    );
    Ok(())
}

/// `helm template` of the chart as the test installs it, as documents.
fn render_chart(cluster: &Cluster, args: &[String]) -> Result<Vec<serde_json::Value>> {
    let chart = repo_root().join("charts/imds-operator");
    let mut cmd = cluster.cp.helm();
    cmd.args(["template", "imds"])
        .arg(chart)
        .args(["--namespace", NAMESPACE])
        .args(args);
    let out = run_checked(&mut cmd)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text(&out.stdout)) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A TokenRequest token of the service account, as the kubelet projects it into a pod.
async fn service_account_token(client: &kube::Client, name: &str) -> Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {NAMESPACE}/{name}"))?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest without a token")
}

async fn lease_holder(client: &kube::Client) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get("imds-operator")
        .await?;
    Ok(lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
}

/// `/proc/<pid>/status` lines of the container's process (its pid from `runc state`).
fn container_status(bundle_parent: &Path, id: &str) -> Result<String> {
    let out = run_checked(
        Command::new("runc")
            .arg("--root")
            .arg(bundle_parent.join("runc-state"))
            .args(["state", id]),
    )?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pid = state["pid"].as_u64().context("runc state without pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default();
    Ok(format!("{status}\nroot mount: {root}"))
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_under_runc_as_the_chart_says() -> Result<()> {
    let layout = ImageLayout::from_env()?;
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "running a container with runc needs root"
    );
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(1, &[]).await?;

    // The chart, rendered with free ports (host network) and the EC2 endpoint in extraEnv.
    let ports = imds_test_support::free_ports(2)?;
    // The endpoint by name, resolved through the pod's /etc/hosts (as the kubelet writes one):
    // the static binary's glibc resolves names without NSS modules.
    let extra_env: Vec<serde_json::Value> = moto
        .aws_env()
        .into_iter()
        .map(|(name, value)| (name, value.replace("127.0.0.1", EC2_HOST)))
        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
        .collect();
    let docs = render_chart(
        &cluster,
        &[
            "--set".into(),
            format!("metrics.port={}", ports[0]),
            "--set".into(),
            format!("health.port={}", ports[1]),
            "--set-json".into(),
            format!("extraEnv={}", serde_json::Value::Array(extra_env)),
        ],
    )?;
    cluster.kubectl(&["create", "namespace", NAMESPACE])?;
    let installed: Vec<String> = docs
        .iter()
        .filter(|d| {
            !matches!(
                d["kind"].as_str(),
                Some("CustomResourceDefinition" | "Pod" | "ServiceMonitor")
            )
        })
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    cluster.apply(&installed.join("\n---\n"))?;
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment rendered")?;

    // What the kubelet gives the pod: the Deployment's container, KUBERNETES_SERVICE_*, and the
    // service account volume (token of the chart's ServiceAccount, the cluster CA, namespace).
    let pod = PodIdentity {
        name: POD_NAME.into(),
        namespace: NAMESPACE.into(),
    };
    let api = cluster.cp.apiserver_addr();
    let service_env = [
        ("KUBERNETES_SERVICE_HOST".to_string(), api.ip().to_string()),
        ("KUBERNETES_SERVICE_PORT".to_string(), api.port().to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), api.port().to_string()),
    ];
    let spec = runc::pod_container(deployment, &layout.config()?, &pod, &service_env)?;
    assert_eq!((spec.uid, spec.gid), (65532, 65532));
    assert!(
        spec.read_only_root && spec.no_new_privileges && spec.capabilities.is_empty(),
        "{spec:?}"
    );
    assert!(spec.seccomp.is_some(), "the chart asks for seccomp RuntimeDefault");
    let work = tempfile::tempdir()?;
    let sa_dir = work.path().join("serviceaccount");
    let token = service_account_token(&cluster.client, &spec.service_account).await?;
    let fs_group = spec.additional_gids.first().copied();
    runc::write_service_account_volume(&sa_dir, &token, &cluster.cp.ca_cert_pem()?, NAMESPACE, fs_group)?;
    let bundle = work.path().join("bundle");
    layout.unpack(&bundle)?;
    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1\tlocalhost\n127.0.0.1\t{EC2_HOST}\n"))?;
    let mounts = [
        BindMount {
            source: sa_dir,
            destination: SA_MOUNT.into(),
        },
        BindMount {
            source: hosts,
            destination: "/etc/hosts".into(),
        },
    ];
    runc::configure_bundle(&bundle, &spec, &mounts, POD_NAME)?;
    let id = format!("imds-operator-e2e-{}", std::process::id());
    let mut container = Container::run(&bundle, &id, cluster.cp.dir())?;

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let health = format!("http://127.0.0.1:{}/healthz", ports[1]);
    process::wait_ready(
        container.child_mut(),
        "serving /healthz",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let (http, url) = (http.clone(), health.clone());
            async move {
                let resp = http.get(&url).send().await?;
                ensure!(resp.status().is_success(), "status {}", resp.status());
                Ok(())
            }
        },
    )
    .await?;
    let status = container_status(work.path(), &id)?;
    assert_eq!(
        status_field(&status, "Uid:").split_whitespace().next(),
        Some("65532"),
        "{status}"
    );
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    let root_opts = status_field(&status, "root mount:")
        .split_whitespace()
        .nth(5)
        .unwrap_or_default();
    assert!(
        root_opts.split(',').any(|o| o == "ro"),
        "root is not read-only: {status}"
    );

    run_policy(&cluster, &ec2, &ids[0], &mut container, &http, &spec).await?;

    // SIGTERM (what the kubelet sends): the operator exits 0 and releases the Lease.
    container.signal("TERM")?;
    let exit = container.wait_exit(Duration::from_secs(60))?;
    assert!(exit.success(), "exit {exit}: {}", container.log_tail(30));
    let holder = lease_holder(&cluster.client).await?;
    assert_eq!(holder, None, "the Lease is still held after SIGTERM");
    Ok(())
}

/// Nodes + a policy converge; the Deployment's probes and /metrics answer on the chart's ports;
/// the pod leads under its own name.
async fn run_policy(
    cluster: &Cluster,
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    container: &mut Container,
    http: &reqwest::Client,
    spec: &runc::PodContainer,
) -> Result<()> {
    cluster
        .create_node("node-0", &[("pool", "general")], Some(&provider_id(id)))
        .await?;
    cluster.apply(
        r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: require-imdsv2
spec:
  nodeSelector: {}
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: 2
"#,
    )?;
    wait_imds(ec2, id, ("required", 2), CONVERGE).await?;
    container.ensure_running()?;
    assert_eq!(spec.http_probes.len(), 2, "{:?}", spec.http_probes);
    for (kind, path, port) in &spec.http_probes {
        let resp = http.get(format!("http://127.0.0.1:{port}{path}")).send().await?;
        assert!(resp.status().is_success(), "{kind} {path} on {port}: {}", resp.status());
    }
    let metrics_port = spec
        .ports
        .iter()
        .find(|(name, _)| name == "metrics")
        .map(|p| p.1)
        .context("no metrics port")?;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    eventually("the container to lead", CONVERGE, || async {
        let text = http.get(&url).send().await?.text().await?;
        let leader = metric_sum(&text, "imds_operator_leader", &[]);
        Ok(if leader == 1.0 {
            Ok(())
        } else {
            Err(format!("leader {leader}"))
        })
    })
    .await?;
    assert_eq!(lease_holder(&cluster.client).await?.as_deref(), Some(POD_NAME));
    Ok(())
}
