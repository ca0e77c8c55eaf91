//! The order service's SQL besides the event store: idempotency keys and the saga index (the
//! saga's state, deadline and last error per order, kept in step with the stream in the same
//! transaction, so the timeout sweep and `ListSagas` need no replay). Functions take the
//! caller's connection; the caller owns the transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{
    clock,
    saga::{Saga, State, Step},
};

/// Records `key` for `order_id` unless it was used before; returns the order stored under the
/// key, its request fingerprint, and whether it was recorded now.
pub async fn claim_key(
    conn: &mut PgConnection,
    tenant: &str,
    key: &str,
    order_id: Uuid,
    fingerprint: &str,
) -> Result<(Uuid, String, bool), sqlx::Error> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO order_keys (tenant_id, idempotency_key, order_id, fingerprint) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING order_id",
    )
    .bind(tenant)
    .bind(key)
    .bind(order_id)
    .bind(fingerprint)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = inserted {
        return Ok((id, fingerprint.to_owned(), true));
    }
    let (id, fp): (Uuid, String) = sqlx::query_as(
        "SELECT order_id, fingerprint FROM order_keys WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(conn)
    .await?;
    Ok((id, fp, false))
}

/// Whether `key` was used before (by an order that was placed).
pub async fn key_taken(
    conn: &mut PgConnection,
    tenant: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM order_keys WHERE tenant_id = $1 AND idempotency_key = $2)",
    )
    .bind(tenant)
    .bind(key)
    .fetch_one(conn)
    .await
}

// ---- sagas ----

/// A saga row: the machine's state plus bookkeeping.
#[derive(Debug, Clone)]
pub struct SagaRow {
    pub saga_id: Uuid,
    pub saga: Saga,
    pub deadline: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The outbox event id of the command in flight.
    pub command_id: Option<Uuid>,
}

type SagaTuple = (
    Uuid,
    String,
    Vec<String>,
    i32,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<Uuid>,
);
const SAGA_COLUMNS: &str = "saga_id, state, to_compensate, attempts, deadline, reason, last_error, created_at, updated_at, command_id";

fn saga_from(t: SagaTuple) -> SagaRow {
    SagaRow {
        saga_id: t.0,
        saga: Saga {
            state: State::parse(&t.1).unwrap_or(State::Compensating),
            to_compensate: t.2.iter().filter_map(|s| Step::parse(s)).collect(),
            attempts: u32::try_from(t.3).unwrap_or(0),
            reason: t.5,
        },
        deadline: t.4,
        last_error: t.6,
        created_at: t.7,
        updated_at: t.8,
        command_id: t.9,
    }
}

pub async fn insert_saga(
    conn: &mut PgConnection,
    id: Uuid,
    saga: &Saga,
    deadline: Option<DateTime<Utc>>,
    command_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO saga (saga_id, state, to_compensate, attempts, deadline, command_id) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(saga.state.as_str())
        .bind(step_names(&saga.to_compensate))
        .bind(i32::try_from(saga.attempts).unwrap_or(i32::MAX))
        .bind(deadline)
        .bind(command_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The saga, locked for this transaction.
pub async fn lock_saga(conn: &mut PgConnection, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
    let t: Option<SagaTuple> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM saga WHERE saga_id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(t.map(saga_from))
}

pub async fn saga(conn: &mut PgConnection, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
    let t: Option<SagaTuple> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM saga WHERE saga_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(t.map(saga_from))
}

/// Pushes back the deadline of a saga the timeout sweep could not advance, with the reason, so
/// that the sweep goes on to the others (and `saga list --stuck` shows why).
pub async fn defer_saga(
    conn: &mut PgConnection,
    id: Uuid,
    until: DateTime<Utc>,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga SET deadline = $2, last_error = $3, updated_at = now() WHERE saga_id = $1",
    )
    .bind(id)
    .bind(until)
    .bind(error)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn save_saga(
    conn: &mut PgConnection,
    id: Uuid,
    saga: &Saga,
    deadline: Option<DateTime<Utc>>,
    command_id: Option<Uuid>,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga SET state = $2, to_compensate = $3, attempts = $4, deadline = $5, reason = $6,
                last_error = COALESCE($7, last_error), updated_at = now(), command_id = $8,
                finished_at = CASE WHEN $2 IN ('COMPLETED', 'CANCELLED') THEN now() END
         WHERE saga_id = $1",
    )
    .bind(id)
    .bind(saga.state.as_str())
    .bind(step_names(&saga.to_compensate))
    .bind(i32::try_from(saga.attempts).unwrap_or(i32::MAX))
    .bind(deadline)
    .bind(&saga.reason)
    .bind(last_error)
    .bind(command_id)
    .execute(conn)
    .await?;
    Ok(())
}

fn step_names(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.name().to_owned()).collect()
}

/// Sagas whose deadline passed, locked (others' locked ones skipped: several instances share).
pub async fn due_sagas(conn: &mut PgConnection, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
    let rows: Vec<SagaTuple> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM saga WHERE deadline < now()
         ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(saga_from).collect())
}

/// Where the command with outbox event id `event_id` is: unsent, published (when), or settled
/// (parked, or no longer in the outbox).
pub async fn command_state(
    conn: &mut PgConnection,
    event_id: Uuid,
) -> Result<clock::Command, sqlx::Error> {
    let row: Option<(Option<DateTime<Utc>>, bool)> = sqlx::query_as(
        "SELECT published_at, parked_at IS NOT NULL FROM outbox WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some((None, false)) => clock::Command::Unsent,
        Some((Some(at), _)) => clock::Command::Published(at),
        Some((None, true)) | None => clock::Command::Settled,
    })
}

/// Moves a saga's deadline, nothing else.
pub async fn reschedule(
    conn: &mut PgConnection,
    id: Uuid,
    deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE saga SET deadline = $2 WHERE saga_id = $1")
        .bind(id)
        .bind(deadline)
        .execute(conn)
        .await
        .map(|_| ())
}

/// How many sagas are running (not yet completed or cancelled).
pub async fn open_sagas(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM saga WHERE finished_at IS NULL")
        .fetch_one(conn)
        .await
}

/// A page of sagas, oldest first, optionally in one state and/or past their deadline.
pub async fn sagas(
    conn: &mut PgConnection,
    state: Option<State>,
    stuck_only: bool,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let (at, id) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, Uuid::nil()));
    let rows: Vec<SagaTuple> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM saga
         WHERE ($1::text IS NULL OR state = $1) AND (NOT $2 OR deadline < now())
           AND (created_at, saga_id) > ($3, $4)
         ORDER BY created_at, saga_id LIMIT $5"
    ))
    .bind(state.map(State::as_str))
    .bind(stuck_only)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(saga_from).collect())
}
