//! Profiles in one region: one document per user (state: the causal replica of
//! `shop_crdt::causal`, i.e. the clock, the fields and the updates held back for their causes;
//! the outbox: this region's own writes until the relay has published them).
//!
//! A write is applied here at once and pushed onto the outbox in the same update; an update of
//! another region arrives through [`apply`] and is applied only after its causes.

use std::{collections::BTreeMap, time::Duration};

use prost::Message as _;
use shop_core::{ServiceError, fields};
use shop_crdt::{
    causal::{PendingFull, Received, Replica, Update},
    vclock::VectorClock,
};
use shop_messaging::{EventEnvelope, NewEvent, inbox::HandlerError, topics::types};
use shop_proto::events::ProfileUpdated;

use super::{
    Region,
    docs::{Loaded, Outbox},
};
use crate::store::OUTBOX_LIMIT;

/// At most this many fields (removed ones included: a removal is kept, with its stamp).
pub const MAX_FIELDS: usize = 64;
/// At most this many updates wait for their causes in one profile; a further one is retried
/// later by the consumer (its causes are on the way: updates of one user share a partition).
pub const MAX_WAITING: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Full(#[from] PendingFull),
    #[error(transparent)]
    Store(#[from] ServiceError),
}

impl Region {
    /// What this region shows of `user` now.
    pub async fn profile(&self, user: &str) -> Result<Replica, ServiceError> {
        Ok(self.profiles.load(user).await?.state)
    }

    /// A write made in this region: applied here at once and queued for the other regions
    /// (`event` turns the update into the message), in one document update.
    pub async fn write_profile(
        &self,
        user: &str,
        changes: BTreeMap<String, Option<String>>,
        event: impl FnOnce(&Update) -> NewEvent,
    ) -> Result<Replica, ServiceError> {
        let _guard = self.profiles.locks.lock(user).await;
        let Loaded {
            state: mut replica,
            version,
            outbox,
        } = self.profiles.load::<Replica>(user).await?;
        if outbox >= OUTBOX_LIMIT {
            return Err(ServiceError::ResourceExhausted(format!(
                "profile {user} has {outbox} unpublished changes in region {}; retry after they are published",
                self.name
            )));
        }
        let update = replica.write(&self.name, changes);
        if replica.fields.len() > MAX_FIELDS {
            return Err(ServiceError::ResourceExhausted(format!(
                "profile {user} would have {} fields (removed ones count); at most {MAX_FIELDS}",
                replica.fields.len()
            )));
        }
        let event = event(&update);
        self.profiles
            .save(user, version, &replica, Outbox::Push(&event))
            .await?;
        Ok(replica)
    }

    /// An update from another region: applied if its causes are here, held back otherwise,
    /// ignored if seen before. Saved only if it changed something.
    pub async fn receive_profile(
        &self,
        user: &str,
        update: Update,
    ) -> Result<Received, ReceiveError> {
        let _guard = self.profiles.locks.lock(user).await;
        let Loaded {
            state: mut replica,
            version,
            ..
        } = self.profiles.load::<Replica>(user).await?;
        let received = replica.receive(update, MAX_WAITING)?;
        if received != Received::Duplicate {
            self.profiles
                .save(user, version, &replica, Outbox::Keep)
                .await?;
        }
        Ok(received)
    }

    /// `user` as this region shows it once it has applied at least `seen` (a session's token),
    /// waiting up to `wait`; `Err` with what it shows if it is still behind then.
    pub async fn profile_at(
        &self,
        user: &str,
        seen: &VectorClock,
        wait: Duration,
    ) -> Result<Result<Replica, Replica>, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.profiles.changed();
            let r = self.profile(user).await?;
            if r.clock.dominates(seen) {
                return Ok(Ok(r));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Err(r));
            }
            // Woken by this process's next save, or polling (another instance may apply).
            let nap = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, changed).await;
        }
    }
}

/// The message of `update` to `user`'s profile.
pub fn profile_updated(topic: &str, user: &str, update: &Update) -> NewEvent {
    let (mut set, mut removed) = (std::collections::HashMap::new(), Vec::new());
    for (k, v) in &update.changes {
        match v {
            Some(v) => {
                set.insert(k.clone(), v.clone());
            }
            None => removed.push(k.clone()),
        }
    }
    NewEvent::new(
        topic,
        types::PROFILE_UPDATED,
        "profile",
        user,
        &ProfileUpdated {
            user_id: user.to_owned(),
            origin: update.origin.clone(),
            clock: update
                .clock
                .entries()
                .map(|(r, n)| (r.to_owned(), n))
                .collect(),
            set,
            removed,
        },
    )
}

fn permanent(m: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(anyhow::anyhow!("{m}"))
}

/// The update a message carries, checked against the configured regions (a message this
/// platform did not write is permanent: skipped, never retried).
pub fn update_of(p: &ProfileUpdated, regions: &[String]) -> Result<Update, HandlerError> {
    let known = |r: &str| regions.iter().any(|k| k == r);
    if !known(&p.origin) {
        return Err(permanent(format!(
            "profile update: unknown origin {:?}",
            p.origin
        )));
    }
    if let Some(r) = p.clock.keys().find(|r| !known(r)) {
        return Err(permanent(format!(
            "profile update: unknown region {r:?} in the clock"
        )));
    }
    let clock = VectorClock::from_entries(p.clock.iter().map(|(r, n)| (r.clone(), *n)));
    if clock.get(&p.origin) == 0 {
        return Err(permanent("profile update: the origin's own entry is 0"));
    }
    let mut changes: BTreeMap<String, Option<String>> = p
        .set
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    changes.extend(p.removed.iter().map(|k| (k.clone(), None)));
    Ok(Update {
        origin: p.origin.clone(),
        clock,
        changes,
    })
}

/// One region's consumer of profile updates: applies the other regions' in causal order.
/// Updates of its own region were applied when they were written (their copies are duplicates).
pub async fn apply(
    region: &Region,
    regions: &[String],
    e: &EventEnvelope,
    delay: Duration,
) -> Result<(), HandlerError> {
    let p = ProfileUpdated::decode(e.payload.as_slice())?;
    let user = fields::key("user_id", &p.user_id, fields::MAX_ID).map_err(permanent)?;
    let update = update_of(&p, regions)?;
    if update.origin == region.name {
        return Ok(());
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let received = region
        .receive_profile(&user, update)
        .await
        .map_err(|e| match e {
            // Its causes are on the way (one user's updates share a partition); try again later.
            ReceiveError::Full(full) => HandlerError::Transient(full.into()),
            ReceiveError::Store(e) => HandlerError::Transient(e.into()),
        })?;
    tracing::debug!(region = %region.name, user, ?received, "profile update received");
    Ok(())
}
