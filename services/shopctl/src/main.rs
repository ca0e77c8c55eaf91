//! `shopctl`: the operator's command line.
//!
//! - `shopctl demo`: the main job of `make run` (health of every service, then the smoke flow).
//! - `shopctl health`: gRPC health of every service.
//! - `shopctl bench relay`: outbox relay throughput beside the raw producer on the same broker.

mod bench;
mod health;
mod smoke;

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
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SHOP_KAFKA",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    kafka: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every service, run the smoke flow, print a summary and one JSON line.
    Demo(smoke::SmokeArgs),
    /// gRPC health of every service on the local ports.
    Health,
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
        ..Default::default()
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
            let summary = smoke::run(&cli.pg_url, &kafka, &args).await?;
            smoke::print(&summary, serving, report.len());
            anyhow::ensure!(
                serving == report.len(),
                "{} of {} services not serving",
                report.len() - serving,
                report.len()
            );
            anyhow::ensure!(
                summary.is_consistent(),
                "the smoke flow lost, duplicated or reordered events"
            );
            Ok(())
        }
        Command::Bench(b) => bench::run(&cli.pg_url, &kafka, b).await,
    }
}
