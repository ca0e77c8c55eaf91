//! The cart's outbox as a relay [`Source`]: entries of the `<prefix>outbox:cart` stream (written
//! by the same Lua script as the change they describe) go to Kafka through the one relay loop
//! of `shop_messaging::relay`, oldest first, and are deleted from the stream only after the
//! broker acknowledged them. One relay at a time holds the lease ([`RedisLease`]); a crash
//! before the delete publishes entries again (duplicates, absorbed by event id), never loses
//! them.
//!
//! Entries are grouped by key (a cart's events keep their order; other carts' move on past a
//! failure). An entry the broker refuses for good is parked after `park_after` attempts: its id
//! and error go to `<stream>:parked`, its key to `<stream>:parked_keys`, and every later entry
//! of that key waits in the stream behind it until [`redrive`].

use std::{collections::HashMap, time::Duration};

use redis::{AsyncCommands, aio::ConnectionManager, streams::StreamRangeReply};
use shop_messaging::{
    envelope::bucket_of,
    kafka::KafkaSettings,
    lease::RedisLease,
    relay::{Delivery, Fate, LoopConfig, Message, Relay, Settled, Source, fates},
};

pub struct CartOutbox {
    redis: ConnectionManager,
    stream: String,
    lease: RedisLease,
}

/// What a round claimed: the entries' ids and keys (as messages), and malformed ids to drop.
pub struct CartClaim {
    ids: Vec<String>,
    messages: Vec<Message>,
    malformed: Vec<String>,
}

impl CartOutbox {
    pub fn new(redis: ConnectionManager, stream: String, lease_ttl: Duration) -> Self {
        let lease = RedisLease::new(redis.clone(), format!("{stream}:lease"), lease_ttl);
        Self {
            redis,
            stream,
            lease,
        }
    }

    fn attempts(&self) -> String {
        format!("{}:attempts", self.stream)
    }

    fn parked(&self) -> String {
        format!("{}:parked", self.stream)
    }

    fn parked_keys(&self) -> String {
        format!("{}:parked_keys", self.stream)
    }
}

/// The cart relay: the one loop over the cart's stream.
pub fn relay(
    redis: ConnectionManager,
    stream: String,
    kafka: &KafkaSettings,
    poll: Duration,
) -> anyhow::Result<Relay<CartOutbox>> {
    let config = LoopConfig {
        batch_size: 200,
        poll_interval: poll,
        ..LoopConfig::default()
    };
    // Renewed every round; short, so a relay that died (SIGKILL) holds the stream back for
    // seconds only. A round that outlives it (a broker outage) may let another relay publish
    // the same entries: duplicates, absorbed by event id.
    let ttl = (poll * 10).max(Duration::from_secs(2));
    Relay::new(CartOutbox::new(redis, stream, ttl), kafka, config)
}

/// Stream entry ids compare by (milliseconds, sequence).
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl Source for CartOutbox {
    type Claim = CartClaim;

    fn name(&self) -> &str {
        "cart"
    }

    async fn claim(&self, limit: usize) -> anyhow::Result<Option<(CartClaim, Vec<Message>)>> {
        if !self.lease.hold().await? {
            return Ok(None);
        }
        let mut conn = self.redis.clone();
        let reply: StreamRangeReply = conn.xrange_count(&self.stream, "-", "+", limit).await?;
        if reply.ids.is_empty() {
            return Ok(None);
        }
        // A key with a parked entry waits behind it.
        let parked_keys: HashMap<String, String> = conn.hgetall(self.parked_keys()).await?;
        let mut claim = CartClaim {
            ids: Vec::new(),
            messages: Vec::new(),
            malformed: Vec::new(),
        };
        for entry in &reply.ids {
            let field = |name: &str| -> Option<Vec<u8>> {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
            };
            let (Some(topic), Some(key), Some(payload)) =
                (field("topic"), field("key"), field("payload"))
            else {
                tracing::error!(id = %entry.id, "malformed cart outbox entry dropped");
                claim.malformed.push(entry.id.clone());
                continue;
            };
            let key_s = String::from_utf8_lossy(&key).into_owned();
            if parked_keys
                .get(&key_s)
                .is_some_and(|p| entry_order(&entry.id) >= entry_order(p))
            {
                continue;
            }
            claim.ids.push(entry.id.clone());
            claim.messages.push(Message {
                topic: String::from_utf8_lossy(&topic).into_owned(),
                group: u64::try_from(bucket_of(&key_s, 1 << 14)).unwrap_or(0),
                key,
                payload,
                event_id: field("event_id").map(|v| String::from_utf8_lossy(&v).into_owned()),
                event_type: None,
            });
        }
        if claim.ids.is_empty() && claim.malformed.is_empty() {
            return Ok(None);
        }
        let messages = claim.messages.clone();
        Ok(Some((claim, messages)))
    }

    async fn settle(
        &self,
        claim: CartClaim,
        deliveries: Vec<Delivery>,
        park_after: u32,
    ) -> anyhow::Result<Settled> {
        let mut conn = self.redis.clone();
        let fates = fates(claim.messages.iter().map(|m| m.group), &deliveries);
        let mut done: Vec<&String> = claim.malformed.iter().collect();
        let mut settled = Settled::default();
        for ((id, m), fate) in claim.ids.iter().zip(&claim.messages).zip(fates) {
            match fate {
                Fate::Published => {
                    done.push(id);
                    settled.published += 1;
                }
                Fate::Failed { error, permanent } => {
                    settled.failed += 1;
                    let attempts: u32 = conn.hincr(self.attempts(), id, 1).await?;
                    if permanent && attempts >= park_after {
                        let key = String::from_utf8_lossy(&m.key).into_owned();
                        let _: () = redis::pipe()
                            .atomic()
                            .hset(self.parked(), id, error)
                            .hset_nx(self.parked_keys(), &key, id)
                            .query_async(&mut conn)
                            .await?;
                        settled.parked += 1;
                        tracing::error!(
                            id,
                            key,
                            error,
                            "cart outbox entry parked: the broker refuses it for good"
                        );
                    }
                }
                Fate::Held => {}
            }
        }
        if !done.is_empty() {
            let _: () = redis::pipe()
                .atomic()
                .xdel(&self.stream, &done)
                .hdel(self.attempts(), &done)
                .query_async(&mut conn)
                .await?;
        }
        Ok(settled)
    }
}

/// Puts every parked entry of `stream` back in line (they and the entries of their keys go
/// again, in order). Returns how many were parked.
pub async fn redrive(redis: &ConnectionManager, stream: &str) -> anyhow::Result<usize> {
    let mut conn = redis.clone();
    let parked: HashMap<String, String> = conn.hgetall(format!("{stream}:parked")).await?;
    let _: () = redis::pipe()
        .atomic()
        .del(format!("{stream}:parked"))
        .del(format!("{stream}:parked_keys"))
        .del(format!("{stream}:attempts"))
        .query_async(&mut conn)
        .await?;
    Ok(parked.len())
}
