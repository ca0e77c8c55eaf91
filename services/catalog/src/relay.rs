//! The catalog's in-document outbox as a relay [`Source`]: the events in each product's
//! `outbox` array go to Kafka through the one relay loop of `shop_messaging::relay`, and the
//! array is cleared only after the broker acknowledged all of them (and only if the product did
//! not change meanwhile: otherwise everything goes again, as duplicates). One relay at a time
//! holds the lease ([`RedisLease`], in the catalog's Redis; MongoDB on FerretDB has no atomic
//! conditional update to build one on). A product whose event the broker refuses for good is
//! parked after `park_after` attempts (`outbox_parked`, `outbox_error`): its later events wait
//! in its array (bounded, so its updates are refused until [`redrive`]); others move on.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Bson, Document, doc},
};
use redis::aio::ConnectionManager;
use shop_messaging::{
    envelope::bucket_of,
    kafka::KafkaSettings,
    lease::RedisLease,
    relay::{Delivery, Fate, LoopConfig, Message, Relay, Settled, Source, fates},
};

use crate::store::{WriteLocks, parse_entry};

pub struct CatalogOutbox {
    name: String,
    products: Collection<Document>,
    locks: WriteLocks,
    lease: RedisLease,
}

/// One claimed product: its id, the version read, and how many of the messages are its.
pub struct Claimed {
    sku: String,
    version: Bson,
    entries: usize,
}

/// The catalog relay: the one loop over the products' outboxes. `lease_key` is per environment
/// (the topic prefix).
pub fn relay(
    products: Collection<Document>,
    locks: WriteLocks,
    redis: ConnectionManager,
    lease_key: String,
    kafka: &KafkaSettings,
    poll: Duration,
) -> anyhow::Result<Relay<CatalogOutbox>> {
    relay_named("catalog", products, locks, redis, lease_key, kafka, poll)
}

/// The same relay over another collection whose documents keep their outbox the same way
/// (`_id`, `version`, `outbox`, `outbox_pending`: a region's profiles), named `name` in the
/// `outbox_*{relay}` metrics.
pub fn relay_named(
    name: &str,
    products: Collection<Document>,
    locks: WriteLocks,
    redis: ConnectionManager,
    lease_key: String,
    kafka: &KafkaSettings,
    poll: Duration,
) -> anyhow::Result<Relay<CatalogOutbox>> {
    let config = LoopConfig {
        batch_size: 1000,
        poll_interval: poll,
        ..LoopConfig::default()
    };
    // Renewed every round; short, so a relay that died holds the outbox back for seconds only.
    let lease = RedisLease::new(redis, lease_key, (poll * 10).max(Duration::from_secs(2)));
    Relay::new(
        CatalogOutbox {
            name: name.to_owned(),
            products,
            locks,
            lease,
        },
        kafka,
        config,
    )
}

impl Source for CatalogOutbox {
    type Claim = (Vec<Claimed>, Vec<Message>);

    fn name(&self) -> &str {
        &self.name
    }

    async fn claim(&self, limit: usize) -> anyhow::Result<Option<(Self::Claim, Vec<Message>)>> {
        if !self.lease.hold().await? {
            return Ok(None);
        }
        let docs: Vec<Document> = self
            .products
            .find(doc! { "outbox_pending": true, "outbox_parked": { "$ne": true } })
            .limit(100)
            .await?
            .try_collect()
            .await?;
        let (mut claimed, mut messages) = (Vec::new(), Vec::new());
        for d in docs {
            let (Ok(sku), Ok(entries)) = (d.get_str("_id"), d.get_array("outbox")) else {
                continue;
            };
            if messages.len() >= limit {
                break;
            }
            let group = u64::try_from(bucket_of(sku, 1 << 14)).unwrap_or(0);
            let before = messages.len();
            for e in entries {
                let Some((topic, key, payload)) = parse_entry(e) else {
                    tracing::error!(sku, "malformed catalog outbox entry skipped");
                    continue;
                };
                messages.push(Message {
                    topic,
                    key: key.into_bytes(),
                    payload,
                    event_id: None,
                    event_type: None,
                    group,
                });
            }
            claimed.push(Claimed {
                sku: sku.to_owned(),
                version: d.get("version").cloned().unwrap_or(Bson::Null),
                entries: messages.len() - before,
            });
        }
        if messages.is_empty() {
            return Ok(None);
        }
        Ok(Some(((claimed, messages.clone()), messages)))
    }

    async fn settle(
        &self,
        (claimed, messages): Self::Claim,
        deliveries: Vec<Delivery>,
        park_after: u32,
    ) -> anyhow::Result<Settled> {
        let fates = fates(messages.iter().map(|m| m.group), &deliveries);
        let mut settled = Settled::default();
        let mut at = 0;
        for c in claimed {
            let range = at..at + c.entries;
            at = range.end;
            let _guard = self.locks.lock(&c.sku).await;
            if fates[range.clone()].iter().all(|f| *f == Fate::Published) {
                // Clear only what was read: a concurrent update bumped the version and pushed
                // more, and then nothing is cleared (all of it goes again next round).
                let cleared = self
                    .products
                    .update_one(
                        doc! { "_id": &c.sku, "version": c.version },
                        doc! {
                            "$set": { "outbox": [], "outbox_pending": false },
                            "$unset": { "outbox_attempts": "", "outbox_error": "" },
                        },
                    )
                    .await?;
                if cleared.modified_count > 0 {
                    settled.published += c.entries;
                }
                continue;
            }
            let failure = fates[range].iter().find_map(|f| match f {
                Fate::Failed { error, permanent } => Some(((*error).to_owned(), *permanent)),
                _ => None,
            });
            let Some((error, permanent)) = failure else {
                continue;
            };
            settled.failed += 1;
            let after = self
                .products
                .find_one_and_update(
                    doc! { "_id": &c.sku },
                    doc! { "$inc": { "outbox_attempts": 1 }, "$set": { "outbox_error": &error } },
                )
                .return_document(mongodb::options::ReturnDocument::After)
                .await?;
            let attempts = after
                .as_ref()
                .and_then(|d| d.get_i32("outbox_attempts").ok())
                .unwrap_or(0);
            if permanent && u32::try_from(attempts).unwrap_or(0) >= park_after {
                self.products
                    .update_one(
                        doc! { "_id": &c.sku },
                        doc! { "$set": { "outbox_parked": true } },
                    )
                    .await?;
                settled.parked += 1;
                tracing::error!(
                    sku = c.sku,
                    error,
                    "catalog outbox parked: the broker refuses an event of this product for good"
                );
            }
        }
        Ok(settled)
    }
}

/// Puts every parked product's outbox back in line. Returns how many products.
pub async fn redrive(products: &Collection<Document>) -> anyhow::Result<u64> {
    Ok(products
        .update_many(
            doc! { "outbox_parked": true },
            doc! { "$unset": { "outbox_parked": "", "outbox_attempts": "" } },
        )
        .await?
        .modified_count)
}
