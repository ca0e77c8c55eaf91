//! `shopctl`: the operator's command line.
//!
//! - `shopctl demo`: the main job of `make run` (health of every service, then a burst of orders
//!   through the saga, with the invariants checked).
//! - `shopctl smoke`: events outbox -> broker -> inbox between two scratch databases.
//! - `shopctl saga get|list|retry|compensate`: look at sagas and intervene by hand.
//! - `shopctl orders get|as-of|rebuild`: an order from the read model or replayed as of a
//!   version or time; rebuild the read models.
//! - `shopctl outbox list|redrive`: rows a relay parked (the broker refuses them for good), and
//!   putting them back in line.
//! - `shopctl check`: the invariants across every service's own state (`--every`: continuously).
//! - `shopctl backup|restore`: the four PostgreSQL databases with pg_dump / pg_restore, the
//!   order database first (docs/BACKUP.md).
//! - `shopctl health`: gRPC health of every service.
//! - `shopctl bench relay|saga|analytics|event-store`: figures beside the raw store's.

mod backup;
mod bench;
mod bench_analytics;
mod bench_catalog;
mod bench_eventstore;
mod bench_kafka_txn;
mod bench_saga;
mod check;
mod compare;
mod demo;
mod env;
mod health;
mod orders;
mod outbox;
mod outbox_stores;
mod regions;
mod saga;
mod smoke;
mod storefront;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shopctl", about = "Operate and demonstrate the shop platform")]
struct Cli {
    /// PostgreSQL server (any database on it; shopctl creates its own databases).
    #[arg(
        long,
        env = "SHOP_PG_URL",
        default_value = "postgres://shop:shop@127.0.0.1:5432/postgres",
        global = true
    )]
    pg_url: String,
    /// The PostgreSQL services' databases are `<prefix><service>` on that server.
    #[arg(long, env = "SHOP_DB_PREFIX", default_value = "shop_", global = true)]
    db_prefix: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SHOP_KAFKA",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    kafka: String,
    /// Prepended to every Kafka topic name: the services' `SHOP__KAFKA__TOPIC_PREFIX`, read
    /// from the same variable so both sides name the same topics.
    #[arg(
        long,
        env = "SHOP__KAFKA__TOPIC_PREFIX",
        default_value = "",
        global = true
    )]
    kafka_topic_prefix: String,
    /// The order service's gRPC address.
    #[arg(
        long,
        env = "SHOP_ORDER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    order: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every service, place a burst of orders, check the invariants; one JSON line last.
    Demo(demo::DemoArgs),
    /// Events outbox -> broker -> inbox between two scratch databases, checked.
    Smoke(smoke::SmokeArgs),
    /// Inspect sagas, or retry / compensate one by hand.
    #[command(subcommand)]
    Saga(saga::SagaCmd),
    /// Event-sourced orders: as of a version or time, read-model rebuild.
    #[command(subcommand)]
    Orders(orders::OrdersCmd),
    #[command(subcommand)]
    Outbox(outbox::OutboxCmd),
    /// Drop a scratch environment from the shared stores (its topics, databases, index, Redis
    /// keys): `make bench-saga` drops `bench_` before a run, `make test` the tests' `test` topics.
    DropEnv(env::DropEnvArgs),
    /// gRPC health of every service on the local ports.
    Health,
    /// The platform's invariants, read from every service's own state.
    Check(check::CheckArgs),
    /// pg_dump the four PostgreSQL databases (order first) into a directory, with a manifest.
    Backup(backup::BackupArgs),
    /// pg_restore a backup into new databases `<--db-prefix><service>` and report what the
    /// copy holds (sagas in flight, outbox rows to send again, orphans).
    Restore(backup::RestoreArgs),
    /// The same workload through the orchestrated saga and two-phase commit, side by side
    /// (throughput, latency, locks, in doubt, faults, invariants) against the running platform.
    Compare(compare::CompareArgs),
    /// Benchmarks (real work on the real stores; figures beside the raw store's).
    #[command(subcommand)]
    Bench(bench::Bench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shop_core::telemetry::init_tracing(
        "shopctl",
        &shop_core::config::TelemetrySettings {
            log_format: "pretty".into(),
            log_filter: "warn".into(),
            otlp_endpoint: String::new(),
        },
    );
    let kafka = shop_messaging::kafka::KafkaSettings {
        brokers: cli.kafka.clone(),
        client_id: "shopctl".into(),
        topic_prefix: cli.kafka_topic_prefix.clone(),
        ..Default::default()
    };
    let databases = outbox::Databases {
        url: cli.pg_url.clone(),
        prefix: cli.db_prefix.clone(),
    };
    match cli.command {
        Command::Health => {
            let report = health::check_all().await;
            health::print(&report);
            anyhow::ensure!(
                report.iter().all(|r| r.serving),
                "some services are not serving"
            );
            Ok(())
        }
        Command::Demo(args) => {
            let report = health::check_all().await;
            health::print(&report);
            let serving = report.iter().filter(|r| r.serving).count();
            anyhow::ensure!(
                serving == report.len(),
                "{} of {} services not serving",
                report.len() - serving,
                report.len()
            );
            let summary = demo::run(&args).await?;
            demo::print(&summary);
            let run = uuid::Uuid::now_v7().simple().to_string();
            let shop = if args.shoppers > 0 {
                let s = storefront::run(
                    &run[20..],
                    &format!("shop-{}", &run[20..]),
                    args.shoppers,
                    demo::channel,
                )
                .await?;
                storefront::print(&s);
                Some(s)
            } else {
                None
            };
            let regions = if args.shoppers > 0 {
                let r = regions::run(&run[20..], args.shoppers, demo::channel("catalog")?).await?;
                regions::print(&r);
                Some(r)
            } else {
                None
            };
            let ok = summary.is_consistent()
                && shop
                    .as_ref()
                    .is_none_or(storefront::StorefrontSummary::is_consistent)
                && regions
                    .as_ref()
                    .is_none_or(regions::RegionsSummary::is_consistent);
            println!("result: {}", if ok { "OK" } else { "FAILED" });
            let mut json = serde_json::to_value(&summary).unwrap_or_default();
            if let Some(obj) = json.as_object_mut() {
                obj.insert(
                    "storefront".into(),
                    serde_json::to_value(&shop).unwrap_or_default(),
                );
                obj.insert(
                    "regions".into(),
                    serde_json::to_value(&regions).unwrap_or_default(),
                );
                obj.insert("ok".into(), ok.into());
            }
            println!("{json}");
            anyhow::ensure!(ok, "an invariant does not hold (see above)");
            Ok(())
        }
        Command::Smoke(args) => {
            let summary = smoke::run(&cli.pg_url, &kafka, &args).await?;
            smoke::print(&summary);
            anyhow::ensure!(
                summary.is_consistent(),
                "the smoke flow lost, duplicated or reordered events"
            );
            Ok(())
        }
        Command::Saga(cmd) => saga::run(&cli.order, cmd).await,
        Command::Orders(cmd) => orders::run(&cli.order, cmd).await,
        Command::Outbox(cmd) => outbox::run(&databases, cmd).await,
        Command::DropEnv(args) => env::run(&cli.pg_url, &kafka, &args).await,
        Command::Check(args) => check::run(&databases, args).await,
        Command::Backup(args) => backup::run_backup(&databases, &args).await,
        Command::Restore(args) => backup::run_restore(&databases, &args).await,
        Command::Bench(b) => bench::run(&cli.pg_url, &cli.db_prefix, &kafka, b).await,
        Command::Compare(args) => {
            let rows = compare::run(&databases, &args).await?;
            compare::print(&rows, &args);
            anyhow::ensure!(
                rows.iter().all(|r| r.violations == 0),
                "an invariant does not hold after a run (see above)"
            );
            Ok(())
        }
    }
}
