//! Orders loaded from and saved to the event store: snapshot + tail on load, a snapshot every
//! N events on save, upcasting on read, state as of a version or a time for audits.

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::stream::{self, DecodeError, Order, OrderEvent, SNAPSHOT_SCHEMA},
    eventstore::{self, AppendError, NewStreamEvent, Recorded, Until},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Conflict(AppendError),
    #[error("stored event does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<AppendError> for StoreError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Db(e) => Self::Db(e),
            conflict => Self::Conflict(conflict),
        }
    }
}

impl From<StoreError> for shop_core::ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(c) => Self::Conflict(c.to_string()),
            StoreError::Db(e) => e.into(),
            StoreError::Decode(e) => Self::Internal(e.into()),
        }
    }
}

impl From<StoreError> for shop_messaging::inbox::HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            // A conflict may pass: retried; a database error is classified by its kind.
            StoreError::Conflict(_) => Self::Transient(e.into()),
            StoreError::Db(db) => db.into(),
            StoreError::Decode(_) => Self::Permanent(e.into()),
        }
    }
}

/// Who caused an append, recorded in each event's metadata.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub tenant_id: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct OrderStore {
    /// Take a snapshot whenever a stream's version crosses a multiple of this (0: never).
    pub snapshot_every: u64,
}

impl OrderStore {
    /// The order now: the newest usable snapshot plus the events after it. None: no such order.
    pub async fn load(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
    ) -> Result<Option<Order>, StoreError> {
        let base = match eventstore::snapshot(conn, id).await? {
            Some((_, schema, state)) if schema == SNAPSHOT_SCHEMA => {
                // A snapshot that does not parse is only a cache miss.
                serde_json::from_value::<Order>(state).ok()
            }
            _ => None,
        };
        let base = base.unwrap_or_else(|| Order::new(id));
        let tail = eventstore::read(conn, id, base.version, Until::End).await?;
        let order = fold(base, &tail)?;
        Ok((order.version > 0).then_some(order))
    }

    /// The order replayed from its first event, ignoring snapshots (the benchmark's baseline
    /// and the audit path).
    pub async fn load_replayed(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        until: Until,
    ) -> Result<Option<Order>, StoreError> {
        let events = eventstore::read(conn, id, 0, until).await?;
        let order = fold(Order::new(id), &events)?;
        Ok((order.version > 0).then_some(order))
    }

    /// Appends `events` at the order's version (optimistic: [`StoreError::Conflict`] if someone
    /// else appended since it was loaded), applies them to `order`, and takes a snapshot when
    /// the version crosses a multiple of `snapshot_every`.
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        order: &mut Order,
        events: &[OrderEvent],
        meta: &Meta,
    ) -> Result<Vec<Recorded>, StoreError> {
        let metadata = json!({
            "tenant_id": meta.tenant_id,
            "correlation_id": meta.correlation_id,
            "causation_id": meta.causation_id,
        });
        let new: Vec<NewStreamEvent> = events
            .iter()
            .map(|e| {
                let enc = e.encode();
                NewStreamEvent {
                    event_type: enc.event_type,
                    schema_version: enc.schema_version,
                    payload: enc.payload,
                    metadata: metadata.clone(),
                }
            })
            .collect();
        let before = order.version;
        let recorded = eventstore::append(conn, order.id, before, &new).await?;
        for (e, r) in events.iter().zip(&recorded) {
            order.apply(e, u64::try_from(r.version).unwrap_or(0), r.recorded_at);
        }
        if self.snapshot_every > 0
            && order.version / self.snapshot_every > before / self.snapshot_every
        {
            let state = serde_json::to_value(&*order).map_err(|e| sqlx::Error::Encode(e.into()))?;
            eventstore::save_snapshot(conn, order.id, order.version, SNAPSHOT_SCHEMA, &state)
                .await?;
        }
        Ok(recorded)
    }
}

/// Applies recorded events (upcast on decode) to `order`.
pub fn fold(mut order: Order, events: &[Recorded]) -> Result<Order, DecodeError> {
    for r in events {
        let e = stream::decode(&r.event_type, r.schema_version, r.payload.clone())?;
        order.apply(&e, u64::try_from(r.version).unwrap_or(0), r.recorded_at);
    }
    Ok(order)
}
