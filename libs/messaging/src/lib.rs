//! # shop-messaging
//!
//! How services talk: Kafka, fed by a transactional outbox and consumed through an inbox.
//!
//! - [`envelope`]: building [`EventEnvelope`]s (ids, causation, tenant, trace) and encoding them.
//! - [`kafka`]: producer and consumer settings (idempotent producer, manual offset store), topics.
//! - [`outbox`]: [`outbox::enqueue`] inside the caller's transaction, and the [`outbox::Relay`]
//!   that publishes rows in per-key order, marks them only after the broker acks, wakes on
//!   the writer's commit ([`wake`]; `LISTEN/NOTIFY` for writers outside the process) and
//!   cleans up.
//! - [`relay`]: the one relay loop (claim -> publish in order -> settle, parking, producer
//!   renewal, metrics) over a [`relay::Source`]: PostgreSQL rows here, the cart's Redis stream,
//!   the catalog's in-document outbox.
//! - `lease` (feature `redis`): the one relay lease for outboxes outside PostgreSQL.
//! - [`inbox`]: [`inbox::Inbox`] consumes a topic; each message's effect and its inbox row commit
//!   in one transaction, offsets are committed after; failures retry with backoff and then go to
//!   a dead-letter topic.
//! - [`consumer`]: at-least-once consumption for idempotent effects in stores without an inbox
//!   table (Redis, MongoDB, a search index): offset stored after the effect.
//! - [`service`]: start-up shared by the PostgreSQL services (settings, database, relay task).
//! - [`smoke`]: the smallest real flow over both (ordered ticks), for tests, demo and benchmark.
//! - `testing` (feature): scratch databases, topic namespaces and a command channel for tests.
//! - [`topics`]: topic names and event types, the Kafka half of the contract.
//! - [`twopc`]: two-phase commit, the participant's side (PREPARE TRANSACTION and its end).
//! - [`wake`]: in-process wake-ups after a commit (instead of NOTIFY inside data transactions).
//! - [`migrate`]: the outbox and inbox tables, run by each service before its own migrations.
//!
//! The flow of one event: service tx { state change + `enqueue` } -> COMMIT -> wake ->
//! relay claims the bucket -> produce (key = aggregate id) -> ack -> mark published ->
//! consumer -> tx { inbox row + effect } -> COMMIT -> offset commit.

pub mod choreography;
pub mod consumer;
pub mod envelope;
pub mod inbox;
pub mod kafka;
#[cfg(feature = "redis")]
pub mod lease;
pub mod outbox;
pub mod relay;
pub mod service;
pub mod smoke;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;
pub mod twopc;
pub mod wake;

pub use envelope::{EventEnvelope, NewEvent};
pub use shop_proto::events;

/// Runs the outbox and inbox migrations. Their versions (1, 2) sit far below the services'
/// timestamped ones, and both migrators ignore each other's rows in `_sqlx_migrations`.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}
