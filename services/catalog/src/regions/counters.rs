//! Product views and likes per region: CRDT counters (`shop_crdt`) that every region changes
//! without coordination. One document per SKU in each region (state: a G-Counter of views and
//! a PN-Counter of likes). A local change adds to this region's own entry and replaces the
//! document's outbox with the new whole state (state-based: only the latest state needs to
//! travel, so the outbox never holds more than one event and a broker outage never refuses a
//! view). Another region's state is merged in ([`apply`]): entry-wise maximum, so a late,
//! repeated or reordered state changes nothing, and no inbox is needed.

use std::collections::HashMap;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use shop_core::{ServiceError, fields::Sku};
use shop_crdt::{GCounter, PnCounter};
use shop_messaging::{EventEnvelope, NewEvent, inbox::HandlerError, topics::types};
use shop_proto::events::ProductCounters;

use super::{
    Region,
    docs::{Loaded, Outbox},
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub views: GCounter,
    pub likes: PnCounter,
}

impl Counters {
    pub fn merge(&mut self, other: &Counters) {
        self.views.merge(&other.views);
        self.likes.merge(&other.likes);
    }
}

/// A local change: views to add, or a like (+1) / unlike (-1).
pub enum Change {
    Views(u64),
    Like(bool),
}

impl Region {
    pub async fn counters(&self, sku: &str) -> Result<Counters, ServiceError> {
        Ok(self.counters.load(sku).await?.state)
    }

    /// Adds to this region's own entry; the new state goes out through the outbox.
    pub async fn count(
        &self,
        sku: &str,
        change: Change,
        topic: &str,
    ) -> Result<Counters, ServiceError> {
        let _guard = self.counters.locks.lock(sku).await;
        let Loaded {
            mut state, version, ..
        } = self.counters.load::<Counters>(sku).await?;
        match change {
            Change::Views(n) => state.views.increment(&self.name, n),
            Change::Like(true) => state.likes.increment(&self.name, 1),
            Change::Like(false) => state.likes.decrement(&self.name, 1),
        }
        let event = counters_changed(topic, sku, &self.name, &state);
        self.counters
            .save(sku, version, &state, Outbox::Replace(&event))
            .await?;
        Ok(state)
    }

    /// Merges a state received from another region; saves only if it taught us something.
    pub async fn merge_counters(&self, sku: &str, other: &Counters) -> Result<bool, ServiceError> {
        let _guard = self.counters.locks.lock(sku).await;
        let Loaded {
            mut state, version, ..
        } = self.counters.load::<Counters>(sku).await?;
        let before = state.clone();
        state.merge(other);
        if state == before {
            return Ok(false);
        }
        self.counters
            .save(sku, version, &state, Outbox::Keep)
            .await?;
        Ok(true)
    }
}

fn map(c: &GCounter) -> HashMap<String, u64> {
    c.entries().map(|(r, n)| (r.to_owned(), n)).collect()
}

/// The message carrying `state`, as `origin` has it.
pub fn counters_changed(topic: &str, sku: &str, origin: &str, state: &Counters) -> NewEvent {
    let (up, down) = state.likes.parts();
    NewEvent::new(
        topic,
        types::PRODUCT_COUNTERS,
        "product",
        sku,
        &ProductCounters {
            sku: sku.to_owned(),
            origin: origin.to_owned(),
            views: map(&state.views),
            likes_up: map(up),
            likes_down: map(down),
        },
    )
}

/// The state a message carries; entries of regions that are not configured are refused.
pub fn counters_of(p: &ProductCounters, regions: &[String]) -> Result<Counters, HandlerError> {
    let unknown = p
        .views
        .keys()
        .chain(p.likes_up.keys())
        .chain(p.likes_down.keys())
        .find(|r| !regions.contains(r));
    if let Some(r) = unknown {
        return Err(HandlerError::Permanent(anyhow::anyhow!(
            "product counters: unknown region {r:?}"
        )));
    }
    let g =
        |m: &HashMap<String, u64>| GCounter::from_entries(m.iter().map(|(r, n)| (r.clone(), *n)));
    Ok(Counters {
        views: g(&p.views),
        likes: PnCounter::from_parts(g(&p.likes_up), g(&p.likes_down)),
    })
}

/// One region's consumer of counter states: merges every state it receives (its own copies
/// included: merging them changes nothing).
pub async fn apply(
    region: &Region,
    regions: &[String],
    e: &EventEnvelope,
) -> Result<(), HandlerError> {
    let p = ProductCounters::decode(e.payload.as_slice())?;
    let sku = Sku::parse("sku", &p.sku)
        .map_err(|e| HandlerError::Permanent(anyhow::anyhow!("product counters: {e}")))?;
    let state = counters_of(&p, regions)?;
    region
        .merge_counters(sku.as_str(), &state)
        .await
        .map_err(|e| HandlerError::Transient(e.into()))?;
    Ok(())
}
