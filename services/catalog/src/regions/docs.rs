//! The documents of a region's replica: one per key (a user, a SKU), each holding a serialized
//! state, a version, and the outbox the catalog's relay publishes (`crate::relay`):
//!
//! ```text
//! { _id: key, version: n, state: "<JSON>", outbox: [pending events], outbox_pending: bool }
//! ```
//!
//! Everything one change touches is in one document, so it is one single-document update
//! (MongoDB has no multi-document transaction on a standalone server). Writes of this process
//! to one key take that key's lock ([`WriteLocks`]: FerretDB's conditional update is not
//! atomic, see docs/STORES.md; the relay's clear takes it too) and are conditional on the
//! version read, so a writer in another process gets a conflict instead of overwriting.

use std::sync::Arc;

use mongodb::{
    Collection,
    bson::{Bson, Document, doc},
};
use serde::{Serialize, de::DeserializeOwned};
use shop_core::ServiceError;
use shop_messaging::NewEvent;
use tokio::sync::Notify;

use crate::store::{WriteLocks, db_error, is_duplicate_key, outbox_entry};

/// A state as loaded.
pub struct Loaded<T> {
    pub state: T,
    /// `None`: no document yet.
    pub version: Option<i64>,
    /// Events waiting in its outbox.
    pub outbox: usize,
}

/// What a save does to the document's outbox.
pub enum Outbox<'a> {
    Keep,
    /// One more event (operation-based: every event matters).
    Push(&'a NewEvent),
    /// This event instead of whatever waits (state-based: only the latest state matters).
    Replace(&'a NewEvent),
}

#[derive(Clone)]
pub struct Docs {
    pub collection: Collection<Document>,
    pub locks: WriteLocks,
    changed: Arc<Notify>,
}

impl Docs {
    pub fn new(collection: Collection<Document>) -> Self {
        Self {
            collection,
            locks: WriteLocks::default(),
            changed: Arc::new(Notify::new()),
        }
    }

    pub async fn load<T: DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<Loaded<T>, ServiceError> {
        let d = self
            .collection
            .find_one(doc! { "_id": key })
            .await
            .map_err(db_error)?;
        let Some(d) = d else {
            return Ok(Loaded {
                state: T::default(),
                version: None,
                outbox: 0,
            });
        };
        let state = serde_json::from_str(d.get_str("state").unwrap_or("{}")).map_err(|e| {
            anyhow::anyhow!("{} {key}: bad state: {e}", self.collection.namespace())
        })?;
        Ok(Loaded {
            state,
            version: Some(d.get_i64("version").unwrap_or(0)),
            outbox: d.get_array("outbox").map_or(0, Vec::len),
        })
    }

    /// Saves `state` over the version loaded (the caller holds the key's lock).
    pub async fn save<T: Serialize>(
        &self,
        key: &str,
        version: Option<i64>,
        state: &T,
        outbox: Outbox<'_>,
    ) -> Result<(), ServiceError> {
        let json = serde_json::to_string(state).map_err(anyhow::Error::from)?;
        let saved = match version {
            None => {
                let entries: Vec<Bson> = match outbox {
                    Outbox::Keep => vec![],
                    Outbox::Push(e) | Outbox::Replace(e) => vec![outbox_entry(e).into()],
                };
                let d = doc! {
                    "_id": key, "version": 1_i64, "state": json,
                    "outbox_pending": !entries.is_empty(), "outbox": entries,
                };
                self.collection.insert_one(d).await.map(|_| true)
            }
            Some(v) => {
                let mut set = doc! { "state": json, "version": v + 1 };
                let mut update = Document::new();
                match outbox {
                    Outbox::Keep => {}
                    Outbox::Push(e) => {
                        set.insert("outbox_pending", true);
                        update.insert("$push", doc! { "outbox": outbox_entry(e) });
                    }
                    Outbox::Replace(e) => {
                        set.insert("outbox_pending", true);
                        set.insert("outbox", vec![Bson::from(outbox_entry(e))]);
                    }
                }
                update.insert("$set", set);
                self.collection
                    .update_one(doc! { "_id": key, "version": v }, update)
                    .await
                    .map(|r| r.matched_count == 1)
            }
        };
        match saved {
            Ok(true) => {
                self.changed.notify_waiters();
                Ok(())
            }
            Ok(false) => Err(ServiceError::Conflict(format!(
                "{key} changed meanwhile; retry"
            ))),
            Err(e) if is_duplicate_key(&e) => Err(ServiceError::Conflict(format!(
                "{key} was created meanwhile; retry"
            ))),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Resolves at this process's next save of any document here (or never: poll as well).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}
