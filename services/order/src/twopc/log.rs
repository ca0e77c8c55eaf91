//! The coordinator's log (table `twopc`): the SQL. Functions take the caller's connection.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// Logged; phase one running (or the coordinator died in it).
    Preparing,
    /// Decided: commit. Phase two running.
    Committing,
    /// Decided: roll back. Phase two running.
    Aborting,
    Committed,
    Aborted,
}

impl LogState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::Committing => "committing",
            Self::Aborting => "aborting",
            Self::Committed => "committed",
            Self::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Preparing,
            Self::Committing,
            Self::Aborting,
            Self::Committed,
            Self::Aborted,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// The decision, once there is one: `Some(true)` commit, `Some(false)` roll back.
    pub fn decision(self) -> Option<bool> {
        match self {
            Self::Preparing => None,
            Self::Committing | Self::Committed => Some(true),
            Self::Aborting | Self::Aborted => Some(false),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogRow {
    pub order_id: Uuid,
    pub state: LogState,
    pub request: Vec<u8>,
    pub started_at: DateTime<Utc>,
}

type Tuple = (Uuid, String, Vec<u8>, DateTime<Utc>);

fn row(t: Tuple) -> LogRow {
    LogRow {
        order_id: t.0,
        state: LogState::parse(&t.1).unwrap_or(LogState::Preparing),
        request: t.2,
        started_at: t.3,
    }
}

/// Logs a new transaction, before anything is prepared.
pub async fn begin(
    conn: &mut PgConnection,
    order_id: Uuid,
    tenant: &str,
    request: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO twopc (order_id, tenant_id, state, request) VALUES ($1, $2, 'preparing', $3)",
    )
    .bind(order_id)
    .bind(tenant)
    .bind(request)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<LogRow>, sqlx::Error> {
    let t: Option<Tuple> = sqlx::query_as(
        "SELECT order_id, state, request, started_at FROM twopc WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(t.map(row))
}

/// The row, locked for this transaction (the decision and recovery take it in turn).
pub async fn lock(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<LogRow>, sqlx::Error> {
    let t: Option<Tuple> = sqlx::query_as(
        "SELECT order_id, state, request, started_at FROM twopc WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(t.map(row))
}

/// Records the decision (the caller's transaction also holds the order's events).
pub async fn decide(
    conn: &mut PgConnection,
    order_id: Uuid,
    commit: bool,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let state = if commit {
        LogState::Committing
    } else {
        LogState::Aborting
    };
    sqlx::query("UPDATE twopc SET state = $2, reason = $3, decided_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(state.as_str())
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Phase two is over: every participant has committed or rolled back.
pub async fn end(conn: &mut PgConnection, order_id: Uuid, commit: bool) -> Result<(), sqlx::Error> {
    let state = if commit {
        LogState::Committed
    } else {
        LogState::Aborted
    };
    sqlx::query(
        "UPDATE twopc SET state = $2, ended_at = now() WHERE order_id = $1 AND ended_at IS NULL",
    )
    .bind(order_id)
    .bind(state.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Transactions not ended, started before `before` (recovery's work), oldest first.
pub async fn unfinished(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let rows: Vec<Tuple> = sqlx::query_as(
        "SELECT order_id, state, request, started_at FROM twopc
         WHERE ended_at IS NULL AND started_at < $1 ORDER BY started_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(row).collect())
}
