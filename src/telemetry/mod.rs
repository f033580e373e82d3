//! Telemetry: what the operator tells people and machines about itself.
//!
//! - [`logging`]: text or JSON logs.
//! - [`metrics`]: Prometheus metrics.
//! - [`health`]: the `/healthz`, `/readyz` and `/metrics` endpoints.

pub mod health;
pub mod logging;
pub mod metrics;
