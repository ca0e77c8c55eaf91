//! Scratch databases, unique topics, a private broker for fault tests, and wait helpers.

use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use shop_messaging::{
    inbox::{Inbox, InboxConfig, InboxStats},
    kafka::KafkaSettings,
    outbox::{Relay, RelayConfig},
    smoke::{self, OrderedTicks},
};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

pub fn pg_base_url() -> String {
    std::env::var("SHOP_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://shop:shop@127.0.0.1:5432/postgres".into())
}

pub fn kafka() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("SHOP_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        client_id: "messaging-tests".into(),
        ..KafkaSettings::default()
    }
}

/// A database of its own for one test, migrated, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub pool: PgPool,
    url: String,
}

/// Logs to the test's captured output; `RUST_LOG=info cargo test -- --nocapture` shows them.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl TestDb {
    pub async fn new() -> Self {
        init_logs();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(&pg_base_url())
            .expect("valid url")
            .database(&name);
        shop_core::db::create_database_if_missing(&options)
            .await
            .expect("create test database");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect_with(options)
            .await
            .expect("connect test database");
        shop_messaging::migrate(&pool).await.expect("migrate");
        smoke::migrate(&pool).await.expect("smoke tables");
        let url = format!(
            "{}/{name}",
            pg_base_url().rsplit_once('/').expect("url has a path").0
        );
        Self { pool, url }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        shop_core::db::drop_database(&self.url)
            .await
            .expect("drop test database");
    }
}

/// A fresh topic name (and the topic, created).
pub async fn topic(settings: &KafkaSettings, prefix: &str) -> String {
    let name = format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple());
    settings
        .ensure_topics(&[
            name.as_str(),
            shop_messaging::kafka::dead_letter_topic(&name).as_str(),
        ])
        .await
        .expect("create topic");
    name
}

pub fn relay(db: &TestDb, settings: &KafkaSettings, config: RelayConfig) -> Relay {
    Relay::postgres(db.pool.clone(), settings, config).expect("relay")
}

/// Starts an inbox consumer running [`OrderedTicks`] on `topic`.
pub fn start_inbox(
    db: &TestDb,
    settings: &KafkaSettings,
    topic: &str,
    tune: impl FnOnce(&mut InboxConfig),
) -> (
    std::sync::Arc<InboxStats>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut config = InboxConfig::new(format!("group-{}", uuid::Uuid::new_v4().simple()), &[topic]);
    tune(&mut config);
    let inbox = Inbox::new(db.pool.clone(), settings, config, OrderedTicks).expect("inbox");
    let stats = inbox.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(inbox.run(stop.clone()));
    (stats, stop, task)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message on `topic` (all partitions) from the start, read until `expected` arrived.
pub async fn read_all(
    settings: &KafkaSettings,
    topic: &str,
    expected: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

/// Produces raw bytes to `topic` (for duplicates and garbage the outbox would never write).
pub async fn produce_raw(settings: &KafkaSettings, topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = settings
        .producer(Duration::from_secs(10))
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

pub use shop_messaging::testing::PrivateBroker;
