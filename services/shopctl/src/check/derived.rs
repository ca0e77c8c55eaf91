//! The messaging figures and the derived data (search index, analytics, recommendations)
//! against their sources.

use std::collections::{BTreeMap, HashSet};

use futures::TryStreamExt;
use shop_catalog::search::SearchBackend as _;

use super::{Check, CheckArgs};
use crate::outbox::{Databases, PG_SERVICES, service_pool};

/// An unpublished row older than this is a stuck relay.
const MAX_OUTBOX_AGE_SECONDS: f64 = 60.0;

/// Outbox backlog, its age, parked rows (violations); dead letters and backlogs (figures).
pub async fn messaging(
    dbs: &Databases,
    figures: &mut BTreeMap<String, i64>,
) -> anyhow::Result<Vec<Check>> {
    let mut outbox = Check::new("messaging.outbox");
    let mut dead = Check::new("messaging.dead_letters");
    for service in PG_SERVICES {
        let pool = service_pool(dbs, service).await?;
        let b = shop_messaging::outbox::backlog(&pool).await?;
        outbox.item();
        if b.parked > 0 {
            outbox.violation(
                format!("{service}.parked"),
                format!("{} parked row(s): `shopctl outbox list`", b.parked),
            );
        }
        if b.oldest_age_seconds > MAX_OUTBOX_AGE_SECONDS {
            outbox.violation(
                format!("{service}.age"),
                format!(
                    "{} unpublished, the oldest {:.0} s old",
                    b.pending, b.oldest_age_seconds
                ),
            );
        }
        let (dead_letters,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM inbox WHERE outcome = 'dead_lettered'")
                .fetch_one(&pool)
                .await?;
        dead.item();
        figures.insert(format!("{service}.outbox_pending"), b.pending);
        figures.insert(format!("{service}.dead_letters"), dead_letters);
        pool.close().await;
    }
    Ok(vec![outbox, dead])
}

/// Each catalog product is in the search index at its version and price.
pub async fn search(args: &CheckArgs) -> anyhow::Result<Check> {
    let mut check = Check::new("derived.search");
    if args.search_url.is_empty() {
        return Ok(check);
    }
    let mongo = mongodb::Client::with_uri_str(&args.stores.mongo_url).await?;
    let products = mongo
        .database(&args.stores.catalog_database)
        .collection::<mongodb::bson::Document>("products");
    let index =
        shop_catalog::search::elastic::Elastic::connect(&args.search_url, &args.search_index)
            .await?;
    let mut cursor = products.find(mongodb::bson::doc! {}).await?;
    while let Some(d) = cursor.try_next().await? {
        let int = |k: &str| {
            d.get_i64(k)
                .or_else(|_| d.get_i32(k).map(i64::from))
                .unwrap_or(0)
        };
        let (Ok(sku), version, price) = (d.get_str("_id"), int("version"), int("price_minor"))
        else {
            continue;
        };
        check.item();
        match index.get(sku).await? {
            None => check.violation(sku, format!("version {version} not in the index")),
            Some(p)
                if p.version != u64::try_from(version).unwrap_or(0) || p.price_minor != price =>
            {
                check.violation(
                    sku,
                    format!(
                        "catalog v{version} at {price}, index v{} at {}",
                        p.version, p.price_minor
                    ),
                );
            }
            Some(_) => {}
        }
    }
    Ok(check)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct OrderId {
    order_id: String,
}

/// Analytics has recorded every completed order as completed, and no other order.
pub async fn analytics(
    dbs: &Databases,
    args: &CheckArgs,
    tenant: Option<&str>,
) -> anyhow::Result<Check> {
    let mut check = Check::new("derived.analytics");
    let store = shop_analytics::store::Store::new(&shop_analytics::store::ClickHouseSettings {
        url: args.clickhouse_url.clone(),
        database: args.analytics_database.clone(),
        ..Default::default()
    });
    let recorded: Vec<OrderId> = store
        .client
        .query(
            "SELECT DISTINCT order_id FROM events
             WHERE event_type = 'order.completed' AND (? = '' OR tenant_id = ?)",
        )
        .bind(tenant.unwrap_or(""))
        .bind(tenant.unwrap_or(""))
        .fetch_all()
        .await?;
    let recorded: HashSet<String> = recorded.into_iter().map(|r| r.order_id).collect();
    let order = service_pool(dbs, "order").await?;
    let completed: Vec<(String,)> = sqlx::query_as(
        "SELECT s.saga_id::text FROM saga s JOIN order_keys k ON k.order_id = s.saga_id
         WHERE s.state = 'COMPLETED' AND ($1::text IS NULL OR k.tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(&order)
    .await?;
    order.close().await;
    let completed: HashSet<String> = completed.into_iter().map(|(id,)| id).collect();
    for id in &completed {
        check.item();
        if !recorded.contains(id) {
            check.violation(id, "completed, not in analytics");
        }
    }
    for id in recorded.difference(&completed) {
        check.violation(id, "completed in analytics, not in the order service");
    }
    Ok(check)
}

/// Each completed order was counted by the recommendations (its `rec-seen` marker, kept 30
/// days), and every pair of SKUs bought together scores at least as many completed orders as
/// hold both (other tenants' orders may add to a score, never take from it).
pub async fn recommendations(
    dbs: &Databases,
    args: &CheckArgs,
    tenant: Option<&str>,
) -> anyhow::Result<Check> {
    let mut check = Check::new("derived.recommendations");
    let order = service_pool(dbs, "order").await?;
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT o.order_id::text, o.items FROM order_summary o
         WHERE o.status = 'COMPLETED' AND o.updated_at > now() - interval '29 days'
           AND ($1::text IS NULL OR o.tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(&order)
    .await?;
    order.close().await;
    let mut redis =
        redis::aio::ConnectionManager::new(redis::Client::open(args.stores.redis_url.as_str())?)
            .await?;
    let prefix = &args.stores.topic_prefix;
    let mut pairs: BTreeMap<(String, String), i64> = BTreeMap::new();
    for chunk in rows.chunks(500) {
        let mut pipe = redis::pipe();
        for (id, _) in chunk {
            pipe.exists(format!("{prefix}rec-seen:{id}"));
        }
        let seen: Vec<bool> = pipe.query_async(&mut redis).await?;
        for ((id, items), seen) in chunk.iter().zip(seen) {
            check.item();
            if !seen {
                check.violation(id, "completed, not counted by the recommendations");
            }
            let mut skus: Vec<String> = items
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["sku"].as_str().map(str::to_owned))
                .collect();
            skus.sort();
            skus.dedup();
            for a in &skus {
                for b in &skus {
                    if a != b {
                        *pairs.entry((a.clone(), b.clone())).or_default() += 1;
                    }
                }
            }
        }
    }
    let pairs: Vec<((String, String), i64)> = pairs.into_iter().collect();
    for chunk in pairs.chunks(500) {
        let mut pipe = redis::pipe();
        for ((a, b), _) in chunk {
            pipe.zscore(format!("{prefix}rec:{a}"), b);
        }
        let scores: Vec<Option<f64>> = pipe.query_async(&mut redis).await?;
        for (((a, b), want), score) in chunk.iter().zip(scores) {
            let got = score.unwrap_or(0.0) as i64;
            if got < *want {
                check.violation(
                    format!("{a}+{b}"),
                    format!("bought together in {want} completed orders, scored {got}"),
                );
            }
        }
    }
    Ok(check)
}
