//! # shop-payment
//!
//! Accounts with balances and a ledger (balance = opening + sum of movements), and one charge
//! per order for the order saga.
//!
//! - [`domain`]: money in integer minor units, the charge decision; no I/O.
//! - [`repository`]: the SQL. A charge locks its account row; the `charge` table makes it happen
//!   at most once per order.
//! - [`commands`]: the saga's commands (charge, refund) arriving through the inbox.
//! - [`choreography`]: its part in a choreographed order (reacting to the other services'
//!   events with the same commands).
//! - [`twopc`]: its share of an order placed with two-phase commit (the `Participant` service).
//! - [`grpc`]: `OpenAccount`, `GetAccount`, `ListMovements`.
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
use shop_proto::payment::payment_service_server::PaymentServiceServer;
use shop_proto::twopc::participant_server::ParticipantServer;
use tokio_util::sync::CancellationToken;

/// Local-stack defaults: gRPC 50052, metrics 9102, database `shop_payment`.
pub fn default_settings() -> PgServiceSettings {
    PgServiceSettings::local("payment", 50052, 9102)
}

/// Builds the service: database and migrations, gRPC, relay, and the command consumer.
pub async fn build(
    settings: &PgServiceSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let (commands, events) = service::participant_topics(
        &settings.kafka,
        topics::PAYMENT_COMMANDS,
        topics::PAYMENT_EVENTS,
    )
    .await?;
    let (mut app, pool) = service::build(
        "payment",
        settings,
        Some(sqlx::migrate!()),
        shutdown.clone(),
        async |routes, readiness, pool| {
            let kafka = settings.kafka.probe(&commands, readiness.timeout())?;
            readiness
                .serves::<PaymentServiceServer<grpc::Payment>>()
                .probe("kafka", kafka);
            let twopc = shop_messaging::twopc::TwoPhase::new(pool.clone(), twopc::ChargeWork);
            Ok(routes
                .add_service(PaymentServiceServer::new(grpc::Payment::new(pool.clone())))
                .add_service(ParticipantServer::new(twopc)))
        },
    )
    .await?;
    let handler = commands::Commands {
        events_topic: events,
    };
    let reactions = Reactions::new(choreography::TRIGGERS, choreography::react, handler.clone());
    service::spawn_inbox(
        &mut app,
        &pool,
        &settings.kafka,
        "payment",
        &[&commands],
        handler,
        shutdown.clone(),
    )?;
    service::spawn_reactions(
        &mut app,
        &pool,
        &settings.kafka,
        "payment",
        &[topics::INVENTORY_EVENTS, topics::SHIPPING_EVENTS],
        reactions,
        shutdown,
    )
    .await?;
    Ok(app)
}
