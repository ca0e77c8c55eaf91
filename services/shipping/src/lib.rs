//! # shop-shipping
//!
//! Address rules, shipments for the order saga (create, and cancel as its compensation), and
//! tracking status.
//!
//! - [`domain`]: address validation and the zones shipped to; no I/O.
//! - [`repository`]: the SQL; one shipment row per order.
//! - [`commands`]: the saga's commands arriving through the inbox.
//! - [`choreography`]: its part in a choreographed order (reacting to the other services'
//!   events with the same commands).
//! - [`twopc`]: its share of an order placed with two-phase commit (the `Participant` service).
//! - [`grpc`]: `GetShipment`, `ValidateAddress`.
//! - [`build`]: the service, assembled; ready (gRPC health) while PostgreSQL and Kafka answer.

pub mod choreography;
pub mod commands;
pub mod domain;
pub mod grpc;
pub mod repository;
pub mod twopc;

use serde::{Deserialize, Serialize};
use shop_messaging::{
    choreography::Reactions,
    service::{self, PgServiceSettings},
    topics,
};
use shop_proto::shipping::shipping_service_server::ShippingServiceServer;
use shop_proto::twopc::participant_server::ParticipantServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub service: PgServiceSettings,
    /// Countries shipped to, comma-separated ISO codes (`SHOP__ZONES=DE,FR`).
    pub zones: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service: PgServiceSettings::default(),
            zones: domain::DEFAULT_ZONES.join(","),
        }
    }
}

/// Local-stack defaults: gRPC 50054, metrics 9104, database `shop_shipping`.
pub fn default_settings() -> Settings {
    Settings {
        service: PgServiceSettings::local("shipping", 50054, 9104),
        ..Settings::default()
    }
}

/// Builds the service: database and migrations, gRPC, relay, and the command consumer.
pub async fn build(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<shop_core::app::Application> {
    let zones: Vec<String> = settings
        .zones
        .split(',')
        .map(|z| z.trim().to_owned())
        .filter(|z| !z.is_empty())
        .collect();
    let s = &settings.service;
    let (commands, events) =
        service::participant_topics(&s.kafka, topics::SHIPPING_COMMANDS, topics::SHIPPING_EVENTS)
            .await?;
    let (mut app, pool) = service::build(
        "shipping",
        s,
        Some(sqlx::migrate!()),
        shutdown.clone(),
        async |routes, readiness, pool| {
            let kafka = s.kafka.probe(&commands, readiness.timeout())?;
            readiness
                .serves::<ShippingServiceServer<grpc::Shipping>>()
                .probe("kafka", kafka);
            let twopc = shop_messaging::twopc::TwoPhase::new(
                pool.clone(),
                twopc::ShipWork {
                    zones: zones.clone(),
                },
            );
            Ok(routes
                .add_service(ShippingServiceServer::new(grpc::Shipping::new(
                    pool.clone(),
                    zones.clone(),
                )))
                .add_service(ParticipantServer::new(twopc)))
        },
    )
    .await?;
    let handler = commands::Commands {
        events_topic: events,
        zones,
    };
    let reactions = Reactions::new(choreography::TRIGGERS, choreography::react, handler.clone());
    service::spawn_inbox(
        &mut app,
        &pool,
        &s.kafka,
        "shipping",
        &[&commands],
        handler,
        shutdown.clone(),
    )?;
    service::spawn_reactions(
        &mut app,
        &pool,
        &s.kafka,
        "shipping",
        &[topics::PAYMENT_EVENTS],
        reactions,
        shutdown,
    )
    .await?;
    Ok(app)
}
