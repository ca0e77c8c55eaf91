//! Payment's domain: money in integer minor units. No I/O.

pub use shop_core::fields::{Amount, Currency, Invalid, MAX_AMOUNT, Money};

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
            Money::parse("amount", None, Amount::Positive)
                .unwrap_err()
                .field,
            "amount"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(5, "usd")), Amount::Positive)
                .unwrap_err()
                .field,
            "amount.currency"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(0, "USD")), Amount::Positive)
                .unwrap_err()
                .field,
            "amount.amount_minor"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(-1, "USD")), Amount::NonNegative)
                .unwrap_err()
                .field,
            "amount.amount_minor"
        );
        assert_eq!(
            Money::parse("amount", Some(&money(0, "USD")), Amount::NonNegative)
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
