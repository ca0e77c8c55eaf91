//! # shop-cart
//!
//! One cart per session in Redis, with a sliding one-hour TTL (session consistency: every change
//! returns the new cart, so a session always reads its own writes).
//!
//! - [`domain`]: the stored cart, its limits, the checkout idempotency key.
//! - [`store`]: the Lua scripts: each change is atomic however many requests race.
//! - [`grpc`]: add / set quantity / remove / get, and `Checkout` through the order service.
//! - [`relay`]: the Redis-stream outbox to Kafka (`cart.checked_out`).
//! - [`build`]: the service, assembled; it also consumes the order events: a completed order
//!   clears its cart, a cancelled one leaves the cart open for another checkout. Ready (gRPC
//!   health) while Redis and Kafka answer (not the catalog and order services it calls: their
//!   outage is theirs, and would otherwise take every cart pod out too).

pub mod domain;
pub mod grpc;
pub mod relay;
pub mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shop_core::{
    config::{RedisSettings, ServerSettings, TelemetrySettings},
    readiness::Readiness,
};
use shop_messaging::{
    inbox::HandlerError,
    kafka::KafkaSettings,
    topics::{self, types},
};
use shop_proto::{
    cart::cart_service_server::CartServiceServer,
    catalog::catalog_service_client::CatalogServiceClient,
    events::{OrderCancelled, OrderCompleted},
    order::order_service_client::OrderServiceClient,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub catalog_url: String,
    pub order_url: String,
    pub cart: domain::Limits,
    pub relay_poll_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::on_ports(50056, 9106),
            telemetry: TelemetrySettings::default(),
            kafka: KafkaSettings::for_client("cart"),
            redis: RedisSettings::default(),
            catalog_url: "http://127.0.0.1:50055".into(),
            order_url: "http://127.0.0.1:50051".into(),
            cart: domain::Limits::default(),
            relay_poll_ms: 100,
        }
    }
}

pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let kafka = &settings.kafka;
    let events_topic = kafka.topic(topics::CART_EVENTS);
    let order_events = kafka.topic(topics::ORDER_EVENTS);
    kafka.ensure_topics(&[&events_topic, &order_events]).await?;
    let client = redis::Client::open(settings.redis.url.as_str())?;
    let redis = redis::aio::ConnectionManager::new(client).await?;
    let store = store::CartStore::new(redis.clone(), settings.cart, &kafka.topic_prefix);
    let lazy = |url: &str| -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Channel::from_shared(url.to_owned())?.connect_lazy())
    };
    let carts = grpc::Carts {
        store: store.clone(),
        catalog: CatalogServiceClient::new(lazy(&settings.catalog_url)?),
        orders: OrderServiceClient::new(lazy(&settings.order_url)?),
        events_topic,
    };
    let (routes, health) = shop_core::grpc::base_routes()?;
    let routes = routes.add_service(CartServiceServer::new(carts));
    let mut readiness = Readiness::new(health, &settings.server);
    let (ping, broker) = (
        redis.clone(),
        kafka.probe(&order_events, readiness.timeout())?,
    );
    readiness
        .serves::<CartServiceServer<grpc::Carts>>()
        .probe("kafka", broker)
        .probe("redis", move || {
            let mut redis = ping.clone();
            async move {
                redis::cmd("PING").query_async::<String>(&mut redis).await?;
                Ok(())
            }
        });
    let mut app = shop_core::app::Application::bind(
        "cart",
        &settings.server,
        routes,
        readiness,
        shutdown.clone(),
    )
    .await?;
    let relay = relay::relay(
        redis,
        store::outbox_stream(&kafka.topic_prefix),
        kafka,
        Duration::from_millis(settings.relay_poll_ms),
    )?;
    app.spawn(relay.run(shutdown.clone()));
    let kafka = kafka.clone();
    let group = format!("{}cart", kafka.topic_prefix);
    app.spawn(async move {
        shop_messaging::consumer::run(&kafka, &group, &[&order_events], shutdown, |e| {
            let store = store.clone();
            async move { order_ended(&store, &e).await }
        })
        .await
    });
    Ok(app)
}

/// A completed order clears the cart it came from; a cancelled one reopens it. Idempotent: the
/// script changes the cart only while it is still checked out as this order.
async fn order_ended(
    store: &store::CartStore,
    e: &shop_messaging::EventEnvelope,
) -> Result<(), HandlerError> {
    let p = e.payload.as_slice();
    let (order_id, completed) = match e.event_type.as_str() {
        types::ORDER_COMPLETED => (
            prost::Message::decode(p).map(|c: OrderCompleted| c.order_id)?,
            true,
        ),
        types::ORDER_CANCELLED => (
            prost::Message::decode(p).map(|c: OrderCancelled| c.order_id)?,
            false,
        ),
        _ => return Ok(()),
    };
    match store.order_ended(&order_id, completed).await {
        Ok(true) => {
            metrics::counter!("cart_orders_ended_total", "completed" => completed.to_string())
                .increment(1);
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(HandlerError::Transient(e.into())),
    }
}
