//! `spawn_app()`: the whole service on free ports with a database and topic prefix of its own.

use std::{str::FromStr, time::Duration};

use prost::Message as _;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use shop_core::config::{DatabaseSettings, ServerSettings};
use shop_messaging::{
    NewEvent, envelope::EventEnvelope, kafka::KafkaSettings, service::PgServiceSettings, topics,
};
use shop_proto::{common::LineItem, inventory::inventory_service_client::InventoryServiceClient};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const TENANT: &str = "acme";

pub struct TestApp {
    pub grpc: InventoryServiceClient<Channel>,
    pub pool: PgPool,
    pub kafka: KafkaSettings,
    producer: FutureProducer,
    replies: StreamConsumer,
    shutdown: CancellationToken,
    db_url: String,
}

pub async fn spawn_app() -> TestApp {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let base = std::env::var("SHOP_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://shop:shop@127.0.0.1:5432/postgres".into());
    let db_url = format!(
        "{}/test_inventory_{run}",
        base.rsplit_once('/').expect("url").0
    );
    let kafka = KafkaSettings {
        brokers: std::env::var("SHOP_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        client_id: "inventory-tests".into(),
        topic_prefix: format!("test{}.", &run[..12]),
        ..KafkaSettings::default()
    };
    let mut settings = PgServiceSettings {
        server: ServerSettings::default(),
        database: DatabaseSettings {
            url: db_url.clone(),
            max_connections: 20,
            create_if_missing: true,
        },
        kafka: kafka.clone(),
        ..PgServiceSettings::default()
    };
    settings.relay.poll_interval_ms = 100;
    let shutdown = CancellationToken::new();
    let app = shop_inventory::build(&settings, shutdown.clone())
        .await
        .expect("build");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(30)
        .connect_with(PgConnectOptions::from_str(&db_url).expect("url"))
        .await
        .expect("connect");
    let grpc = InventoryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("grpc");
    let replies: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("replies-{run}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    replies
        .subscribe(&[&kafka.topic(topics::INVENTORY_EVENTS)])
        .expect("subscribe");
    let producer = kafka.producer(Duration::from_secs(10)).expect("producer");
    TestApp {
        grpc,
        pool,
        kafka,
        producer,
        replies,
        shutdown,
        db_url,
    }
}

pub fn items(lines: &[(&str, u32)]) -> Vec<LineItem> {
    lines
        .iter()
        .map(|(sku, quantity)| LineItem {
            sku: (*sku).into(),
            quantity: *quantity,
            unit_price: None,
        })
        .collect()
}

impl TestApp {
    pub async fn restock(&self, sku: &str, quantity: u32) {
        self.grpc
            .clone()
            .restock(shop_proto::inventory::RestockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
                quantity,
            })
            .await
            .expect("restock");
    }

    /// (available, reserved)
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let s = self
            .grpc
            .clone()
            .get_stock(shop_proto::inventory::GetStockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
            })
            .await
            .expect("get_stock")
            .into_inner();
        (s.available, s.reserved)
    }

    /// A command envelope as the saga would send it.
    pub fn command(
        &self,
        event_type: &str,
        order_id: &str,
        payload: &impl prost::Message,
    ) -> EventEnvelope {
        NewEvent::new(
            self.kafka.topic(topics::INVENTORY_COMMANDS),
            event_type,
            "order",
            order_id,
            payload,
        )
        .tenant(TENANT)
        .envelope
    }

    pub async fn send(&self, command: &EventEnvelope) {
        let topic = self.kafka.topic(topics::INVENTORY_COMMANDS);
        let body = command.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&topic)
                    .key(&command.aggregate_id)
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await
            .expect("send command");
    }

    /// The next reply (not stock-level facts) about `order_id`.
    pub async fn reply(&self, order_id: &str) -> EventEnvelope {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = tokio::time::timeout(left, self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("no reply about {order_id} within 30 s"))
                .expect("consume");
            let env = EventEnvelope::decode(m.payload().unwrap_or_default()).expect("envelope");
            if env.aggregate_id == order_id && env.event_type != topics::types::STOCK_LEVEL_CHANGED
            {
                return env;
            }
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.pool.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = shop_core::db::drop_database(&self.db_url).await;
    }
}
