//! # shop-analytics
//!
//! Every event into ClickHouse, deduplicated, queryable, with retention (seed 001).
//!
//! - [`rows`]: envelope -> rows (pure).
//! - [`store`]: the schema (ReplacingMergeTree + FINAL: redelivery never changes an answer),
//!   batched inserts, and the retention job that drops expired monthly partitions.
//! - [`ingest`]: the Kafka consumer: batches by size and time, offsets stored only after the
//!   insert succeeded.
//! - [`grpc`]: revenue by hour/day, top products, saga outcomes, funnel, saga duration p50/p99.
//! - [`build`]: the service, assembled; ready (gRPC health) while ClickHouse and Kafka answer.

pub mod grpc;
pub mod ingest;
pub mod rows;
pub mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shop_core::{
    app::Application,
    config::{ServerSettings, TelemetrySettings},
    readiness::Readiness,
};
use shop_messaging::{kafka::KafkaSettings, topics};
use shop_proto::analytics::analytics_service_server::AnalyticsServiceServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub kafka: KafkaSettings,
    pub clickhouse: store::ClickHouseSettings,
    /// A batch closes at this many events...
    pub batch_rows: usize,
    /// ...or this long after its first event.
    pub batch_ms: u64,
    /// How often the retention job runs.
    pub retention_interval_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::on_ports(50057, 9107),
            telemetry: TelemetrySettings::default(),
            kafka: KafkaSettings::for_client("analytics"),
            clickhouse: store::ClickHouseSettings::default(),
            batch_rows: 10_000,
            batch_ms: 1_000,
            retention_interval_secs: 3_600,
        }
    }
}

/// The event topics analytics ingests (with the deployment's prefix).
pub fn event_topics(kafka: &KafkaSettings) -> Vec<String> {
    [
        topics::ORDER_EVENTS,
        topics::INVENTORY_EVENTS,
        topics::PAYMENT_EVENTS,
        topics::SHIPPING_EVENTS,
        topics::CATALOG_EVENTS,
        topics::CART_EVENTS,
    ]
    .iter()
    .map(|t| kafka.topic(t))
    .collect()
}

/// Builds the service: schema, gRPC queries, ingestion, retention job.
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let store = store::Store::new(&settings.clickhouse);
    store.migrate().await?;
    let topics = event_topics(&settings.kafka);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    settings.kafka.ensure_topics(&names).await?;
    let (routes, health) = shop_core::grpc::base_routes()?;
    let routes = routes.add_service(AnalyticsServiceServer::new(grpc::Analytics::new(
        store.clone(),
    )));
    let mut readiness = Readiness::new(health, &settings.server);
    let clickhouse = store.client.clone();
    let broker = settings.kafka.probe(&topics[0], readiness.timeout())?;
    readiness
        .serves::<AnalyticsServiceServer<grpc::Analytics>>()
        .probe("kafka", broker)
        .probe("clickhouse", move || {
            let clickhouse = clickhouse.clone();
            async move {
                clickhouse.query("SELECT 1").execute().await?;
                Ok(())
            }
        });
    let mut app = Application::bind(
        "analytics",
        &settings.server,
        routes,
        readiness,
        shutdown.clone(),
    )
    .await?;
    let group = format!("{}analytics", settings.kafka.topic_prefix);
    let ingest = ingest::Ingest::new(
        &settings.kafka,
        &group,
        &names,
        store.clone(),
        settings.batch_rows,
        settings.batch_ms,
    )?;
    app.spawn(ingest.run(shutdown.clone()));
    let every = Duration::from_secs(settings.retention_interval_secs.max(1));
    app.spawn(async move {
        // First run one interval after start, not at once (a fresh service has nothing to expire).
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if let Err(e) = store.drop_expired(store::yyyymm(now)).await {
                tracing::warn!(error = ?e, "retention job failed");
            }
        }
    });
    Ok(app)
}
