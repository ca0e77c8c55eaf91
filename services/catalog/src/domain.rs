//! A product, validated. Money is integer minor units. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shop_core::{
    ServiceError,
    fields::{self, Amount},
};
use shop_proto::{catalog::Product as ProductProto, common::Money};

pub const MAX_ATTRIBUTES: usize = 50;

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

impl Product {
    /// The writable fields of `p` (stock and version are the service's).
    pub fn parse(p: Option<&ProductProto>) -> Result<Self, ServiceError> {
        let p = p.ok_or_else(|| ServiceError::invalid("product", "is required"))?;
        // A product on sale has a price an order can be placed at (PlaceOrder refuses zero).
        let price = fields::Money::parse("product.price", p.price.as_ref(), Amount::Positive)?;
        if p.attributes.len() > MAX_ATTRIBUTES {
            return Err(ServiceError::invalid(
                "product.attributes",
                format!("has more than {MAX_ATTRIBUTES} entries"),
            ));
        }
        let mut attributes = BTreeMap::new();
        for (k, v) in &p.attributes {
            let key = fields::text("product.attributes", k, 64)?;
            let value = fields::optional_text(&format!("product.attributes[{key}]"), v, 256)?;
            attributes.insert(key, value);
        }
        Ok(Self {
            sku: fields::Sku::parse("product.sku", &p.sku)?.into_string(),
            name: fields::text("product.name", &p.name, 200)?,
            description: fields::prose("product.description", &p.description, 5_000)?,
            category: fields::text("product.category", &p.category, 64)?,
            price_minor: price.minor,
            currency: price.currency().to_owned(),
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
