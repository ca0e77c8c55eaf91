//! Inventory's domain types. No I/O.

use std::collections::BTreeMap;

/// Most distinct SKUs in one reservation.
pub const MAX_LINES: usize = 100;
/// Most units of one SKU in one reservation or restock.
pub const MAX_QUANTITY: i64 = 1_000_000;

pub use shop_core::fields::{Invalid, Sku};

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

/// A positive number of units, at most [`MAX_QUANTITY`].
pub fn quantity(field: &str, raw: u32) -> Result<i64, Invalid> {
    shop_core::fields::quantity(field, raw, MAX_QUANTITY as u32).map(i64::from)
}

/// What one reservation asks for: distinct SKUs in ascending order (the order rows are locked
/// in), quantities summed when a SKU appears on several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub lines: Vec<(Sku, i64)>,
}

impl Request {
    pub fn parse(items: &[shop_proto::common::LineItem]) -> Result<Self, Invalid> {
        if items.is_empty() {
            return Err(invalid("items", "must not be empty"));
        }
        let mut merged: BTreeMap<Sku, i64> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let sku = Sku::parse(&format!("items[{i}].sku"), &item.sku)?;
            let q = quantity(&format!("items[{i}].quantity"), item.quantity)?;
            let total = merged.entry(sku).or_insert(0);
            *total += q;
            if *total > MAX_QUANTITY {
                return Err(invalid(
                    format!("items[{i}].quantity"),
                    format!("sums to more than {MAX_QUANTITY}"),
                ));
            }
        }
        if merged.len() > MAX_LINES {
            return Err(invalid(
                "items",
                format!("has more than {MAX_LINES} distinct SKUs"),
            ));
        }
        Ok(Self {
            lines: merged.into_iter().collect(),
        })
    }

    /// Why this request cannot be met from `available` (units on hand per SKU), if it cannot.
    pub fn shortfall(&self, available: &BTreeMap<String, i64>) -> Option<String> {
        self.lines
            .iter()
            .find_map(|(sku, wanted)| match available.get(sku.as_str()) {
                None => Some(format!("unknown sku {}", sku.as_str())),
                Some(have) if have < wanted => Some(format!(
                    "insufficient stock for {}: {wanted} wanted, {have} available",
                    sku.as_str()
                )),
                Some(_) => None,
            })
    }
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Reserved,
    Rejected,
    Released,
    Committed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Rejected => "rejected",
            Self::Released => "released",
            Self::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserved" => Self::Reserved,
            "rejected" => Self::Rejected,
            "released" => Self::Released,
            "committed" => Self::Committed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_proto::common::LineItem;

    fn item(sku: &str, quantity: u32) -> LineItem {
        LineItem {
            sku: sku.into(),
            quantity,
            unit_price: None,
        }
    }

    #[test]
    fn lines_are_merged_per_sku_and_sorted() {
        let r = Request::parse(&[item("b", 1), item("a", 2), item("b", 3)]).unwrap();
        let lines: Vec<_> = r.lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        assert_eq!(lines, vec![("a", 2), ("b", 4)]);
    }

    #[test]
    fn bad_lines_name_the_field() {
        assert_eq!(
            Request::parse(&[item("a", 1), item("", 1)])
                .unwrap_err()
                .field,
            "items[1].sku"
        );
        assert_eq!(
            Request::parse(&[item("a", 0)]).unwrap_err().field,
            "items[0].quantity"
        );
        assert_eq!(
            Request::parse(&[item("a b", 1)]).unwrap_err().field,
            "items[0].sku"
        );
        assert_eq!(Request::parse(&[]).unwrap_err().field, "items");
    }

    #[test]
    fn shortfall_names_the_first_sku_that_cannot_be_met() {
        let r = Request::parse(&[item("a", 2), item("b", 5)]).unwrap();
        let have: BTreeMap<String, i64> = [("a".into(), 2), ("b".into(), 4)].into();
        assert_eq!(
            r.shortfall(&have).unwrap(),
            "insufficient stock for b: 5 wanted, 4 available"
        );
        let have: BTreeMap<String, i64> = [("a".into(), 9)].into();
        assert_eq!(r.shortfall(&have).unwrap(), "unknown sku b");
        let have: BTreeMap<String, i64> = [("a".into(), 2), ("b".into(), 5)].into();
        assert_eq!(r.shortfall(&have), None);
    }
}
