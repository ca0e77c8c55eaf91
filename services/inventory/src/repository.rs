//! Inventory's SQL. Every function takes the caller's connection, so the caller owns the
//! transaction (the inbox's, for commands) and the outbox rows commit with the change.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use crate::domain::{Request, Status};

/// A stock level after a change: (sku, available).
pub type Level = (String, i64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved now; the stock levels it changed.
    Reserved(Vec<Level>),
    /// Not enough stock (or an unknown SKU): nothing taken, the refusal recorded.
    Rejected(String),
    /// The order asked before: the same answer as then (or a refusal if it was released).
    AlreadyDecided(Status, Option<String>),
}

/// Reserves `request` for `order_id`, all or nothing.
pub async fn reserve(
    conn: &mut PgConnection,
    tenant: &str,
    order_id: &str,
    request: &Request,
) -> Result<Reserve, sqlx::Error> {
    if let Some((status, reason)) = reservation_status(conn, order_id).await? {
        return Ok(Reserve::AlreadyDecided(status, reason));
    }
    let skus: Vec<&str> = request.lines.iter().map(|(s, _)| s.as_str()).collect();
    let quantities: Vec<i64> = request.lines.iter().map(|(_, q)| *q).collect();
    // Lock every row this reservation touches, in SKU order (the same order everywhere, so two
    // reservations never wait on each other in a cycle). Until commit nobody else can take them.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, available FROM stock WHERE tenant_id = $1 AND sku = ANY($2) ORDER BY sku FOR UPDATE",
    )
    .bind(tenant)
    .bind(&skus)
    .fetch_all(&mut *conn)
    .await?;
    let available: BTreeMap<String, i64> = rows.into_iter().collect();
    if let Some(reason) = request.shortfall(&available) {
        insert_reservation(conn, order_id, tenant, Status::Rejected, Some(&reason)).await?;
        return Ok(Reserve::Rejected(reason));
    }
    let levels: Vec<Level> = sqlx::query_as(
        "UPDATE stock s SET available = s.available - r.q, reserved = s.reserved + r.q, updated_at = now()
         FROM unnest($2::text[], $3::bigint[]) AS r(sku, q)
         WHERE s.tenant_id = $1 AND s.sku = r.sku
         RETURNING s.sku, s.available",
    )
    .bind(tenant)
    .bind(&skus)
    .bind(&quantities)
    .fetch_all(&mut *conn)
    .await?;
    insert_reservation(conn, order_id, tenant, Status::Reserved, None).await?;
    sqlx::query(
        "INSERT INTO reservation_line (order_id, sku, quantity)
         SELECT $1, sku, q FROM unnest($2::text[], $3::bigint[]) AS r(sku, q)",
    )
    .bind(order_id)
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut *conn)
    .await?;
    Ok(Reserve::Reserved(levels))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Returned to stock now; the levels it changed.
    Released(Vec<Level>),
    /// Nothing held (rejected, released before, or never reserved: a tombstone now refuses a
    /// reserve that arrives late).
    NothingHeld,
    /// The stock already left; a release cannot bring it back.
    AlreadyCommitted,
}

/// Returns a reservation's units to stock (the saga's compensation).
pub async fn release(
    conn: &mut PgConnection,
    tenant: &str,
    order_id: &str,
) -> Result<Release, sqlx::Error> {
    match reservation_status(conn, order_id).await? {
        None => {
            insert_reservation(
                conn,
                order_id,
                tenant,
                Status::Released,
                Some("released before it was reserved"),
            )
            .await?;
            Ok(Release::NothingHeld)
        }
        Some((Status::Rejected | Status::Released, _)) => Ok(Release::NothingHeld),
        Some((Status::Committed, _)) => Ok(Release::AlreadyCommitted),
        Some((Status::Reserved, _)) => {
            let levels = move_reserved(conn, order_id, true).await?;
            set_status(conn, order_id, Status::Released).await?;
            Ok(Release::Released(levels))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    Committed,
    /// Committed before: nothing to do.
    AlreadyCommitted,
    /// Nothing reserved to commit (a saga bug).
    NotReserved(Option<Status>),
}

/// The reserved units leave the warehouse: `reserved` goes down, `available` stays.
pub async fn commit(conn: &mut PgConnection, order_id: &str) -> Result<Commit, sqlx::Error> {
    match reservation_status(conn, order_id).await? {
        Some((Status::Reserved, _)) => {
            move_reserved(conn, order_id, false).await?;
            set_status(conn, order_id, Status::Committed).await?;
            Ok(Commit::Committed)
        }
        Some((Status::Committed, _)) => Ok(Commit::AlreadyCommitted),
        other => Ok(Commit::NotReserved(other.map(|(s, _)| s))),
    }
}

/// Takes a reservation's units off `reserved`, back to `available` when `to_available`.
async fn move_reserved(
    conn: &mut PgConnection,
    order_id: &str,
    to_available: bool,
) -> Result<Vec<Level>, sqlx::Error> {
    // Lock in SKU order first, as reserve does: an UPDATE alone locks in whatever order its plan
    // visits the rows, which could deadlock against a concurrent reservation.
    sqlx::query(
        "SELECT 1 FROM stock s JOIN reservation_line l ON l.sku = s.sku
         JOIN reservation r ON r.order_id = l.order_id AND r.tenant_id = s.tenant_id
         WHERE l.order_id = $1 ORDER BY s.sku FOR UPDATE OF s",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "UPDATE stock s
         SET reserved = s.reserved - l.quantity,
             available = s.available + CASE WHEN $2 THEN l.quantity ELSE 0 END,
             updated_at = now()
         FROM (SELECT r.tenant_id, l.sku, l.quantity
               FROM reservation_line l JOIN reservation r USING (order_id)
               WHERE l.order_id = $1 ORDER BY l.sku) l
         WHERE s.tenant_id = l.tenant_id AND s.sku = l.sku
         RETURNING s.sku, s.available",
    )
    .bind(order_id)
    .bind(to_available)
    .fetch_all(conn)
    .await
}

/// The reservation's status, locking its row.
async fn reservation_status(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<(Status, Option<String>)>, sqlx::Error> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, reason FROM reservation WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(s, reason)| Status::parse(&s).map(|s| (s, reason))))
}

async fn insert_reservation(
    conn: &mut PgConnection,
    order_id: &str,
    tenant: &str,
    status: Status,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reservation (order_id, tenant_id, status, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(tenant)
    .bind(status.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    order_id: &str,
    status: Status,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservation SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds `quantity` units (creating the SKU if new); returns the new level.
pub async fn restock(
    conn: &mut PgConnection,
    tenant: &str,
    sku: &str,
    quantity: i64,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO stock (tenant_id, sku, available, received) VALUES ($1, $2, $3, $3)
         ON CONFLICT (tenant_id, sku) DO UPDATE
             SET available = stock.available + EXCLUDED.available,
                 received = stock.received + EXCLUDED.available, updated_at = now()
         RETURNING available, reserved",
    )
    .bind(tenant)
    .bind(sku)
    .bind(quantity)
    .fetch_one(conn)
    .await
}

/// (available, reserved) of one SKU.
pub async fn stock(
    conn: &mut PgConnection,
    tenant: &str,
    sku: &str,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT available, reserved FROM stock WHERE tenant_id = $1 AND sku = $2")
        .bind(tenant)
        .bind(sku)
        .fetch_optional(conn)
        .await
}
