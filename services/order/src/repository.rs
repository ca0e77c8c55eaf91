//! The order service's SQL: orders, sagas and their step timeline. Functions take the caller's
//! connection; the caller owns the transaction (and writes the outbox rows in it).

use chrono::{DateTime, Utc};
use prost::Message;
use shop_proto::common::{Address, LineItem};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{
    order::NewOrder,
    saga::{Saga, State, Step},
};

/// An order as stored.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub tenant_id: String,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub shipping_address: Address,
    pub total_minor: i64,
    pub currency: String,
    pub payment_account_id: String,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Items are stored as one encoded `PlaceOrderRequest`-shaped list.
#[derive(Clone, PartialEq, prost::Message)]
struct Items {
    #[prost(message, repeated, tag = "1")]
    items: Vec<LineItem>,
}

const ORDER_COLUMNS: &str = "order_id, tenant_id, customer_id, items, shipping_address, total_minor, currency, \
     payment_account_id, status, cancel_reason, fingerprint, created_at, updated_at";

type Row = (
    Uuid,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
);

fn order_from(r: Row) -> OrderRow {
    OrderRow {
        order_id: r.0,
        tenant_id: r.1,
        customer_id: r.2,
        items: Items::decode(r.3.as_slice())
            .map(|i| i.items)
            .unwrap_or_default(),
        shipping_address: Address::decode(r.4.as_slice()).unwrap_or_default(),
        total_minor: r.5,
        currency: r.6,
        payment_account_id: r.7,
        status: r.8,
        cancel_reason: r.9,
        fingerprint: r.10,
        created_at: r.11,
        updated_at: r.12,
    }
}

/// Inserts the order unless its idempotency key was used before; returns the order stored under
/// the key and whether it was inserted now.
pub async fn insert_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    o: &NewOrder,
) -> Result<(OrderRow, bool), sqlx::Error> {
    let inserted: Option<Row> = sqlx::query_as(&format!(
        "INSERT INTO orders (order_id, tenant_id, idempotency_key, fingerprint, customer_id, items, shipping_address,
                             total_minor, currency, payment_account_id, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'PENDING')
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order_id)
    .bind(&o.tenant_id)
    .bind(&o.idempotency_key)
    .bind(&o.fingerprint)
    .bind(&o.customer_id)
    .bind(Items { items: o.items.clone() }.encode_to_vec())
    .bind(o.shipping_address.encode_to_vec())
    .bind(o.total.amount_minor)
    .bind(&o.total.currency)
    .bind(&o.payment_account_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok((order_from(row), true));
    }
    let existing: Row = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE tenant_id = $1 AND idempotency_key = $2"
    ))
    .bind(&o.tenant_id)
    .bind(&o.idempotency_key)
    .fetch_one(conn)
    .await?;
    Ok((order_from(existing), false))
}

pub async fn order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(order_from))
}

/// A page of a customer's orders, newest first, after the cursor `(created_at, order_id)`.
pub async fn orders_of(
    conn: &mut PgConnection,
    tenant: &str,
    customer: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    // Bounds PostgreSQL can represent (chrono's MIN/MAX_UTC are outside its range).
    let far_future = DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or_default(); // 9999-12-31
    let (at, id) = after.unwrap_or((far_future, Uuid::max()));
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE tenant_id = $1 AND customer_id = $2 AND (created_at, order_id) < ($3, $4)
         ORDER BY created_at DESC, order_id DESC LIMIT $5"
    ))
    .bind(tenant)
    .bind(customer)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(order_from).collect())
}

pub async fn finish_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = $2, cancel_reason = $3, updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
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
);
const SAGA_COLUMNS: &str =
    "saga_id, state, to_compensate, attempts, deadline, reason, last_error, created_at, updated_at";

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
    }
}

pub async fn insert_saga(
    conn: &mut PgConnection,
    id: Uuid,
    saga: &Saga,
    deadline: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO saga (saga_id, state, to_compensate, attempts, deadline) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(saga.state.as_str())
        .bind(step_names(&saga.to_compensate))
        .bind(i32::try_from(saga.attempts).unwrap_or(i32::MAX))
        .bind(deadline)
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

pub async fn save_saga(
    conn: &mut PgConnection,
    id: Uuid,
    saga: &Saga,
    deadline: Option<DateTime<Utc>>,
    last_error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga SET state = $2, to_compensate = $3, attempts = $4, deadline = $5, reason = $6,
                last_error = COALESCE($7, last_error), updated_at = now(),
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
    .execute(conn)
    .await?;
    Ok(())
}

fn step_names(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.name().to_owned()).collect()
}

/// Sagas whose deadline passed, locked (others' locked ones skipped: several instances share).
pub async fn due_sagas(conn: &mut PgConnection, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT saga_id FROM saga WHERE deadline < now() ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
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

/// A step (or compensation) was sent: record it running with its attempt count.
pub async fn step_sent(
    conn: &mut PgConnection,
    id: Uuid,
    step: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saga_step (saga_id, step, status, attempts) VALUES ($1, $2, 'running', $3)
         ON CONFLICT (saga_id, step) DO UPDATE SET status = 'running', attempts = EXCLUDED.attempts",
    )
    .bind(id)
    .bind(step)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn step_status(
    conn: &mut PgConnection,
    id: Uuid,
    step: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga_step SET status = $3, last_error = COALESCE($4, last_error),
                finished_at = CASE WHEN $3 IN ('done', 'failed', 'timed_out', 'aborted') THEN now() ELSE finished_at END
         WHERE saga_id = $1 AND step = $2",
    )
    .bind(id)
    .bind(step)
    .bind(status)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// (step, status, attempts, started_at, finished_at, last_error), in the order they started.
pub type StepRow = (
    String,
    String,
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

pub async fn steps(conn: &mut PgConnection, id: Uuid) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT step, status, attempts, started_at, finished_at, last_error FROM saga_step
         WHERE saga_id = $1 ORDER BY started_at, step",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}
