//! The relay lease for outboxes that do not live in PostgreSQL (feature `redis`).
//!
//! A PostgreSQL relay claims buckets with advisory locks that end with its transaction. An
//! outbox in Redis or MongoDB has no such lock, so one relay at a time holds a lease: a Redis key
//! naming its holder with an expiry, taken or renewed by one script (check and set in one step:
//! two relays can never both believe they hold it). It is renewed every round and kept short
//! (`ttl`, a few polls), so a holder that dies holds the outbox back for `ttl` only. A round
//! that outlives `ttl` (a slow broker) may let another relay publish the same messages: that is
//! a duplicate, which every consumer absorbs by event id, never a loss.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

const TAKE_OR_RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

pub struct RedisLease {
    redis: ConnectionManager,
    key: String,
    holder: String,
    ttl: Duration,
    script: Script,
}

impl RedisLease {
    /// The lease `key`, held by this process as a fresh holder id.
    pub fn new(redis: ConnectionManager, key: impl Into<String>, ttl: Duration) -> Self {
        Self {
            redis,
            key: key.into(),
            holder: uuid::Uuid::now_v7().to_string(),
            ttl,
            script: Script::new(TAKE_OR_RENEW),
        }
    }

    /// Takes the lease if it is free or ours, renewing it for `ttl`. False: another holds it.
    pub async fn hold(&self) -> anyhow::Result<bool> {
        let mut conn = self.redis.clone();
        let held: i64 = self
            .script
            .key(&self.key)
            .arg(&self.holder)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }
}
