//! A moto server (<https://github.com/getmoto/moto>) standing in for the EC2 and CloudWatch APIs.
//!
//! The server comes from `hack/setup-moto.sh` (a cached virtualenv), or from the executable
//! named by `$IMDS_OPERATOR_MOTO_SERVER`. Each [`Moto`] is its own server process on its own
//! port, so its state is private to the test that started it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceType, ResourceType, Tag,
    TagSpecification,
};

use crate::process::{ChildGuard, run_checked, wait_ready_blocking};

/// Environment variable naming a `moto_server` executable to use instead of hack/setup-moto.sh.
pub const MOTO_SERVER_ENV: &str = "IMDS_OPERATOR_MOTO_SERVER";
/// The region everything runs in.
pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
/// An AMI that moto ships in us-east-1 (checked with DescribeImages on moto 5.2.5).
pub const DEFAULT_AMI: &str = "ami-12c6146b";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const PORT_RETRIES: usize = 3;

pub struct Moto {
    server: ChildGuard,
    dir: Option<tempfile::TempDir>,
    endpoint: String,
    startup: Duration,
}

/// The moto_server executable, from `$IMDS_OPERATOR_MOTO_SERVER` or hack/setup-moto.sh (run at
/// most once per process; it is a no-op when its venv is cached).
pub fn moto_server_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(MOTO_SERVER_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    static CACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = CACHED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cached.as_ref() {
        return Ok(path.clone());
    }
    let script = crate::repo_root().join("hack/setup-moto.sh");
    let out = run_checked(Command::new("bash").arg(&script)).with_context(|| format!("{} failed", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .with_context(|| format!("{} printed nothing", script.display()))?,
    );
    if !path.is_file() {
        bail!("{} printed {}, which is not a file", script.display(), path.display());
    }
    *cached = Some(path.clone());
    Ok(path)
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it answers HTTP.
    /// Blocking (a second or two); fine to call from async tests.
    pub fn start() -> Result<Moto> {
        let started = Instant::now();
        let server_bin = moto_server_path()?;
        let dir = crate::temp_dir("moto")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = crate::free_port()?;
            let mut cmd = Command::new(&server_bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1")
                // moto reads these for its own (server-side) defaults.
                .env("AWS_DEFAULT_REGION", REGION)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY);
            let mut server = ChildGuard::spawn("moto", cmd, dir.path())?;
            let ready = wait_ready_blocking(
                &mut server,
                "answering HTTP",
                START_TIMEOUT,
                Duration::from_millis(50),
                || http_status(port, "GET", "/moto-api/"),
            );
            match ready {
                Ok(_) => {
                    return Ok(Moto {
                        server,
                        dir: Some(dir),
                        endpoint: format!("http://127.0.0.1:{port}"),
                        startup: started.elapsed(),
                    });
                }
                Err(e) if attempt < PORT_RETRIES && crate::is_port_conflict(&server.log_tail(200)) => {
                    eprintln!("moto lost a race for port {port}, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// How long [`Moto::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    fn credentials() -> aws_sdk_ec2::config::Credentials {
        aws_sdk_ec2::config::Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "imds-operator-tests")
    }

    /// An EC2 client for this server (us-east-1, static test credentials, nothing from the
    /// environment or ~/.aws).
    pub async fn ec2_client(&self) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .credentials_provider(Self::credentials())
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// A CloudWatch client for this server (like [`Moto::ec2_client`]).
    pub async fn cloudwatch_client(&self) -> aws_sdk_cloudwatch::Client {
        let config = aws_sdk_cloudwatch::Config::builder()
            .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatch::config::Region::new(REGION))
            .credentials_provider(Self::credentials())
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_cloudwatch::Client::from_conf(config)
    }

    /// Environment for a child process (e.g. the operator binary) so that the AWS SDK's default
    /// chain talks to this server.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        endpoint_env(&self.endpoint)
    }

    /// Launches `count` instances of [`DEFAULT_AMI`] with `tags` and IMDS options
    /// `HttpTokens=optional`, `HttpPutResponseHopLimit=1`, `HttpEndpoint=enabled` (what an
    /// operator would want to tighten). Returns their ids.
    pub async fn run_instances(&self, count: i32, tags: &[(&str, &str)]) -> Result<Vec<String>> {
        let options = InstanceMetadataOptionsRequest::builder()
            .http_tokens(HttpTokensState::Optional)
            .http_put_response_hop_limit(1)
            .http_endpoint(InstanceMetadataEndpointState::Enabled)
            .build();
        self.run_instances_with(count, tags, options).await
    }

    /// Like [`Moto::run_instances`] with the given metadata options.
    pub async fn run_instances_with(
        &self,
        count: i32,
        tags: &[(&str, &str)],
        metadata_options: InstanceMetadataOptionsRequest,
    ) -> Result<Vec<String>> {
        let ec2 = self.ec2_client().await;
        let mut req = ec2
            .run_instances()
            .image_id(DEFAULT_AMI)
            .instance_type(InstanceType::T3Micro)
            .min_count(count)
            .max_count(count)
            .metadata_options(metadata_options);
        if !tags.is_empty() {
            let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(Tag::builder().key(*k).value(*v).build());
            }
            req = req.tag_specifications(spec.build());
        }
        let out = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("RunInstances on moto: {}", DisplayErrorContext(e)))?;
        let ids: Vec<String> = out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        anyhow::ensure!(
            ids.len() == count as usize,
            "RunInstances returned {} instances, wanted {count}",
            ids.len()
        );
        Ok(ids)
    }

    /// Forgets all state (POST /moto-api/reset).
    pub async fn reset(&self) -> Result<()> {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .post(format!("{}/moto-api/reset", self.endpoint))
            .send()
            .await
            .context("POST /moto-api/reset")?;
        anyhow::ensure!(resp.status().is_success(), "POST /moto-api/reset: {}", resp.status());
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.server.stop();
        if let Some(dir) = self.dir.take() {
            crate::finish_temp_dir(dir);
        }
    }
}

/// Minimal blocking HTTP/1.0 request to 127.0.0.1:port; returns the status code.
fn http_status(port: u16, method: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    Ok(status)
}

/// Environment for a child process whose AWS SDK default chain should talk to `endpoint` with
/// the test region and credentials (shared by moto and the EC2 double).
pub fn endpoint_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
