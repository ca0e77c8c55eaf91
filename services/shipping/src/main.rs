//! The shipping service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, shutdown, telemetry};
use shop_messaging::service::{self, PgServiceSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&PgServiceSettings::local("shipping", 50054, 9104))?;
    telemetry::init_tracing("shipping", &settings.telemetry);
    let (app, _pool) = service::build(
        "shipping",
        &settings,
        None,
        shutdown::on_signal(),
        async |routes, _, _| Ok(routes),
    )
    .await?;
    app.run_until_stopped().await
}
