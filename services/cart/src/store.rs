//! Carts in Redis. Every change is one Lua script, so it is atomic however many requests race on
//! one cart (Redis runs a script to completion before anything else): read, check the limits,
//! change, bump the version, write back with the TTL started again. No lost update, no
//! read-modify-write window.
//!
//! Keys: `cart:{session}` (the cart, JSON), `cart-order:{order id}` (which session an order
//! came from, for clearing the cart when it completes), `outbox:cart` (a stream: events written
//! by the same script as the change they describe, relayed to Kafka by [`crate::relay`]).
//!
//! ## Checkout freezes the cart
//!
//! A checkout is for one version of the cart, and the cart stays at that version until the order
//! ends, so the order always has exactly the cart's lines:
//!
//! 1. [`CartStore::begin_checkout`] marks the cart as being checked out (`checkout` =
//!    `{v, order = ''}`, pending) in the same script that reads the lines the order is placed
//!    with. From then on [`CartStore::change`] refuses every edit (FAILED_PRECONDITION): an
//!    edit lands before the checkout, and is in the order, or is refused; none is lost.
//! 2. The order is placed (key: session and version). [`CartStore::checked_out`] records its id
//!    (`checkout` = `{v, order}`) and the `cart.checked_out` event. If the order service refused
//!    the request, [`CartStore::checkout_failed`] unfreezes the cart (its version unchanged).
//!    An attempt that dies in between (crash, cancelled call) holds the freeze for
//!    [`CHECKOUT_LEASE_MS`] at most; a retry within it places (or gets back) the same order.
//! 3. While an order is recorded, checking out again places with the same key: the same request
//!    gets the same order back (a retry, a double submit), another one is refused by the order
//!    service (the key was used for a different request).
//! 4. The order ends ([`CartStore::order_ended`], once per order, a redelivery changes
//!    nothing). Completed: the cart is deleted if it is still the version checked out;
//!    otherwise (it changed after the checkout, which only a cart written before the freeze
//!    existed can have) it is kept, open, so nothing in it is lost. Cancelled: the cart is
//!    open again with its lines, its version moved on (so the next checkout is a new order).

use redis::{Script, aio::ConnectionManager};
use shop_core::ServiceError;

use crate::domain::{Cart, Limits};

/// The outbox stream's name after the topic prefix: `<prefix>outbox:cart`, so environments (or
/// test runs) sharing one Redis never relay each other's events.
pub const OUTBOX_STREAM: &str = "outbox:cart";

/// The outbox stream of the environment with `topic_prefix`.
pub fn outbox_stream(topic_prefix: &str) -> String {
    format!("{topic_prefix}{OUTBOX_STREAM}")
}

/// How long a pending checkout (begun, its order not recorded yet) freezes the cart. Placing an
/// order takes milliseconds; this only matters when the attempt died (a crash, a cancelled
/// call): then the freeze ends by itself, and the next edit opens the cart.
pub const CHECKOUT_LEASE_MS: u64 = 30_000;

pub fn cart_key(session: &str) -> String {
    format!("cart:{session}")
}

fn order_key(order_id: &str) -> String {
    format!("cart-order:{order_id}")
}

/// The milliseconds of the Redis server's clock (one clock for every cart instance).
const NOW_MS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// add / set / remove one line, refused while the cart is checked out. KEYS: cart. ARGV: op,
/// sku, qty, price, currency, ttl, max_lines, max_qty, session, lease ms.
const MUTATE: &str = r#"
local key, op, sku = KEYS[1], ARGV[1], ARGV[2]
local qty, price, cur = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local ttl, max_lines, max_qty = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local session, lease = ARGV[9], tonumber(ARGV[10])
local raw = redis.call('GET', key)
local cart
if raw then cart = cjson.decode(raw) else cart = {v = 0, seq = 0, lines = {}} end
local co = cart.checkout
if co then
  local order = co.order or ''
  if order ~= '' then
    return redis.error_reply('FROZEN cart ' .. session .. ' is checked out; order ' .. order .. ' is in progress')
  end
  if now_ms() - (tonumber(co.at) or 0) < lease then
    return redis.error_reply('FROZEN cart ' .. session .. ' is being checked out')
  end
  -- A checkout that died before recording an order: its lease is over, the cart is open.
  cart.checkout = nil
end
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

/// Freezes the cart for a checkout and returns it (the lines the order is placed with).
/// Not frozen: `checkout` = `{v, order = '', n = 1, at = now}` (pending). Pending at this
/// version and within its lease: this attempt joins it (`n` + 1; a double submit places one
/// order through the key). An order recorded for this version: returned as is (a retry: the key
/// gets the same order back). An order recorded for another version: refused.
/// KEYS: cart. ARGV: ttl, session, lease ms.
const BEGIN_CHECKOUT: &str = r#"
local ttl, session, lease = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.error_reply('EMPTY the cart is empty') end
local cart = cjson.decode(raw)
if next(cart.lines) == nil then return redis.error_reply('EMPTY the cart is empty') end
local co = cart.checkout
if co and (co.order or '') ~= '' then
  if co.v ~= cart.v then
    return redis.error_reply('FROZEN cart ' .. session .. ' is checked out; order ' .. co.order .. ' is in progress')
  end
  redis.call('EXPIRE', KEYS[1], ttl)
  return raw
end
local now = now_ms()
if co and co.v == cart.v and now - (tonumber(co.at) or 0) < lease then
  co.n = (tonumber(co.n) or 0) + 1
  co.at = now
else
  cart.checkout = {v = cart.v, order = '', n = 1, at = now}
end
local out = cjson.encode(cart)
redis.call('SET', KEYS[1], out, 'EX', ttl)
return out
"#;

/// An attempt begun at version ARGV[1] placed no order: it leaves the pending checkout, and the
/// last one to leave opens the cart (its version unchanged: a retry is the same order key).
/// Nothing if an order was recorded meanwhile. KEYS: cart. ARGV: version.
const CHECKOUT_FAILED: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local cart = cjson.decode(raw)
local co = cart.checkout
if not co or (co.order or '') ~= '' or co.v ~= tonumber(ARGV[1]) then return 0 end
co.n = (tonumber(co.n) or 1) - 1
if co.n <= 0 then cart.checkout = nil end
redis.call('SET', KEYS[1], cjson.encode(cart), 'KEEPTTL')
return 1
"#;

/// Records that version ARGV[1] of the cart was checked out as order ARGV[2], with its event in
/// the outbox stream, once: 1 recorded (now or before), 0 no cart, -1 nothing written because
/// the cart is no longer that version waiting for its order: checked out as another order or
/// version, or open at another version (the order ended before a slow retry came back, or the
/// attempt outlived its lease and the cart was edited). Open at this version (the lease ran
/// out, nothing changed): recorded. KEYS: cart, order map, outbox. ARGV: version, order id,
/// session, map ttl, event id, topic, payload.
const CHECKED_OUT: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local cart = cjson.decode(raw)
local v = tonumber(ARGV[1])
local co = cart.checkout
if co and co.order == ARGV[2] then return 1 end
if co then
  if (co.order or '') ~= '' or co.v ~= v then return -1 end
elseif cart.v ~= v then
  return -1
end
cart.checkout = {v = v, order = ARGV[2]}
redis.call('SET', KEYS[1], cjson.encode(cart), 'KEEPTTL')
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
redis.call('XADD', KEYS[3], '*', 'event_id', ARGV[5], 'topic', ARGV[6], 'key', ARGV[3], 'payload', ARGV[7])
return 1
"#;

/// The order of a checkout ended; only if the cart is still checked out as this order, so a
/// redelivery changes nothing. Completed: the cart goes if it is still the version ordered,
/// else it stays, open. Cancelled: the cart stays, open for another checkout (its version moves
/// on, so the next checkout is a new order). KEYS: cart, order map. ARGV: order id, outcome.
const ORDER_ENDED: &str = r#"
local raw = redis.call('GET', KEYS[1])
local changed = 0
if raw then
  local cart = cjson.decode(raw)
  local co = cart.checkout
  if co and co.order == ARGV[1] then
    if ARGV[2] == 'completed' and co.v == cart.v then
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
    /// Where events are written ([`outbox_stream`]).
    outbox: String,
    mutate: Script,
    begin_checkout: Script,
    checkout_failed: Script,
    checked_out: Script,
    order_ended: Script,
}

fn to_service_error(e: redis::RedisError) -> ServiceError {
    let detail = e.detail().unwrap_or_default().to_owned();
    match e.code() {
        Some("LIMIT" | "CURRENCY" | "FROZEN" | "EMPTY") => ServiceError::FailedPrecondition(detail),
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
    /// A store writing its events to the outbox stream of `topic_prefix`.
    pub fn new(redis: ConnectionManager, limits: Limits, topic_prefix: &str) -> Self {
        Self {
            redis,
            limits,
            outbox: outbox_stream(topic_prefix),
            mutate: Script::new(&format!("{NOW_MS}{MUTATE}")),
            begin_checkout: Script::new(&format!("{NOW_MS}{BEGIN_CHECKOUT}")),
            checkout_failed: Script::new(CHECKOUT_FAILED),
            checked_out: Script::new(CHECKED_OUT),
            order_ended: Script::new(ORDER_ENDED),
        }
    }

    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Applies `change` atomically; returns the cart after it. Refused (FAILED_PRECONDITION,
    /// nothing changed) while the cart is checked out.
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
            .arg(session)
            .arg(CHECKOUT_LEASE_MS)
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

    /// Freezes the cart for a checkout and returns it: the lines to place the order with, at
    /// the version of its key. FAILED_PRECONDITION if it is empty, or checked out as an order
    /// of another version. Every call is followed by [`Self::checked_out`] once the order is
    /// placed, or by [`Self::checkout_failed`] if the order service placed none.
    pub async fn begin_checkout(&self, session: &str) -> Result<Cart, ServiceError> {
        let mut conn = self.redis.clone();
        let raw: String = self
            .begin_checkout
            .key(cart_key(session))
            .arg(self.limits.ttl_secs)
            .arg(session)
            .arg(CHECKOUT_LEASE_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(to_service_error)?;
        parse(&raw)
    }

    /// The checkout begun at `version` placed no order (the order service refused it): the cart
    /// opens again once no other attempt is in flight. Best effort: if Redis cannot be reached,
    /// the lease ends the freeze.
    pub async fn checkout_failed(&self, session: &str, version: u64) {
        let mut conn = self.redis.clone();
        let done: Result<i64, _> = self
            .checkout_failed
            .key(cart_key(session))
            .arg(version)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, session, "cart checkout not released, its lease will end it");
        }
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
        let recorded: i64 = self
            .checked_out
            .key(cart_key(session))
            .key(order_key(order_id))
            .key(&self.outbox)
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
        if recorded < 0 {
            // The order exists (the caller gets its id); this cart moved on without it.
            tracing::warn!(
                session,
                version,
                order_id,
                "checkout not recorded: the cart is no longer this version waiting for its order"
            );
        }
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
