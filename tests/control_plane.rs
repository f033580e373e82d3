//! Tests of the test harness itself: a real control plane (etcd + kube-apiserver) and a moto
//! server start, serve what the operator's tests need, and go away without a trace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, Statistic};
use aws_sdk_ec2::types::{Filter, HttpTokensState, InstanceMetadataEndpointState};
use imds_test_support::process::{ChildGuard, pid_alive};
use imds_test_support::{ControlPlane, Moto, finish_temp_dir, keep_tmp, pinned_version, temp_dir};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn control_plane_serves_the_api_with_rbac() -> Result<()> {
    let cp = ControlPlane::start().await?;
    eprintln!("control plane at {} ready in {:?}", cp.server_url(), cp.startup_time());
    let client = cp.client().await?;

    // The version we pinned.
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, pinned_version("KUBE_VERSION")?);

    // Objects can be written and read back.
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let cm = ConfigMap {
        metadata: meta("harness-check"),
        data: Some(BTreeMap::from([("key".to_string(), "value".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    let read = cms.get("harness-check").await?;
    assert_eq!(read.data.unwrap()["key"], "value");

    // kubectl and helm are wired to this cluster.
    let out = cp
        .kubectl()
        .args(["get", "configmap", "harness-check", "-o", "jsonpath={.data.key}"])
        .output()?;
    assert!(out.status.success(), "kubectl: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "value");
    let out = cp.helm().args(["list", "--all-namespaces"]).output()?;
    assert!(out.status.success(), "helm list: {out:?}");

    // RBAC is enforced: a service account may do only what a Role grants it.
    let sa_kubeconfig = cp.service_account_kubeconfig("rbac-check", "robot").await?;
    let sa_client = ControlPlane::client_from_kubeconfig(&sa_kubeconfig).await?;
    let denied = Api::<Secret>::namespaced(sa_client.clone(), "rbac-check")
        .list(&ListParams::default())
        .await;
    match denied {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("a bare service account listed secrets: {other:?}"),
    }
    let ns_client = |ns| Api::<ConfigMap>::namespaced(sa_client.clone(), ns);
    assert!(ns_client("rbac-check").list(&ListParams::default()).await.is_err());

    Api::<Role>::namespaced(client.clone(), "rbac-check")
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("read-configmaps"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["list".into(), "get".into()],
                    ..Default::default()
                }]),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), "rbac-check")
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("robot-reads-configmaps"),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "read-configmaps".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "robot".into(),
                    namespace: Some("rbac-check".into()),
                    ..Default::default()
                }]),
            },
        )
        .await?;
    // The authorizer sees a new RoleBinding a moment after it is created: retry, bounded.
    let mut attempts = 0;
    loop {
        match ns_client("rbac-check").list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("not allowed yet ({e}); retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("listing configmaps after the RoleBinding"),
        }
    }
    assert!(ns_client("default").list(&ListParams::default()).await.is_err());
    // kubectl with the service-account kubeconfig agrees.
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .args(["auth", "can-i", "list", "secrets", "-n", "rbac-check"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{out:?}");
    Ok(())
}

#[tokio::test]
async fn control_plane_teardown_leaves_nothing_behind() -> Result<()> {
    // Runs concurrently with the test above: two control planes side by side.
    let cp = ControlPlane::start().await?;
    eprintln!("second control plane ready in {:?}", cp.startup_time());
    let apiserver = cp.apiserver_pid().context("no apiserver")?;
    let etcd = cp.etcd_pid().context("no etcd")?;
    let dir = cp.dir().to_path_buf();
    assert!(pid_alive(apiserver) && pid_alive(etcd));
    assert!(cp.kubeconfig_path().is_file());

    let stopping = Instant::now();
    drop(cp);
    eprintln!("control plane stopped in {:?}", stopping.elapsed());
    assert!(!pid_alive(apiserver), "kube-apiserver {apiserver} still there");
    assert!(!pid_alive(etcd), "etcd {etcd} still there");
    if !keep_tmp() {
        assert!(!dir.exists(), "{} still there", dir.display());
    }
    Ok(())
}

#[tokio::test]
async fn moto_runs_instances_with_metadata_options() {
    if let Err(e) = moto_scenario().await {
        panic!("{e:?}");
    }
}

async fn moto_scenario() -> Result<()> {
    let moto = Moto::start()?;
    eprintln!("moto at {} ready in {:?}", moto.endpoint(), moto.startup_time());
    let ids = moto
        .run_instances(3, &[("kubernetes.io/cluster/test", "owned"), ("role", "node")])
        .await?;
    assert_eq!(ids.len(), 3);

    let ec2 = moto.ec2_client().await;
    let out = ec2
        .describe_instances()
        .filters(Filter::builder().name("tag:role").values("node").build())
        .send()
        .await?;
    let instances: Vec<_> = out.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), 3);
    for i in &instances {
        assert!(ids.contains(&i.instance_id().unwrap().to_string()));
        let m = i.metadata_options().context("no metadata options")?;
        assert_eq!(m.http_tokens(), Some(&HttpTokensState::Optional));
        assert_eq!(m.http_put_response_hop_limit(), Some(1));
        assert_eq!(m.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled));
    }

    // What the operator does: require IMDSv2 on one instance.
    ec2.modify_instance_metadata_options()
        .instance_id(&ids[0])
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(2)
        .send()
        .await?;
    let out = ec2.describe_instances().instance_ids(&ids[0]).send().await?;
    let m = out.reservations()[0].instances()[0]
        .metadata_options()
        .context("no metadata options")?;
    assert_eq!(m.http_tokens(), Some(&HttpTokensState::Required));
    assert_eq!(m.http_put_response_hop_limit(), Some(2));

    // CloudWatch too (through setup-moto.sh's RPC v2 CBOR shim): metrics go in and come out.
    let cw = moto.cloudwatch_client().await;
    let now = std::time::SystemTime::now();
    cw.put_metric_data()
        .namespace("IMDSOperator")
        .metric_data(
            MetricDatum::builder()
                .metric_name("NodesCompliant")
                .dimensions(Dimension::builder().name("Cluster").value("test").build())
                .value(3.0)
                .unit(StandardUnit::Count)
                .timestamp(now.into())
                .build(),
        )
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("PutMetricData: {}", DisplayErrorContext(e)))?;
    let metrics = cw
        .list_metrics()
        .namespace("IMDSOperator")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("ListMetrics: {}", DisplayErrorContext(e)))?;
    let names: Vec<_> = metrics.metrics().iter().filter_map(|m| m.metric_name()).collect();
    assert_eq!(names, ["NodesCompliant"]);
    let stats = cw
        .get_metric_statistics()
        .namespace("IMDSOperator")
        .metric_name("NodesCompliant")
        .dimensions(Dimension::builder().name("Cluster").value("test").build())
        .start_time((now - Duration::from_secs(600)).into())
        .end_time((now + Duration::from_secs(600)).into())
        .period(60)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GetMetricStatistics: {}", DisplayErrorContext(e)))?;
    let points = stats.datapoints();
    assert_eq!(points.len(), 1, "{stats:?}");
    assert_eq!(points[0].maximum(), Some(3.0));
    assert!(points[0].timestamp().is_some());
    // Errors come through with their codes.
    let missing = cw.get_dashboard().dashboard_name("nope").send().await;
    let err = missing.expect_err("a dashboard that does not exist");
    let code = err.as_service_error().and_then(|e| e.meta().code());
    assert_eq!(code, Some("ResourceNotFound"), "{}", DisplayErrorContext(&err));

    // The environment for child processes points at this server.
    let env: BTreeMap<_, _> = moto.aws_env().into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], moto.endpoint());

    moto.reset().await?;
    let out = ec2.describe_instances().send().await?;
    assert!(out.reservations().is_empty(), "reset left {out:?}");

    let pid = moto.pid();
    drop(moto);
    assert!(!pid_alive(pid), "moto_server {pid} still there");
    Ok(())
}

#[test]
fn children_outlive_the_thread_that_started_them_but_not_their_guard() -> Result<()> {
    let dir = temp_dir("process-check")?;
    let log_dir = dir.path().to_path_buf();
    // Started from a thread that then exits: PR_SET_PDEATHSIG must not fire for that.
    let mut child = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        ChildGuard::spawn("sleeper", cmd, &log_dir)
    })
    .join()
    .expect("spawning thread")?;
    std::thread::sleep(Duration::from_millis(300));
    child.ensure_running()?;
    let pid = child.pid();
    assert!(pid_alive(pid));
    drop(child);
    assert!(!pid_alive(pid), "sleep {pid} survived its guard");
    finish_temp_dir(dir);
    Ok(())
}
