//! A new order, validated. Money is integer minor units; the total is computed with checked
//! arithmetic, so an overflowing order is refused rather than wrapped.

use shop_core::{ServiceError, fields};
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

impl NewOrder {
    /// Validates with the same rules the participants apply later (one layer,
    /// [`shop_core::fields`]): an order this accepts is one inventory, payment and shipping can
    /// act on, or refuse only for a business reason (stock, funds, zone).
    pub fn parse(r: &PlaceOrderRequest) -> Result<Self, ServiceError> {
        let idempotency_key = fields::key(
            "idempotency_key",
            &r.idempotency_key,
            fields::MAX_IDEMPOTENCY_KEY,
        )?;
        let tenant_id = fields::TenantId::parse("tenant_id", &r.tenant_id)?.into_string();
        let customer_id = fields::key("customer_id", &r.customer_id, fields::MAX_ID)?;
        let payment_account_id =
            fields::key("payment_account_id", &r.payment_account_id, fields::MAX_ID)?;
        let shipping_address = fields::address("shipping_address", r.shipping_address.as_ref())?;
        if r.items.is_empty() {
            return Err(ServiceError::invalid("items", "must not be empty"));
        }
        if r.items.len() > MAX_LINES {
            return Err(ServiceError::invalid(
                "items",
                format!("has more than {MAX_LINES} lines"),
            ));
        }
        let mut currency: Option<fields::Currency> = None;
        let mut total: i64 = 0;
        let mut items = Vec::with_capacity(r.items.len());
        for (i, item) in r.items.iter().enumerate() {
            let line = fields::Line::parse(&format!("items[{i}]"), item, MAX_QUANTITY)?;
            let price = line.unit_price;
            match currency {
                None => currency = Some(price.currency),
                Some(c) if c != price.currency => {
                    return Err(ServiceError::invalid(
                        format!("items[{i}].unit_price.currency"),
                        format!("differs from the order's currency {}", c.as_str()),
                    ));
                }
                Some(_) => {}
            }
            // Payment charges at most MAX_AMOUNT: a larger order could never be paid.
            total = price
                .minor
                .checked_mul(i64::from(line.quantity))
                .and_then(|line| total.checked_add(line))
                .filter(|t| *t <= fields::MAX_AMOUNT)
                .ok_or_else(|| {
                    ServiceError::invalid(
                        format!("items[{i}]"),
                        format!("the order total exceeds {} minor units", fields::MAX_AMOUNT),
                    )
                })?;
            items.push(line.to_proto());
        }
        let fingerprint = fingerprint(&prost::Message::encode_to_vec(r));
        Ok(Self {
            idempotency_key,
            tenant_id,
            customer_id,
            items,
            total: Money {
                amount_minor: total,
                currency: currency.map(|c| c.as_str().to_owned()).unwrap_or_default(),
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
                name: "Ada".into(),
                line1: "1 Main St".into(),
                line2: String::new(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
            payment_account_id: "acc".into(),
            ..Default::default()
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
            amount_minor: fields::MAX_AMOUNT,
            currency: "USD".into(),
        });
        assert_eq!(field(r), "items[0]");
        let mut r = request();
        r.shipping_address = None;
        assert_eq!(field(r), "shipping_address");
    }

    /// What review and outside testing sent: each used to be accepted (or reach PostgreSQL and
    /// come back INTERNAL) and is now refused at the edge with the participants' own rules.
    #[test]
    fn requests_a_participant_would_refuse_later_are_refused_at_the_edge() {
        let field = |r: PlaceOrderRequest| match NewOrder::parse(&r).unwrap_err() {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        let mut r = request();
        r.items[0].unit_price.as_mut().unwrap().amount_minor = 0;
        assert_eq!(field(r), "items[0].unit_price.amount_minor");
        for country in ["", "DEU", "de"] {
            let mut r = request();
            r.shipping_address.as_mut().unwrap().country = country.into();
            assert_eq!(field(r), "shipping_address.country");
        }
        let mut r = request();
        r.items[1].sku = "b/1".into();
        assert_eq!(field(r), "items[1].sku");
        let mut r = request();
        r.customer_id = "c\0".into();
        assert_eq!(field(r), "customer_id");
        let mut r = request();
        r.shipping_address.as_mut().unwrap().line1 = "x".repeat(1 << 20);
        assert_eq!(field(r), "shipping_address.line1");
        let mut r = request();
        r.tenant_id = "t".repeat(1 << 20);
        assert_eq!(field(r), "tenant_id");
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
