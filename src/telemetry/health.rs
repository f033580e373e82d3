//! Health (`/healthz`, `/readyz`) and metrics (`/metrics`) endpoints, on separate ports.

use crate::telemetry::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `/healthz` fails once a watch has answered only errors for this long: the process is
/// wedged (its cache goes stale while it believes it is current), and a restart re-lists.
pub const WATCH_WEDGED_AFTER: Duration = Duration::from_secs(120);

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Per watch: since when it has answered only errors (`None`: its last answer was good).
    watches: Mutex<HashMap<&'static str, Option<Instant>>>,
}

impl Health {
    /// A watch answered (`ok`) or failed.
    pub fn watch_event(&self, watch: &'static str, ok: bool) {
        let now = Instant::now();
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let since = watches.entry(watch).or_insert(None);
        if ok {
            *since = None;
        } else if since.is_none() {
            *since = Some(now);
        }
    }

    /// The watches that have failed without a good answer for [`WATCH_WEDGED_AFTER`] at `now`.
    pub fn wedged_at(&self, now: Instant) -> Vec<&'static str> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let mut wedged: Vec<&'static str> = watches
            .iter()
            .filter(|(_, since)| since.is_some_and(|s| now.saturating_duration_since(s) >= WATCH_WEDGED_AFTER))
            .map(|(name, _)| *name)
            .collect();
        wedged.sort();
        wedged
    }

    /// Marks the process ready (connected to the API server; leading or standing by).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    let wedged = health.wedged_at(Instant::now());
    if wedged.is_empty() {
        (StatusCode::OK, "ok".into())
    } else {
        let names = wedged.join(", ");
        tracing::error!(watches = %names, "liveness failing: watches answer only errors");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("watches failing for over {WATCH_WEDGED_AFTER:?}: {names}"),
        )
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(metrics): State<Arc<Metrics>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Binds both listeners (failing fast when a port is taken) and serves them in the background.
pub async fn serve(
    health_addr: SocketAddr,
    metrics_addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Metrics>,
) -> std::io::Result<()> {
    let health_app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let metrics_app = Router::new().route("/metrics", get(metrics)).with_state(registry);
    let health_listener = tokio::net::TcpListener::bind(health_addr).await?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(health_listener, health_app).await {
            tracing::error!(error = %err, "health server stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(err) = axum::serve(metrics_listener, metrics_app).await {
            tracing::error!(error = %err, "metrics server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_that_only_fails_for_long_enough_fails_liveness() {
        let health = Health::default();
        let t0 = Instant::now();
        assert!(health.wedged_at(t0).is_empty());
        health.watch_event("nodes", true);
        health.watch_event("policies", false);
        health.watch_event("policies", false);
        let later = Instant::now() + WATCH_WEDGED_AFTER;
        assert_eq!(health.wedged_at(later), vec!["policies"]);
        assert!(health.wedged_at(t0).is_empty(), "not yet");
        health.watch_event("policies", true);
        assert!(health.wedged_at(later).is_empty(), "a good answer clears it");
    }
}
