//! What the catalog consumes: its own `catalog.product_changed` and inventory's
//! `stock_level_changed` feed the search index (and the products' stock), and
//! `order.completed` feeds the recommendations. Each effect is idempotent on its own (versioned
//! upsert, plain overwrite, counted-once script), so [`shop_messaging::consumer`] may redeliver.
//!
//! How long a change takes to be searchable (event time to visible) is exported as
//! `search_visibility_seconds{kind="price"|"product"|"stock"}`; seed 001 asks for stock under a
//! minute and price under five.

use std::sync::Arc;

use prost::Message as _;
use shop_messaging::{EventEnvelope, inbox::HandlerError, topics::types};
use shop_proto::events::{OrderCompleted, ProductChanged, StockLevelChanged};

use crate::{
    recommend::Recommendations,
    search::{IndexedProduct, SearchBackend},
    store::ProductStore,
};

fn transient(e: impl Into<anyhow::Error>) -> HandlerError {
    HandlerError::Transient(e.into())
}

fn seconds_since(e: &EventEnvelope) -> f64 {
    e.occurred_at.as_ref().map_or(0.0, |t| {
        let at = chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .unwrap_or_default();
        (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
    })
}

/// The search feed: product changes and stock levels.
pub async fn index(
    search: &Arc<dyn SearchBackend>,
    store: &ProductStore,
    e: &EventEnvelope,
) -> Result<(), HandlerError> {
    let p = e.payload.as_slice();
    match e.event_type.as_str() {
        types::PRODUCT_CHANGED => {
            let c = ProductChanged::decode(p)?;
            let before = search.get(&c.sku).await.map_err(transient)?;
            let price = c.price.unwrap_or_default();
            let kind = match &before {
                Some(b) if b.listed && b.price_minor != price.amount_minor => "price",
                _ => "product",
            };
            let changed = search
                .upsert_product(IndexedProduct {
                    sku: c.sku,
                    name: c.name,
                    description: c.description,
                    category: c.category,
                    price_minor: price.amount_minor,
                    currency: price.currency,
                    stock: 0,
                    version: c.version,
                    listed: true,
                })
                .await
                .map_err(transient)?;
            if changed {
                metrics::histogram!("search_visibility_seconds", "kind" => kind)
                    .record(seconds_since(e));
            }
        }
        types::STOCK_LEVEL_CHANGED => {
            let s = StockLevelChanged::decode(p)?;
            store
                .set_stock(&s.sku, s.available)
                .await
                .map_err(transient)?;
            search
                .set_stock(&s.sku, s.available)
                .await
                .map_err(transient)?;
            metrics::histogram!("search_visibility_seconds", "kind" => "stock")
                .record(seconds_since(e));
        }
        _ => {}
    }
    Ok(())
}

/// The recommendations feed: completed orders.
pub async fn recommend(recs: &Recommendations, e: &EventEnvelope) -> Result<(), HandlerError> {
    if e.event_type != types::ORDER_COMPLETED {
        return Ok(());
    }
    let done = OrderCompleted::decode(e.payload.as_slice())?;
    let skus: Vec<String> = done.items.into_iter().map(|i| i.sku).collect();
    recs.record(&done.order_id, &skus)
        .await
        .map_err(transient)?;
    Ok(())
}
