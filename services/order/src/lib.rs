//! # shop-order
//!
//! Orders and the saga that carries each one through inventory, payment and shipping.
//!
//! Orders are event-sourced: each order is a stream of events in PostgreSQL, and everything
//! else (the saga index, the read models, the Kafka events) is derived from it.
//!
//! - [`domain`]: a validated order; the saga's state machine (decide/evolve, property-tested);
//!   the order's events, their upcasting, and the aggregate folded from them.
//! - [`eventstore`]: append with an expected version (conflict = typed error), read, snapshots.
//! - [`orders`]: an order loaded (snapshot + tail) and saved (snapshot every N events).
//! - [`admission`]: the bound on sagas in flight, past which PlaceOrder sheds new orders.
//! - [`repository`]: idempotency keys and the saga index.
//! - [`saga`]: the orchestrator: each transition appends to the order's stream, updates the saga
//!   index and enqueues its commands and events in one transaction; the reply handler; the
//!   timeout sweep.
//! - [`projection`]: the CQRS read models (order summary, customer history), their checkpointed
//!   projection, and the rebuild that swaps in a fresh generation without downtime.
//! - [`grpc`]: `PlaceOrder` (idempotent on its key, returns the stream version), `GetOrder`
//!   (read model, read-your-writes), `ListOrders`, `GetOrderAsOf`, `RebuildReadModels`, and the
//!   saga operations `GetSaga`, `ListSagas`, `RetrySaga`, `CompensateSaga`.
//! - [`build`]: the service, assembled; ready (gRPC health) while PostgreSQL and Kafka answer.

pub mod admission;
pub mod domain;
pub mod eventstore;
pub mod grpc;
pub mod orders;
pub mod projection;
pub mod repository;
pub mod saga;
pub mod twopc;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shop_messaging::service::{self, PgServiceSettings};
use shop_proto::order::order_service_server::OrderServiceServer;
use tokio_util::sync::CancellationToken;

use crate::domain::saga::{Policy, StepPolicy};

/// Step timeouts and tries (seed 001 defaults), and the timeout sweep's period.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SagaSettings {
    pub reserve_timeout_ms: u64,
    pub reserve_attempts: u32,
    pub charge_timeout_ms: u64,
    pub charge_attempts: u32,
    pub ship_timeout_ms: u64,
    pub ship_attempts: u32,
    /// Commit and compensations: retried every this long until answered.
    pub settle_timeout_ms: u64,
    pub sweep_interval_ms: u64,
    /// Most sagas in flight: past it, PlaceOrder sheds new orders with RESOURCE_EXHAUSTED
    /// (0: no bound). See [`admission`].
    pub max_in_flight: u64,
    /// How often the sagas in flight are counted for that bound.
    pub admission_refresh_ms: u64,
    /// Publish each saga decision on `shop.order.saga` (nothing here consumes it).
    pub publish_progress: bool,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            reserve_timeout_ms: 30_000,
            reserve_attempts: 3,
            charge_timeout_ms: 60_000,
            charge_attempts: 2,
            ship_timeout_ms: 30_000,
            ship_attempts: 3,
            settle_timeout_ms: 30_000,
            sweep_interval_ms: 1_000,
            max_in_flight: 500,
            admission_refresh_ms: 100,
            publish_progress: false,
        }
    }
}

impl SagaSettings {
    pub fn policy(&self) -> Policy {
        let p = |ms, max_attempts| StepPolicy {
            timeout: Duration::from_millis(ms),
            max_attempts,
        };
        Policy {
            reserve: p(self.reserve_timeout_ms, self.reserve_attempts),
            charge: p(self.charge_timeout_ms, self.charge_attempts),
            ship: p(self.ship_timeout_ms, self.ship_attempts),
            settle: p(self.settle_timeout_ms, 5),
        }
    }
}

/// The event store and the read models.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventStoreSettings {
    /// A snapshot whenever an order's stream crosses a multiple of this many events (0: never).
    pub snapshot_every: u64,
    /// How long `GetOrder` waits for the read model to reach the caller's `min_stream_version`
    /// before answering from the stream.
    pub read_your_writes_wait_ms: u64,
    /// The projection wakes on every commit; this is its fallback poll.
    pub projection_poll_ms: u64,
}

impl Default for EventStoreSettings {
    fn default() -> Self {
        Self {
            snapshot_every: 50,
            read_your_writes_wait_ms: 1_000,
            projection_poll_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub service: PgServiceSettings,
    pub saga: SagaSettings,
    pub event_store: EventStoreSettings,
    pub twopc: twopc::TwoPcSettings,
    /// The participants of two-phase commit (`SHOP__INVENTORY_URL`, ...).
    pub inventory_url: String,
    pub payment_url: String,
    pub shipping_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: PgServiceSettings::default(),
            saga: SagaSettings::default(),
            event_store: EventStoreSettings::default(),
            twopc: twopc::TwoPcSettings::default(),
            inventory_url: "http://127.0.0.1:50053".into(),
            payment_url: "http://127.0.0.1:50052".into(),
            shipping_url: "http://127.0.0.1:50054".into(),
        }
    }
}

/// Local-stack defaults: gRPC 50051, metrics 9101, database `shop_order`.
pub fn default_settings() -> Settings {
    Settings {
        service: PgServiceSettings::local("order", 50051, 9101),
        ..Settings::default()
    }
}

/// The order database's migrations (beside the outbox/inbox ones, which share the table).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!();
    m.set_ignore_missing(true);
    m
}

/// Builds the service: database and migrations, gRPC, relay, the reply consumer, the timeout sweep.
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let s = &settings.service;
    let topics = saga::Topics::new(&s.kafka);
    let mut all = topics.all();
    let dlqs: Vec<String> = [
        &topics.inventory_events,
        &topics.payment_events,
        &topics.shipping_events,
    ]
    .iter()
    .map(|t| shop_messaging::kafka::dead_letter_topic(t))
    .collect();
    all.extend(dlqs.iter().map(String::as_str));
    s.kafka.ensure_topics(&all).await?;
    let orchestrator = saga::Orchestrator {
        topics: topics.clone(),
        policy: settings.saga.policy(),
        publish_progress: settings.saga.publish_progress,
        store: orders::OrderStore {
            snapshot_every: settings.event_store.snapshot_every,
        },
    };
    let es = settings.event_store.clone();
    let admission = admission::Admission::new(settings.saga.max_in_flight);
    let participant = |url: &str| -> anyhow::Result<_> {
        Ok(
            shop_proto::twopc::participant_client::ParticipantClient::new(
                tonic::transport::Channel::from_shared(url.to_owned())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy(),
            ),
        )
    };
    let clients = [
        participant(&settings.inventory_url)?,
        participant(&settings.payment_url)?,
        participant(&settings.shipping_url)?,
    ];
    let crash_at = twopc::CrashPoint::parse(&settings.twopc.crash_at)?;
    let prepare_timeout = Duration::from_millis(settings.twopc.prepare_timeout_ms);
    let coordinator = std::sync::Arc::new(std::sync::OnceLock::<twopc::Coordinator>::new());
    let (mut app, pool) = service::build(
        "order",
        s,
        Some(sqlx::migrate!()),
        shutdown.clone(),
        async |routes, readiness, pool| {
            projection::init(pool).await?;
            let kafka = s.kafka.probe(&topics.order_events, readiness.timeout())?;
            readiness
                .serves::<OrderServiceServer<grpc::Orders>>()
                .probe("kafka", kafka);
            let twopc = twopc::Coordinator {
                pool: pool.clone(),
                saga: orchestrator.clone(),
                clients: clients.clone(),
                prepare_timeout,
                crash_at,
            };
            let _ = coordinator.set(twopc.clone());
            Ok(
                routes.add_service(OrderServiceServer::new(grpc::Orders::new(
                    pool.clone(),
                    orchestrator.clone(),
                    Duration::from_millis(es.read_your_writes_wait_ms),
                    admission.clone(),
                    twopc,
                ))),
            )
        },
    )
    .await?;
    let config = shop_messaging::inbox::InboxConfig::new(
        format!("{}order-saga", s.kafka.topic_prefix),
        &[
            &topics.inventory_events,
            &topics.payment_events,
            &topics.shipping_events,
        ],
    );
    let inbox = shop_messaging::inbox::Inbox::new(
        pool.clone(),
        &s.kafka,
        config,
        saga::Replies(orchestrator.clone()),
    )?;
    app.spawn(inbox.run(shutdown.clone()));
    app.spawn(projection::run(
        pool.clone(),
        Duration::from_millis(settings.event_store.projection_poll_ms),
        shutdown.clone(),
    ));
    app.spawn(admission.run(
        pool.clone(),
        Duration::from_millis(settings.saga.admission_refresh_ms),
        shutdown.clone(),
    ));
    if let Some(twopc) = coordinator.get().cloned() {
        let every = Duration::from_millis(settings.twopc.recovery_interval_ms);
        app.spawn(twopc.run_recovery(every, shutdown.clone()));
    }
    let sweep = Duration::from_millis(settings.saga.sweep_interval_ms);
    app.spawn(orchestrator.run_timeouts(pool, sweep, shutdown));
    Ok(app)
}
