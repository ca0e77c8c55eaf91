//! Start-up shared by the PostgreSQL services (order, payment, inventory, shipping): their
//! settings, their database with the outbox and inbox tables, and the outbox relay task.

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shop_core::{
    app::Application,
    config::{DatabaseSettings, ServerSettings, TelemetrySettings},
    readiness::Readiness,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

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
    /// Marks committed with `synchronous_commit = off` (see [`RelayConfig::async_marks`]).
    pub async_marks: bool,
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
            async_marks: d.async_marks,
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
            async_marks: self.async_marks,
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
            server: ServerSettings::on_ports(grpc_port, metrics_port),
            database: DatabaseSettings::local(&format!("shop_{name}")),
            kafka: KafkaSettings::for_client(name),
            ..Self::default()
        }
    }
}

/// Builds a PostgreSQL service's frame: its database (outbox/inbox migrations, then the service's
/// own `migrator`), the gRPC server with health, reflection and the routes `add_routes` adds,
/// `/metrics`, and the outbox relay. Readiness probes the database; `add_routes` lists the
/// services it adds and the other dependencies (the broker) on the [`Readiness`] it gets.
/// Consumers are added with [`Application::spawn`].
pub async fn build<F>(
    name: &'static str,
    settings: &PgServiceSettings,
    migrator: Option<sqlx::migrate::Migrator>,
    shutdown: CancellationToken,
    add_routes: F,
) -> anyhow::Result<(Application, PgPool)>
where
    F: AsyncFnOnce(Routes, &mut Readiness, &PgPool) -> anyhow::Result<Routes>,
{
    let pool = open_database(settings).await?;
    if let Some(mut migrator) = migrator {
        // The outbox/inbox migrations share `_sqlx_migrations`; each migrator ignores the other's.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await.context("service migrations")?;
    }
    let (routes, health) = shop_core::grpc::base_routes()?;
    let mut readiness = Readiness::new(health, &settings.server);
    readiness.postgres(&pool);
    let routes = add_routes(routes, &mut readiness, &pool).await?;
    let mut app =
        Application::bind(name, &settings.server, routes, readiness, shutdown.clone()).await?;
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
    let relay = Relay::postgres(pool.clone(), &settings.kafka, settings.relay.to_config())?;
    app.spawn(relay.run(shutdown));
    Ok(())
}

/// A saga participant's topics, with the deployment's prefix: `(commands, events)`, created
/// (with the commands' dead-letter topic) if missing.
pub async fn participant_topics(
    kafka: &KafkaSettings,
    commands: &str,
    events: &str,
) -> anyhow::Result<(String, String)> {
    let (commands, events) = (kafka.topic(commands), kafka.topic(events));
    kafka
        .ensure_topics(&[
            &commands,
            &events,
            &crate::kafka::dead_letter_topic(&commands),
        ])
        .await?;
    Ok((commands, events))
}

/// Consumes `topics` through the inbox as consumer `name` (prefixed like the topics), beside
/// `app`.
pub fn spawn_inbox<H: crate::inbox::Handler>(
    app: &mut Application,
    pool: &PgPool,
    kafka: &KafkaSettings,
    name: &str,
    topics: &[&str],
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = crate::inbox::InboxConfig::new(format!("{}{name}", kafka.topic_prefix), topics);
    let inbox = crate::inbox::Inbox::new(pool.clone(), kafka, config, handler)?;
    app.spawn(inbox.run(shutdown));
    Ok(())
}

/// A participant's part in choreographed orders ([`crate::choreography`]): consumes the other
/// services' events `topics` (names without the prefix; created if missing) as consumer
/// `<name>-choreography`, beside its command consumer.
pub async fn spawn_reactions<H: crate::inbox::Handler>(
    app: &mut Application,
    pool: &PgPool,
    kafka: &KafkaSettings,
    name: &str,
    topics: &[&str],
    reactions: crate::choreography::Reactions<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics: Vec<String> = topics.iter().map(|t| kafka.topic(t)).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka.ensure_topics(&names).await?;
    let name = format!("{name}-choreography");
    spawn_inbox(app, pool, kafka, &name, &names, reactions, shutdown)
}
