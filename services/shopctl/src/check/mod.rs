//! `shopctl check`: the platform's invariants, read from every service's own state.
//!
//! It opens read-only connections to each store (the four PostgreSQL databases, the catalog's
//! MongoDB and search index, ClickHouse) and checks, for one tenant or all:
//!
//! | check | what must hold |
//! |---|---|
//! | `sagas.overdue` | no saga is still running past its deadline (a choreographed one, which has none: quiet for 5 minutes) |
//! | `stock.conservation` | per SKU: received - committed = available + reserved |
//! | `stock.holds` | per SKU: `reserved` equals the lines of the reservations still held |
//! | `stock.oversold` | per SKU: committed + held never exceeds what was received |
//! | `stock.outcome` | a completed order's reservation is committed, a cancelled one's is not held or committed |
//! | `money.ledger` | per account: opening + movements = balance |
//! | `money.outcome` | charged - refunded = the total for a completed order, 0 for a cancelled one |
//! | `money.single_charge` | at most one charge per order |
//! | `shipping.outcome` | a completed order has a live shipment; a cancelled one has none |
//! | `messaging.outbox` | no parked outbox row, no unpublished row older than a minute |
//! | `messaging.dead_letters` | reported (a dead letter is a message the platform refused by rule) |
//! | `derived.search` | the search index has each product's price and version |
//! | `derived.analytics` | analytics knows every completed order, and only those |
//! | `derived.recommendations` | each completed order (of the last 29 days) was counted, and every pair of its SKUs scores at least the completed orders that hold both |
//! | `regions.converged` | every region holds the same state of each profile and product counter (a difference still there, unchanged, at the second look) |
//!
//! Only orders whose saga has ended are judged across services; a violation must still be
//! there when the checks run a second time (after `--confirm-after`), so a message in flight at
//! the first look is not reported. Exits non-zero on any violation; `--json` for machines;
//! `--every` runs it as the platform's continuous check, exporting
//! `consistency_violations{check}` and `consistency_last_run_timestamp_seconds`.

mod derived;
mod orders;
mod regions;

use std::{collections::BTreeMap, time::Duration};

use clap::Args;
use serde::Serialize;

use crate::outbox::Databases;

#[derive(Args, Clone)]
pub struct CheckArgs {
    /// Only this tenant's orders, stock and accounts (default: all).
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Seconds before a violation is confirmed by a second look (0: report the first look).
    #[arg(long, default_value_t = 3)]
    pub confirm_after: u64,
    /// Run for ever, every this many seconds, serving Prometheus metrics (the continuous check).
    #[arg(long)]
    pub every: Option<u64>,
    /// Metrics port for `--every`.
    #[arg(long, default_value_t = 9108)]
    pub metrics_port: u16,
    /// Skip the derived-data checks (search, analytics): for a platform without those services.
    #[arg(long)]
    pub core_only: bool,
    /// The catalog's MongoDB and Redis and the environment's topic prefix (the same options
    /// as `shopctl outbox`).
    #[command(flatten)]
    pub stores: crate::outbox_stores::Stores,
    #[arg(long, env = "SHOP_SEARCH_URL", default_value = "http://127.0.0.1:9200")]
    pub search_url: String,
    #[arg(long, default_value = "products")]
    pub search_index: String,
    #[arg(
        long,
        env = "SHOP_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    #[arg(long, default_value = "shop_analytics")]
    pub analytics_database: String,
    /// The catalog's regions (profiles and counters are replicated between them).
    #[arg(long, env = "SHOP__REGIONS__NAMES", default_value = "eu,us")]
    pub regions: String,
}

/// One invariant over many items.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// Items looked at (orders, SKUs, accounts, rows).
    pub checked: u64,
    pub violations: u64,
    /// A few of them, for the reader.
    pub examples: Vec<String>,
    #[serde(skip)]
    found: BTreeMap<String, String>,
}

impl Check {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            checked: 0,
            violations: 0,
            examples: Vec::new(),
            found: BTreeMap::new(),
        }
    }

    pub fn item(&mut self) {
        self.checked += 1;
    }

    /// `key` identifies the item (the same item breaks the same key on a second look).
    pub fn violation(&mut self, key: impl Into<String>, what: impl Into<String>) {
        self.found.insert(key.into(), what.into());
    }

    /// Keeps what `earlier` found too (confirmed), and fills the counts.
    fn confirm(mut self, earlier: Option<&Check>) -> Self {
        if let Some(e) = earlier {
            self.found.retain(|k, _| e.found.contains_key(k));
        }
        self.violations = self.found.len() as u64;
        self.examples = self
            .found
            .iter()
            .take(5)
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tenant: Option<String>,
    pub checks: Vec<Check>,
    pub violations: u64,
    /// Informational figures (backlogs, dead letters) that are not invariants.
    pub figures: BTreeMap<String, i64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations == 0
    }
}

/// One look at every store.
async fn look(
    dbs: &Databases,
    args: &CheckArgs,
    figures: &mut BTreeMap<String, i64>,
) -> anyhow::Result<Vec<Check>> {
    let tenant = args.tenant.as_deref();
    let mut checks = orders::checks(dbs, tenant).await?;
    checks.extend(derived::messaging(dbs, figures).await?);
    if !args.core_only {
        checks.push(derived::search(args).await?);
        checks.push(derived::analytics(dbs, args, tenant).await?);
        checks.push(derived::recommendations(dbs, args, tenant).await?);
        checks.push(regions::converged(args).await?);
    }
    Ok(checks)
}

/// Runs every check, confirming violations with a second look.
pub async fn run_once(dbs: &Databases, args: &CheckArgs) -> anyhow::Result<Report> {
    let mut figures = BTreeMap::new();
    let first = look(dbs, args, &mut figures).await?;
    let any = first.iter().any(|c| !c.found.is_empty());
    let checks = if any && args.confirm_after > 0 {
        tokio::time::sleep(Duration::from_secs(args.confirm_after)).await;
        let second = look(dbs, args, &mut figures).await?;
        second
            .into_iter()
            .map(|c| {
                let earlier = first.iter().find(|e| e.name == c.name);
                c.confirm(earlier)
            })
            .collect()
    } else {
        first
            .into_iter()
            .map(|c| c.confirm(None))
            .collect::<Vec<_>>()
    };
    let violations = checks.iter().map(|c| c.violations).sum();
    Ok(Report {
        tenant: args.tenant.clone(),
        checks,
        violations,
        figures,
    })
}

pub fn print(r: &Report) {
    println!(
        "consistency check ({})",
        r.tenant
            .as_deref()
            .map_or("all tenants".to_owned(), |t| format!("tenant {t}"))
    );
    println!("  {:<24} {:>9} {:>10}", "check", "checked", "violations");
    for c in &r.checks {
        println!("  {:<24} {:>9} {:>10}", c.name, c.checked, c.violations);
        for e in &c.examples {
            println!("      {e}");
        }
    }
    for (k, v) in &r.figures {
        println!("  {k:<24} {v:>9}");
    }
    println!(
        "  {}",
        if r.ok() {
            "every invariant holds".to_owned()
        } else {
            format!("{} violation(s)", r.violations)
        }
    );
}

/// `shopctl check`: once (exit code says), or for ever with `--every`.
pub async fn run(dbs: &Databases, args: CheckArgs) -> anyhow::Result<()> {
    let Some(every) = args.every else {
        let report = run_once(dbs, &args).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print(&report);
        }
        anyhow::ensure!(report.ok(), "{} invariant violation(s)", report.violations);
        return Ok(());
    };
    let shutdown = shop_core::shutdown::on_signal();
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], args.metrics_port));
    let (_, metrics) = shop_core::telemetry::serve_metrics(addr, shutdown.clone()).await?;
    tracing::info!(every, "continuous consistency check started");
    while !shutdown.is_cancelled() {
        match run_once(dbs, &args).await {
            Ok(report) => {
                for c in &report.checks {
                    metrics::gauge!("consistency_violations", "check" => c.name)
                        .set(c.violations as f64);
                }
                metrics::gauge!("consistency_last_run_timestamp_seconds")
                    .set(chrono::Utc::now().timestamp() as f64);
                if report.ok() {
                    tracing::info!("consistency check: every invariant holds");
                } else {
                    tracing::error!(violations = report.violations, report = %serde_json::to_string(&report)?, "consistency check found violations");
                }
            }
            Err(e) => {
                metrics::counter!("consistency_check_errors_total").increment(1);
                tracing::warn!(error = ?e, "consistency check could not run");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
    metrics.await??;
    Ok(())
}
