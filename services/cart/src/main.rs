//! The cart service binary: load settings, start telemetry, build, run until a shutdown signal.

use shop_core::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = config::load(&shop_cart::Settings::default())?;
    telemetry::init_tracing("cart", &settings.telemetry);
    shop_cart::build(&settings, shutdown::on_signal())
        .await?
        .run_until_stopped()
        .await
}
