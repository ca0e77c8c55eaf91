//! Payment's SQL. Functions take the caller's connection; the caller owns the transaction.

use sqlx::PgConnection;

use crate::domain::{ChargeStatus, Currency, Money, decide_charge};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Charged now.
    Charged,
    /// Declined now (insufficient funds, unknown account, currency mismatch), recorded.
    Declined(String),
    /// Asked before: the first answer (a refund tombstone declines a late charge).
    AlreadyDecided(ChargeStatus, Option<String>),
}

/// Charges `amount` to `account_id` for `order_id`, once.
pub async fn charge(
    conn: &mut PgConnection,
    order_id: &str,
    account_id: &str,
    amount: Money,
) -> Result<Charge, sqlx::Error> {
    if let Some((status, reason, _)) = charge_status(conn, order_id).await? {
        return Ok(Charge::AlreadyDecided(status, reason));
    }
    let account: Option<(String, i64)> = sqlx::query_as(
        "SELECT currency, balance_minor FROM account WHERE account_id = $1 FOR UPDATE",
    )
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?;
    let decision = match account {
        None => Err(format!("unknown account {account_id}")),
        Some((currency, _)) if currency != amount.currency() => Err(format!(
            "account {account_id} is in {currency}, the charge in {}",
            amount.currency()
        )),
        Some((_, balance)) => decide_charge(balance, amount.minor),
    };
    match decision {
        Err(reason) => {
            insert_charge(
                conn,
                order_id,
                account_id,
                amount,
                ChargeStatus::Declined,
                Some(&reason),
            )
            .await?;
            Ok(Charge::Declined(reason))
        }
        Ok(_) => {
            move_money(conn, account_id, order_id, "charge", -amount.minor).await?;
            insert_charge(
                conn,
                order_id,
                account_id,
                amount,
                ChargeStatus::Charged,
                None,
            )
            .await?;
            Ok(Charge::Charged)
        }
    }
}

/// Refunds the order's charge if there is one; returns the amount given back (0 if nothing was
/// charged). A refund before any charge leaves a tombstone that declines a late charge.
pub async fn refund(conn: &mut PgConnection, order_id: &str) -> Result<Money, sqlx::Error> {
    match charge_status(conn, order_id).await? {
        Some((ChargeStatus::Charged, _, (account_id, amount))) => {
            move_money(conn, &account_id, order_id, "refund", amount.minor).await?;
            sqlx::query(
                "UPDATE charge SET status = 'refunded', updated_at = now() WHERE order_id = $1",
            )
            .bind(order_id)
            .execute(&mut *conn)
            .await?;
            Ok(amount)
        }
        Some((_, _, (_, amount))) => Ok(Money { minor: 0, ..amount }),
        None => {
            let nothing = Money {
                minor: 0,
                currency: Currency::NONE,
            };
            insert_charge(
                conn,
                order_id,
                "",
                nothing,
                ChargeStatus::Refunded,
                Some("refunded before it was charged"),
            )
            .await?;
            Ok(nothing)
        }
    }
}

/// Adds `delta` to the balance (the row is already locked, or is locked here) and records it.
async fn move_money(
    conn: &mut PgConnection,
    account_id: &str,
    order_id: &str,
    kind: &str,
    delta: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE account SET balance_minor = balance_minor + $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO movement (account_id, order_id, kind, amount_minor) VALUES ($1, $2, $3, $4)",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(kind)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}

type ChargeRow = (ChargeStatus, Option<String>, (String, Money));

async fn charge_status(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Option<ChargeRow>, sqlx::Error> {
    let row: Option<(String, Option<String>, String, i64, String)> = sqlx::query_as(
        "SELECT status, reason, account_id, amount_minor, currency FROM charge WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(status, reason, account, minor, currency)| {
        let currency = Currency::parse("currency", &currency).ok()?;
        Some((
            ChargeStatus::parse(&status)?,
            reason,
            (account, Money { minor, currency }),
        ))
    }))
}

async fn insert_charge(
    conn: &mut PgConnection,
    order_id: &str,
    account_id: &str,
    amount: Money,
    status: ChargeStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO charge (order_id, account_id, amount_minor, currency, status, reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(account_id)
    .bind(amount.minor)
    .bind(amount.currency())
    .bind(status.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// An account as stored: (tenant, opening, balance).
pub type Account = (String, Money, Money);

/// Opens an account; opening the same account again with the same terms returns it, with other
/// terms is `Err(existing)`.
pub async fn open_account(
    conn: &mut PgConnection,
    account_id: &str,
    tenant: &str,
    opening: Money,
) -> Result<Result<Account, Account>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO account (account_id, tenant_id, currency, opening_minor, balance_minor)
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(tenant)
    .bind(opening.currency())
    .bind(opening.minor)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let existing = account(conn, account_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let same = existing.0 == tenant && existing.1 == opening;
    Ok(if inserted || same {
        Ok(existing)
    } else {
        Err(existing)
    })
}

pub async fn account(
    conn: &mut PgConnection,
    account_id: &str,
) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<(String, String, i64, i64)> =
        sqlx::query_as("SELECT tenant_id, currency, opening_minor, balance_minor FROM account WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(tenant, currency, opening, balance)| {
        let currency = Currency::parse("currency", &currency).ok()?;
        Some((
            tenant,
            Money {
                minor: opening,
                currency,
            },
            Money {
                minor: balance,
                currency,
            },
        ))
    }))
}

/// A page of movements after `after` (movement id), oldest first.
pub async fn movements(
    conn: &mut PgConnection,
    account_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String, i64, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT movement_id, order_id, kind, amount_minor, created_at FROM movement
         WHERE account_id = $1 AND movement_id > $2 ORDER BY movement_id LIMIT $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
