//! `shopctl outbox list|redrive`: the rows a relay parked because the broker refuses them for
//! good (too large, unknown topic, not authorised), and putting them back in line once the
//! cause is fixed; beside them, the messages the consumers dead-lettered. Reads each
//! PostgreSQL service's own database.

use std::str::FromStr;

use anyhow::Context;
use clap::{Args, Subcommand};
use sqlx::postgres::{PgConnectOptions, PgPool};

/// The services whose outbox lives in PostgreSQL.
pub const PG_SERVICES: &[&str] = &["order", "payment", "inventory", "shipping"];

#[derive(Subcommand)]
pub enum OutboxCmd {
    /// Parked rows, the backlog and the latest dead letters, per service.
    List(ListArgs),
    /// Put parked rows back in line: the relay tries them again, and the rows of their keys
    /// that waited behind them follow in order.
    Redrive(RedriveArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// One service, or every service with an outbox when omitted.
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    stores: crate::outbox_stores::Stores,
}

#[derive(Args)]
pub struct RedriveArgs {
    #[arg(long)]
    service: String,
    #[command(flatten)]
    stores: crate::outbox_stores::Stores,
    /// One row by id; every parked row of the service when omitted.
    #[arg(long)]
    id: Option<i64>,
}

/// Where the PostgreSQL services keep their databases: the server of `--pg-url`, each in
/// `<prefix><service>` (`shop_order`, ...; tests run whole platforms under other prefixes).
#[derive(Debug, Clone)]
pub struct Databases {
    pub url: String,
    pub prefix: String,
}

/// A pool on `service`'s database.
pub async fn service_pool(dbs: &Databases, service: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&dbs.url)
        .context("--pg-url is not a PostgreSQL URL")?
        .database(&format!("{}{service}", dbs.prefix));
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to the {service} database"))
}

fn services(one: Option<&str>) -> anyhow::Result<Vec<&str>> {
    match one {
        None => Ok(PG_SERVICES.to_vec()),
        Some(s) => PG_SERVICES
            .iter()
            .copied()
            .find(|p| *p == s)
            .map(|p| vec![p])
            .with_context(|| format!("{s} has no PostgreSQL outbox (one of {PG_SERVICES:?})")),
    }
}

pub async fn run(dbs: &Databases, cmd: OutboxCmd) -> anyhow::Result<()> {
    match cmd {
        OutboxCmd::List(args) => {
            let mut report = Vec::new();
            let others: Vec<&str> = match args.service.as_deref() {
                None => vec!["cart", "catalog"],
                Some(s @ ("cart" | "catalog")) => vec![s],
                Some(_) => vec![],
            };
            for service in others.iter().copied() {
                let (pending, parked) = crate::outbox_stores::list(&args.stores, service).await?;
                report.push(serde_json::json!({
                    "service": service, "pending": pending, "parked": parked,
                }));
                if !args.json {
                    println!(
                        "{service:<10} pending {pending:>6}  parked {}",
                        parked.len()
                    );
                    for (id, error) in &parked {
                        println!("  {id}: {error}");
                    }
                }
            }
            let pg = match args.service.as_deref() {
                Some("cart" | "catalog") => vec![],
                one => services(one)?,
            };
            for service in pg {
                let pool = service_pool(dbs, service).await?;
                let backlog = shop_messaging::outbox::backlog(&pool).await?;
                let parked = shop_messaging::outbox::parked(&pool, 1000).await?;
                let (dead_total, dead) = shop_messaging::inbox::dead_letters(&pool, 20).await?;
                report.push(serde_json::json!({
                    "service": service,
                    "pending": backlog.pending,
                    "oldest_age_seconds": backlog.oldest_age_seconds,
                    "parked": parked,
                    "dead_letters": dead_total,
                    "latest_dead_letters": dead,
                }));
                if !args.json {
                    println!(
                        "{service:<10} pending {:>6}  oldest {:>7.1} s  parked {}  dead letters {dead_total}",
                        backlog.pending,
                        backlog.oldest_age_seconds,
                        parked.len()
                    );
                    for p in &parked {
                        println!(
                            "  #{:<8} {} key={} {} ({} bytes, {} attempts, {} waiting behind): {}",
                            p.id,
                            p.topic,
                            p.partition_key,
                            p.event_type,
                            p.bytes,
                            p.attempts,
                            p.waiting_behind,
                            p.last_error.as_deref().unwrap_or_default()
                        );
                    }
                    for d in &dead {
                        println!(
                            "  dead letter {} {}[{}]@{} {}: {}",
                            d.consumer,
                            d.topic,
                            d.kafka_partition,
                            d.kafka_offset,
                            d.event_type,
                            d.error.as_deref().unwrap_or_default()
                        );
                    }
                }
                pool.close().await;
            }
            if args.json {
                println!("{}", serde_json::Value::Array(report));
            }
            Ok(())
        }
        OutboxCmd::Redrive(args) if matches!(args.service.as_str(), "cart" | "catalog") => {
            let n = crate::outbox_stores::redrive(&args.stores, &args.service).await?;
            println!("{}: {n} parked message(s) back in line", args.service);
            Ok(())
        }
        OutboxCmd::Redrive(args) => {
            let service = services(Some(&args.service))?[0];
            let pool = service_pool(dbs, service).await?;
            let n = shop_messaging::outbox::redrive(&pool, args.id).await?;
            println!("{service}: {n} parked row(s) back in line");
            anyhow::ensure!(n > 0 || args.id.is_none(), "no parked row with that id");
            Ok(())
        }
    }
}
