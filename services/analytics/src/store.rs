//! ClickHouse: the schema, batched inserts, and retention.
//!
//! **Redelivery is harmless by construction.** Both tables are `ReplacingMergeTree` keyed by the
//! event's identity (`events`: type + event id; `order_lines`: order id + line number) and
//! partitioned by (retention class, month of `occurred_at`). A redelivered event carries the same
//! id and `occurred_at`, so its copy lands in the same partition under the same key: background
//! merges collapse it, and every query reads `FINAL`, which collapses it at read time before the
//! merge happens. Answers are exact whatever was delivered twice; storage converges.
//! (Dedup before insert would need state across restarts and partitions; this needs none.)
//!
//! **Schemas stay within ClickHouse 18.16** (what Debian ships): no TTL, CODEC, DateTime64, Map
//! or JSON; times are `DateTime` plus a `UInt64` of milliseconds for durations. They run unchanged
//! on current ClickHouse (docker-compose). 18.16 has no TTL, so [`Store::drop_expired`] drops
//! whole partitions past their retention instead.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::rows::{EventRow, LineRow};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "shop_analytics".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    /// Queries and inserts run in `database`.
    pub client: clickhouse::Client,
    /// Without a default database, for creating it.
    admin: clickhouse::Client,
    pub database: String,
}

impl Store {
    pub fn new(s: &ClickHouseSettings) -> Self {
        let admin = clickhouse::Client::default()
            .with_url(&s.url)
            .with_user(&s.user)
            .with_password(&s.password)
            // 18.16 cannot describe its columns the way the validating format needs.
            .with_validation(false);
        Self {
            client: admin.clone().with_database(&s.database),
            admin,
            database: s.database.clone(),
        }
    }

    /// Creates the database and tables if missing.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let db = &self.database;
        self.admin
            .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
            .execute()
            .await
            .context("create database")?;
        self.client
            .query(&format!(
                "CREATE TABLE IF NOT EXISTS {db}.events (
                    event_id String, event_type String, tenant_id String, aggregate_id String, order_id String,
                    occurred_at DateTime, occurred_ms UInt64, amount_minor Int64, currency String, reason String,
                    retention_years UInt8
                ) ENGINE = ReplacingMergeTree()
                PARTITION BY (retention_years, toYYYYMM(occurred_at))
                ORDER BY (event_type, event_id)"
            ))
            .execute()
            .await
            .context("create events")?;
        self.client
            .query(&format!(
                "CREATE TABLE IF NOT EXISTS {db}.order_lines (
                    order_id String, line_no UInt16, tenant_id String, sku String, quantity UInt32,
                    unit_minor Int64, occurred_at DateTime, retention_years UInt8
                ) ENGINE = ReplacingMergeTree()
                PARTITION BY (retention_years, toYYYYMM(occurred_at))
                ORDER BY (order_id, line_no)"
            ))
            .execute()
            .await
            .context("create order_lines")?;
        Ok(())
    }

    /// Inserts one batch (each table in one INSERT).
    pub async fn insert(&self, events: &[EventRow], lines: &[LineRow]) -> anyhow::Result<()> {
        if !events.is_empty() {
            let mut insert = self.client.insert::<EventRow>("events").await?;
            for r in events {
                insert.write(r).await?;
            }
            insert.end().await.context("insert events")?;
        }
        if !lines.is_empty() {
            let mut insert = self.client.insert::<LineRow>("order_lines").await?;
            for r in lines {
                insert.write(r).await?;
            }
            insert.end().await.context("insert order_lines")?;
        }
        Ok(())
    }

    /// Drops every partition whose month ended more than its retention before `now_yyyymm`
    /// (e.g. 202611). Returns the partitions dropped, as `table (years, yyyymm)`.
    pub async fn drop_expired(&self, now_yyyymm: u32) -> anyhow::Result<Vec<String>> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Part {
            table: String,
            partition: String,
        }
        let parts = self
            .client
            .query(
                "SELECT DISTINCT table, partition FROM system.parts
                 WHERE database = ? AND table IN ('events', 'order_lines') AND active",
            )
            .bind(&self.database)
            .fetch_all::<Part>()
            .await
            .context("list partitions")?;
        let mut dropped = Vec::new();
        for p in parts {
            let Some((years, month)) = parse_partition(&p.partition) else {
                tracing::warn!(partition = %p.partition, "unrecognised partition, left alone");
                continue;
            };
            if expired(years, month, now_yyyymm) {
                self.client
                    .query(&format!(
                        "ALTER TABLE {}.{} DROP PARTITION ({years}, {month})",
                        self.database, p.table
                    ))
                    .execute()
                    .await
                    .with_context(|| format!("drop partition {} of {}", p.partition, p.table))?;
                dropped.push(format!("{} ({years}, {month})", p.table));
            }
        }
        if !dropped.is_empty() {
            tracing::info!(?dropped, "retention dropped expired partitions");
        }
        Ok(dropped)
    }
}

/// `(7, 201901)` -> (7, 201901)
fn parse_partition(s: &str) -> Option<(u32, u32)> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (years, month) = inner.split_once(',')?;
    Some((years.trim().parse().ok()?, month.trim().parse().ok()?))
}

/// A month's partition expires once the whole month is older than the retention.
fn expired(years: u32, yyyymm: u32, now_yyyymm: u32) -> bool {
    let months = |ym: u32| (ym / 100) * 12 + (ym % 100 - 1);
    months(now_yyyymm) > months(yyyymm) + years * 12
}

pub fn yyyymm(unix_seconds: i64) -> u32 {
    // Civil-from-days (Howard Hinnant), enough to get year and month of a UTC time.
    let days = unix_seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u32::try_from(year * 100 + month).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_and_expire_by_whole_months() {
        assert_eq!(parse_partition("(7, 201901)"), Some((7, 201901)));
        assert!(!expired(2, 202411, 202611), "exactly two years: kept");
        assert!(expired(2, 202410, 202611));
        assert!(!expired(7, 201912, 202611));
        assert!(expired(7, 201910, 202611));
    }

    #[test]
    fn yyyymm_of_unix_time() {
        assert_eq!(yyyymm(0), 197001);
        assert_eq!(yyyymm(1_795_000_000), 202611); // 2026-11-18
        assert_eq!(yyyymm(951_782_400), 200002); // 2000-02-29
    }
}
