//! The saga's invariants across order, inventory, payment and shipping, each read from the
//! service's own database.

use std::collections::HashMap;

use sqlx::PgPool;

use super::Check;
use crate::outbox::{Databases, service_pool};

/// An order whose saga has ended (or is overdue), as the order service knows it.
struct Order {
    tenant: String,
    state: String,
    total: Option<i64>,
}

/// A choreographed order has no deadline (nobody times it out: each participant acts when
/// its event comes); one that has not moved for this long is reported as overdue.
const CHOREOGRAPHY_QUIET: &str = "5 minutes";

pub async fn checks(dbs: &Databases, tenant: Option<&str>) -> anyhow::Result<Vec<Check>> {
    let order = service_pool(dbs, "order").await?;
    let inventory = service_pool(dbs, "inventory").await?;
    let payment = service_pool(dbs, "payment").await?;
    let shipping = service_pool(dbs, "shipping").await?;

    let mut overdue = Check::new("sagas.overdue");
    #[allow(clippy::type_complexity)]
    let sagas: Vec<(String, String, String, Option<i64>, bool, bool)> = sqlx::query_as(
        "SELECT s.saga_id::text, k.tenant_id, s.state, o.total_minor,
                CASE WHEN s.deadline IS NULL THEN s.updated_at < now() - $2::interval
                     ELSE s.deadline < now() END,
                s.deadline IS NULL
         FROM saga s JOIN order_keys k ON k.order_id = s.saga_id
         LEFT JOIN order_summary o ON o.order_id = s.saga_id
         WHERE $1::text IS NULL OR k.tenant_id = $1",
    )
    .bind(tenant)
    .bind(CHOREOGRAPHY_QUIET)
    .fetch_all(&order)
    .await?;
    let mut ended: HashMap<String, Order> = HashMap::new();
    for (id, tenant, state, total, past_deadline, no_deadline) in sagas {
        overdue.item();
        let terminal = state == "COMPLETED" || state == "CANCELLED";
        if !terminal && past_deadline {
            let why = if no_deadline {
                format!("choreographed, {state} and quiet for over {CHOREOGRAPHY_QUIET}")
            } else {
                format!("{state}, past its deadline")
            };
            overdue.violation(&id, why);
        }
        if terminal {
            ended.insert(
                id,
                Order {
                    tenant,
                    state,
                    total,
                },
            );
        }
    }

    let mut checks = vec![overdue];
    checks.extend(stock(&inventory, tenant, &ended).await?);
    checks.extend(money(&payment, tenant, &ended).await?);
    checks.push(shipments(&shipping, tenant, &ended).await?);
    checks.push(in_doubt(&order, [&inventory, &payment, &shipping], tenant).await?);
    for p in [order, inventory, payment, shipping] {
        p.close().await;
    }
    Ok(checks)
}

async fn stock(
    pool: &PgPool,
    tenant: Option<&str>,
    ended: &HashMap<String, Order>,
) -> anyhow::Result<Vec<Check>> {
    let (mut conservation, mut holds, mut oversold, mut outcome) = (
        Check::new("stock.conservation"),
        Check::new("stock.holds"),
        Check::new("stock.oversold"),
        Check::new("stock.outcome"),
    );
    // One snapshot: the stock rows and the reservation lines as of the same instant.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH lines AS (
             SELECT r.tenant_id, l.sku,
                    sum(l.quantity) FILTER (WHERE r.status = 'committed') AS committed,
                    sum(l.quantity) FILTER (WHERE r.status = 'reserved') AS held
             FROM reservation r JOIN reservation_line l USING (order_id)
             GROUP BY r.tenant_id, l.sku)
         SELECT s.tenant_id, s.sku, s.received, s.available, s.reserved,
                coalesce(lines.committed, 0)::bigint, coalesce(lines.held, 0)::bigint
         FROM stock s LEFT JOIN lines ON lines.tenant_id = s.tenant_id AND lines.sku = s.sku
         WHERE $1::text IS NULL OR s.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    for (t, sku, received, available, reserved, committed, held) in rows {
        let key = format!("{t}/{sku}");
        for c in [&mut conservation, &mut holds, &mut oversold] {
            c.item();
        }
        if received - committed != available + reserved {
            conservation.violation(&key, format!("received {received} - committed {committed} != available {available} + reserved {reserved}"));
        }
        if reserved != held {
            holds.violation(
                &key,
                format!("reserved {reserved}, reservations hold {held}"),
            );
        }
        if committed + held > received {
            oversold.violation(
                &key,
                format!("{} units more than received", committed + held - received),
            );
        }
    }
    let reservations: Vec<(String, String)> = sqlx::query_as(
        "SELECT order_id, status FROM reservation WHERE $1::text IS NULL OR tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let status: HashMap<String, String> = reservations.into_iter().collect();
    for (id, o) in ended {
        outcome.item();
        let s = status.get(id).map(String::as_str);
        let ok = match o.state.as_str() {
            "COMPLETED" => s == Some("committed"),
            _ => !matches!(s, Some("committed" | "reserved")),
        };
        if !ok {
            outcome.violation(id, format!("{} order, reservation {s:?}", o.state));
        }
    }
    Ok(vec![conservation, holds, oversold, outcome])
}

async fn money(
    pool: &PgPool,
    tenant: Option<&str>,
    ended: &HashMap<String, Order>,
) -> anyhow::Result<Vec<Check>> {
    let (mut ledger, mut outcome, mut single) = (
        Check::new("money.ledger"),
        Check::new("money.outcome"),
        Check::new("money.single_charge"),
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let accounts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT a.account_id, a.opening_minor, a.balance_minor,
                coalesce((SELECT sum(m.amount_minor) FROM movement m WHERE m.account_id = a.account_id), 0)::bigint
         FROM account a WHERE $1::text IS NULL OR a.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    for (id, opening, balance, moved) in accounts {
        ledger.item();
        if opening + moved != balance {
            ledger.violation(
                &id,
                format!("opening {opening} + movements {moved} != balance {balance}"),
            );
        }
    }
    // Per order: net charged (charges are negative movements) and the number of charges.
    let per_order: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT m.order_id, (-sum(m.amount_minor))::bigint, count(*) FILTER (WHERE m.kind = 'charge')
         FROM movement m JOIN account a USING (account_id)
         WHERE $1::text IS NULL OR a.tenant_id = $1
         GROUP BY m.order_id",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut net: HashMap<String, i64> = HashMap::new();
    for (order_id, charged, charges) in per_order {
        single.item();
        if charges > 1 {
            single.violation(&order_id, format!("{charges} charges"));
        }
        net.insert(order_id, charged);
    }
    for (id, o) in ended {
        let Some(total) = o.total else { continue };
        outcome.item();
        let charged = net.get(id).copied().unwrap_or(0);
        let want = if o.state == "COMPLETED" { total } else { 0 };
        if charged != want {
            outcome.violation(
                id,
                format!(
                    "{} order of {total} ({}), net charged {charged}",
                    o.state, o.tenant
                ),
            );
        }
    }
    Ok(vec![ledger, outcome, single])
}

async fn shipments(
    pool: &PgPool,
    tenant: Option<&str>,
    ended: &HashMap<String, Order>,
) -> anyhow::Result<Check> {
    let mut outcome = Check::new("shipping.outcome");
    let live: Vec<(String,)> = sqlx::query_as(
        "SELECT order_id FROM shipment
         WHERE status IN ('created', 'in_transit', 'delivered') AND ($1::text IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let live: std::collections::HashSet<String> = live.into_iter().map(|(o,)| o).collect();
    for (id, o) in ended {
        outcome.item();
        let shipped = live.contains(id);
        match (o.state.as_str(), shipped) {
            ("COMPLETED", false) => outcome.violation(id, "completed, no live shipment"),
            ("CANCELLED", true) => outcome.violation(id, "cancelled, but a live shipment"),
            _ => {}
        }
    }
    Ok(outcome)
}

/// Two-phase commit leaves nothing in doubt: no transaction a participant holds prepared, and
/// no coordinator log row unfinished, for longer than a minute (recovery resolves both within
/// seconds; an order decided but not yet committed everywhere is in doubt only that long).
async fn in_doubt(
    order: &PgPool,
    participants: [&PgPool; 3],
    tenant: Option<&str>,
) -> anyhow::Result<Check> {
    let mut c = Check::new("twopc.in_doubt");
    // Every 2PC order of the tenant (or all) counts as checked.
    let ours: std::collections::HashSet<String> = sqlx::query_scalar(
        "SELECT order_id::text FROM twopc WHERE $1::text IS NULL OR tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(order)
    .await?
    .into_iter()
    .collect();
    for _ in &ours {
        c.item();
    }
    let stale: Vec<(String, String)> = sqlx::query_as(
        "SELECT order_id::text, state FROM twopc
         WHERE ended_at IS NULL AND started_at < now() - interval '60 seconds'
           AND ($1::text IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(order)
    .await?;
    for (id, state) in stale {
        c.violation(&id, format!("two-phase commit {state} for over a minute"));
    }
    for db in participants {
        let prepared: Vec<(String, String)> = sqlx::query_as(
            "SELECT gid, current_database()::text FROM pg_prepared_xacts
             WHERE database = current_database() AND starts_with(gid, 'shop2pc:')
               AND prepared < now() - interval '60 seconds'",
        )
        .fetch_all(db)
        .await?;
        for (gid, database) in prepared {
            let order_id = gid.split(':').nth(1).unwrap_or_default();
            if tenant.is_some() && !ours.contains(order_id) {
                continue;
            }
            c.violation(&gid, format!("prepared in {database} for over a minute"));
        }
    }
    Ok(c)
}
