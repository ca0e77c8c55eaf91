//! # shop-inventory
//!
//! Stock per tenant and SKU, and all-or-nothing reservations for the order saga.
//!
//! - [`domain`]: SKUs, quantities, merging order lines; no I/O.
//! - [`repository`]: the SQL. Reservations lock the stock rows they touch (in SKU order, so
//!   concurrent reservations cannot deadlock) and never take more than is available.
//! - [`commands`]: the saga's commands (reserve, release, commit) arriving through the inbox;
//!   each effect and its reply commit in one transaction.
//! - [`choreography`]: its part in a choreographed order (reacting to the other services'
//!   events with the same commands).
//! - [`twopc`]: its share of an order placed with two-phase commit (the `Participant` service).
//! - [`grpc`]: `GetStock` and `Restock`.
//! - [`build`]: the service, assembled; ready (gRPC health) while PostgreSQL and Kafka answer.

pub mod choreography;
pub mod commands;
pub mod domain;
pub mod grpc;
pub mod repository;
pub mod twopc;

use shop_messaging::{
    choreography::Reactions,
    service::{self, PgServiceSettings},
    topics,
};
use shop_proto::inventory::inventory_service_server::InventoryServiceServer;
use shop_proto::twopc::participant_server::ParticipantServer;
use tokio_util::sync::CancellationToken;

/// Local-stack defaults: gRPC 50053, metrics 9103, database `shop_inventory`.
pub fn default_settings() -> PgServiceSettings {
    PgServiceSettings::local("inventory", 50053, 9103)
}

/// Builds the service: database and migrations, gRPC, relay, and the command consumer.
pub async fn build(
    settings: &PgServiceSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let (commands, events) = service::participant_topics(
        &settings.kafka,
        topics::INVENTORY_COMMANDS,
        topics::INVENTORY_EVENTS,
    )
    .await?;
    let (mut app, pool) = service::build(
        "inventory",
        settings,
        Some(sqlx::migrate!()),
        shutdown.clone(),
        async |routes, readiness, pool| {
            let kafka = settings.kafka.probe(&commands, readiness.timeout())?;
            readiness
                .serves::<InventoryServiceServer<grpc::Inventory>>()
                .probe("kafka", kafka);
            let service = grpc::Inventory::new(pool.clone(), events.clone());
            let twopc = shop_messaging::twopc::TwoPhase::new(
                pool.clone(),
                twopc::StockWork {
                    events_topic: events.clone(),
                },
            );
            Ok(routes
                .add_service(InventoryServiceServer::new(service))
                .add_service(ParticipantServer::new(twopc)))
        },
    )
    .await?;
    let handler = commands::Commands {
        events_topic: events.clone(),
    };
    let reactions = Reactions::new(choreography::TRIGGERS, choreography::react, handler.clone());
    service::spawn_inbox(
        &mut app,
        &pool,
        &settings.kafka,
        "inventory",
        &[&commands],
        handler,
        shutdown.clone(),
    )?;
    let on = [
        topics::ORDER_EVENTS,
        topics::PAYMENT_EVENTS,
        topics::SHIPPING_EVENTS,
    ];
    service::spawn_reactions(
        &mut app,
        &pool,
        &settings.kafka,
        "inventory",
        &on,
        reactions,
        shutdown,
    )
    .await?;
    Ok(app)
}
