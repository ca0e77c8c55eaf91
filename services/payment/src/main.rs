//! The payment service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, shutdown, telemetry};
use shop_messaging::service::{self, PgServiceSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&PgServiceSettings::local("payment", 50052, 9102))?;
    telemetry::init_tracing("payment", &settings.telemetry);
    let (app, _pool) = service::build(
        "payment",
        &settings,
        None,
        shutdown::on_signal(),
        async |routes, _, _| Ok(routes),
    )
    .await?;
    app.run_until_stopped().await
}
