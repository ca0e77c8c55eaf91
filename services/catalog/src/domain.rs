//! A product, validated. Money is integer minor units. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shop_core::ServiceError;
use shop_proto::{catalog::Product as ProductProto, common::Money};

pub const MAX_ATTRIBUTES: usize = 50;
/// Prices up to 10^12 minor units (ten billion in a 2-decimal currency).
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_minor: i64,
    pub currency: String,
    pub attributes: BTreeMap<String, String>,
    /// Units available, from inventory's events (not set by catalog writers).
    pub stock: i64,
    pub version: u64,
}

fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String, ServiceError> {
    let v = value.trim();
    if required && v.is_empty() {
        return Err(ServiceError::invalid(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(ServiceError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    Ok(v.to_owned())
}

/// A SKU: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn sku(raw: &str) -> Result<String, ServiceError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ServiceError::invalid(
            "product.sku",
            "must be 1 to 64 characters of letters, digits, '.', '-' or '_'",
        ))
    }
}

impl Product {
    /// The writable fields of `p` (stock and version are the service's).
    pub fn parse(p: Option<&ProductProto>) -> Result<Self, ServiceError> {
        let p = p.ok_or_else(|| ServiceError::invalid("product", "is required"))?;
        let price = p
            .price
            .as_ref()
            .ok_or_else(|| ServiceError::invalid("product.price", "is required"))?;
        if !(0..=MAX_PRICE_MINOR).contains(&price.amount_minor) {
            return Err(ServiceError::invalid(
                "product.price.amount_minor",
                format!("must be 0 to {MAX_PRICE_MINOR}"),
            ));
        }
        if price.currency.len() != 3 || !price.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ServiceError::invalid(
                "product.price.currency",
                "must be a 3-letter ISO 4217 code, e.g. EUR",
            ));
        }
        if p.attributes.len() > MAX_ATTRIBUTES {
            return Err(ServiceError::invalid(
                "product.attributes",
                format!("has more than {MAX_ATTRIBUTES} entries"),
            ));
        }
        let mut attributes = BTreeMap::new();
        for (k, v) in &p.attributes {
            let key = text("product.attributes", k, 64, true)?;
            attributes.insert(
                key,
                text(&format!("product.attributes[{k}]"), v, 256, false)?,
            );
        }
        Ok(Self {
            sku: sku(&p.sku)?,
            name: text("product.name", &p.name, 200, true)?,
            description: text("product.description", &p.description, 5_000, false)?,
            category: text("product.category", &p.category, 64, true)?,
            price_minor: price.amount_minor,
            currency: price.currency.clone(),
            attributes,
            stock: 0,
            version: 0,
        })
    }

    pub fn price(&self) -> Money {
        Money {
            amount_minor: self.price_minor,
            currency: self.currency.clone(),
        }
    }

    pub fn to_proto(&self) -> ProductProto {
        ProductProto {
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category: self.category.clone(),
            price: Some(self.price()),
            attributes: self.attributes.clone().into_iter().collect(),
            stock: self.stock,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto() -> ProductProto {
        ProductProto {
            sku: "mug-1".into(),
            name: " Mug ".into(),
            category: "kitchen".into(),
            price: Some(Money {
                amount_minor: 1250,
                currency: "EUR".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_product_parses_trimmed() {
        let p = Product::parse(Some(&proto())).unwrap();
        assert_eq!(p.name, "Mug");
        assert_eq!(p.price_minor, 1250);
    }

    #[test]
    fn bad_products_name_the_field() {
        let field = |p: ProductProto| match Product::parse(Some(&p)).unwrap_err() {
            ServiceError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        };
        let mut p = proto();
        p.sku = "a b".into();
        assert_eq!(field(p), "product.sku");
        let mut p = proto();
        p.name = "".into();
        assert_eq!(field(p), "product.name");
        let mut p = proto();
        p.price = Some(Money {
            amount_minor: -1,
            currency: "EUR".into(),
        });
        assert_eq!(field(p), "product.price.amount_minor");
        let mut p = proto();
        p.price = Some(Money {
            amount_minor: 1,
            currency: "eur".into(),
        });
        assert_eq!(field(p), "product.price.currency");
        assert!(Product::parse(None).is_err());
    }
}
