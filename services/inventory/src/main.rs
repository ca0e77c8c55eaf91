//! The inventory service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{app::Application, config, grpc, shutdown, telemetry};
use shop_messaging::service::{self, PgServiceSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&PgServiceSettings::local("inventory", 50053, 9103))?;
    telemetry::init_tracing("inventory", &settings.telemetry);
    let shutdown = shutdown::on_signal();

    let pool = service::open_database(&settings).await?;
    let (routes, _health) = grpc::base_routes()?;
    let mut app =
        Application::bind("inventory", &settings.server, routes, shutdown.clone()).await?;
    service::spawn_relay(&mut app, &pool, &settings, shutdown)?;
    app.run_until_stopped().await
}
