//! A new order, validated. Money is integer minor units; the total is computed with checked
//! arithmetic, so an overflowing order is refused rather than wrapped.

use shop_core::ServiceError;
use shop_proto::{
    common::{Address, LineItem, Money},
    order::PlaceOrderRequest,
};

pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: u32 = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub idempotency_key: String,
    pub tenant_id: String,
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub shipping_address: Address,
    pub payment_account_id: String,
    /// Fingerprint of the request: the same key with another request is refused.
    pub fingerprint: String,
}

fn text(field: &str, value: &str, max: usize) -> Result<String, ServiceError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ServiceError::invalid(field, "is required"));
    }
    if v.len() > max {
        return Err(ServiceError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    Ok(v.to_owned())
}

impl NewOrder {
    pub fn parse(r: &PlaceOrderRequest) -> Result<Self, ServiceError> {
        let idempotency_key = text("idempotency_key", &r.idempotency_key, 200)?;
        let tenant_id = text("tenant_id", &r.tenant_id, 64)?;
        let customer_id = text("customer_id", &r.customer_id, 128)?;
        let payment_account_id = text("payment_account_id", &r.payment_account_id, 128)?;
        let shipping_address = r
            .shipping_address
            .clone()
            .ok_or_else(|| ServiceError::invalid("shipping_address", "is required"))?;
        if r.items.is_empty() {
            return Err(ServiceError::invalid("items", "must not be empty"));
        }
        if r.items.len() > MAX_LINES {
            return Err(ServiceError::invalid(
                "items",
                format!("has more than {MAX_LINES} lines"),
            ));
        }
        let mut currency: Option<String> = None;
        let mut total: i64 = 0;
        let mut items = Vec::with_capacity(r.items.len());
        for (i, item) in r.items.iter().enumerate() {
            let sku = text(&format!("items[{i}].sku"), &item.sku, 64)?;
            if item.quantity == 0 || item.quantity > MAX_QUANTITY {
                return Err(ServiceError::invalid(
                    format!("items[{i}].quantity"),
                    format!("must be 1 to {MAX_QUANTITY}"),
                ));
            }
            let price = item.unit_price.as_ref().ok_or_else(|| {
                ServiceError::invalid(format!("items[{i}].unit_price"), "is required")
            })?;
            if price.amount_minor < 0 {
                return Err(ServiceError::invalid(
                    format!("items[{i}].unit_price.amount_minor"),
                    "must not be negative",
                ));
            }
            if price.currency.len() != 3 || !price.currency.chars().all(|c| c.is_ascii_uppercase())
            {
                return Err(ServiceError::invalid(
                    format!("items[{i}].unit_price.currency"),
                    "must be a 3-letter ISO 4217 code, e.g. USD",
                ));
            }
            match &currency {
                None => currency = Some(price.currency.clone()),
                Some(c) if *c != price.currency => {
                    return Err(ServiceError::invalid(
                        format!("items[{i}].unit_price.currency"),
                        format!("differs from the order's currency {c}"),
                    ));
                }
                Some(_) => {}
            }
            total = price
                .amount_minor
                .checked_mul(i64::from(item.quantity))
                .and_then(|line| total.checked_add(line))
                .ok_or_else(|| {
                    ServiceError::invalid(format!("items[{i}]"), "the order total overflows")
                })?;
            items.push(LineItem {
                sku,
                quantity: item.quantity,
                unit_price: Some(price.clone()),
            });
        }
        let fingerprint = fingerprint(&prost::Message::encode_to_vec(r));
        Ok(Self {
            idempotency_key,
            tenant_id,
            customer_id,
            items,
            total: Money {
                amount_minor: total,
                currency: currency.unwrap_or_default(),
            },
            shipping_address,
            payment_account_id,
            fingerprint,
        })
    }
}

/// FNV-1a 64 of the encoded request, hex.
fn fingerprint(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PlaceOrderRequest {
        PlaceOrderRequest {
            idempotency_key: "k1".into(),
            tenant_id: "acme".into(),
            customer_id: "c1".into(),
            items: vec![
                LineItem {
                    sku: "a".into(),
                    quantity: 2,
                    unit_price: Some(Money {
                        amount_minor: 250,
                        currency: "USD".into(),
                    }),
                },
                LineItem {
                    sku: "b".into(),
                    quantity: 1,
                    unit_price: Some(Money {
                        amount_minor: 1000,
                        currency: "USD".into(),
                    }),
                },
            ],
            shipping_address: Some(Address {
                country: "DE".into(),
                ..Default::default()
            }),
            payment_account_id: "acc".into(),
        }
    }

    #[test]
    fn the_total_is_the_sum_of_lines_in_minor_units() {
        let o = NewOrder::parse(&request()).unwrap();
        assert_eq!(
            o.total,
            Money {
                amount_minor: 1500,
                currency: "USD".into()
            }
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |r: PlaceOrderRequest| match NewOrder::parse(&r).unwrap_err() {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        let mut r = request();
        r.idempotency_key = " ".into();
        assert_eq!(field(r), "idempotency_key");
        let mut r = request();
        r.items[1].quantity = 0;
        assert_eq!(field(r), "items[1].quantity");
        let mut r = request();
        r.items[1].unit_price = Some(Money {
            amount_minor: 1,
            currency: "EUR".into(),
        });
        assert_eq!(field(r), "items[1].unit_price.currency");
        let mut r = request();
        r.items[0].unit_price = Some(Money {
            amount_minor: i64::MAX,
            currency: "USD".into(),
        });
        assert_eq!(field(r), "items[0]");
        let mut r = request();
        r.shipping_address = None;
        assert_eq!(field(r), "shipping_address");
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let a = NewOrder::parse(&request()).unwrap().fingerprint;
        let mut other = request();
        other.items[0].quantity = 3;
        assert_ne!(a, NewOrder::parse(&other).unwrap().fingerprint);
        assert_eq!(a, NewOrder::parse(&request()).unwrap().fingerprint);
    }
}
