//! Operating an outbox: its backlog, the rows parked because the broker refuses them for good,
//! putting them back in line, and deleting published rows.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sqlx::PgPool;

/// Whether the broker will refuse this publish however often it is retried: the record is
/// too large or malformed, the topic does not exist or is invalid, or the producer is not
/// authorised. Everything else (broker down, timeouts, leader changes) is worth retrying.
pub fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
        )
    )
}

/// Unpublished rows (parked ones included), the age of the oldest, and how many are parked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_seconds: f64,
    pub parked: i64,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (pending, age, parked): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8,
                count(*) FILTER (WHERE parked_at IS NOT NULL)
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        pending,
        oldest_age_seconds: age.unwrap_or(0.0),
        parked,
    })
}

/// A parked row, and how many rows of its key wait behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Parked {
    pub id: i64,
    pub topic: String,
    pub partition_key: String,
    pub event_type: String,
    pub bytes: i32,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    pub waiting_behind: i64,
}

/// The parked rows, oldest first (at most `limit`).
pub async fn parked(pool: &PgPool, limit: i64) -> Result<Vec<Parked>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.topic, p.partition_key, p.event_type, length(p.payload) AS bytes,
                p.attempts, p.last_error, p.parked_at,
                (SELECT count(*) FROM outbox w WHERE w.partition_key = p.partition_key
                   AND w.id > p.id AND w.published_at IS NULL AND w.parked_at IS NULL)
                   AS waiting_behind
         FROM outbox p WHERE p.parked_at IS NOT NULL AND p.published_at IS NULL
         ORDER BY p.id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Puts parked rows back in line (one by id, or all): the relay tries them again from zero
/// attempts, and the rows of their keys that waited follow in order. Returns how many.
pub async fn redrive(pool: &PgPool, id: Option<i64>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0
         WHERE parked_at IS NOT NULL AND published_at IS NULL AND ($1::bigint IS NULL OR id = $1)",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Deletes rows published more than `retention` ago, 10 000 per statement so no statement
/// holds locks for long. Returns how many went.
pub async fn delete_published(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox
                 WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
                 LIMIT 10000)",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 10_000 {
            return Ok(total);
        }
    }
}
