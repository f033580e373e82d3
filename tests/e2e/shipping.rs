//! What ships: the Helm chart (lint, schema, rendering accepted by the API server, the CRD copy),
//! the operator running under the chart's ServiceAccount and RBAC (enough, and no more), and
//! leader election between two replicas (one acts, SIGTERM hands over).
//!
//! The control plane runs no pods, so the chart's Deployment never starts: the operator binary
//! runs as a local process that authenticates as the chart's ServiceAccount (a TokenRequest
//! token), which exercises exactly the RBAC the chart grants.

use anyhow::{Context, Result, bail, ensure};
use imds_core::api::InstanceMetadataPolicy;
use imds_test_support::e2e::{CONVERGE, Cluster, Operator, condition, eventually, metric_sum, provider_id, wait_imds};
use imds_test_support::process::run_checked;
use imds_test_support::{ControlPlane, Moto, repo_root};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::Deserialize as _;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const RELEASE: &str = "imds";
const NAMESPACE: &str = "imds-system";
const CRD_FILE: &str = "imds-operator.io_instancemetadatapolicies.yaml";
const CRD_NAME: &str = "instancemetadatapolicies.imds-operator.io";
/// Short leases so that a handover fits in a test (the chart's default is 15s).
const LEASE_DURATION: &str = "4s";
/// Generous deadline for a handover on a noisy machine (the lease is 4s).
const HANDOVER_DEADLINE: Duration = Duration::from_secs(30);

fn chart_dir() -> PathBuf {
    repo_root().join("charts/imds-operator")
}

fn nondefault_values() -> PathBuf {
    chart_dir().join("ci/values-nondefault.yaml")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` with `stdin` piped in; returns the output (not checked).
fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Result<Output> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// `helm <args>` against the control plane; the output, not checked.
fn helm(cp: &ControlPlane, args: &[&str]) -> Result<Output> {
    let mut cmd = cp.helm();
    cmd.args(args).stdin(Stdio::null());
    cmd.output().with_context(|| format!("running helm {args:?}"))
}

/// `helm <args>` that must succeed; returns stdout.
fn helm_ok(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = helm(cp, args)?;
    ensure!(
        out.status.success(),
        "helm {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// `kubectl <args>` as admin that must succeed; returns stdout.
fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let mut cmd = cp.kubectl();
    cmd.args(args);
    Ok(text(&run_checked(&mut cmd)?.stdout))
}

/// The documents of a multi-document YAML stream (empty documents dropped).
fn yaml_documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).context("parsing a rendered document")?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &serde_json::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// One line per object as kubectl prints it: `kind/name`.
fn describe(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", kind_of(d), d["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

/// `helm template imds <chart> -n imds-system --include-crds <args>`, as documents.
fn render(cp: &ControlPlane, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().context("chart path")?,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    all.extend_from_slice(args);
    yaml_documents(&helm_ok(cp, &all)?)
}

/// The Deployment's container args, checked by the binary's own parser: `run <args> --help`
/// exits 0 only if every flag before `--help` exists and its value parses (clap parses in
/// order and stops at `--help`). The pods never run here, so this is where a chart/binary flag
/// mismatch would show.
fn check_args_parse(docs: &[serde_json::Value], skip: &[String]) -> Result<Vec<String>> {
    let deployment = docs
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .context("no Deployment rendered")?;
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("Deployment without container args")?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .filter(|a| !skip.contains(a))
        .collect();
    ensure!(args.first().map(String::as_str) == Some("run"), "args {args:?}");
    let out = Command::new(Operator::binary())
        .args(&args)
        .arg("--help")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "the operator binary rejects the chart's args {args:?}: {}",
        text(&out.stderr)
    );
    Ok(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_and_renders_for_the_api_server() -> Result<()> {
    let cluster = Cluster::start().await?;
    let cp = &cluster.cp;
    let chart = chart_dir();
    let chart_path = chart.to_str().context("chart path")?;
    let nondefault = nondefault_values();
    let nondefault_path = nondefault.to_str().context("values path")?;

    // Lint, with the required value and with the CI values.
    let lint = helm_ok(cp, &["lint", chart_path, "--set", "aws.region=us-east-1"])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    helm_ok(cp, &["lint", chart_path, "-f", nondefault_path])?;

    // Namespaced objects need their namespace to exist for a server-side dry run.
    kubectl_ok(cp, &["create", "namespace", NAMESPACE])?;

    // Every rendered object passes the API server's validation and admission (dry run). The
    // ServiceMonitor kind does not exist on this control plane (no prometheus-operator CRDs):
    // that document is filtered out of the stream, counted, and its shape checked here instead.
    let values_extra_args: Vec<String> = {
        let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&nondefault)?)?;
        serde_yaml::from_value(values["extraArgs"].clone()).unwrap_or_default()
    };
    let cases: [(&str, Vec<&str>, usize, Vec<String>); 2] = [
        ("defaults", vec!["--set", "aws.region=us-east-1"], 0, vec![]),
        (
            "ci/values-nondefault.yaml",
            vec!["-f", nondefault_path],
            1,
            values_extra_args,
        ),
    ];
    for (label, args, service_monitors, extra_args) in cases {
        let docs = render(cp, &args)?;
        let (monitors, rest): (Vec<_>, Vec<_>) = docs.into_iter().partition(|d| kind_of(d) == "ServiceMonitor");
        assert_eq!(monitors.len(), service_monitors, "{label}: ServiceMonitors rendered");
        for m in &monitors {
            assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1", "{label}: {m}");
            assert_eq!(m["metadata"]["namespace"], NAMESPACE, "{label}: {m}");
            assert_eq!(m["spec"]["endpoints"][0]["port"], "metrics", "{label}: {m}");
        }
        let kinds: BTreeSet<&str> = rest.iter().map(kind_of).collect();
        for want in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
        ] {
            assert!(kinds.contains(want), "{label}: no {want} among {kinds:?}");
        }
        let objects = describe(&rest);
        let stream = rest
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?
            .join("\n---\n");
        let mut apply = cp.kubectl();
        apply.args(["apply", "--dry-run=server", "-f", "-"]);
        let out = run_with_stdin(&mut apply, &stream)?;
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{label}: kubectl apply --dry-run=server failed:\n{}\n{stdout}",
            text(&out.stderr)
        );
        let accepted = stdout.lines().filter(|l| l.ends_with("(server dry run)")).count();
        assert_eq!(accepted, rest.len(), "{label}: {objects:?}\n{stdout}");
        let args = check_args_parse(&rest, &extra_args)?;
        eprintln!(
            "{label}: {} objects accepted by the API server (dry run): {objects:?}; {} ServiceMonitor(s) \
             left out (kind not served here); Deployment args parse: {args:?}",
            rest.len(),
            monitors.len()
        );
    }
    // A dry run creates nothing.
    let left = kubectl_ok(
        cp,
        &[
            "get",
            "deployments,serviceaccounts,services",
            "-n",
            NAMESPACE,
            "-o",
            "name",
        ],
    )?;
    assert_eq!(left.trim(), "", "dry run left objects behind");

    // A typo in a value is rejected by values.schema.json, naming the key.
    let out = helm(
        cp,
        &[
            "template",
            RELEASE,
            chart_path,
            "--set",
            "aws.region=us-east-1",
            "--set",
            "replicaCont=2",
        ],
    )?;
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a typo'd value was accepted:\n{}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("replicaCont") && stderr.contains("additional properties"),
        "{stderr}"
    );
    let out = helm(
        cp,
        &[
            "lint",
            chart_path,
            "--set",
            "aws.region=us-east-1",
            "--set",
            "replicaCont=2",
        ],
    )?;
    assert!(!out.status.success(), "helm lint accepted a typo'd value");

    // The chart's CRD is a template (so that `helm upgrade` upgrades it): the same object as
    // crds/ apart from the chart's labels and the keep annotation; `crds.install=false` leaves it
    // out and `crds.keep=false` drops the annotation.
    let plain: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("crds").join(CRD_FILE))?)?;
    let rendered = render(cp, &["--set", "aws.region=us-east-1"])?;
    // The policy CRD (the chart also renders the InstanceMetadataDefaults one).
    let crd = rendered
        .iter()
        .find(|d| kind_of(d) == "CustomResourceDefinition" && d["metadata"]["name"] == CRD_NAME)
        .context("the chart renders no CRD")?;
    let defaults_crd = rendered
        .iter()
        .find(|d| d["metadata"]["name"] == "instancemetadatadefaults.imds-operator.io")
        .context("the chart renders no InstanceMetadataDefaults CRD")?;
    assert_eq!(
        defaults_crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "{}",
        crd["metadata"]
    );
    assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    let mut stripped = crd.clone();
    if let Some(meta) = stripped["metadata"].as_object_mut() {
        meta.remove("labels");
        meta.remove("annotations");
    }
    if stripped != plain {
        bail!(
            "the chart's CRD template differs from crds/{CRD_FILE} beyond labels and annotations (run make generate)"
        );
    }
    let without = render(cp, &["--set", "aws.region=us-east-1", "--set", "crds.install=false"])?;
    assert!(!without.iter().any(|d| kind_of(d) == "CustomResourceDefinition"));
    let unkept = render(cp, &["--set", "aws.region=us-east-1", "--set", "crds.keep=false"])?;
    let unkept = unkept
        .iter()
        .find(|d| kind_of(d) == "CustomResourceDefinition")
        .context("no CRD with crds.keep=false")?;
    assert!(unkept["metadata"]["annotations"].is_null(), "{}", unkept["metadata"]);
    assert!(
        !chart.join("crds").exists(),
        "charts/imds-operator/crds/ is back: Helm would install that copy and never upgrade it"
    );
    Ok(())
}

fn policy_yaml(name: &str, on_delete: &str) -> String {
    format!(
        r#"
apiVersion: imds-operator.io/v1alpha1
kind: InstanceMetadataPolicy
metadata:
  name: {name}
spec:
  nodeSelector: {{}}
  metadataOptions:
    httpTokens: required
    httpPutResponseHopLimit: 2
  rollout: {{maxInFlight: "100%", settleSeconds: 0}}
  onDelete: {on_delete}
"#
    )
}

async fn lease_holder(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

/// The HTTP status of a kube API error (0 if the call succeeded or failed otherwise).
fn status_code<T>(result: &kube::Result<T>) -> u16 {
    match result {
        Err(kube::Error::Api(s)) => s.code,
        _ => 0,
    }
}

/// One row of `kubectl auth can-i --list`: (resource, resource names, verbs); non-resource rows
/// have an empty resource and the URLs in `names`.
type CanRow = (String, Vec<String>, Vec<String>);

fn bracketed(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Parses `kubectl auth can-i --list` (columns: Resources, Non-Resource URLs, Resource Names,
/// Verbs; the last three are `[...]` lists).
fn parse_can_i(table: &str) -> Result<Vec<CanRow>> {
    let mut rows = Vec::new();
    for line in table.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let start = line
            .find('[')
            .with_context(|| format!("unexpected can-i line {line:?}"))?;
        let resource = line[..start].trim().to_string();
        let groups: Vec<&str> = line[start..]
            .split(']')
            .map(|g| g.trim().trim_start_matches('['))
            .take(3)
            .collect();
        ensure!(groups.len() == 3, "unexpected can-i line {line:?}");
        let (urls, names, mut verbs) = (bracketed(groups[0]), bracketed(groups[1]), bracketed(groups[2]));
        verbs.sort();
        if resource.is_empty() {
            rows.push((String::new(), urls, verbs));
        } else {
            rows.push((resource, names, verbs));
        }
    }
    Ok(rows)
}

/// `kubectl auth can-i --list -n <namespace>` with the given kubeconfig.
fn can_i_list(cp: &ControlPlane, kubeconfig: &Path, namespace: &str) -> Result<String> {
    let mut cmd = Command::new(cp.bin_dir().join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .env("KUBECACHEDIR", cp.dir().join("kube-cache-sa"))
        .args(["auth", "can-i", "--list", "-n", namespace]);
    Ok(text(&run_checked(&mut cmd)?.stdout))
}

fn row(resource: &str, names: &[&str], verbs: &[&str]) -> CanRow {
    let mut verbs: Vec<String> = verbs.iter().map(|v| v.to_string()).collect();
    verbs.sort();
    (resource.into(), names.iter().map(|n| n.to_string()).collect(), verbs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runs_as_the_charts_service_account_with_least_privilege() -> Result<()> {
    // A bare control plane: the CRD must come from the chart (its CRD template).
    let cp = ControlPlane::start().await?;
    let crd_before = cp.kubectl().args(["get", "crd", CRD_NAME]).output()?;
    assert!(!crd_before.status.success(), "the CRD exists before helm install");

    let chart = chart_dir();
    let install = helm_ok(
        &cp,
        &[
            "install",
            RELEASE,
            chart.to_str().context("chart path")?,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "aws.region=us-east-1",
        ],
    )?;
    assert!(install.contains("STATUS: deployed"), "{install}");
    kubectl_ok(
        &cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{CRD_NAME}"),
        ],
    )?;
    let client = cp.client().await?;
    let cluster = Cluster { cp, client };
    let cp = &cluster.cp;

    // The chart's names: its ServiceAccount, and the Lease its Role grants.
    let sa = kubectl_ok(
        cp,
        &[
            "get",
            "serviceaccounts",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )?;
    let sa: Vec<&str> = sa.split_whitespace().collect();
    assert_eq!(sa.len(), 1, "the chart's ServiceAccounts: {sa:?}");
    let sa = sa[0].to_string();
    let values: serde_json::Value = serde_json::from_str(&helm_ok(
        cp,
        &["get", "values", RELEASE, "-n", NAMESPACE, "--all", "-o", "json"],
    )?)?;
    let lease_name = values["leaderElection"]["leaseName"]
        .as_str()
        .context("leaderElection.leaseName")?
        .to_string();
    assert_eq!(values["leaderElection"]["enabled"], true);
    eprintln!("chart ServiceAccount {NAMESPACE}/{sa}, lease {NAMESPACE}/{lease_name}");
    let sa_kubeconfig = cp.service_account_kubeconfig(NAMESPACE, &sa).await?;
    let sa_client = ControlPlane::client_from_kubeconfig(&sa_kubeconfig).await?;

    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(1, &[]).await?;
    cluster
        .create_node("node-0", &[("pool", "general")], Some(&provider_id(&ids[0])))
        .await?;

    let identity = "imds-operator-sa-test";
    let log_name = "operator-sa";
    let mut operator = Operator::start_with(
        &cluster,
        sa_kubeconfig.clone(),
        log_name,
        &moto.aws_env(),
        &[
            "--leader-election=true",
            "--lease-name",
            &lease_name,
            "--lease-namespace",
            NAMESPACE,
            "--lease-duration",
            LEASE_DURATION,
            "--identity",
            identity,
            "--resync-period=10m",
        ],
    )
    .await?;
    eventually("the operator to lead", CONVERGE, || async {
        let m = operator.metrics().await?;
        let leader = metric_sum(&m, "imds_operator_leader", &[]);
        Ok(if leader == 1.0 {
            Ok(())
        } else {
            Err(format!("leader {leader}"))
        })
    })
    .await?;
    assert_eq!(
        lease_holder(&cluster.client, NAMESPACE, &lease_name).await?.as_deref(),
        Some(identity)
    );

    // A policy created by an admin converges under the chart's RBAC: nodes list/watch, policies
    // (watch, finalizer patch), status, events.k8s.io, the Lease.
    cluster.apply(&policy_yaml("require-imdsv2", "Restore"))?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    let status = cluster
        .wait_status("require-imdsv2", "Ready True", |p, s| {
            s.observed_generation == p.metadata.generation && condition(s, "Ready").0 == "True"
        })
        .await?;
    assert_eq!((status.matched_nodes, status.compliant_nodes), (1, 1), "{status:?}");
    let policy = cluster.policies().get("require-imdsv2").await?;
    assert!(
        policy
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&imds_core::api::RESTORE_FINALIZER.to_string()),
        "the operator could not add its finalizer"
    );
    let events = cluster.events_for("require-imdsv2").await?;
    assert!(events.iter().any(|e| e.starts_with("Modified:")), "{events:?}");
    let log = std::fs::read_to_string(cp.dir().join(format!("{log_name}.log")))?;
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("forbidden") || l.contains("could not publish")
        })
        .collect();
    assert!(
        denied.is_empty(),
        "the operator was denied something:\n{}",
        denied.join("\n")
    );

    // What the ServiceAccount must not do.
    let nodes: Api<Node> = Api::all(sa_client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some("sa-created".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let create = nodes.create(&PostParams::default(), &node).await;
    assert_eq!(status_code(&create), 403, "create node: {create:?}");
    let patch = serde_json::json!({"metadata": {"labels": {"pwned": "true"}}});
    let patched = nodes
        .patch("node-0", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    assert_eq!(status_code(&patched), 403, "patch node: {patched:?}");
    let deleted = nodes.delete("node-0", &DeleteParams::default()).await;
    assert_eq!(status_code(&deleted), 403, "delete node: {deleted:?}");
    for (scope, secrets) in [
        (NAMESPACE, Api::<Secret>::namespaced(sa_client.clone(), NAMESPACE)),
        ("default", Api::<Secret>::namespaced(sa_client.clone(), "default")),
        ("all namespaces", Api::<Secret>::all(sa_client.clone())),
    ] {
        let listed = secrets.list(&ListParams::default()).await;
        assert_eq!(status_code(&listed), 403, "list secrets in {scope}: {listed:?}");
    }
    let got = Api::<Secret>::namespaced(sa_client.clone(), NAMESPACE)
        .get("anything")
        .await;
    assert_eq!(status_code(&got), 403, "get secret: {got:?}");
    let sa_policies: Api<InstanceMetadataPolicy> = Api::all(sa_client.clone());
    let deleted = sa_policies.delete("require-imdsv2", &DeleteParams::default()).await;
    assert_eq!(status_code(&deleted), 403, "delete policy: {deleted:?}");
    let other_lease = Api::<Lease>::namespaced(sa_client.clone(), NAMESPACE)
        .get("some-other-lease")
        .await;
    assert_eq!(status_code(&other_lease), 403, "get another lease: {other_lease:?}");

    // Everything the ServiceAccount may do, as the API server reports it: the chart's rules
    // plus what every authenticated user gets (self reviews, discovery URLs), nothing else.
    let cluster_rules = [
        row("nodes", &[], &["get", "list", "watch"]),
        row(
            "instancemetadatapolicies.imds-operator.io",
            &[],
            &["get", "list", "watch", "patch"],
        ),
        row(
            "instancemetadatapolicies.imds-operator.io/status",
            &[],
            &["get", "patch"],
        ),
        // The opt-in InstanceMetadataDefaults singleton.
        row(
            "instancemetadatadefaults.imds-operator.io",
            &[],
            &["get", "list", "watch"],
        ),
        row(
            "instancemetadatadefaults.imds-operator.io/status",
            &[],
            &["get", "patch"],
        ),
        // Karpenter's node classes and pools, read only.
        row("ec2nodeclasses.karpenter.k8s.aws", &[], &["get", "list", "watch"]),
        row("nodepools.karpenter.sh", &[], &["get", "list", "watch"]),
    ];
    // Events only in "default", where the recorder publishes them for cluster-scoped objects.
    let event_rules = [row("events.events.k8s.io", &[], &["create", "patch"])];
    // The records ConfigMaps: kubectl lists one row per resource name.
    let mut lease_rules = vec![
        row("leases.coordination.k8s.io", &[], &["create"]),
        row("leases.coordination.k8s.io", &[&lease_name], &["get", "update"]),
        row("configmaps", &[], &["create"]),
    ];
    for i in 0..16 {
        let name = format!("imds-operator-records-{i:02x}");
        lease_rules.push(row("configmaps", &[&name], &["get", "update"]));
    }
    let everyone = [
        row("selfsubjectreviews.authentication.k8s.io", &[], &["create"]),
        row("selfsubjectaccessreviews.authorization.k8s.io", &[], &["create"]),
        row("selfsubjectrulesreviews.authorization.k8s.io", &[], &["create"]),
    ];
    for namespace in [NAMESPACE, "default"] {
        let table = can_i_list(cp, &sa_kubeconfig, namespace)?;
        eprintln!("kubectl auth can-i --list -n {namespace} as {NAMESPACE}/{sa}:\n{table}");
        let rows = parse_can_i(&table)?;
        let mut want: Vec<CanRow> = cluster_rules.to_vec();
        if namespace == NAMESPACE {
            want.extend(lease_rules.iter().cloned());
        } else {
            want.extend(event_rules.iter().cloned());
        }
        for w in &want {
            assert!(rows.contains(w), "-n {namespace}: missing {w:?} in\n{table}");
        }
        for r in &rows {
            let allowed = want.contains(r)
                || everyone.contains(r)
                || (r.0.is_empty() && r.2 == ["get"] && r.1.iter().all(|u| u.starts_with('/')));
            assert!(
                allowed,
                "-n {namespace}: the ServiceAccount may do more than intended: {r:?}\n{table}"
            );
        }
    }

    // The admin deletes the policy: the operator (as the ServiceAccount) restores the instance
    // and removes its finalizer.
    cluster.kubectl(&["delete", "instancemetadatapolicy", "require-imdsv2", "--wait=false"])?;
    wait_imds(&ec2, &ids[0], ("optional", 1), CONVERGE).await?;
    eventually("the policy to be gone", CONVERGE, || async {
        Ok(match cluster.policies().get_opt("require-imdsv2").await? {
            None => Ok(()),
            Some(p) => Err(format!("finalizers {:?}", p.metadata.finalizers)),
        })
    })
    .await?;
    let log = std::fs::read_to_string(cp.dir().join(format!("{log_name}.log")))?;
    let log = log.to_ascii_lowercase();
    assert!(
        !log.contains("forbidden") && !log.contains("could not publish"),
        "the operator was denied something:\n{}",
        operator.log_tail(40)
    );
    operator.ensure_running()?;
    Ok(())
}

async fn leader_value(operator: &Operator) -> Result<f64> {
    Ok(metric_sum(&operator.metrics().await?, "imds_operator_leader", &[]))
}

async fn modifications(operator: &Operator) -> Result<f64> {
    Ok(metric_sum(
        &operator.metrics().await?,
        "imds_operator_instance_modifications_total",
        &[],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over() -> Result<()> {
    let cluster = Cluster::start().await?;
    let moto = Moto::start()?;
    let ec2 = moto.ec2_client().await;
    let ids = moto.run_instances(2, &[]).await?;
    let lease_ns = "default";
    let lease_name = "imds-operator";
    let start = |identity: &'static str| {
        let cluster = &cluster;
        let aws = moto.aws_env();
        async move {
            Operator::start_with(
                cluster,
                cluster.cp.kubeconfig_path().to_path_buf(),
                identity,
                &aws,
                &[
                    "--leader-election=true",
                    "--lease-name",
                    lease_name,
                    "--lease-namespace",
                    lease_ns,
                    "--lease-duration",
                    LEASE_DURATION,
                    "--identity",
                    identity,
                    "--resync-period=10m",
                ],
            )
            .await
        }
    };
    let mut ops = vec![start("replica-a").await?, start("replica-b").await?];
    let names = ["replica-a", "replica-b"];

    // Exactly one leads, and keeps leading.
    let leader = eventually("exactly one leader", CONVERGE, || async {
        let values = [leader_value(&ops[0]).await?, leader_value(&ops[1]).await?];
        Ok(if values == [1.0, 0.0] {
            Ok(0)
        } else if values == [0.0, 1.0] {
            Ok(1)
        } else {
            Err(format!("imds_operator_leader {values:?}"))
        })
    })
    .await?;
    let standby = 1 - leader;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let values = [leader_value(&ops[0]).await?, leader_value(&ops[1]).await?];
        assert_eq!(values[leader], 1.0, "{values:?}");
        assert_eq!(values[standby], 0.0, "two leaders: {values:?}");
    }
    let holder = lease_holder(&cluster.client, lease_ns, lease_name).await?;
    assert_eq!(holder.as_deref(), Some(names[leader]));
    eprintln!("leader: {}, standby: {}", names[leader], names[standby]);

    // Only the leader acts.
    cluster
        .create_node("node-0", &[("pool", "general")], Some(&provider_id(&ids[0])))
        .await?;
    cluster.apply(&policy_yaml("require-imdsv2", "Retain"))?;
    wait_imds(&ec2, &ids[0], ("required", 2), CONVERGE).await?;
    cluster
        .wait_status("require-imdsv2", "Ready True", |p, s| {
            s.observed_generation == p.metadata.generation && condition(s, "Ready").0 == "True"
        })
        .await?;
    assert_eq!(modifications(&ops[leader]).await?, 1.0);
    assert_eq!(
        modifications(&ops[standby]).await?,
        0.0,
        "the standby modified an instance"
    );

    // SIGTERM to the leader: it releases the lease on the way out and exits 0. "Released" (not
    // merely expired) means the holder changes before the expiry of the last renewal.
    let lease_spec = Api::<Lease>::namespaced(cluster.client.clone(), lease_ns)
        .get(lease_name)
        .await?
        .spec
        .context("lease without spec")?;
    let renewed: SystemTime = lease_spec.renew_time.context("lease without renewTime")?.0.into();
    let expiry = renewed + Duration::from_secs(lease_spec.lease_duration_seconds.unwrap_or_default().max(0) as u64);
    let mut old = ops.remove(leader);
    let new = ops.remove(0);
    let old_identity = names[leader];
    let terminated = Instant::now();
    let stopper = tokio::task::spawn_blocking(move || {
        old.stop(HANDOVER_DEADLINE);
        (old, terminated.elapsed())
    });
    let (released_after, released_at, holder_then) = loop {
        let holder = lease_holder(&cluster.client, lease_ns, lease_name).await?;
        if holder.as_deref() != Some(old_identity) {
            break (terminated.elapsed(), SystemTime::now(), holder);
        }
        ensure!(
            terminated.elapsed() < HANDOVER_DEADLINE,
            "the lease still names {old_identity} {HANDOVER_DEADLINE:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut old, exited_after) = stopper.await?;
    let margin = expiry.duration_since(released_at).map_err(|late| {
        anyhow::anyhow!(
            "the lease changed hands only {:?} after it expired: not released on SIGTERM (holder then {holder_then:?})",
            late.duration()
        )
    })?;
    eprintln!(
        "lease released {released_after:?} after SIGTERM (holder then {holder_then:?}), {margin:?} before its \
         last renewal would have expired; old leader exited {exited_after:?} after SIGTERM"
    );
    assert!(
        exited_after < HANDOVER_DEADLINE,
        "the old leader did not exit on SIGTERM within {HANDOVER_DEADLINE:?} (killed)"
    );
    let exit = old.ensure_running().expect_err("the old leader was stopped");
    assert!(
        format!("{exit:#}").contains("exited with exit status: 0"),
        "the old leader did not exit 0: {exit:#}"
    );
    assert!(
        !old.log_tail(200).contains("lost the leader lease"),
        "{}",
        old.log_tail(40)
    );

    // The standby takes over and acts on a new node.
    cluster
        .create_node("node-1", &[("pool", "general")], Some(&provider_id(&ids[1])))
        .await?;
    let took_over = eventually("the standby to lead", HANDOVER_DEADLINE, || async {
        let value = leader_value(&new).await?;
        Ok(if value == 1.0 {
            Ok(terminated.elapsed())
        } else {
            Err(format!("imds_operator_leader {value}"))
        })
    })
    .await?;
    wait_imds(&ec2, &ids[1], ("required", 2), HANDOVER_DEADLINE).await?;
    let acted = terminated.elapsed();
    eprintln!(
        "handover: new leader {:?} after SIGTERM, new node's instance modified {acted:?} after SIGTERM \
         (lease duration {LEASE_DURATION})",
        took_over
    );
    assert_eq!(
        lease_holder(&cluster.client, lease_ns, lease_name).await?.as_deref(),
        Some(names[standby])
    );
    // The counter follows EC2's answer, which moto may have applied a moment earlier.
    eventually("the new leader to count its modification", CONVERGE, || async {
        let n = modifications(&new).await?;
        Ok(if n >= 1.0 { Ok(()) } else { Err(format!("{n}")) })
    })
    .await?;
    assert_eq!(modifications(&new).await?, 1.0, "only the new node needed a change");
    let mut new = new;
    new.ensure_running()?;
    Ok(())
}
