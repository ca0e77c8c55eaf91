//! Logs, traces and metrics.
//!
//! - Logs: `tracing` to stdout, JSON by default (one object per line, for log shippers) or
//!   `pretty` for a terminal. Messages are lowercase; context goes into fields.
//! - Metrics: the `metrics` facade, exported by Prometheus on `GET /metrics` of the metrics port.

use std::net::SocketAddr;

use anyhow::Context;
use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::TelemetrySettings;

/// Installs the global tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init_tracing(service: &str, settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_filter.as_str()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if settings.log_format == "pretty" {
        registry.with(fmt::layer().compact()).try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just stays unread.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` until `shutdown` is cancelled.
/// Returns the bound address (port 0 picks a free one).
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let handle = prometheus();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind metrics port {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("metrics server failed")
    });
    Ok((local, task))
}
