//! The shipping service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&shop_shipping::default_settings())?;
    telemetry::init_tracing("shipping", &settings.service.telemetry);
    shop_shipping::build(&settings, shutdown::on_signal())
        .await?
        .run_until_stopped()
        .await
}
