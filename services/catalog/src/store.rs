//! Products in MongoDB, one document per SKU (`_id` = SKU), with the outbox *inside* the
//! document: every create or update writes the product and pushes its `catalog.product_changed`
//! event onto the document's `outbox` array in the same single-document operation, which MongoDB
//! applies atomically. (Multi-document transactions would need a replica set; a standalone
//! server, like docker-compose's, has none.)
//!
//! Versioned updates: an update names the version it read; the filter `{_id, version}` makes a
//! stale writer match nothing, and it gets a conflict instead of overwriting.
//!
//! Bounded: the filter of every write that pushes onto the outbox also requires room in it
//! ([`OUTBOX_LIMIT`] events); a product whose events are not being published (broker down, or
//! updates faster than the relay clears them) refuses further updates with RESOURCE_EXHAUSTED
//! until the relay catches up, instead of growing towards MongoDB's 16 MB document limit.
//!
//! [`OutboxRelay`] publishes each document's pending events in order and clears them only if the
//! document has not changed since it read them (same `version`); otherwise the next round
//! publishes them again with the new ones (duplicates, which consumers absorb; never loss).

use std::sync::Arc;

use mongodb::{
    Collection,
    bson::{Bson, Document, doc},
    options::ReturnDocument,
};
use shop_core::ServiceError;
use shop_messaging::NewEvent;

use crate::domain::Product;

/// The most unpublished events one product's outbox holds: a write that would push another is
/// refused (RESOURCE_EXHAUSTED) until the relay has published them. It bounds the document
/// (MongoDB's limit is 16 MB) when the broker is down or a product changes faster than the
/// relay clears it.
pub const OUTBOX_LIMIT: usize = 64;

/// The filter clause every write that pushes onto `outbox` adds: the array has no entry at
/// position `OUTBOX_LIMIT - 1`, i.e. fewer than [`OUTBOX_LIMIT`] entries (a missing array too).
pub fn outbox_has_room() -> Document {
    doc! { format!("outbox.{}", OUTBOX_LIMIT - 1): { "$exists": false } }
}

/// One lock per stripe of SKUs, shared by every writer of this process (the API and the relay).
///
/// FerretDB 1.24 runs a conditional update as read, filter in Go, write the whole document
/// back by `_id` (docs/STORES.md): two concurrent writers of one product can both "match" the
/// same version, and the relay's clear can overwrite an update. Taking the product's lock
/// around each write makes this process's writes to a product one at a time, so the version
/// check and the outbox stay exact for one catalog instance. Across replicas only a server
/// with atomic conditional updates (MongoDB) keeps them; on FerretDB run one catalog writer.
#[derive(Clone)]
pub struct WriteLocks(Arc<Vec<tokio::sync::Mutex<()>>>);

impl Default for WriteLocks {
    fn default() -> Self {
        Self(Arc::new(
            (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        ))
    }
}

impl WriteLocks {
    /// Holds `sku`'s stripe until the guard is dropped.
    pub async fn lock(&self, sku: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = shop_messaging::envelope::bucket_of(sku, self.0.len() as u64);
        self.0[usize::try_from(stripe).unwrap_or(0)].lock().await
    }
}

#[derive(Clone)]
pub struct ProductStore {
    pub products: Collection<Document>,
    pub locks: WriteLocks,
}

impl ProductStore {
    pub fn new(products: Collection<Document>) -> Self {
        Self {
            products,
            locks: WriteLocks::default(),
        }
    }
}

pub(crate) fn db_error(e: mongodb::error::Error) -> ServiceError {
    ServiceError::Unavailable(format!("mongodb: {e}"))
}

pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
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
pub(crate) fn parse_entry(entry: &Bson) -> Option<(String, String, Vec<u8>)> {
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
        let _guard = self.locks.lock(&p.sku).await;
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
    ///
    /// Refused with [`ServiceError::ResourceExhausted`], changing nothing, while the product's
    /// outbox holds [`OUTBOX_LIMIT`] unpublished events (the relay is down or behind): the
    /// filter itself requires room ([`outbox_has_room`]), so the check and the push are one
    /// write, as atomic as the server makes a conditional update (MongoDB: atomic; FerretDB
    /// 1.24 is not, see docs/STORES.md, but its whole-document writes keep the bound). Why an update matched nothing is read afterwards; if that read finds it
    /// would match now (the relay drained the outbox in between), the update is tried again.
    pub async fn update(
        &self,
        p: &Product,
        expected: u64,
        event: impl FnOnce(u64) -> NewEvent,
    ) -> Result<Product, ServiceError> {
        let _guard = self.locks.lock(&p.sku).await;
        let next = expected + 1;
        let entry = outbox_entry(&event(next));
        let expected_i64 = i64::try_from(expected).unwrap_or(i64::MAX);
        let mut filter = doc! { "_id": &p.sku, "version": expected_i64 };
        filter.extend(outbox_has_room());
        let update = doc! {
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
            "$push": { "outbox": entry },
        };
        // Only the relay's clearing changes what the filter looks at without changing the
        // version (stock changes it ignores), and it only makes room: a second attempt either
        // succeeds or meets a new version.
        for _ in 0..3 {
            let updated = self
                .products
                .find_one_and_update(filter.clone(), update.clone())
                .return_document(ReturnDocument::After)
                .await
                .map_err(db_error)?;
            if let Some(d) = updated {
                return from_doc(&d);
            }
            let Some(current) = self
                .products
                .find_one(doc! { "_id": &p.sku })
                .await
                .map_err(db_error)?
            else {
                return Err(ServiceError::NotFound(format!("product {}", p.sku)));
            };
            let at = from_doc(&current)?.version;
            if at != expected {
                return Err(ServiceError::FailedPrecondition(format!(
                    "version conflict: product {} is at version {at}, not {expected}; read it again",
                    p.sku
                )));
            }
            let pending = current.get_array("outbox").map_or(0, Vec::len);
            if pending >= OUTBOX_LIMIT {
                return Err(ServiceError::ResourceExhausted(format!(
                    "product {} has {pending} unpublished changes; retry after they are published",
                    p.sku
                )));
            }
        }
        Err(ServiceError::Conflict(format!(
            "product {} kept changing during the update; retry",
            p.sku
        )))
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
        let _guard = self.locks.lock(sku).await;
        self.products
            .update_one(doc! { "_id": sku }, doc! { "$set": { "stock": available } })
            .await?;
        Ok(())
    }
}
