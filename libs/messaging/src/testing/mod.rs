//! Test support for services built on this crate (feature `testing`): scratch databases, a
//! private topic namespace, and a channel to send a service commands and read its replies.
//! Tests of code that touches a store run against the real servers; this only wires them.

use std::{str::FromStr, time::Duration};

use prost::Message as _;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use shop_core::config::{DatabaseSettings, ServerSettings};
use sqlx::{PgPool, postgres::PgConnectOptions};

mod broker;

pub use broker::{PrivateBroker, free_port};

use crate::{NewEvent, envelope::EventEnvelope, kafka::KafkaSettings, service::PgServiceSettings};

/// The PostgreSQL server tests use (`SHOP_TEST_PG_URL`, default: the native stack's).
pub fn pg_base_url() -> String {
    std::env::var("SHOP_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://shop:shop@127.0.0.1:5432/postgres".into())
}

/// Settings for one test's instance of a service: free ports, its own database, its own topic
/// prefix (so tests running at once never see each other's messages), a quick relay.
pub fn service_settings(service: &str) -> PgServiceSettings {
    // `RUST_LOG=info cargo test -- --nocapture` shows the services' logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let db_url = format!(
        "{}/test_{service}_{run}",
        pg_base_url().rsplit_once('/').map_or("", |(b, _)| b)
    );
    let mut settings = PgServiceSettings {
        server: ServerSettings::default(),
        database: DatabaseSettings {
            url: db_url,
            max_connections: 20,
            create_if_missing: true,
            ..DatabaseSettings::default()
        },
        kafka: KafkaSettings {
            brokers: std::env::var("SHOP_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
            client_id: format!("{service}-tests"),
            topic_prefix: format!("test{}.", &run[..12]),
            ..KafkaSettings::default()
        },
        ..PgServiceSettings::default()
    };
    settings.relay.poll_interval_ms = 100;
    settings
}

/// A pool on the service's database, for assertions.
pub async fn pool(settings: &PgServiceSettings) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(30)
        .connect_with(PgConnectOptions::from_str(&settings.database.url).expect("database url"))
        .await
        .expect("connect to the service's database")
}

/// Sends commands to a service's topic and reads what it publishes on another.
pub struct CommandChannel {
    pub kafka: KafkaSettings,
    commands_topic: String,
    tenant: String,
    producer: FutureProducer,
    replies: StreamConsumer,
}

impl CommandChannel {
    /// `commands` and `replies` are unprefixed names (e.g. `topics::INVENTORY_COMMANDS`).
    pub fn new(kafka: &KafkaSettings, commands: &str, replies: &str, tenant: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set(
                "group.id",
                format!("replies-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("reply consumer");
        consumer
            .subscribe(&[&kafka.topic(replies)])
            .expect("subscribe to replies");
        Self {
            kafka: kafka.clone(),
            commands_topic: kafka.topic(commands),
            tenant: tenant.to_owned(),
            producer: kafka.producer(Duration::from_secs(10)).expect("producer"),
            replies: consumer,
        }
    }

    /// A command envelope about `order_id`, as the saga would send it.
    pub fn command(
        &self,
        event_type: &str,
        order_id: &str,
        payload: &impl prost::Message,
    ) -> EventEnvelope {
        NewEvent::new(&self.commands_topic, event_type, "order", order_id, payload)
            .tenant(&self.tenant)
            .envelope
    }

    pub async fn send(&self, command: &EventEnvelope) {
        let body = command.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.commands_topic)
                    .key(&command.aggregate_id)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .expect("send command");
    }

    /// The next message about `key` whose type is not in `skip`, within 30 s.
    pub async fn next_about(&self, key: &str, skip: &[&str]) -> EventEnvelope {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = match tokio::time::timeout(left, self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing about {key} within 30 s"))
            {
                Ok(m) => m,
                // Subscribed before the service created the topic (a fresh broker): it comes.
                Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                )) => continue,
                Err(e) => panic!("consume reply: {e}"),
            };
            let env = EventEnvelope::decode(m.payload().unwrap_or_default())
                .expect("reply is an envelope");
            if env.aggregate_id == key && !skip.contains(&env.event_type.as_str()) {
                return env;
            }
        }
    }
}

/// Drops the test's database (after the service stopped). Transactions still prepared in it
/// (two-phase commit; a failed test may leave some) are rolled back first: PostgreSQL refuses
/// to drop a database that has any, and they count against max_prepared_transactions.
pub async fn drop_database(settings: &PgServiceSettings) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(options) = PgConnectOptions::from_str(&settings.database.url)
        && let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
    {
        if let Ok(left) = crate::twopc::prepared(&pool, "").await {
            for (gid, _) in left {
                let _ = crate::twopc::finish(&pool, &gid, false).await;
            }
        }
        pool.close().await;
    }
    let _ = shop_core::db::drop_database(&settings.database.url).await;
}
