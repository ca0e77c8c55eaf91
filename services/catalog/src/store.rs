//! Products in MongoDB, one document per SKU (`_id` = SKU), with the outbox *inside* the
//! document: every create or update writes the product and pushes its `catalog.product_changed`
//! event onto the document's `outbox` array in the same single-document operation, which MongoDB
//! applies atomically. (Multi-document transactions would need a replica set; a standalone
//! server, like docker-compose's, has none.)
//!
//! Versioned updates: an update names the version it read; the filter `{_id, version}` makes a
//! stale writer match nothing, and it gets a conflict instead of overwriting.
//!
//! [`OutboxRelay`] publishes each document's pending events in order and clears them only if the
//! document has not changed since it read them (same `version`); otherwise the next round
//! publishes them again with the new ones (duplicates, which consumers absorb; never loss).

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Bson, Document, doc},
    options::ReturnDocument,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_core::ServiceError;
use shop_messaging::NewEvent;
use tokio_util::sync::CancellationToken;

use crate::domain::Product;

#[derive(Clone)]
pub struct ProductStore {
    pub products: Collection<Document>,
}

fn db_error(e: mongodb::error::Error) -> ServiceError {
    ServiceError::Unavailable(format!("mongodb: {e}"))
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(i) => i
            .write_errors
            .as_ref()
            .is_some_and(|w| w.iter().any(|w| w.code == 11000)),
        _ => e.to_string().contains("E11000") || e.to_string().contains("duplicate"),
    }
}

/// The outbox entry of one event: where it goes and its envelope, as one JSON string (a string
/// and not a subdocument because the MongoDB-wire server used here stores a `$push`ed
/// subdocument as a string anyway; strings behave the same on both, see docs/STORES.md).
pub fn outbox_entry(event: &NewEvent) -> String {
    use base64::Engine as _;
    serde_json::json!({
        "event_id": event.event_id(),
        "topic": event.topic,
        "key": event.envelope.aggregate_id,
        "payload": base64::engine::general_purpose::STANDARD
            .encode(prost::Message::encode_to_vec(&event.envelope)),
    })
    .to_string()
}

/// (topic, key, payload) of a stored outbox entry.
fn parse_entry(entry: &Bson) -> Option<(String, String, Vec<u8>)> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(entry.as_str()?).ok()?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str()?)
        .ok()?;
    Some((
        v["topic"].as_str()?.to_owned(),
        v["key"].as_str()?.to_owned(),
        payload,
    ))
}

fn attributes(p: &Product) -> Document {
    p.attributes
        .iter()
        .map(|(k, v)| (k.clone(), Bson::String(v.clone())))
        .collect()
}

fn from_doc(d: &Document) -> Result<Product, ServiceError> {
    let s = |k: &str| d.get_str(k).unwrap_or_default().to_owned();
    let int = |k: &str| {
        d.get(k).map_or(0, |v| match v {
            Bson::Int64(n) => *n,
            Bson::Int32(n) => i64::from(*n),
            Bson::Double(f) => *f as i64,
            _ => 0,
        })
    };
    let attributes = d
        .get_document("attributes")
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Product {
        sku: s("_id"),
        name: s("name"),
        description: s("description"),
        category: s("category"),
        price_minor: int("price_minor"),
        currency: s("currency"),
        attributes,
        stock: int("stock"),
        version: u64::try_from(int("version")).unwrap_or(0),
    })
}

impl ProductStore {
    /// Inserts a new product at version 1 with its event; a taken SKU is a precondition failure.
    pub async fn create(
        &self,
        p: &Product,
        event: impl FnOnce(u64) -> NewEvent,
    ) -> Result<Product, ServiceError> {
        let event = event(1);
        let d = doc! {
            "_id": &p.sku,
            "name": &p.name,
            "description": &p.description,
            "category": &p.category,
            "price_minor": p.price_minor,
            "currency": &p.currency,
            "attributes": attributes(p),
            "stock": 0_i64,
            "version": 1_i64,
            "outbox": [outbox_entry(&event)],
            "outbox_pending": true,
        };
        match self.products.insert_one(d).await {
            Ok(_) => Ok(Product {
                version: 1,
                stock: 0,
                ..p.clone()
            }),
            Err(e) if is_duplicate_key(&e) => Err(ServiceError::FailedPrecondition(format!(
                "product {} exists already",
                p.sku
            ))),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Updates the product if it is still at `expected` version; the new version is
    /// `expected + 1`, and its event goes into the same update.
    pub async fn update(
        &self,
        p: &Product,
        expected: u64,
        event: impl FnOnce(u64) -> NewEvent,
    ) -> Result<Product, ServiceError> {
        let next = expected + 1;
        let event = event(next);
        let updated = self
            .products
            .find_one_and_update(
                doc! { "_id": &p.sku, "version": i64::try_from(expected).unwrap_or(i64::MAX) },
                doc! {
                    "$set": {
                        "name": &p.name,
                        "description": &p.description,
                        "category": &p.category,
                        "price_minor": p.price_minor,
                        "currency": &p.currency,
                        "attributes": attributes(p),
                        "version": i64::try_from(next).unwrap_or(i64::MAX),
                        "outbox_pending": true,
                    },
                    "$push": { "outbox": outbox_entry(&event) },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(db_error)?;
        match updated {
            Some(d) => from_doc(&d),
            None => match self.get(&p.sku).await? {
                None => Err(ServiceError::NotFound(format!("product {}", p.sku))),
                Some(current) => Err(ServiceError::FailedPrecondition(format!(
                    "version conflict: product {} is at version {}, not {expected}; read it again",
                    p.sku, current.version
                ))),
            },
        }
    }

    pub async fn get(&self, sku: &str) -> Result<Option<Product>, ServiceError> {
        let d = self
            .products
            .find_one(doc! { "_id": sku })
            .await
            .map_err(db_error)?;
        d.as_ref().map(from_doc).transpose()
    }

    /// Inventory's stock level for `sku` (last write wins; events of one SKU arrive in order).
    /// A SKU the catalog does not know is ignored.
    pub async fn set_stock(&self, sku: &str, available: i64) -> Result<(), mongodb::error::Error> {
        self.products
            .update_one(doc! { "_id": sku }, doc! { "$set": { "stock": available } })
            .await?;
        Ok(())
    }
}

/// Publishes the documents' embedded outboxes to Kafka.
pub struct OutboxRelay {
    pub products: Collection<Document>,
    pub producer: FutureProducer,
    pub poll: Duration,
}

impl OutboxRelay {
    /// One round over up to 100 documents with pending events; returns the events published.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let docs: Vec<Document> = self
            .products
            .find(doc! { "outbox_pending": true })
            .limit(100)
            .await?
            .try_collect()
            .await?;
        let mut published = 0;
        for d in docs {
            let (Ok(id), Ok(entries)) = (d.get_str("_id"), d.get_array("outbox")) else {
                continue;
            };
            let version = d.get("version").cloned().unwrap_or(Bson::Null);
            let mut deliveries = Vec::new();
            for e in entries {
                let Some((topic, key, payload)) = parse_entry(e) else {
                    tracing::error!(sku = id, "malformed outbox entry skipped");
                    continue;
                };
                match self
                    .producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                {
                    Ok(d) => deliveries.push(d),
                    Err((e, _)) => anyhow::bail!("enqueue failed: {e}"),
                }
            }
            for d in deliveries {
                d.await
                    .map_err(|_| anyhow::anyhow!("delivery cancelled"))?
                    .map_err(|(e, _)| anyhow::anyhow!("publish failed: {e}"))?;
            }
            // Clear only what was read: a concurrent update bumped the version and pushed more,
            // and then nothing is cleared (all of it goes again next round).
            let cleared = self
                .products
                .update_one(
                    doc! { "_id": id, "version": version },
                    doc! { "$set": { "outbox": [], "outbox_pending": false } },
                )
                .await?;
            if cleared.modified_count > 0 {
                published += entries.len();
            }
        }
        if published > 0 {
            metrics::counter!("outbox_published_total").increment(published as u64);
        }
        Ok(published)
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        shop_messaging::outbox::run_rounds("catalog", self.poll, shutdown, || async {
            Ok(self.relay_once().await? > 0)
        })
        .await
    }
}
