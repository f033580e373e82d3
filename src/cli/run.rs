//! `imds-operator run`: clients, health and metrics servers, leader election, the controller.

use crate::aws::cloudwatch::UsageReader;
use crate::aws::ec2::{Ec2, RateLimits};
use crate::aws::fence::WriteFence;
use crate::controller::records::RecordStore;
use crate::controller::{self, Clients, Context, ControllerConfig, Stores};
use crate::leadership::{Election, Elector, signed_duration};
use crate::telemetry::health::{self, Health};
use crate::telemetry::logging::{self, LogFormat};
use crate::telemetry::metrics::Metrics;
use anyhow::Context as _;
use imds_core::api::MANAGER;
use imds_core::leader::Timings;
use k8s_openapi::jiff::SignedDuration;
use kube::runtime::events::{Recorder, Reporter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Flags of `imds-operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// How often every policy is re-checked against EC2 even when nothing changed in the
    /// cluster; catches changes made outside it (console, CLI, launch templates). At least 1s.
    #[arg(long, default_value = "5m", value_parser = resync_period, env = "IMDS_OPERATOR_RESYNC_PERIOD")]
    pub resync_period: Duration,
    /// Policies reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,
    /// ModifyInstanceMetadataOptions calls per second (EC2's account-wide bucket refills 5/s).
    #[arg(long, default_value_t = 2.0)]
    pub modify_rate: f64,
    /// ModifyInstanceMetadataOptions burst (EC2's account-wide bucket holds 100).
    #[arg(long, default_value_t = 20)]
    pub modify_burst: u32,
    /// DescribeInstances calls per second (EC2's bucket for filtered calls refills 20/s).
    #[arg(long, default_value_t = 5.0)]
    pub describe_rate: f64,
    /// DescribeInstances burst (EC2's bucket holds 100).
    #[arg(long, default_value_t = 10)]
    pub describe_burst: u32,
    /// Name of the cluster, as in its instances' `kubernetes.io/cluster/<name>` tag (EKS managed
    /// node groups, eksctl, Karpenter and kops set it). When given, a refresh of more instances
    /// than one DescribeInstances call can name (200) lists the cluster's instances by that tag,
    /// 1,000 per call, instead of asking for them by ID (5,000 nodes: 5 calls instead of 25);
    /// nodes whose instance lacks the tag are still read by ID. Unset: the tag is learnt once a
    /// call by ID finds instances that all carry the same `kubernetes.io/cluster/` tag.
    #[arg(long, env = "IMDS_OPERATOR_CLUSTER_NAME", value_parser = cluster_name)]
    pub cluster_name: Option<String>,
    /// At most this many modify requests per reconcile of one policy; the rest follow in the
    /// next reconcile, so status shows progress on large fleets.
    #[arg(long, default_value_t = 50)]
    pub max_modifies_per_reconcile: usize,
    /// Address of the metrics endpoint (`/metrics`).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of the health endpoints (`/healthz`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Log level (trace, debug, info, warn, error); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info", env = "IMDS_OPERATOR_LOG_LEVEL")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "IMDS_OPERATOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Elect a leader through a coordination.k8s.io Lease, so that of several replicas exactly
    /// one writes to EC2 and to status.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "imds-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a lease is valid without renewal; a standby takes over within this time. The
    /// leader stops writing to EC2 when it could not renew for two thirds of it (the renew
    /// deadline), and renews every 2/15 of it (client-go's 15s/10s/2s). At least 3s.
    #[arg(long, default_value = "15s", value_parser = lease_timings)]
    pub lease_duration: Timings,
    /// Test only: shifts the wall-clock times this replica writes into the Lease, to show that
    /// a clock offset between replicas cannot make two of them write at once.
    #[arg(long, hide = true, default_value = "0s", value_parser = signed_duration, allow_hyphen_values = true)]
    pub lease_clock_offset: SignedDuration,
    /// Name prefix of the ConfigMaps (`<prefix>-records-00` … `-0f`, in the lease namespace) that
    /// hold what the operator changed: originals for restore, and the requests the staged rollout
    /// counts. Only the operator may write them (the chart's Role names them).
    #[arg(long, default_value = "imds-operator")]
    pub records_prefix: String,
    /// How often the region's account-level IMDS defaults are read (GetInstanceMetadataDefaults,
    /// once for every policy). At least 1s.
    #[arg(long, default_value = "5m", value_parser = resync_period)]
    pub account_defaults_refresh: Duration,
    /// Write every selected node's result as wg-policy ClusterPolicyReports
    /// (wgpolicyk8s.io/v1alpha2, `imp-<policy>-<k>`); needs their CRD (Kyverno or Policy
    /// Reporter install it). Without the CRD the operator says so once and goes on.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub policy_reports: bool,
    /// A policy's reports are written at most this often (and only when they changed). At least 1s.
    #[arg(long, default_value = "30s", value_parser = resync_period)]
    pub policy_report_interval: Duration,
    /// Test only: results per ClusterPolicyReport (at most 1000, the default), so that a test
    /// gets several shards from a few nodes.
    #[arg(long, hide = true, default_value_t = imds_core::policy_report::MAX_RESULTS_PER_REPORT)]
    pub policy_report_shard_size: usize,
    /// This replica's identity in the Lease and in Events (defaults to the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs until SIGTERM/SIGINT, or until leadership is lost (then exits with an error so the pod
/// restarts as a standby).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    logging::init(&args.log_level, args.log_format).map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    install_crypto_provider();
    let client = connect_kube().await?;
    let metrics = Arc::new(Metrics::new());
    let fence = if args.leader_election {
        WriteFence::closed()
    } else {
        WriteFence::open()
    };
    let (ec2, usage) = aws_clients(&args, metrics.clone(), fence.clone()).await;

    let health = Arc::new(Health::default());
    health::serve(args.health_addr, args.metrics_addr, health.clone(), metrics.clone())
        .await
        .context("binding the health and metrics ports")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });

    let identity = args.identity.clone().unwrap_or_else(random_identity);
    let lease = if args.leader_election {
        match lead(&args, &client, &identity, fence, &health, stop_rx.clone()).await {
            Some(election) => Some(election),
            None => return Ok(()), // stopped while standing by
        }
    } else {
        health.set_ready(true);
        None
    };
    metrics.set_leader(true);
    let namespace = args.lease_namespace.clone().unwrap_or_else(|| "default".to_string());
    let Some(records) = load_records(&client, &namespace, &args.records_prefix, stop_rx.clone()).await else {
        return Ok(()); // stopped before the records could be read
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.to_string(),
            instance: Some(identity.clone()),
        },
    );
    let clients = Clients {
        kube: client.clone(),
        ec2,
        usage,
        recorder,
    };
    let config = ControllerConfig {
        resync_period: args.resync_period,
        concurrency: args.concurrency,
        max_modifies_per_reconcile: args.max_modifies_per_reconcile.max(1),
        account_defaults_refresh: args.account_defaults_refresh,
        policy_reports: args.policy_reports.then_some(args.policy_report_interval),
        policy_report_shard_size: args.policy_report_shard_size,
    };
    let build = move |stores| Arc::new(Context::new(clients, stores, records, metrics, config));
    tracing::info!(resync = ?args.resync_period, "controller starting");
    let lost = run_controller(
        build,
        client,
        health,
        stop_rx,
        lease.as_ref().map(|e| e.leading.clone()),
    )
    .await;
    if let Some(election) = lease {
        election.release().await;
    }
    if lost {
        anyhow::bail!("lost the leader lease; exiting so that this replica restarts as a standby");
    }
    Ok(())
}

/// Reads the records before anything is sent; retried until it works or the process is told
/// to stop.
async fn load_records(
    client: &kube::Client,
    namespace: &str,
    prefix: &str,
    mut stop: watch::Receiver<bool>,
) -> Option<RecordStore> {
    let mut delay = Duration::from_secs(1);
    loop {
        match RecordStore::load(client.clone(), namespace, prefix).await {
            Ok(records) => return Some(records),
            Err(e) => {
                tracing::error!(error = %e, %namespace, %prefix, "cannot read the records; nothing is sent until they are read")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn connect_kube() -> anyhow::Result<kube::Client> {
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to Kubernetes");
    Ok(client)
}

/// The EC2 and CloudWatch adaptors. Timeouts keep a hung connection from stalling a reconcile;
/// the SDK's standard retry (3 attempts, jittered backoff) stays.
async fn aws_clients(args: &RunArgs, metrics: Arc<Metrics>, fence: WriteFence) -> (Ec2, UsageReader) {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build();
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let limits = RateLimits {
        describe_per_second: args.describe_rate,
        describe_burst: args.describe_burst,
        modify_per_second: args.modify_rate,
        modify_burst: args.modify_burst,
    };
    let mut ec2 = Ec2::new(aws_sdk_ec2::Client::new(&aws), limits, metrics.clone()).with_fence(fence);
    if let Some(name) = &args.cluster_name {
        ec2 = ec2.with_cluster_listing(name);
    }
    let usage = UsageReader::new(aws_sdk_cloudwatch::Client::new(&aws), metrics);
    (ec2, usage)
}

/// Stands by until this replica holds the lease; `None` when told to stop first.
async fn lead(
    args: &RunArgs,
    client: &kube::Client,
    identity: &str,
    fence: WriteFence,
    health: &Health,
    mut stop: watch::Receiver<bool>,
) -> Option<Election> {
    let namespace = args.lease_namespace.clone().unwrap_or_else(|| "default".to_string());
    let election = Elector::new(
        client.clone(),
        &namespace,
        &args.lease_name,
        identity,
        args.lease_duration,
        fence,
    )
    .with_clock_offset(args.lease_clock_offset)
    .start();
    health.set_ready(true);
    tracing::info!(lease = %args.lease_name, %namespace, %identity, "waiting for leadership");
    let mut leading = election.leading.clone();
    while !*leading.borrow() {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                tracing::error!("the election stopped");
                return None;
            },
            _ = stop.changed() => {
                election.release().await;
                return None;
            }
        }
    }
    tracing::info!(%identity, "became the leader");
    Some(election)
}

/// Runs the controller until SIGTERM (graceful: in-flight reconciles and their EC2 calls
/// finish) or until the lease is lost (the controller is dropped at once, aborting in-flight
/// reconciles, so that this replica stops writing before the new leader starts). True when the
/// lease was lost.
async fn run_controller(
    build: impl FnOnce(Stores) -> Arc<Context>,
    client: kube::Client,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
    leading: Option<watch::Receiver<bool>>,
) -> bool {
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    let lease_lost = async move {
        match leading {
            Some(mut leading) => {
                while leading.changed().await.is_ok() {
                    if !*leading.borrow() {
                        return;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = controller::run(build, client, health, shutdown) => {
            tracing::info!("controller stopped; in-flight reconciles finished");
            false
        }
        _ = lease_lost => {
            tracing::error!("lost the leader lease; in-flight reconciles aborted");
            true
        }
    }
}

/// The shortest resync period: a shorter one would requeue every policy in a hot loop.
const MIN_RESYNC: Duration = Duration::from_secs(1);

/// Parses `--lease-duration` into the election's timings.
fn lease_timings(text: &str) -> Result<Timings, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    Timings::for_lease(duration).map_err(|e| e.to_string())
}

/// Parses `--cluster-name`: a name that can be part of a `kubernetes.io/cluster/<name>` tag key.
fn cluster_name(text: &str) -> Result<String, String> {
    imds_core::cluster::validate_cluster_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// Parses `--resync-period`: a duration of at least [`MIN_RESYNC`].
fn resync_period(text: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if period < MIN_RESYNC {
        return Err(format!(
            "{text} is shorter than {}",
            humantime::format_duration(MIN_RESYNC)
        ));
    }
    Ok(period)
}

/// kube's client needs rustls' process-wide provider chosen, because both ring and aws-lc-rs
/// are linked (the AWS SDK brings the latter). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn random_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "imds-operator".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert_eq!(cluster_name("prod-1"), Ok("prod-1".to_string()));
        for bad in ["", "prod/x", "-prod"] {
            assert!(cluster_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resync_periods() {
        assert_eq!(resync_period("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(resync_period("1s"), Ok(Duration::from_secs(1)));
        for bad in ["0s", "0", "500ms", "soon", ""] {
            assert!(resync_period(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lease_durations() {
        let t = lease_timings("15s").expect("default");
        assert_eq!(
            (t.renew_deadline, t.retry_period),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        assert!(lease_timings("4s").is_ok());
        assert!(lease_timings("2s").is_err());
    }
}
