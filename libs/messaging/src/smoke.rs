//! The smoke flow: the smallest real use of the outbox and inbox, shared by the integration
//! tests, the `make run` demo and the relay benchmark.
//!
//! A producer writes, per aggregate, ticks 1, 2, 3, ... (`smoke.tick`) through the outbox.
//! [`OrderedTicks`] consumes them through the inbox and applies each as an effect row, checking
//! that every aggregate's ticks arrive in order with no gap: an out-of-order or missing tick is
//! a permanent error (it would be dead-lettered and counted), a duplicate is absorbed by the
//! inbox before the handler sees it.

use prost::Message as _;
use shop_proto::events::SmokeTick;
use sqlx::{PgConnection, PgPool};

use crate::{
    envelope::{EventEnvelope, NewEvent},
    inbox::{Handler, HandlerError},
};

pub const EVENT_TYPE: &str = "smoke.tick";
/// Always fails (transiently), to exercise retries and the dead-letter topic.
pub const POISON_TYPE: &str = "smoke.poison";

/// Creates the effect tables (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS smoke_effect (
             aggregate_id TEXT NOT NULL,
             sequence     BIGINT NOT NULL,
             applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
             -- enqueued_at travels in the envelope: end-to-end latency per event
             latency_ms   DOUBLE PRECISION NOT NULL
         );
         -- The producer's state: one counter per aggregate; each increment is a tick event.
         CREATE TABLE IF NOT EXISTS smoke_counter (
             aggregate_id TEXT PRIMARY KEY,
             value        BIGINT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS smoke_head (
             aggregate_id TEXT PRIMARY KEY,
             last_sequence BIGINT NOT NULL
         );",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The producer side: in one transaction, advance `aggregate_id`'s counter (the state change,
/// which also takes the aggregate's row lock) and enqueue the tick that reports it.
/// Returns the new counter value.
pub async fn write_tick(
    pool: &PgPool,
    topic: &str,
    aggregate_id: &str,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let value: i64 = sqlx::query_scalar(
        "INSERT INTO smoke_counter (aggregate_id, value) VALUES ($1, 1)
         ON CONFLICT (aggregate_id) DO UPDATE SET value = smoke_counter.value + 1
         RETURNING value",
    )
    .bind(aggregate_id)
    .fetch_one(&mut *tx)
    .await?;
    let value =
        u64::try_from(value).map_err(|_| sqlx::Error::Protocol("negative counter".into()))?;
    crate::outbox::enqueue(&mut tx, &tick(topic, aggregate_id, value)).await?;
    tx.commit().await?;
    Ok(value)
}

/// Tick `sequence` of `aggregate_id`, for `topic`.
pub fn tick(topic: &str, aggregate_id: &str, sequence: u64) -> NewEvent {
    NewEvent::new(
        topic,
        EVENT_TYPE,
        "smoke",
        aggregate_id,
        &SmokeTick { sequence },
    )
}

/// Applies ticks in order, once each.
#[derive(Debug, Clone, Default)]
pub struct OrderedTicks;

impl Handler for OrderedTicks {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        if event.event_type == POISON_TYPE {
            return Err(HandlerError::Transient(anyhow::anyhow!("poison message")));
        }
        if event.event_type != EVENT_TYPE {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "unexpected event type {}",
                event.event_type
            )));
        }
        let tick = SmokeTick::decode(event.payload.as_slice())?;
        let sequence = i64::try_from(tick.sequence)
            .map_err(|_| HandlerError::Permanent(anyhow::anyhow!("sequence out of range")))?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT last_sequence FROM smoke_head WHERE aggregate_id = $1 FOR UPDATE",
        )
        .bind(&event.aggregate_id)
        .fetch_optional(&mut *conn)
        .await?;
        let expected = last.unwrap_or(0) + 1;
        if sequence != expected {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "aggregate {} tick {sequence} arrived, expected {expected}",
                event.aggregate_id
            )));
        }
        let latency_ms = event
            .occurred_at
            .as_ref()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        sqlx::query(
            "INSERT INTO smoke_effect (aggregate_id, sequence, latency_ms) VALUES ($1, $2, $3)",
        )
        .bind(&event.aggregate_id)
        .bind(sequence)
        .bind(latency_ms)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO smoke_head (aggregate_id, last_sequence) VALUES ($1, $2)
             ON CONFLICT (aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence",
        )
        .bind(&event.aggregate_id)
        .bind(sequence)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// End-to-end latency percentiles (enqueue -> applied), in milliseconds.
pub async fn latency_percentiles(pool: &PgPool) -> Result<(f64, f64), sqlx::Error> {
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
         FROM smoke_effect",
    )
    .fetch_one(pool)
    .await?;
    Ok((p50.unwrap_or(0.0), p99.unwrap_or(0.0)))
}

/// What the effect tables say after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Effect rows (one per applied tick).
    pub applied: i64,
    /// (aggregate, sequence) pairs applied more than once: must be 0.
    pub applied_twice: i64,
}

pub async fn effects(pool: &PgPool) -> Result<Effects, sqlx::Error> {
    let (applied, applied_twice): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM smoke_effect),
                (SELECT count(*) FROM (SELECT 1 FROM smoke_effect
                                       GROUP BY aggregate_id, sequence HAVING count(*) > 1) d)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Effects {
        applied,
        applied_twice,
    })
}
