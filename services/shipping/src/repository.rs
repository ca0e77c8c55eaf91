//! Shipping's SQL. Functions take the caller's connection; the caller owns the transaction.

use shop_proto::common::Address;
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub shipment_id: uuid::Uuid,
    pub order_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub address: Address,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

type Row = (
    uuid::Uuid,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    String,
    chrono::DateTime<chrono::Utc>,
);

const COLUMNS: &str = "shipment_id, order_id, status, reason, name, line1, line2, city, postal_code, country, updated_at";

fn from_row(r: Row) -> Shipment {
    Shipment {
        shipment_id: r.0,
        order_id: r.1,
        status: r.2,
        reason: r.3,
        address: Address {
            name: r.4,
            line1: r.5,
            line2: r.6,
            city: r.7,
            postal_code: r.8,
            country: r.9,
        },
        updated_at: r.10,
    }
}

/// The order's shipment, locked.
pub async fn for_order(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<Shipment>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM shipment WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(from_row))
}

pub async fn by_id(
    conn: &mut PgConnection,
    shipment_id: uuid::Uuid,
) -> Result<Option<Shipment>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM shipment WHERE shipment_id = $1"
    ))
    .bind(shipment_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(from_row))
}

/// Records the order's shipment with `status` ('created', 'refused' or 'cancelled').
pub async fn insert(
    conn: &mut PgConnection,
    order_id: &str,
    tenant: &str,
    status: &str,
    reason: Option<&str>,
    address: Option<&Address>,
) -> Result<uuid::Uuid, sqlx::Error> {
    let a = address.cloned().unwrap_or_default();
    let shipment_id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO shipment (order_id, shipment_id, tenant_id, status, reason, name, line1, line2, city, postal_code, country)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(order_id)
    .bind(shipment_id)
    .bind(tenant)
    .bind(status)
    .bind(reason)
    .bind(&a.name)
    .bind(&a.line1)
    .bind(&a.line2)
    .bind(&a.city)
    .bind(&a.postal_code)
    .bind(&a.country)
    .execute(conn)
    .await?;
    Ok(shipment_id)
}

pub async fn set_status(
    conn: &mut PgConnection,
    order_id: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE shipment SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}
