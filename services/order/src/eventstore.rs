//! An append-only event store in PostgreSQL, with optimistic concurrency and snapshots.
//!
//! Generic over JSON payloads: the order-specific encoding lives in [`crate::domain::stream`],
//! the aggregate loading in [`crate::orders`]. Every function takes the caller's connection, so
//! an append commits (or not) with whatever else the caller writes: the outbox rows that carry
//! the events to Kafka, the saga index.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStreamEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    /// tenant_id, correlation_id, causation_id.
    pub metadata: Value,
}

/// The columns of [`Recorded`], in its field order.
pub const RECORDED_COLUMNS: &str =
    "position, tx, stream_id, version, event_type, schema_version, payload, metadata, recorded_at";

/// An event as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Recorded {
    pub position: i64,
    pub tx: i64,
    pub stream_id: Uuid,
    pub version: i32,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone appended first: reload the stream and decide again.
    #[error("stream {stream} is at version {actual}, not the expected {expected}")]
    Conflict {
        stream: Uuid,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Appends `events` to `stream` if it is at `expected` version now; returns them as recorded
/// (versions, positions, the database's timestamps).
///
/// Two writers that loaded the same version race on the `(stream_id, version)` unique key: the
/// loser's insert waits for the winner's commit and then inserts nothing (`ON CONFLICT DO
/// NOTHING`), so it gets [`AppendError::Conflict`] with its transaction still usable: it can
/// reload and try again in place. No savepoint: a transaction applying a batch of messages
/// appends to many streams, and more than 64 savepoints in one transaction overflow PostgreSQL's
/// subtransaction cache, which slows every snapshot of the server.
///
/// (An append that inserted only some of its events, which takes a writer appending a
/// different number of events at the same version without the saga lock, is an error that
/// must roll the whole transaction back.)
pub async fn append(
    conn: &mut PgConnection,
    stream: Uuid,
    expected: u64,
    events: &[NewStreamEvent],
) -> Result<Vec<Recorded>, AppendError> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let first = i32::try_from(expected + 1).map_err(|_| AppendError::Conflict {
        stream,
        expected,
        actual: expected,
    })?;
    let mut rows: Vec<Recorded> = sqlx::query_as(&format!(
        "INSERT INTO events (stream_id, version, event_type, schema_version, payload, metadata)
         SELECT $1, $2 + e.ord::int - 1, e.event_type, e.schema_version, e.payload, e.metadata
         FROM UNNEST($3::text[], $4::int[], $5::jsonb[], $6::jsonb[])
              WITH ORDINALITY AS e(event_type, schema_version, payload, metadata, ord)
         WHERE (SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1) = $2 - 1
         ON CONFLICT (stream_id, version) DO NOTHING
         RETURNING {RECORDED_COLUMNS}"
    ))
    .bind(stream)
    .bind(first)
    .bind(
        events
            .iter()
            .map(|e| e.event_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.metadata.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() == events.len() {
        rows.sort_by_key(|r| r.version);
        return Ok(rows);
    }
    if rows.is_empty() {
        // The stream is not where the caller thinks (behind or ahead of it).
        return Err(conflict(conn, stream, expected).await);
    }
    Err(AppendError::Db(sqlx::Error::Protocol(format!(
        "stream {stream}: {} of {} events appended at version {first} beside another writer; roll the transaction back",
        rows.len(),
        events.len()
    ))))
}

async fn conflict(conn: &mut PgConnection, stream: Uuid, expected: u64) -> AppendError {
    match version(conn, stream).await {
        Ok(actual) => AppendError::Conflict {
            stream,
            expected,
            actual,
        },
        Err(e) => e.into(),
    }
}

/// The stream's current version (0: no such stream).
pub async fn version(conn: &mut PgConnection, stream: Uuid) -> Result<u64, sqlx::Error> {
    let v: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(conn)
            .await?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Where to stop reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    End,
    Version(u64),
    Time(DateTime<Utc>),
}

const PAGE: i64 = 1_000;

/// The stream's events after `after` (a version), up to `until`, in version order. Read in pages
/// of 1 000 rows so no single query is unbounded.
pub async fn read(
    conn: &mut PgConnection,
    stream: Uuid,
    after: u64,
    until: Until,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let (max_version, max_time) = match until {
        Until::End => (i64::MAX, None),
        Until::Version(v) => (i64::try_from(v).unwrap_or(i64::MAX), None),
        Until::Time(t) => (i64::MAX, Some(t)),
    };
    let mut out: Vec<Recorded> = Vec::new();
    let mut from = i64::try_from(after).unwrap_or(i64::MAX);
    loop {
        let page: Vec<Recorded> = sqlx::query_as(&format!(
            "SELECT {RECORDED_COLUMNS}
             FROM events
             WHERE stream_id = $1 AND version > $2 AND version <= $3
               AND ($4::timestamptz IS NULL OR recorded_at <= $4)
             ORDER BY version LIMIT $5"
        ))
        .bind(stream)
        .bind(from)
        .bind(max_version)
        .bind(max_time)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let full = page.len() as i64 == PAGE;
        if let Some(last) = page.last() {
            from = i64::from(last.version);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// A stored snapshot: (version, schema version, state).
pub async fn snapshot(
    conn: &mut PgConnection,
    stream: Uuid,
) -> Result<Option<(u64, i32, Value)>, sqlx::Error> {
    let row: Option<(i32, i32, Value)> =
        sqlx::query_as("SELECT version, schema_version, state FROM snapshots WHERE stream_id = $1")
            .bind(stream)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(v, s, state)| (u64::try_from(v).unwrap_or(0), s, state)))
}

/// Stores a snapshot unless a newer one is there already.
pub async fn save_snapshot(
    conn: &mut PgConnection,
    stream: Uuid,
    version: u64,
    schema_version: i32,
    state: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (stream_id, version, schema_version, state) VALUES ($1, $2, $3, $4)
         ON CONFLICT (stream_id) DO UPDATE
           SET version = EXCLUDED.version, schema_version = EXCLUDED.schema_version,
               state = EXCLUDED.state, taken_at = now()
         WHERE snapshots.version < EXCLUDED.version OR snapshots.schema_version <> EXCLUDED.schema_version",
    )
    .bind(stream)
    .bind(i32::try_from(version).unwrap_or(i32::MAX))
    .bind(schema_version)
    .bind(state)
    .execute(conn)
    .await?;
    Ok(())
}
