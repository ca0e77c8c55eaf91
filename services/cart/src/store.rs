//! Carts in Redis. Every change is one Lua script, so it is atomic however many requests race on
//! one cart (Redis runs a script to completion before anything else): read, check the limits,
//! change, bump the version, write back with the TTL started again. No lost update, no
//! read-modify-write window.
//!
//! Keys: `cart:{session}` (the cart, JSON), `cart-order:{order id}` (which session an order
//! came from, for clearing the cart when it completes), `outbox:cart` (a stream: events written
//! by the same script as the change they describe, relayed to Kafka by [`crate::relay`]).

use redis::{Script, aio::ConnectionManager};
use shop_core::ServiceError;

use crate::domain::{Cart, Limits};

pub const OUTBOX_STREAM: &str = "outbox:cart";

pub fn cart_key(session: &str) -> String {
    format!("cart:{session}")
}

fn order_key(order_id: &str) -> String {
    format!("cart-order:{order_id}")
}

/// add / set / remove one line. KEYS: cart. ARGV: op, sku, qty, price, currency, ttl,
/// max_lines, max_qty.
const MUTATE: &str = r#"
local key, op, sku = KEYS[1], ARGV[1], ARGV[2]
local qty, price, cur = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local ttl, max_lines, max_qty = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local raw = redis.call('GET', key)
local cart
if raw then cart = cjson.decode(raw) else cart = {v = 0, seq = 0, lines = {}} end
local line = cart.lines[sku]
if op == 'add' then
  if line then
    if line.q + qty > max_qty then
      return redis.error_reply('LIMIT quantity of ' .. sku .. ' would exceed ' .. max_qty)
    end
    line.q = line.q + qty
    line.p = price
  else
    local n = 0
    for _, l in pairs(cart.lines) do
      n = n + 1
      if l.c ~= cur then
        return redis.error_reply('CURRENCY ' .. sku .. ' is priced in ' .. cur .. ', the cart in ' .. l.c)
      end
    end
    if n >= max_lines then
      return redis.error_reply('LIMIT the cart already has ' .. max_lines .. ' lines')
    end
    cart.seq = cart.seq + 1
    cart.lines[sku] = {q = qty, p = price, c = cur, n = cart.seq}
  end
elseif op == 'set' then
  if not line then return redis.error_reply('NOTFOUND ' .. sku .. ' is not in the cart') end
  line.q = qty
elseif op == 'remove' then
  if not line then return redis.error_reply('NOTFOUND ' .. sku .. ' is not in the cart') end
  cart.lines[sku] = nil
end
cart.v = cart.v + 1
local out = cjson.encode(cart)
redis.call('SET', key, out, 'EX', ttl)
return out
"#;

/// Records that version ARGV[1] of the cart was checked out as order ARGV[2], with its event in
/// the outbox stream, once. KEYS: cart, order map, outbox. ARGV: version, order id, session,
/// map ttl, event id, topic, payload.
const CHECKED_OUT: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local cart = cjson.decode(raw)
if cart.checkout and cart.checkout.order == ARGV[2] then return 1 end
cart.checkout = {v = tonumber(ARGV[1]), order = ARGV[2]}
redis.call('SET', KEYS[1], cjson.encode(cart), 'KEEPTTL')
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
redis.call('XADD', KEYS[3], '*', 'event_id', ARGV[5], 'topic', ARGV[6], 'key', ARGV[3], 'payload', ARGV[7])
return 1
"#;

/// The order of a checkout ended. Completed: the cart goes. Cancelled: the cart stays, open for
/// another checkout (its version moves on, so the next checkout is a new order). Only if the
/// cart is still the one checked out as this order, so a redelivery changes nothing.
/// KEYS: cart, order map. ARGV: order id, outcome.
const ORDER_ENDED: &str = r#"
local raw = redis.call('GET', KEYS[1])
local changed = 0
if raw then
  local cart = cjson.decode(raw)
  if cart.checkout and cart.checkout.order == ARGV[1] then
    if ARGV[2] == 'completed' then
      redis.call('DEL', KEYS[1])
    else
      cart.checkout = nil
      cart.v = cart.v + 1
      redis.call('SET', KEYS[1], cjson.encode(cart), 'KEEPTTL')
    end
    changed = 1
  end
end
redis.call('DEL', KEYS[2])
return changed
"#;

#[derive(Clone)]
pub struct CartStore {
    redis: ConnectionManager,
    pub limits: Limits,
    mutate: Script,
    checked_out: Script,
    order_ended: Script,
}

fn to_service_error(e: redis::RedisError) -> ServiceError {
    let detail = e.detail().unwrap_or_default().to_owned();
    match e.code() {
        Some("LIMIT") | Some("CURRENCY") => ServiceError::FailedPrecondition(detail),
        Some("NOTFOUND") => ServiceError::NotFound(detail),
        _ => ServiceError::Unavailable(format!("redis: {e}")),
    }
}

fn parse(raw: &str) -> Result<Cart, ServiceError> {
    serde_json::from_str(raw).map_err(|e| ServiceError::Internal(e.into()))
}

/// A change to one line.
pub enum Change<'a> {
    Add {
        sku: &'a str,
        quantity: u32,
        unit_price_minor: i64,
        currency: &'a str,
    },
    Set {
        sku: &'a str,
        quantity: u32,
    },
    Remove {
        sku: &'a str,
    },
}

impl CartStore {
    pub fn new(redis: ConnectionManager, limits: Limits) -> Self {
        Self {
            redis,
            limits,
            mutate: Script::new(MUTATE),
            checked_out: Script::new(CHECKED_OUT),
            order_ended: Script::new(ORDER_ENDED),
        }
    }

    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Applies `change` atomically; returns the cart after it.
    pub async fn change(&self, session: &str, change: Change<'_>) -> Result<Cart, ServiceError> {
        let (op, sku, qty, price, cur) = match change {
            Change::Add {
                sku,
                quantity,
                unit_price_minor,
                currency,
            } => ("add", sku, quantity, unit_price_minor, currency),
            Change::Set { sku, quantity } => ("set", sku, quantity, 0, ""),
            Change::Remove { sku } => ("remove", sku, 0, 0, ""),
        };
        let mut conn = self.redis.clone();
        let raw: String = self
            .mutate
            .key(cart_key(session))
            .arg(op)
            .arg(sku)
            .arg(qty)
            .arg(price)
            .arg(cur)
            .arg(self.limits.ttl_secs)
            .arg(self.limits.max_lines)
            .arg(self.limits.max_quantity)
            .invoke_async(&mut conn)
            .await
            .map_err(to_service_error)?;
        parse(&raw)
    }

    /// The cart (empty if there is none), its TTL started again (`GETEX`).
    pub async fn get(&self, session: &str) -> Result<Cart, ServiceError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = redis::cmd("GETEX")
            .arg(cart_key(session))
            .arg("EX")
            .arg(self.limits.ttl_secs)
            .query_async(&mut conn)
            .await
            .map_err(to_service_error)?;
        raw.map_or_else(|| Ok(Cart::default()), |r| parse(&r))
    }

    /// Records the checkout of `version` as `order_id` and its event, once.
    pub async fn checked_out(
        &self,
        session: &str,
        version: u64,
        order_id: &str,
        event: &shop_messaging::NewEvent,
    ) -> Result<(), ServiceError> {
        let mut conn = self.redis.clone();
        let payload = prost::Message::encode_to_vec(&event.envelope);
        let _: i64 = self
            .checked_out
            .key(cart_key(session))
            .key(order_key(order_id))
            .key(OUTBOX_STREAM)
            .arg(version)
            .arg(order_id)
            .arg(session)
            .arg(7 * 24 * 3600)
            .arg(event.event_id())
            .arg(&event.topic)
            .arg(payload)
            .invoke_async(&mut conn)
            .await
            .map_err(to_service_error)?;
        Ok(())
    }

    /// The order `order_id` completed (`completed = true`) or was cancelled; returns whether a
    /// cart changed.
    pub async fn order_ended(
        &self,
        order_id: &str,
        completed: bool,
    ) -> Result<bool, redis::RedisError> {
        let mut conn = self.redis.clone();
        let session: Option<String> = redis::cmd("GET")
            .arg(order_key(order_id))
            .query_async(&mut conn)
            .await?;
        let Some(session) = session else {
            return Ok(false); // not an order placed from a cart (or handled already)
        };
        let changed: i64 = self
            .order_ended
            .key(cart_key(&session))
            .key(order_key(order_id))
            .arg(order_id)
            .arg(if completed { "completed" } else { "cancelled" })
            .invoke_async(&mut conn)
            .await?;
        Ok(changed == 1)
    }
}
