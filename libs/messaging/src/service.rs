//! Start-up shared by the PostgreSQL services (order, payment, inventory, shipping): their
//! settings, their database with the outbox and inbox tables, and the outbox relay task.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shop_core::{
    app::Application,
    config::{DatabaseSettings, ServerSettings, TelemetrySettings},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    kafka::KafkaSettings,
    outbox::{Relay, RelayConfig},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelaySettings {
    pub enabled: bool,
    pub batch_size: i64,
    pub max_buckets: i64,
    pub poll_interval_ms: u64,
    pub retention_secs: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        let d = RelayConfig::default();
        Self {
            enabled: true,
            batch_size: d.batch_size,
            max_buckets: d.max_buckets,
            poll_interval_ms: d.poll_interval.as_millis() as u64,
            retention_secs: d.retention.as_secs(),
        }
    }
}

impl RelaySettings {
    pub fn to_config(&self) -> RelayConfig {
        RelayConfig {
            batch_size: self.batch_size,
            max_buckets: self.max_buckets,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            retention: Duration::from_secs(self.retention_secs),
            ..RelayConfig::default()
        }
    }
}

/// Settings of a PostgreSQL-backed service. Every key can be set as `SHOP__SECTION__KEY`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PgServiceSettings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub relay: RelaySettings,
}

impl PgServiceSettings {
    /// Local-stack defaults for service `name`: database `shop_<name>`, the given ports.
    pub fn local(name: &str, grpc_port: u16, metrics_port: u16) -> Self {
        Self {
            server: ServerSettings {
                grpc_port,
                metrics_port,
                ..ServerSettings::default()
            },
            database: DatabaseSettings::local(&format!("shop_{name}")),
            kafka: KafkaSettings {
                client_id: name.to_owned(),
                ..KafkaSettings::default()
            },
            ..Self::default()
        }
    }
}

/// Builds a PostgreSQL service's frame: its database (migrated), the gRPC server with health and
/// reflection, `/metrics`, and the outbox relay. The service adds its own routes through
/// `routes` and its consumers through [`Application::spawn`] before running it.
pub async fn build(
    name: &'static str,
    settings: &PgServiceSettings,
    routes: tonic::service::Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<(Application, PgPool)> {
    let pool = open_database(settings).await?;
    let mut app = Application::bind(name, &settings.server, routes, shutdown.clone()).await?;
    spawn_relay(&mut app, &pool, settings, shutdown)?;
    Ok((app, pool))
}

/// Connects the service's database and runs the outbox/inbox migrations.
/// The service runs its own migrations after this.
pub async fn open_database(settings: &PgServiceSettings) -> anyhow::Result<PgPool> {
    let pool = shop_core::db::connect(&settings.database).await?;
    crate::migrate(&pool).await?;
    Ok(pool)
}

/// Adds the outbox relay to `app` when enabled.
pub fn spawn_relay(
    app: &mut Application,
    pool: &PgPool,
    settings: &PgServiceSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !settings.relay.enabled {
        return Ok(());
    }
    let relay = Relay::new(pool.clone(), &settings.kafka, settings.relay.to_config())?;
    app.spawn(relay.run(shutdown));
    Ok(())
}
