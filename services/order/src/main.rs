//! The order service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&shop_order::default_settings())?;
    telemetry::init_tracing("order", &settings.service.telemetry);
    shop_order::build(&settings, shutdown::on_signal())
        .await?
        .run_until_stopped()
        .await
}
