//! A real, local Kubernetes control plane for tests: etcd and kube-apiserver (built by
//! `hack/build-control-plane.sh`) on free loopback ports, with TLS, client-certificate and
//! service-account-token authentication and RBAC authorization. No controller-manager, scheduler
//! or kubelet: objects are stored and served, nothing reconciles them (no pods run, namespaces are
//! not finalized, no `default` service account is created).
//!
//! For fault tests, either process can be stopped and started again (`restart` has why and
//! how): same arguments, ports, certificates and data, so existing clients and kubeconfigs keep
//! working.

mod etcd;
mod kubeconfig;
mod pki;
mod restart;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use self::etcd::EtcdConfig;
use self::kubeconfig::{KubeconfigUser, write_kubeconfig};
use self::pki::generate_pki;
use crate::process::{ChildGuard, wait_ready};
use crate::tcp_proxy::TcpProxy;

/// Environment variable naming a directory with `kube-apiserver`, `etcd`, `kubectl`, `helm`.
pub const BIN_DIR_ENV: &str = "IMDS_OPERATOR_BIN_DIR";

const ETCD_TIMEOUT: Duration = Duration::from_secs(60);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(180);
const PORT_RETRIES: usize = 3;
/// A restarted process must get its old port back: how often it tries, and how long it waits
/// between tries, while the port is still taken.
const RESTART_PORT_RETRIES: usize = 10;
const RESTART_PORT_WAIT: Duration = Duration::from_millis(500);
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const CONTEXT: &str = "imds-operator-test";

/// A running etcd and kube-apiserver in a temp dir of their own. Dropping it stops both and
/// removes the dir (see [`crate::keep_tmp`]).
pub struct ControlPlane {
    // Stopped in this order by Drop, then the dir is removed. `None` while stopped (see
    // `restart`).
    apiserver: Option<ChildGuard>,
    etcd: Option<ChildGuard>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    bin_dir: PathBuf,
    apiserver_port: u16,
    server_url: String,
    etcd_config: EtcdConfig,
    kubeconfig: PathBuf,
    startup: Duration,
    service_account_admission: bool,
}

/// The directory with the control-plane binaries: `$IMDS_OPERATOR_BIN_DIR`, else
/// `<cache>/bin` as filled by `hack/build-control-plane.sh`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => crate::cache_dir().join("bin"),
    }
}

fn require_binaries(dir: &Path, names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !is_executable(&dir.join(n))).collect();
    if !missing.is_empty() {
        bail!(
            "missing control-plane binaries {missing:?} in {} (set {BIN_DIR_ENV} or run \
             hack/build-control-plane.sh, which builds them into that cache)",
            dir.display()
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API is ready (`/readyz` and the
    /// `default` namespace exists), with a kubeconfig for an admin (`system:masters`) user.
    pub async fn start() -> Result<ControlPlane> {
        ControlPlane::start_with(false).await
    }

    /// Like [`ControlPlane::start`], with the ServiceAccount admission plugin on: pods get the
    /// service account token volume, for kubelets (`crate::node`) that run them. Pods are then
    /// refused until their service account exists.
    pub async fn start_for_nodes() -> Result<ControlPlane> {
        ControlPlane::start_with(true).await
    }

    async fn start_with(service_account_admission: bool) -> Result<ControlPlane> {
        let started = Instant::now();
        crate::init_crypto();
        let bin_dir = bin_dir();
        require_binaries(&bin_dir, &["kube-apiserver", "etcd"])?;
        let dir = crate::temp_dir("cp")?;
        let path = dir.path().to_path_buf();
        let pki = path.join("pki");
        std::fs::create_dir_all(&pki)?;
        generate_pki(&pki).context("generating certificates with openssl")?;

        let (etcd, etcd_config) = etcd::start_new(&bin_dir, &path).await?;
        let mut cp = ControlPlane {
            apiserver: None,
            etcd: Some(etcd),
            dir: Some(dir),
            path,
            bin_dir,
            apiserver_port: 0,
            server_url: String::new(),
            etcd_config,
            kubeconfig: PathBuf::new(),
            startup: Duration::ZERO,
            service_account_admission,
        };
        // From here on, an error drops `cp`, which stops etcd and removes the dir.
        cp.start_apiserver_on_a_free_port().await?;
        cp.startup = started.elapsed();
        Ok(cp)
    }

    /// Picks a port, writes the admin kubeconfig for it, starts kube-apiserver there; retries
    /// with another port when it loses a race for one.
    async fn start_apiserver_on_a_free_port(&mut self) -> Result<()> {
        let pki = self.path.join("pki");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = crate::free_port()?;
            self.apiserver_port = port;
            self.server_url = format!("https://127.0.0.1:{port}");
            self.kubeconfig = self.path.join("kubeconfig");
            write_kubeconfig(
                &self.kubeconfig,
                &self.server_url,
                &std::fs::read(pki.join("ca.crt"))?,
                KubeconfigUser::ClientCert {
                    name: "admin",
                    cert: &std::fs::read(pki.join("admin.crt"))?,
                    key: &std::fs::read(pki.join("admin.key"))?,
                },
            )?;
            match self.run_apiserver().await {
                Ok(apiserver) => {
                    self.apiserver = Some(apiserver);
                    return Ok(());
                }
                Err(e) if attempt < PORT_RETRIES && crate::is_port_conflict(&format!("{e:#}")) => {
                    eprintln!("kube-apiserver lost a race for port {port}, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts kube-apiserver on [`ControlPlane::apiserver_port`] and waits until it is ready.
    async fn run_apiserver(&self) -> Result<ChildGuard> {
        let mut apiserver = ChildGuard::spawn("kube-apiserver", self.apiserver_command(), &self.path)?;
        let probe = self.probe().await?;
        wait_ready(
            &mut apiserver,
            "ready (/readyz, default namespace)",
            APISERVER_TIMEOUT,
            Duration::from_millis(100),
            || probe.ready(),
        )
        .await?;
        Ok(apiserver)
    }

    /// kube-apiserver's command line: a function of the control plane's dir, ports and
    /// certificates only, so that a restart runs the same command.
    fn apiserver_command(&self) -> Command {
        let pki = self.path.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let mut cmd = Command::new(self.bin_dir.join("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers={}", self.etcd_config.client_url),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_port),
            format!("--cert-dir={}", self.path.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("client-ca.crt")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ]);
        if !self.service_account_admission {
            // Needs the `default` service account that only kube-controller-manager creates.
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        cmd
    }

    /// A readiness probe for the API server: `/readyz`, then a GET of the `default` namespace.
    async fn probe(&self) -> Result<Probe> {
        Ok(Probe {
            http: self.probe_http()?,
            kube: self.probe_client(&self.kubeconfig).await?,
            readyz: format!("{}/readyz", self.server_url),
        })
    }

    /// An HTTPS client for `/readyz`, as admin.
    fn probe_http(&self) -> Result<reqwest::Client> {
        let pki = self.path.join("pki");
        let mut identity = std::fs::read(pki.join("admin.crt"))?;
        identity.extend(std::fs::read(pki.join("admin.key"))?);
        Ok(reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt"))?)?)
            .identity(reqwest::Identity::from_pem(&identity)?)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()?)
    }

    /// A client for readiness probes: no retries, short timeouts.
    async fn probe_client(&self, kubeconfig: &Path) -> Result<kube::Client> {
        let mut config = load_config(kubeconfig).await?;
        config.default_retry = false;
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(5));
        Ok(kube::Client::try_from(config)?)
    }

    /// Path of the admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// `127.0.0.1:<port>`, where kube-apiserver listens (the same across restarts): the
    /// upstream of a [`TcpProxy`] in front of it.
    pub fn apiserver_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.apiserver_port))
    }

    /// Writes `<dir>/kubeconfig-via-<proxy port>`: the admin kubeconfig, talking to the API
    /// server through `proxy` (which forwards to [`ControlPlane::apiserver_addr`]; the serving
    /// certificate names 127.0.0.1, so TLS verification passes through the proxy). Returns its
    /// path.
    pub fn kubeconfig_via(&self, proxy: &TcpProxy) -> Result<PathBuf> {
        let path = self.path.join(format!("kubeconfig-via-{}", proxy.addr().port()));
        proxy.write_kubeconfig(&self.kubeconfig, &path)?;
        Ok(path)
    }

    /// The directory with kube-apiserver, etcd, kubectl and helm.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// This control plane's temp dir (logs `etcd.log`, `kube-apiserver.log`, `pki/`, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert_pem(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path.join("pki/ca.crt"))?)
    }

    /// How long [`ControlPlane::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// kube-apiserver's pid; `None` while it is stopped.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(ChildGuard::pid)
    }

    /// etcd's pid; `None` while it is stopped.
    pub fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().map(ChildGuard::pid)
    }

    /// An admin client, built from [`ControlPlane::kubeconfig_path`].
    pub async fn client(&self) -> Result<kube::Client> {
        let config = load_config(&self.kubeconfig).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`, with its discovery cache in the temp dir.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("KUBECACHEDIR", self.path.join("kube-cache"));
        cmd
    }

    /// `helm` with `KUBECONFIG` set to the admin kubeconfig and its cache, config and data dirs
    /// inside the temp dir.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("helm"));
        let helm = self.path.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", helm.join("cache"))
            .env("HELM_CONFIG_HOME", helm.join("config"))
            .env("HELM_DATA_HOME", helm.join("data"))
            .env("KUBECACHEDIR", self.path.join("kube-cache"));
        cmd
    }

    /// Writes a kubeconfig that authenticates as service account `namespace/name` with a bearer
    /// token from the TokenRequest API (valid for one hour). Creates the namespace and the
    /// service account if they do not exist. Returns the kubeconfig's path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let client = self.client().await?;
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_if_missing(&Api::<Namespace>::all(client.clone()), &ns).await?;
        let sas = Api::<ServiceAccount>::namespaced(client, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_if_missing(&sas, &sa).await?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for service account {namespace}/{name}"))?
            .status
            .and_then(|s| s.token)
            .context("TokenRequest without a token in its status")?;
        let path = self.path.join(format!("kubeconfig-sa-{namespace}-{name}"));
        write_kubeconfig(
            &path,
            &self.server_url,
            &self.ca_cert_pem()?,
            KubeconfigUser::Token {
                name: &format!("system:serviceaccount:{namespace}:{name}"),
                token: &token,
            },
        )?;
        Ok(path)
    }

    /// A client built from any kubeconfig file (e.g. one from
    /// [`ControlPlane::service_account_kubeconfig`]).
    pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
        Ok(kube::Client::try_from(load_config(path).await?)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop();
        }
        if let Some(dir) = self.dir.take() {
            crate::finish_temp_dir(dir);
        }
    }
}

async fn create_if_missing<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn load_config(kubeconfig: &Path) -> Result<kube::Config> {
    crate::init_crypto();
    let kc =
        Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    // The server is always on loopback: never go through a proxy from the environment.
    config.proxy_url = None;
    Ok(config)
}

struct Probe {
    http: reqwest::Client,
    kube: kube::Client,
    readyz: String,
}

impl Probe {
    async fn ready(&self) -> Result<()> {
        let resp = self.http.get(&self.readyz).send().await.context("GET /readyz")?;
        let status = resp.status();
        let body = resp.text().await?;
        anyhow::ensure!(status.is_success(), "/readyz: {status}: {body}");
        Api::<Namespace>::all(self.kube.clone())
            .get("default")
            .await
            .context("GET namespace default")?;
        Ok(())
    }
}
