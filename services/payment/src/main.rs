//! The payment service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, grpc, shutdown, telemetry};
use shop_messaging::service::{self, PgServiceSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&PgServiceSettings::local("payment", 50052, 9102))?;
    telemetry::init_tracing("payment", &settings.telemetry);
    let (routes, _health) = grpc::base_routes()?;
    let (app, _pool) = service::build("payment", &settings, routes, shutdown::on_signal()).await?;
    app.run_until_stopped().await
}
