//! One order's read-model rows, folded from its whole stream in version order.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::NAME;
use crate::{
    domain::stream::{self, OrderEvent},
    eventstore::{RECORDED_COLUMNS, Recorded},
};

/// One order's row, folded from its stream.
struct Folded {
    tenant_id: String,
    customer_id: String,
    status: &'static str,
    saga_state: String,
    cancel_reason: Option<String>,
    items: Value,
    total_minor: i64,
    currency: String,
    version: i32,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Folds a stream's events, in version order, into its row (None before `order_placed`).
/// Events that do not decode are logged and skipped (the model cannot show what it cannot
/// read; the stream keeps them for a fixed version to replay).
fn fold(events: &[Recorded]) -> Option<Folded> {
    let mut row: Option<Folded> = None;
    for r in events {
        let event = match stream::decode(&r.event_type, r.schema_version, r.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(stream = %r.stream_id, version = r.version, error = %e, "event skipped by the projection");
                metrics::counter!("projection_skipped_total", "projection" => NAME).increment(1);
                continue;
            }
        };
        if let OrderEvent::Placed(p) = &event {
            row = Some(Folded {
                tenant_id: p.tenant_id.clone(),
                customer_id: p.customer_id.clone(),
                status: "PENDING",
                saga_state: "STARTED".into(),
                cancel_reason: None,
                items: serde_json::to_value(&p.items).unwrap_or(Value::Null),
                total_minor: p.total_minor,
                currency: p.currency.clone(),
                version: r.version,
                placed_at: r.recorded_at,
                updated_at: r.recorded_at,
            });
            continue;
        }
        let Some(row) = row.as_mut() else { continue };
        match event {
            OrderEvent::Placed(_) => {}
            OrderEvent::Saga(fact) => {
                if let Some(s) = fact.state_after() {
                    row.saga_state = s.as_str().to_owned();
                }
            }
            OrderEvent::Completed => {
                row.status = "COMPLETED";
                row.saga_state = "COMPLETED".into();
            }
            OrderEvent::Cancelled { reason } => {
                row.status = "CANCELLED";
                row.saga_state = "CANCELLED".into();
                row.cancel_reason = Some(reason);
            }
        }
        row.version = r.version;
        row.updated_at = r.recorded_at;
    }
    row
}

/// Writes stream `id`'s rows in generation `g` from all its committed events, in version order.
///
/// The projection meets events in commit-safe `(tx, position)` order, and that is not always a
/// stream's version order: a transaction that took its id before another committed can append
/// the next version with a smaller `tx`. Applying events one by one (`version <` guard) would
/// then skip the earlier version's change for good. Folding the whole stream, whatever event
/// woke it, gives the same row whatever the order (a row never moves to a lower version).
pub async fn refresh(conn: &mut PgConnection, g: i32, id: Uuid) -> Result<(), sqlx::Error> {
    let events: Vec<Recorded> = sqlx::query_as(&format!(
        "SELECT {RECORDED_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let Some(row) = fold(&events) else {
        return Ok(());
    };
    for table in ["order_summary", "customer_orders"] {
        sqlx::query(&format!(
            "INSERT INTO {table}_g{g} AS t (order_id, tenant_id, customer_id, status, saga_state,
                                            cancel_reason, items, total_minor, currency, version,
                                            placed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (order_id) DO UPDATE
                 SET status = EXCLUDED.status, saga_state = EXCLUDED.saga_state,
                     cancel_reason = EXCLUDED.cancel_reason, version = EXCLUDED.version,
                     updated_at = EXCLUDED.updated_at
                 WHERE t.version < EXCLUDED.version"
        ))
        .bind(id)
        .bind(&row.tenant_id)
        .bind(&row.customer_id)
        .bind(row.status)
        .bind(&row.saga_state)
        .bind(&row.cancel_reason)
        .bind(&row.items)
        .bind(row.total_minor)
        .bind(&row.currency)
        .bind(row.version)
        .bind(row.placed_at)
        .bind(row.updated_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Refreshes each stream `events` touch, once.
pub(super) async fn refresh_streams(
    conn: &mut PgConnection,
    g: i32,
    events: &[Recorded],
) -> Result<(), sqlx::Error> {
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if seen.insert(e.stream_id) {
            refresh(conn, g, e.stream_id).await?;
        }
    }
    Ok(())
}
