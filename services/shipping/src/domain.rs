//! Shipping's domain: address validation and the rules on where we ship. No I/O.

use shop_proto::common::Address;

/// Countries shipped to by default (ISO 3166-1 alpha-2). Anything else is refused by rule, which
/// is how the demo and the tests exercise the saga's compensation path (e.g. `AQ`, Antarctica).
pub const DEFAULT_ZONES: &[&str] = &[
    "AT", "AU", "BE", "CA", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "IE", "IT", "JP", "NL", "NO",
    "NZ", "PL", "PT", "SE", "US",
];

/// Why an address cannot be shipped to: malformed (a field named) or outside the zones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("we do not ship to {0}")]
    OutsideZones(String),
}

impl From<shop_core::fields::Invalid> for Refusal {
    fn from(e: shop_core::fields::Invalid) -> Self {
        Refusal::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

/// Checks `address` (under the protobuf field name `field`) against the format every service
/// shares ([`shop_core::fields::address`]) and then against `zones`.
pub fn check(field: &str, address: Option<&Address>, zones: &[String]) -> Result<(), Refusal> {
    let a = shop_core::fields::address(field, address)?;
    if !zones.contains(&a.country) {
        return Err(Refusal::OutsideZones(a.country));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> Vec<String> {
        DEFAULT_ZONES.iter().map(|z| (*z).to_owned()).collect()
    }

    fn address(country: &str) -> Address {
        Address {
            name: "Ada".into(),
            line1: "1 Main St".into(),
            line2: String::new(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: country.into(),
        }
    }

    #[test]
    fn a_complete_address_in_a_zone_is_accepted() {
        assert_eq!(check("address", Some(&address("DE")), &zones()), Ok(()));
    }

    #[test]
    fn destinations_outside_the_zones_are_refused_by_rule() {
        assert_eq!(
            check("address", Some(&address("AQ")), &zones()),
            Err(Refusal::OutsideZones("AQ".into()))
        );
    }

    #[test]
    fn malformed_addresses_name_the_field() {
        let mut a = address("de");
        assert!(
            matches!(check("address", Some(&a), &zones()), Err(Refusal::Invalid { field, .. }) if field == "address.country")
        );
        a = address("DE");
        a.city = " ".into();
        assert!(
            matches!(check("address", Some(&a), &zones()), Err(Refusal::Invalid { field, .. }) if field == "address.city")
        );
        assert!(
            matches!(check("address", None, &zones()), Err(Refusal::Invalid { field, .. }) if field == "address")
        );
    }
}
