use proptest::prelude::*;

use super::*;

fn field(r: Result<impl std::fmt::Debug>) -> String {
    r.expect_err("should be invalid").field
}

#[test]
fn every_rule_names_the_field() {
    assert_eq!(field(TenantId::parse("tenant_id", "")), "tenant_id");
    assert_eq!(field(TenantId::parse("tenant_id", "a b")), "tenant_id");
    assert_eq!(field(Sku::parse("items[1].sku", "a\0b")), "items[1].sku");
    assert_eq!(field(key("customer_id", "c 1", MAX_ID)), "customer_id");
    assert_eq!(field(text("line1", "a\0", 10)), "line1");
    assert_eq!(field(text("line1", &"x".repeat(11), 10)), "line1");
    assert_eq!(field(uuid("order_id", "nope")), "order_id");
    assert_eq!(field(quantity("quantity", 0, 10)), "quantity");
    assert_eq!(field(country("address.country", "DEU")), "address.country");
    let money = |amount_minor, currency: &str| common::Money {
        amount_minor,
        currency: currency.into(),
    };
    assert_eq!(
        field(Money::parse(
            "price",
            Some(&money(0, "EUR")),
            Amount::Positive
        )),
        "price.amount_minor"
    );
    assert_eq!(
        field(Money::parse(
            "price",
            Some(&money(1, "eur")),
            Amount::Positive
        )),
        "price.currency"
    );
    assert_eq!(
        field(Money::parse(
            "price",
            Some(&money(MAX_AMOUNT + 1, "EUR")),
            Amount::NonNegative
        )),
        "price.amount_minor"
    );
}

#[test]
fn accepted_values_are_trimmed_and_kept() {
    assert_eq!(Sku::parse("sku", " a-1.B_ ").unwrap().as_str(), "a-1.B_");
    assert_eq!(prose("d", "two\nlines\t", 100).unwrap(), "two\nlines");
    assert_eq!(optional_text("line2", "", 10).unwrap(), "");
    let m = common::Money {
        amount_minor: 0,
        currency: "USD".into(),
    };
    assert_eq!(
        Money::parse("balance", Some(&m), Amount::NonNegative)
            .unwrap()
            .to_proto(),
        m
    );
}

fn store_safe(s: &str, max: usize) -> bool {
    s.len() <= max
        && !s.contains('\0')
        && !s
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
}

proptest! {
    /// Whatever the input, a value that parses is one every store can hold: bounded, no NUL.
    #[test]
    fn whatever_parses_is_bounded_and_free_of_control_characters(s in arbitrary::string()) {
        for (parsed, max) in [
            (TenantId::parse("f", &s).map(TenantId::into_string), MAX_TENANT_ID),
            (Sku::parse("f", &s).map(Sku::into_string), MAX_SKU),
            (key("f", &s, MAX_ID), MAX_ID),
            (text("f", &s, MAX_ADDRESS_LINE), MAX_ADDRESS_LINE),
            (optional_text("f", &s, MAX_CITY), MAX_CITY),
            (prose("f", &s, 5_000), 5_000),
            (country("f", &s), 2),
            (page_token("f", &s).map(str::to_owned), MAX_PAGE_TOKEN),
        ] {
            match parsed {
                Ok(v) => prop_assert!(store_safe(&v, max), "{v:?}"),
                Err(e) => prop_assert_eq!(e.field, "f"),
            }
        }
    }

    #[test]
    fn money_that_parses_is_within_bounds(m in arbitrary::money()) {
        if let Ok(v) = Money::parse("m", m.as_ref(), Amount::Positive) {
            prop_assert!((1..=MAX_AMOUNT).contains(&v.minor));
            prop_assert_eq!(v.currency().len(), 3);
        }
    }
}
