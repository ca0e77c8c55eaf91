//! What the catalog consumes: its own `catalog.product_changed` and inventory's
//! `stock_level_changed` feed the search index (and the products' stock), and
//! `order.completed` feeds the recommendations. Each effect is idempotent on its own (versioned
//! upsert, plain overwrite, counted-once script), so [`shop_messaging::consumer`] may redeliver.
//!
//! The search feed takes what the consumer has already fetched at once ([`index_batch`]):
//! product changes apply in order, and of a SKU's stock levels only the last is written (one
//! bulk request for all of them). Events of one SKU arrive in order and a product upsert keeps
//! the stock it finds, so the index ends where applying each event in turn would leave it; a
//! burst of orders on one product costs one stock write instead of one per order.
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

/// The search feed over a batch: product changes in order, then the last stock level of each SKU
/// (in the order the SKUs first appeared), the products' store first, the index in one request.
pub async fn index_batch(
    search: &Arc<dyn SearchBackend>,
    store: &ProductStore,
    events: &[EventEnvelope],
) -> Result<(), HandlerError> {
    for e in events {
        if e.event_type != types::STOCK_LEVEL_CHANGED {
            index(search, store, e).await?;
        }
    }
    let levels = last_levels(events)?;
    if levels.is_empty() {
        return Ok(());
    }
    for (sku, available) in &levels {
        store.set_stock(sku, *available).await.map_err(transient)?;
    }
    search.set_stocks(&levels).await.map_err(transient)?;
    for e in events
        .iter()
        .filter(|e| e.event_type == types::STOCK_LEVEL_CHANGED)
    {
        metrics::histogram!("search_visibility_seconds", "kind" => "stock")
            .record(seconds_since(e));
    }
    metrics::counter!("search_stock_levels_coalesced_total")
        .increment((events.len() - levels.len()) as u64);
    Ok(())
}

/// The last stock level of each SKU among `events`, SKUs in the order they first appear.
fn last_levels(events: &[EventEnvelope]) -> Result<Vec<(String, i64)>, HandlerError> {
    let mut levels: Vec<(String, i64)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.event_type == types::STOCK_LEVEL_CHANGED)
    {
        let s = StockLevelChanged::decode(e.payload.as_slice())?;
        match at.get(&s.sku) {
            Some(&i) => levels[i].1 = s.available,
            None => {
                at.insert(s.sku.clone(), levels.len());
                levels.push((s.sku, s.available));
            }
        }
    }
    Ok(levels)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn level(sku: &str, available: i64) -> EventEnvelope {
        EventEnvelope {
            event_type: types::STOCK_LEVEL_CHANGED.into(),
            payload: StockLevelChanged {
                sku: sku.into(),
                available,
                ..Default::default()
            }
            .encode_to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn of_each_skus_levels_only_the_last_is_kept_in_first_seen_order() {
        let product = EventEnvelope {
            event_type: types::PRODUCT_CHANGED.into(),
            ..Default::default()
        };
        let events = [
            level("a", 5),
            product,
            level("b", 9),
            level("a", 4),
            level("a", 3),
        ];
        let levels = last_levels(&events).expect("decodes");
        assert_eq!(levels, vec![("a".to_owned(), 3), ("b".to_owned(), 9)]);
    }
}
