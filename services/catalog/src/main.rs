//! The catalog service binary: load settings, start telemetry, build, run until a shutdown signal.

use serde::{Deserialize, Serialize};
use shop_core::{
    app::Application,
    config::{self, ServerSettings, TelemetrySettings},
    grpc, shutdown, telemetry,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Settings {
    server: ServerSettings,
    telemetry: TelemetrySettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let defaults = Settings {
        server: ServerSettings {
            grpc_port: 50055,
            metrics_port: 9105,
            ..ServerSettings::default()
        },
        ..Settings::default()
    };
    let settings = config::load(&defaults)?;
    telemetry::init_tracing("catalog", &settings.telemetry);
    let shutdown = shutdown::on_signal();
    let (routes, _health) = grpc::base_routes()?;
    Application::bind("catalog", &settings.server, routes, shutdown)
        .await?
        .run_until_stopped()
        .await
}
