//! The control plane's fault helpers against the real binaries (see
//! `imds_test_support::control_plane::bin_dir`): kube-apiserver and etcd restarts keep the
//! objects, the ports, the CA and the clients; a TcpProxy in front of the API server passes TLS
//! through, and its Reset and Hang modes cut a kube client off.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use imds_test_support::{ControlPlane, ProxyMode, TcpProxy};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("key".to_string(), value.to_string())])),
        ..Default::default()
    }
}

async fn value_of(client: &kube::Client, name: &str) -> Result<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .with_context(|| format!("GET configmap {name}"))?;
    cm.data
        .and_then(|mut d| d.remove("key"))
        .with_context(|| format!("configmap {name} without its key"))
}

/// Every object written so far reads back with `client`, a new client, and kubectl.
async fn all_readable(cp: &ControlPlane, client: &kube::Client, objects: &[(&str, &str)]) -> Result<()> {
    let fresh = ControlPlane::client_from_kubeconfig(cp.kubeconfig_path()).await?;
    for (name, value) in objects {
        assert_eq!(value_of(client, name).await?, *value, "{name} via the old client");
        assert_eq!(value_of(&fresh, name).await?, *value, "{name} via a new client");
    }
    let (name, value) = objects[0];
    let out = cp
        .kubectl()
        .args(["get", "configmap", name, "-o", "jsonpath={.data.key}"])
        .output()?;
    ensure!(out.status.success(), "kubectl after a restart: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    Ok(())
}

#[tokio::test]
async fn restarts_keep_objects_ports_and_clients() -> Result<()> {
    let mut cp = ControlPlane::start().await?;
    eprintln!("control plane ready in {:?}", cp.startup_time());
    let client = cp.client().await?;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &config_map("before", "1")).await?;
    let (url, ca) = (cp.server_url().to_string(), cp.ca_cert_pem()?);
    let (apiserver_pid, etcd_pid) = (cp.apiserver_pid(), cp.etcd_pid());

    let took = cp.restart_apiserver().await?;
    eprintln!("restart_apiserver: ready again in {took:?}");
    assert_ne!(cp.apiserver_pid(), apiserver_pid, "kube-apiserver was not restarted");
    assert_eq!(cp.etcd_pid(), etcd_pid, "etcd was restarted with the API server");
    assert_eq!(cp.server_url(), url);
    assert_eq!(cp.ca_cert_pem()?, ca);
    all_readable(&cp, &client, &[("before", "1")]).await?;
    cms.create(&PostParams::default(), &config_map("between", "2")).await?;

    let took = cp.restart_etcd().await?;
    eprintln!("restart_etcd: control plane ready again in {took:?}");
    assert_ne!(cp.etcd_pid(), etcd_pid, "etcd was not restarted");
    all_readable(&cp, &client, &[("before", "1"), ("between", "2")]).await?;

    // stop/start: while etcd is down, the API server is not ready; afterwards, writes work.
    cp.stop_etcd();
    assert_eq!(cp.etcd_pid(), None);
    assert!(cp.start_apiserver().await.is_err(), "start_apiserver while it runs");
    let took = cp.start_etcd().await?;
    eprintln!("stop_etcd + start_etcd: ready again in {took:?}");
    cms.create(&PostParams::default(), &config_map("after", "3")).await?;

    cp.stop_apiserver();
    assert_eq!(cp.apiserver_pid(), None);
    ensure!(
        value_of(&client, "before").await.is_err(),
        "the API server answered while stopped"
    );
    let took = cp.start_apiserver().await?;
    eprintln!("stop_apiserver + start_apiserver: ready again in {took:?}");
    all_readable(&cp, &client, &[("before", "1"), ("between", "2"), ("after", "3")]).await?;
    Ok(())
}

/// A client for `kubeconfig` that gives up quickly: no retries, 2 s connect and read timeouts.
async fn impatient_client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    imds_test_support::init_crypto();
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.proxy_url = None;
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(2));
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test]
async fn a_proxy_in_front_of_the_api_server_passes_tls_resets_and_hangs() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let proxy = TcpProxy::start(cp.apiserver_addr());
    let kubeconfig = cp.kubeconfig_via(&proxy)?;
    let client = impatient_client(&kubeconfig).await?;
    let namespaces = Api::<Namespace>::all(client.clone());

    // Pass: TLS to 127.0.0.1 through the proxy verifies (the serving certificate names it).
    namespaces.get("default").await.context("GET through the proxy")?;
    assert!(proxy.accepted() >= 1);

    // Hang: nothing comes back; the client's own read timeout ends the request.
    proxy.set_mode(ProxyMode::Hang);
    let started = Instant::now();
    let hung = namespaces.get("default").await;
    let waited = started.elapsed();
    eprintln!("hang: {hung:?} after {waited:?}");
    ensure!(hung.is_err(), "a request got through a hanging proxy");
    ensure!(
        waited >= Duration::from_millis(1500),
        "a hang failed too fast ({waited:?}): {hung:?}"
    );

    // Reset: the request fails at once, not by a timeout.
    proxy.set_mode(ProxyMode::Reset);
    let started = Instant::now();
    let reset = namespaces.get("default").await;
    let waited = started.elapsed();
    eprintln!("reset: {reset:?} after {waited:?}");
    ensure!(reset.is_err(), "a request got through a resetting proxy");
    ensure!(
        waited < Duration::from_millis(1500),
        "a reset took {waited:?}: {reset:?}"
    );

    // Pass again: the same client works.
    proxy.set_mode(ProxyMode::Pass);
    namespaces.get("default").await.context("GET after the link is back")?;
    Ok(())
}
