//! Payment's domain: money in integer minor units. No I/O.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Largest amount one charge or account may hold: 10^12 minor units (10 billion dollars).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// An amount of money: integer minor units and an ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: [u8; 3],
}

impl Money {
    /// Parses a protobuf `Money`; `positive` requires more than zero (charges), else zero is fine
    /// (opening balances).
    pub fn parse(
        field: &str,
        m: Option<&shop_proto::common::Money>,
        positive: bool,
    ) -> Result<Self, Invalid> {
        let m = m.ok_or_else(|| invalid(field, "is required"))?;
        let code = m.currency.as_bytes();
        let currency: [u8; 3] = code
            .try_into()
            .ok()
            .filter(|c: &[u8; 3]| c.iter().all(u8::is_ascii_uppercase))
            .ok_or_else(|| {
                invalid(
                    &format!("{field}.currency"),
                    "must be a 3-letter ISO 4217 code, e.g. USD",
                )
            })?;
        if m.amount_minor < 0 || (positive && m.amount_minor == 0) {
            let bound = if positive { "positive" } else { "zero or more" };
            return Err(invalid(
                &format!("{field}.amount_minor"),
                format!("must be {bound}"),
            ));
        }
        if m.amount_minor > MAX_AMOUNT {
            return Err(invalid(
                &format!("{field}.amount_minor"),
                format!("must be at most {MAX_AMOUNT}"),
            ));
        }
        Ok(Self {
            minor: m.amount_minor,
            currency,
        })
    }

    pub fn currency(&self) -> &str {
        std::str::from_utf8(&self.currency).unwrap_or("???")
    }

    pub fn to_proto(self) -> shop_proto::common::Money {
        shop_proto::common::Money {
            amount_minor: self.minor,
            currency: self.currency().to_owned(),
        }
    }
}

/// Where a charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Charged,
    Declined,
    Refunded,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charged => "charged",
            Self::Declined => "declined",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "charged" => Self::Charged,
            "declined" => Self::Declined,
            "refunded" => Self::Refunded,
            _ => return None,
        })
    }
}

/// Whether `balance` covers `amount`; the decline reason if not.
pub fn decide_charge(balance: i64, amount: i64) -> Result<i64, String> {
    balance
        .checked_sub(amount)
        .filter(|left| *left >= 0)
        .ok_or_else(|| format!("insufficient funds: {amount} needed, {balance} available"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn money(amount_minor: i64, currency: &str) -> shop_proto::common::Money {
        shop_proto::common::Money {
            amount_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn bad_money_names_the_field() {
        assert_eq!(
            Money::parse("amount", None, true).unwrap_err().field,
            "amount"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(5, "usd")), true)
                .unwrap_err()
                .field,
            "amount.currency"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(0, "USD")), true)
                .unwrap_err()
                .field,
            "amount.amount_minor"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(-1, "USD")), false)
                .unwrap_err()
                .field,
            "amount.amount_minor"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(0, "USD")), false)
                .unwrap()
                .minor,
            0
        );
    }

    proptest! {
        /// Charges never take a balance below zero, and the ledger adds up: every accepted
        /// charge moves exactly its amount.
        #[test]
        fn charges_never_overdraw_and_the_ledger_adds_up(
            opening in 0i64..1_000_000,
            amounts in proptest::collection::vec(1i64..100_000, 0..50),
        ) {
            let mut balance = opening;
            let mut moved = 0i64;
            for a in amounts {
                match decide_charge(balance, a) {
                    Ok(left) => { prop_assert_eq!(left, balance - a); moved -= a; balance = left; }
                    Err(_) => prop_assert!(balance < a),
                }
                prop_assert!(balance >= 0);
            }
            prop_assert_eq!(balance, opening + moved);
        }
    }
}
