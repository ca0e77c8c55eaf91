//! "Bought together" recommendations in Redis (eventual consistency): for every completed order,
//! each pair of distinct SKUs in it scores one more, in sorted sets `rec:{sku}` (member: the
//! other SKU). One Lua script records the order as counted and adds its pairs, atomically, so a
//! redelivered `order.completed` changes nothing.

use redis::{Script, aio::ConnectionManager};

const RECORD: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #ARGV do
  for j = 2, #ARGV do
    if i ~= j and ARGV[i] ~= ARGV[j] then
      redis.call('ZINCRBY', 'rec:' .. ARGV[i], 1, ARGV[j])
    end
  end
end
return 1
"#;

#[derive(Clone)]
pub struct Recommendations {
    redis: ConnectionManager,
    record: Script,
    /// Prefix of this deployment's keys (`rec:` and `rec-seen:` follow it).
    prefix: String,
}

/// How long an order is remembered as counted (redeliveries come within hours, not months).
const SEEN_TTL_SECS: u64 = 30 * 24 * 3600;
pub const MAX_LIMIT: usize = 100;

impl Recommendations {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            record: Script::new(&RECORD.replace("'rec:'", &format!("'{prefix}rec:'"))),
            prefix: prefix.to_owned(),
        }
    }

    /// Counts the SKUs of completed order `order_id` together, once. Returns whether it counted.
    pub async fn record(&self, order_id: &str, skus: &[String]) -> Result<bool, redis::RedisError> {
        let mut unique: Vec<&String> = skus.iter().collect();
        unique.sort();
        unique.dedup();
        let mut conn = self.redis.clone();
        let mut call = self
            .record
            .key(format!("{}rec-seen:{order_id}", self.prefix));
        call.arg(SEEN_TTL_SECS);
        for s in unique {
            call.arg(s);
        }
        let counted: i64 = call.invoke_async(&mut conn).await?;
        Ok(counted == 1)
    }

    /// The `limit` SKUs most often bought with `sku`, best first.
    pub async fn for_sku(
        &self,
        sku: &str,
        limit: usize,
    ) -> Result<Vec<(String, f64)>, redis::RedisError> {
        let mut conn = self.redis.clone();
        let stop = isize::try_from(limit.clamp(1, MAX_LIMIT)).unwrap_or(10) - 1;
        redis::cmd("ZRANGE")
            .arg(format!("{}rec:{sku}", self.prefix))
            .arg(0)
            .arg(stop)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
    }
}
