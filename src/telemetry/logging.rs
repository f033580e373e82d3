//! Logging: text or JSON, level from the flag (overridden by `RUST_LOG` when set).

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Credentials never reach the logs: the operator logs no
/// request bodies or headers, and the SDKs' own tracing is kept at `warn`.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let default =
        format!("{level},aws_config=warn,aws_smithy_runtime=warn,aws_sdk_ec2=warn,hyper=warn,kube_client=warn");
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default))
        .map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
