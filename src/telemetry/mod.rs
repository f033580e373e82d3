//! Telemetry: what the operator tells people and machines about itself.
//!
//! - [`logging`]: text or JSON logs.
//! - [`metrics`]: Prometheus metrics.
//! - [`health`]: the `/healthz`, `/readyz` and `/metrics` endpoints.
//! - [`memory`]: the allocator's tuning (arenas, giving memory back after a list).

pub mod health;
pub mod logging;
pub mod memory;
pub mod metrics;
