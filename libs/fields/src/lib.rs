//! # shop-fields: one validation layer for every edge
//!
//! Every value that enters a service (a gRPC request field, or a field of a Kafka command it
//! acts on) is parsed here, once, by a constructor that either returns a value the stores can
//! always hold or an [`Invalid`] naming the field. Services never check a string by hand.
//!
//! What a parsed value guarantees, whatever the input:
//! - no NUL and no other control character (PostgreSQL refuses NUL in `text`, and a NUL is
//!   never meaningful in a name or an id); [`prose`] alone keeps `\n`, `\r` and `\t`;
//! - a length bound in bytes of UTF-8 (the limits below), so no id overflows an index row
//!   (PostgreSQL's ~2.7 kB B-tree entry), a ClickHouse query, or a Kafka message;
//! - money in integer minor units within [`MAX_AMOUNT`], currencies and countries in their ISO
//!   shape.
//!
//! ## The limits (also in the `.proto` comments)
//!
//! | field | rule |
//! |---|---|
//! | `tenant_id`, `sku` | 1-64 bytes of `A-Z a-z 0-9 . _ -` |
//! | `customer_id`, `account_id`, `payment_account_id`, `session_id` | 1-128 bytes, no whitespace or control characters |
//! | `idempotency_key` | 1-200 bytes, no whitespace or control characters |
//! | address `name`, `line1`, `line2` (optional) | at most 200 bytes |
//! | address `city` / `postal_code` | at most 100 / 20 bytes |
//! | address `country` | ISO 3166-1 alpha-2, e.g. `DE` |
//! | money | `amount_minor` 0 (or 1) to 10^12, `currency` ISO 4217, e.g. `EUR` |
//! | product `name` / `category` / `description` | 200 / 64 / 5,000 bytes |
//! | product attribute key / value | 64 / 256 bytes, at most 50 attributes |
//! | search `query` | at most 200 bytes |
//! | saga `reason` | at most 500 bytes |
//! | `page_token` | at most 512 bytes |
//! | profile `region` | 1-16 bytes of `A-Z a-z 0-9 . _ -` |
//! | profile field name / value | 1-64 bytes of `A-Z a-z 0-9 . _ -` / at most 1,000 bytes |
//! | ids the platform issues (`order_id`, `saga_id`, `shipment_id`) | a UUID |

use std::fmt;

use shop_proto::common;

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;

/// A field that failed its rule. `field` is the protobuf field path, e.g. `items[2].sku`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A client's mistake: INVALID_ARGUMENT with the field named (the same text
/// `shop_core::ServiceError::InvalidArgument` gives).
impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Invalid>;

/// Largest amount of money anything holds: 10^12 minor units (ten billion in a 2-decimal
/// currency). Sums of at most a few thousand of these stay far inside `i64`.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
pub const MAX_TENANT_ID: usize = 64;
pub const MAX_SKU: usize = 64;
pub const MAX_ID: usize = 128;
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
pub const MAX_ADDRESS_LINE: usize = 200;
pub const MAX_CITY: usize = 100;
pub const MAX_POSTAL_CODE: usize = 20;
pub const MAX_PAGE_TOKEN: usize = 512;
pub const MAX_REASON: usize = 500;
pub const MAX_QUERY: usize = 200;
pub const MAX_REGION: usize = 16;
pub const MAX_FIELD_NAME: usize = 64;
pub const MAX_FIELD_VALUE: usize = 1_000;

fn too_long(field: &str, max: usize) -> Invalid {
    Invalid::new(field, format!("is longer than {max} bytes"))
}

fn checked(field: &str, raw: &str, max: usize, allowed_control: &[char]) -> Result<String> {
    let v = raw.trim();
    if v.len() > max {
        return Err(too_long(field, max));
    }
    if v.chars()
        .any(|c| c.is_control() && !allowed_control.contains(&c))
    {
        return Err(Invalid::new(
            field,
            "must not contain control characters (such as NUL)",
        ));
    }
    Ok(v.to_owned())
}

/// A required line of text (a name, a city): trimmed, 1 to `max` bytes, no control characters.
pub fn text(field: &str, raw: &str, max: usize) -> Result<String> {
    let v = checked(field, raw, max, &[])?;
    if v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    Ok(v)
}

/// An optional line of text: like [`text`], but may be empty.
pub fn optional_text(field: &str, raw: &str, max: usize) -> Result<String> {
    checked(field, raw, max, &[])
}

/// Optional free text over several lines (a description): `\n`, `\r` and `\t` are kept.
pub fn prose(field: &str, raw: &str, max: usize) -> Result<String> {
    checked(field, raw, max, &['\n', '\r', '\t'])
}

/// A caller-chosen identifier (customer, account, session, idempotency key): 1 to `max` bytes,
/// no whitespace and no control characters. Not trimmed: an id is exactly what was sent.
pub fn key(field: &str, raw: &str, max: usize) -> Result<String> {
    if raw.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if raw.len() > max {
        return Err(too_long(field, max));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// An id the platform issued: a UUID.
pub fn uuid(field: &str, raw: &str) -> Result<uuid::Uuid> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if v.len() > 64 {
        return Err(Invalid::new(field, "must be a UUID"));
    }
    uuid::Uuid::parse_str(v).map_err(|_| Invalid::new(field, "must be a UUID"))
}

/// An opaque page token: empty (the first page) or at most [`MAX_PAGE_TOKEN`] bytes. Its meaning
/// is the issuing service's; this only bounds it.
pub fn page_token<'a>(field: &str, raw: &'a str) -> Result<&'a str> {
    if raw.len() > MAX_PAGE_TOKEN || raw.chars().any(char::is_control) {
        return Err(Invalid::new(field, "is not a token this service issued"));
    }
    Ok(raw)
}

/// A count of units: 1 to `max`.
pub fn quantity(field: &str, raw: u32, max: u32) -> Result<u32> {
    if raw == 0 || raw > max {
        return Err(Invalid::new(field, format!("must be 1 to {max}")));
    }
    Ok(raw)
}

/// `A-Z a-z 0-9 . _ -`, 1 to `max` bytes.
fn code_chars(field: &str, raw: &str, max: usize) -> Result<String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if v.len() > max {
        return Err(too_long(field, max));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Invalid::new(
            field,
            "may only contain letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(v.to_owned())
}

macro_rules! code {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(field: &str, raw: &str) -> Result<Self> {
                code_chars(field, raw, $max).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

code!(
    /// A tenant: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
    TenantId,
    MAX_TENANT_ID
);
code!(
    /// A stock-keeping unit: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
    Sku,
    MAX_SKU
);
code!(
    /// A region (a replica of the profiles): 1 to 16 bytes of `A-Z a-z 0-9 . _ -`.
    Region,
    MAX_REGION
);
code!(
    /// The name of a profile field: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
    FieldName,
    MAX_FIELD_NAME
);

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// ISO 4217's code for "no currency involved".
    pub const NONE: Currency = Currency(*b"XXX");

    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        raw.as_bytes()
            .try_into()
            .ok()
            .filter(|c: &[u8; 3]| c.iter().all(u8::is_ascii_uppercase))
            .map(Self)
            .ok_or_else(|| Invalid::new(field, "must be a 3-letter ISO 4217 code, e.g. EUR"))
    }

    pub fn as_str(&self) -> &str {
        // Three ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

/// Whether zero is an amount this field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// More than zero: a charge, a price.
    Positive,
    /// Zero or more: an opening balance.
    NonNegative,
}

/// An amount of money: integer minor units, 0 to [`MAX_AMOUNT`], and its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn parse(field: &str, m: Option<&common::Money>, amount: Amount) -> Result<Self> {
        let m = m.ok_or_else(|| Invalid::new(field, "is required"))?;
        let currency = Currency::parse(&format!("{field}.currency"), &m.currency)?;
        let low = i64::from(amount == Amount::Positive);
        if !(low..=MAX_AMOUNT).contains(&m.amount_minor) {
            return Err(Invalid::new(
                format!("{field}.amount_minor"),
                format!("must be {low} to {MAX_AMOUNT}"),
            ));
        }
        Ok(Self {
            minor: m.amount_minor,
            currency,
        })
    }

    pub fn currency(&self) -> &str {
        self.currency.as_str()
    }

    pub fn to_proto(self) -> common::Money {
        common::Money {
            amount_minor: self.minor,
            currency: self.currency().to_owned(),
        }
    }
}

/// An ISO 3166-1 alpha-2 country code: two upper-case letters.
pub fn country(field: &str, raw: &str) -> Result<String> {
    let v = raw.trim();
    if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid::new(
            field,
            "must be an ISO 3166-1 alpha-2 code, e.g. DE",
        ));
    }
    Ok(v.to_owned())
}

/// A postal address in the shape every service accepts: name, line1, city and postal code
/// required, line2 optional, a country code. Returned trimmed. (Where a carrier ships is
/// shipping's rule, not a format rule.)
pub fn address(field: &str, a: Option<&common::Address>) -> Result<common::Address> {
    let a = a.ok_or_else(|| Invalid::new(field, "is required"))?;
    let f = |name: &str| format!("{field}.{name}");
    Ok(common::Address {
        name: text(&f("name"), &a.name, MAX_ADDRESS_LINE)?,
        line1: text(&f("line1"), &a.line1, MAX_ADDRESS_LINE)?,
        line2: optional_text(&f("line2"), &a.line2, MAX_ADDRESS_LINE)?,
        city: text(&f("city"), &a.city, MAX_CITY)?,
        postal_code: text(&f("postal_code"), &a.postal_code, MAX_POSTAL_CODE)?,
        country: country(&f("country"), &a.country)?,
    })
}

/// An order line as the order service and its participants accept it: a SKU, 1 to
/// `max_quantity` units, a positive unit price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
}

impl Line {
    /// `field` is the line's path, e.g. `items[2]`.
    pub fn parse(field: &str, item: &common::LineItem, max_quantity: u32) -> Result<Self> {
        Ok(Self {
            sku: Sku::parse(&format!("{field}.sku"), &item.sku)?,
            quantity: quantity(&format!("{field}.quantity"), item.quantity, max_quantity)?,
            unit_price: Money::parse(
                &format!("{field}.unit_price"),
                item.unit_price.as_ref(),
                Amount::Positive,
            )?,
        })
    }

    pub fn to_proto(&self) -> common::LineItem {
        common::LineItem {
            sku: self.sku.as_str().to_owned(),
            quantity: self.quantity,
            unit_price: Some(self.unit_price.to_proto()),
        }
    }
}

#[cfg(test)]
mod tests;
