//! `shopctl bench saga`: can one 2-core box run 1,000 order sagas per second, and if not, where
//! does the time go? (issue 13)
//!
//! - Setup: `--skus` SKUs restocked and `--accounts` accounts opened, named for this run.
//! - A consumer of the order events topic starts before the first order ([`load::Terminals`]):
//!   a saga ends when the bench *receives* its `order.completed` / `order.cancelled`.
//! - A warm-up at the lowest rate (not reported), then each rate in an order shuffled by
//!   `--seed`: open-loop placement for `--seconds` ([`load::Driver`]), then up to
//!   `--drain-seconds` for the sagas to end, so rates never overlap.
//! - Per rate: accepted / shed (RESOURCE_EXHAUSTED) / failed placements, completed, cancelled,
//!   still pending; completions/s inside the load window and over the whole span; latency from
//!   the order's due instant to its terminal event; the per-step breakdown from the order's own
//!   event stream ([`steps`]); CPU per process group over the rate ([`cpu`]).
//! - The same box's physical limits, in the same run ([`limits`], [`kafka_limits`]), and the
//!   best achieved rate against them.
//!
//! A readable report, then one JSON line with everything.

mod cpu;
mod kafka_limits;
mod limits;
mod load;
mod pgstats;
mod report;
mod stats;
mod steps;

use std::{
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use shop_messaging::kafka::KafkaSettings;
use shop_proto::{
    common::Money,
    inventory::{RestockRequest, inventory_service_client::InventoryServiceClient},
    order::order_service_client::OrderServiceClient,
    payment::{OpenAccountRequest, payment_service_client::PaymentServiceClient},
};
use sqlx::postgres::PgConnectOptions;

use crate::demo::channel;
use report::{Limits, RateReport, SagaBench};

#[derive(clap::Args, Debug, Clone)]
pub struct SagaArgs {
    /// Offered loads, orders/s, run in an order shuffled by --seed.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,250,500,1000")]
    pub rates: Vec<u32>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seconds of load at the lowest rate before the measured rates (not reported).
    #[arg(long, default_value_t = 10)]
    pub warmup_seconds: u64,
    /// SKUs restocked for the run; each order takes one at random.
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Payment accounts opened for the run; each order pays from one at random.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// One SKU and one account for every order (the contended case).
    #[arg(long)]
    pub hot_key: bool,
    /// Seed of the rate order and of the orders' picks (random when not given; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// After a rate's load stops, how long to wait for its sagas to end.
    #[arg(long, default_value_t = 120)]
    pub drain_seconds: u64,
    /// Skip the physical-limit measurements (pgbench, PostgreSQL chains, raw Kafka).
    #[arg(long)]
    pub skip_limits: bool,
    /// Also write the JSON line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

const SETUP_CONCURRENCY: usize = 16;
const ORDER_CHANNELS: usize = 4;
const PLATFORM: &str = "is the platform running? `make run`";

pub async fn run(
    pg_url: &str,
    db_prefix: &str,
    kafka: &KafkaSettings,
    args: SagaArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.rates.is_empty() && args.rates.iter().all(|r| *r > 0),
        "--rates: one or more rates above 0"
    );
    anyhow::ensure!(
        args.skus > 0 && args.accounts > 0 && args.seconds > 0,
        "--skus, --accounts and --seconds must be above 0"
    );
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let seed = args
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let mut rng = stats::Rng::new(seed);
    let mut rates = args.rates.clone();
    rng.shuffle(&mut rates);
    println!(
        "bench saga: run {run}, seed {seed}, rates in this order: {rates:?} orders/s, {} s each{}",
        args.seconds,
        if args.hot_key {
            ", one hot SKU and account"
        } else {
            ""
        }
    );

    let (skus, accounts) = setup(&run, &args).await?;
    let terminals = load::Terminals::start(kafka, &run)
        .await
        .with_context(|| format!("cannot follow the order events ({PLATFORM})"))?;
    let order_db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(
            PgConnectOptions::from_str(pg_url)
                .context("--pg-url is not a PostgreSQL URL")?
                .database(&format!("{db_prefix}order")),
        )
        .await
        .with_context(|| format!("cannot connect to the order database ({PLATFORM})"))?;
    let clients = (0..ORDER_CHANNELS)
        .map(|_| channel("order").map(OrderServiceClient::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut driver = load::Driver::new(clients, &run, skus, accounts, args.hot_key, rng);
    let clock = steps::Clock::now();
    let tck = cpu::clock_ticks();
    let drain = Duration::from_secs(args.drain_seconds);

    if args.warmup_seconds > 0 {
        let lowest = args.rates.iter().copied().min().unwrap_or(1);
        println!("warm-up: {lowest} orders/s for {} s", args.warmup_seconds);
        let placed = driver.offer("w", lowest, args.warmup_seconds).await?;
        load::drain(&terminals, &placed.accepted, placed.last_due + drain).await;
    }

    let mut points = Vec::new();
    for (n, &rate) in rates.iter().enumerate() {
        let before = cpu::sample();
        let pg_before = pgstats::sample(&order_db, db_prefix).await.ok();
        let placed = driver.offer(&n.to_string(), rate, args.seconds).await?;
        load::drain(&terminals, &placed.accepted, placed.last_due + drain).await;
        let drained = Instant::now();
        let after = cpu::sample();
        let pg_after = pgstats::sample(&order_db, db_prefix).await.ok();
        let (mut point, completed) =
            RateReport::build(rate, args.seconds, &placed, &terminals, &clock)?;
        point.drain_s = stats::round2(
            drained
                .saturating_duration_since(placed.last_due)
                .as_secs_f64(),
        );
        point.cpu = Some(cpu::diff(&before, &after, point.completed, tck));
        if let (Some(b), Some(a)) = (&pg_before, &pg_after) {
            point.postgres = pgstats::per_saga(b, a, point.completed);
        }
        point.steps = match steps::breakdown(&order_db, &completed).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("step breakdown unavailable (order database): {e:#}");
                vec![]
            }
        };
        report::print_rate(&point);
        points.push(point);
    }
    let duplicates = terminals.duplicates();
    terminals.stop().await;
    order_db.close().await;

    // A failed limit measurement must not lose the rates' results: it is reported instead.
    let (limits, limits_error) = if args.skip_limits {
        (None, None)
    } else {
        match measure_limits(pg_url, kafka, &run, seed).await {
            Ok(l) => (Some(l), None),
            Err(e) => {
                eprintln!("limits: failed: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        }
    };
    let mut result = SagaBench::new(run, seed, rates, args.hot_key, duplicates, points, limits);
    result.limits_error = limits_error;
    report::print_summary(&result);
    let line = serde_json::to_string(&result)?;
    println!("{line}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Restocks `--skus` SKUs and opens `--accounts` accounts, named for this run.
async fn setup(run: &str, args: &SagaArgs) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (n_skus, n_accounts) = if args.hot_key {
        (1, 1)
    } else {
        (args.skus, args.accounts)
    };
    let skus: Vec<String> = (0..n_skus).map(|i| format!("bench-{run}-{i}")).collect();
    let accounts: Vec<String> = (0..n_accounts)
        .map(|i| format!("bench-{run}-{i}"))
        .collect();
    let inventory = InventoryServiceClient::new(channel("inventory")?);
    let payment = PaymentServiceClient::new(channel("payment")?);
    let started = Instant::now();
    futures::stream::iter(skus.iter().cloned())
        .map(|sku| {
            let mut client = inventory.clone();
            async move {
                client
                    .restock(RestockRequest {
                        tenant_id: "bench".into(),
                        sku,
                        quantity: 1_000_000,
                    })
                    .await
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("restock failed ({PLATFORM})"))?;
    futures::stream::iter(accounts.iter().cloned())
        .map(|account_id| {
            let mut client = payment.clone();
            async move {
                client
                    .open_account(OpenAccountRequest {
                        account_id,
                        tenant_id: "bench".into(),
                        opening_balance: Some(Money {
                            amount_minor: 1_000_000_000_000,
                            currency: "USD".into(),
                        }),
                    })
                    .await
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .with_context(|| format!("opening accounts failed ({PLATFORM})"))?;
    println!(
        "setup: {} SKUs restocked, {} accounts opened in {:.1} s",
        skus.len(),
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((skus, accounts))
}

async fn measure_limits(
    pg_url: &str,
    kafka: &KafkaSettings,
    run: &str,
    seed: u64,
) -> anyhow::Result<Limits> {
    println!("limits: pgbench ...");
    let pgbench = limits::pgbench(pg_url).await?;
    println!("limits: 20-commit chains through PostgreSQL alone ...");
    let chains = limits::chains(pg_url, &[64, 1], 10, seed).await?;
    println!("limits: raw Kafka and an 8-hop ping-pong ...");
    let kafka = kafka_limits::run(kafka, run, 50_000).await?;
    Ok(Limits {
        pgbench,
        chains,
        kafka,
    })
}
