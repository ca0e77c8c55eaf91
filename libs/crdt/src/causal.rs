//! Causal consistency for one replicated object (a user's profile): every region writes its own
//! replica, the updates travel at least once and in any order, and each replica applies an
//! update only after everything its origin had applied when it made it.
//!
//! - **Delivery rule** (causal broadcast): an update from region `o` with clock `V` is applied
//!   at a replica with clock `C` when `V[o] = C[o] + 1` (the next one of `o`'s) and `V[r] <=
//!   C[r]` for every other region `r` (its causes are here). Earlier ones (`V[o] <= C[o]`) are
//!   duplicates and change nothing; later ones wait in `pending` until their causes arrive.
//! - **Concurrent updates** of one field: last writer wins, where "last" is the total order
//!   [`Stamp`] = (sum of the update's clock, origin region). An update that happened after
//!   another has a strictly larger clock sum, so the order never contradicts causality; two
//!   concurrent ones are ordered by their sums, then by region name. Every replica that has
//!   applied the same updates shows the same fields, whatever order they came in.
//!
//! A local write ticks the region's own entry, so its stamp is larger than every stamp the
//! replica holds: a region always reads its own writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vclock::VectorClock;

/// The order of writes to one field: (clock sum, origin region).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub sum: u64,
    pub origin: String,
}

/// One update as it travels between regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The region that made it.
    pub origin: String,
    /// Its origin's clock right after making it: `clock[origin]` is its sequence number there,
    /// the other entries are its causal dependencies.
    pub clock: VectorClock,
    /// Field -> new value; `None` removes the field.
    pub changes: BTreeMap<String, Option<String>>,
}

impl Update {
    /// Its number among its origin's updates (1, 2, ...).
    pub fn seq(&self) -> u64 {
        self.clock.get(&self.origin)
    }

    pub fn stamp(&self) -> Stamp {
        Stamp {
            sum: self.clock.sum(),
            origin: self.origin.clone(),
        }
    }
}

/// A field's current value and the stamp of the write that set it (a removal keeps its stamp,
/// so an older concurrent write cannot bring the field back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub value: Option<String>,
    pub stamp: Stamp,
}

/// What [`Replica::receive`] did with an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Applied, with this many waiting updates it released (their causes are now here).
    Applied { released: usize },
    /// Its causes have not all arrived; kept until they do.
    Waiting,
    /// Applied before, or already waiting: nothing changes.
    Duplicate,
}

/// The replica cannot keep another waiting update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} updates already wait for their causes")]
pub struct PendingFull(pub usize);

/// One region's replica of one object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Replica {
    /// How many updates of each region this replica has applied.
    pub clock: VectorClock,
    pub fields: BTreeMap<String, Field>,
    /// Updates whose causes have not all arrived, in arrival order.
    pub pending: Vec<Update>,
}

impl Replica {
    pub fn new() -> Self {
        Self::default()
    }

    /// The visible value of `field`.
    pub fn value(&self, field: &str) -> Option<&str> {
        self.fields.get(field)?.value.as_deref()
    }

    /// Every visible field with its value.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .filter_map(|(k, f)| Some((k.as_str(), f.value.as_deref()?)))
    }

    /// A write made here, in `region`: applied at once; returns the update to send the others.
    pub fn write(&mut self, region: &str, changes: BTreeMap<String, Option<String>>) -> Update {
        self.clock.tick(region);
        let update = Update {
            origin: region.to_owned(),
            clock: self.clock.clone(),
            changes,
        };
        self.apply(&update);
        update
    }

    /// Whether `u` (or a later update of its origin) has been applied here.
    pub fn has_applied(&self, u: &Update) -> bool {
        u.seq() <= self.clock.get(&u.origin)
    }

    /// Whether `u` can be applied now: the next of its origin's, its causes all here.
    pub fn is_deliverable(&self, u: &Update) -> bool {
        u.seq() == self.clock.get(&u.origin) + 1
            && u.clock
                .entries()
                .all(|(r, n)| r == u.origin || n <= self.clock.get(r))
    }

    /// An update from another region (or a copy of one of ours): applied if its causes are
    /// here, kept waiting otherwise (at most `max_pending` wait), ignored if seen before.
    pub fn receive(&mut self, u: Update, max_pending: usize) -> Result<Received, PendingFull> {
        let waiting = |p: &Update| p.origin == u.origin && p.seq() == u.seq();
        if u.seq() == 0 || self.has_applied(&u) || self.pending.iter().any(waiting) {
            return Ok(Received::Duplicate);
        }
        if !self.is_deliverable(&u) {
            if self.pending.len() >= max_pending {
                return Err(PendingFull(self.pending.len()));
            }
            self.pending.push(u);
            return Ok(Received::Waiting);
        }
        self.apply(&u);
        Ok(Received::Applied {
            released: self.release(),
        })
    }

    /// Applies every waiting update that has become deliverable, until none is.
    fn release(&mut self) -> usize {
        let mut released = 0;
        while let Some(i) = self.pending.iter().position(|p| self.is_deliverable(p)) {
            let u = self.pending.remove(i);
            self.apply(&u);
            released += 1;
        }
        // Copies of what is now applied can go.
        let clock = &self.clock;
        self.pending.retain(|p| p.seq() > clock.get(&p.origin));
        released
    }

    fn apply(&mut self, u: &Update) {
        let stamp = u.stamp();
        for (name, value) in &u.changes {
            let newer = self.fields.get(name).is_none_or(|f| stamp > f.stamp);
            if newer {
                self.fields.insert(
                    name.clone(),
                    Field {
                        value: value.clone(),
                        stamp: stamp.clone(),
                    },
                );
            }
        }
        self.clock.merge(&u.clock);
    }
}

#[cfg(test)]
mod tests;
