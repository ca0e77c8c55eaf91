//! A cart as stored, its limits, and the checkout idempotency key. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shop_core::ServiceError;
use shop_proto::common::{LineItem, Money};

/// One line: quantity and the unit price seen when the item was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Quantity.
    pub q: u32,
    /// Unit price, minor units.
    pub p: i64,
    /// Currency.
    pub c: String,
    /// Insertion order (lines show in the order they were added).
    pub n: u64,
}

/// The checkout this cart is in (the order placed for `v`): the cart is frozen until the order
/// ends. `order` is empty while the order is being placed (the scripts in [`crate::store`] also
/// keep the attempts in flight and when the freeze began, which only they read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub v: u64,
    pub order: String,
}

/// The stored JSON (written by the Lua scripts in [`crate::store`], read here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Bumped by every change: a checkout is for one version.
    pub v: u64,
    #[serde(default)]
    pub seq: u64,
    /// By SKU. (An empty Lua table encodes as `{}`, which is why this is a map.)
    #[serde(default)]
    pub lines: BTreeMap<String, Line>,
    #[serde(default)]
    pub checkout: Option<Checkout>,
}

impl Cart {
    pub fn items(&self) -> Vec<LineItem> {
        let mut lines: Vec<(&String, &Line)> = self.lines.iter().collect();
        lines.sort_by_key(|(_, l)| l.n);
        lines
            .into_iter()
            .map(|(sku, l)| LineItem {
                sku: sku.clone(),
                quantity: l.q,
                unit_price: Some(Money {
                    amount_minor: l.p,
                    currency: l.c.clone(),
                }),
            })
            .collect()
    }

    /// The total in minor units (checked: a cart cannot overflow into a wrong total).
    pub fn total(&self) -> Result<Money, ServiceError> {
        let mut total: i64 = 0;
        let mut currency = String::new();
        for l in self.lines.values() {
            total =
                l.p.checked_mul(i64::from(l.q))
                    .and_then(|x| total.checked_add(x))
                    .ok_or_else(|| {
                        ServiceError::FailedPrecondition("the cart total overflows".into())
                    })?;
            currency.clone_from(&l.c);
        }
        Ok(Money {
            amount_minor: total,
            currency,
        })
    }

    /// The idempotency key of this cart's checkout: the same session and version always place
    /// the same order, so a double submit (or a retry after a crash) makes one order.
    pub fn checkout_key(session: &str, version: u64) -> String {
        format!("cart:{session}:v{version}")
    }
}

/// Limits on a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_lines: u32,
    pub max_quantity: u32,
    /// Sliding time to live: every read and write starts it again.
    pub ttl_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_lines: 50,
            max_quantity: 99,
            ttl_secs: 3600,
        }
    }
}

/// A session id: 1 to 128 characters of `[A-Za-z0-9_-]` (it becomes part of a Redis key).
/// A session id: the caller's key for the cart ([`shop_core::fields::key`], 1 to 128 bytes).
pub fn session_id(raw: &str) -> Result<&str, ServiceError> {
    shop_core::fields::key("session_id", raw, shop_core::fields::MAX_ID)?;
    Ok(raw)
}

/// A SKU, by the rule every service shares.
pub fn sku(raw: &str) -> Result<&str, ServiceError> {
    shop_core::fields::Sku::parse("sku", raw)?;
    Ok(raw.trim())
}

pub fn quantity(q: u32, limits: &Limits) -> Result<u32, ServiceError> {
    if q == 0 || q > limits.max_quantity {
        return Err(ServiceError::invalid(
            "quantity",
            format!("must be 1 to {}", limits.max_quantity),
        ));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_the_order_they_were_added_in_and_total_in_minor_units() {
        let cart: Cart = serde_json::from_str(
            r#"{"v":3,"seq":2,"lines":{"b":{"q":2,"p":250,"c":"EUR","n":1},"a":{"q":1,"p":1000,"c":"EUR","n":2}}}"#,
        )
        .unwrap();
        let skus: Vec<String> = cart.items().into_iter().map(|i| i.sku).collect();
        assert_eq!(skus, ["b", "a"]);
        assert_eq!(cart.total().unwrap().amount_minor, 1500);
        // An empty cart as Lua writes it.
        let empty: Cart = serde_json::from_str(r#"{"v":1,"seq":1,"lines":{}}"#).unwrap();
        assert!(empty.items().is_empty());
    }

    #[test]
    fn bad_input_names_the_field() {
        let field = |e: ServiceError| match e {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(session_id("a b").unwrap_err()), "session_id");
        assert_eq!(field(session_id("").unwrap_err()), "session_id");
        assert_eq!(field(sku(" ").unwrap_err()), "sku");
        assert_eq!(
            field(quantity(0, &Limits::default()).unwrap_err()),
            "quantity"
        );
        assert_eq!(
            field(quantity(100, &Limits::default()).unwrap_err()),
            "quantity"
        );
        assert_eq!(quantity(99, &Limits::default()).unwrap(), 99);
    }

    #[test]
    fn the_checkout_key_is_per_session_and_version() {
        assert_eq!(Cart::checkout_key("s1", 4), "cart:s1:v4");
        assert_ne!(Cart::checkout_key("s1", 4), Cart::checkout_key("s1", 5));
    }
}
