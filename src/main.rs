//! `imds-operator`: keeps the EC2 instance metadata options of a cluster's nodes where its
//! `InstanceMetadataPolicy` objects declare them.

use clap::{Parser, Subcommand};
use imds_operator::cli::{crd, iam, report, run};
use std::process::ExitCode;

/// Keeps the EC2 Instance Metadata Service (IMDS) options of a cluster's nodes where the
/// cluster's InstanceMetadataPolicy objects declare them.
#[derive(Parser, Debug)]
#[command(name = "imds-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (kubeconfig or in-cluster config; the AWS SDK's standard configuration:
    /// credential chain incl. IRSA and EKS Pod Identity, AWS_REGION, AWS_ENDPOINT_URL[_EC2]).
    Run(Box<run::RunArgs>),
    /// Print a CustomResourceDefinition as YAML: InstanceMetadataPolicy (default), or with
    /// `--kind defaults` the opt-in InstanceMetadataDefaults singleton.
    Crd {
        /// Which CRD.
        #[arg(long, value_enum, default_value = "policy")]
        kind: crd::CrdKind,
    },
    /// One-shot report of every node: instance, current options, what the policies want, drift
    /// and blockers. Needs no installation (kubeconfig + AWS credentials). Exit status: 0 when
    /// the fleet complies, 1 when it does not, 2 on errors.
    Report(report::ReportArgs),
    /// Print the IAM policy the operator's role needs (JSON); with --launch-guard also the
    /// launch-time guard (SCP/IAM deny statements) for a fleet that is on IMDSv2.
    IamPolicy(IamPolicyArgs),
}

#[derive(clap::Args, Debug)]
struct IamPolicyArgs {
    /// The EKS cluster's name: Modify is allowed only on instances tagged
    /// `kubernetes.io/cluster/NAME`.
    #[arg(long)]
    cluster_name: String,
    /// The AWS partition (aws, aws-cn, aws-us-gov).
    #[arg(long, default_value = "aws")]
    partition: String,
    /// Also print the launch-time guard: deny ec2:RunInstances unless
    /// ec2:MetadataHttpTokens is `required`.
    #[arg(long)]
    launch_guard: bool,
    /// With --launch-guard: also deny launches whose hop limit exceeds N.
    #[arg(long)]
    max_hop_limit: Option<u8>,
    /// With --launch-guard: deny ModifyInstanceMetadataOptions on the cluster's instances to
    /// every principal except this role (the operator's).
    #[arg(long)]
    operator_role_arn: Option<String>,
    /// Also allow ec2:ModifyInstanceMetadataDefaults, needed only when the
    /// InstanceMetadataDefaults singleton is created.
    #[arg(long)]
    defaults_singleton: bool,
}

fn main() -> ExitCode {
    imds_operator::telemetry::memory::limit_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { kind } => match crd::yaml_of(kind) {
            Ok(yaml) => print_out(&yaml),
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::IamPolicy(args) => {
            let opts = iam::IamPolicyOptions {
                cluster_name: args.cluster_name,
                partition: args.partition,
                launch_guard: args.launch_guard,
                max_hop_limit: args.max_hop_limit,
                operator_role_arn: args.operator_role_arn,
                defaults_singleton: args.defaults_singleton,
            };
            match iam::render(&opts) {
                Ok(json) => print_out(&format!("{json}\n")),
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Report(args) => match block_on(report::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => match block_on(run::run(*args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs a future on a multi-threaded runtime.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    runtime.block_on(future)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
