//! Logs, traces and metrics.
//!
//! - Logs: `tracing` to stdout, JSON by default (one object per line, for log shippers) or
//!   `pretty` for a terminal. Messages are lowercase; context goes into fields.
//! - Traces: with the `otlp` feature and `telemetry.otlp_endpoint` set, spans also go to an
//!   OpenTelemetry collector over OTLP/gRPC.
//! - Metrics: the `metrics` facade, exported by Prometheus on `GET /metrics` of the metrics port.

use std::net::SocketAddr;

use anyhow::Context;
use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

use crate::config::TelemetrySettings;

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global tracing subscriber: logs to stdout and, when `otlp_endpoint` is set (and
/// the `otlp` feature is on), spans to an OpenTelemetry collector. Safe to call more than once
/// (later calls do nothing).
pub fn init_tracing(service: &str, settings: &TelemetrySettings) {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(settings.log_filter.as_str()))
    };
    let logs: BoxedLayer = if settings.log_format == "pretty" {
        fmt::layer().compact().with_filter(filter()).boxed()
    } else {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter())
            .boxed()
    };
    let mut layers = vec![logs];
    let mut otlp_error = None;
    if !settings.otlp_endpoint.is_empty() {
        match otlp_layer(service, &settings.otlp_endpoint) {
            Ok(layer) => layers.push(layer.with_filter(filter()).boxed()),
            Err(e) => otlp_error = Some(e),
        }
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok()
    {
        tracing::info!(service, otlp = %settings.otlp_endpoint, "telemetry initialised");
        if let Some(e) = otlp_error {
            tracing::warn!(error = %e, "span export disabled");
        }
    }
}

#[cfg(feature = "otlp")]
fn otlp_layer(service: &str, endpoint: &str) -> anyhow::Result<BoxedLayer> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("cannot build the OTLP span exporter")?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer(service.to_owned());
    opentelemetry::global::set_tracer_provider(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
}

#[cfg(not(feature = "otlp"))]
fn otlp_layer(_service: &str, _endpoint: &str) -> anyhow::Result<BoxedLayer> {
    anyhow::bail!(
        "telemetry.otlp_endpoint is set but this build lacks the `otlp` feature of shop-core"
    )
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

/// Details `/healthz` reports beside `"status": "ok"` (e.g. a projection's lag), by name.
static HEALTH_DETAILS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
> = std::sync::LazyLock::new(Default::default);

/// Sets (or replaces) a detail shown by `GET /healthz`.
pub fn set_health_detail(name: &str, value: serde_json::Value) {
    if let Ok(mut d) = HEALTH_DETAILS.lock() {
        d.insert(name.to_owned(), value);
    }
}

/// The `/healthz` body: `{"status": "ok", ...details}`.
pub fn health_report() -> serde_json::Value {
    let mut report = serde_json::Map::new();
    report.insert("status".into(), "ok".into());
    if let Ok(d) = HEALTH_DETAILS.lock() {
        for (k, v) in d.iter() {
            report.insert(k.clone(), v.clone());
        }
    }
    serde_json::Value::Object(report)
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` (JSON: status and details such as
/// projection lag) until `shutdown` is cancelled.
/// Returns the bound address (port 0 picks a free one).
pub async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let handle = prometheus();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route(
            "/healthz",
            get(|| std::future::ready(axum::Json(health_report()))),
        );
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
