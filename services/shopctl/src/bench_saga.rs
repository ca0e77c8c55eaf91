//! `shopctl bench saga`: the order saga under constant offered loads, beside pgbench.
//!
//! For each rate, orders are placed at that rate for N seconds (one task per order, so a slow
//! answer never lowers the offered load), then every saga is awaited. Reported per rate:
//! placed/s, completed/s (completions over the span from first placement to last completion),
//! and p50/p99 saga time from the order's own timestamps (placed -> completed). pgbench's TPC-B
//! commit rate on the same PostgreSQL server, measured in the same run, sits beside them: each
//! saga is some twenty PostgreSQL transactions over four databases plus eight Kafka hops.

use std::time::{Duration, Instant};

use crate::demo::channel;
use anyhow::Context;
use serde::Serialize;
use shop_proto::{
    common::{Address, LineItem, Money},
    inventory::{RestockRequest, inventory_service_client::InventoryServiceClient},
    order::{
        GetOrderRequest, OrderStatus, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
    payment::{OpenAccountRequest, payment_service_client::PaymentServiceClient},
};

#[derive(Debug, Serialize)]
struct RatePoint {
    offered_per_sec: u32,
    placed: usize,
    completed: usize,
    completed_per_sec: f64,
    saga_p50_ms: f64,
    saga_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct SagaBench {
    points: Vec<RatePoint>,
    pgbench_tps: f64,
    best_completed_per_sec: f64,
    best_vs_pgbench_tps: f64,
}

pub async fn run(pg_url: &str, rates: &[u32], seconds: u64) -> anyhow::Result<()> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let order = OrderServiceClient::new(channel("order")?);
    let (sku, account) = (format!("bench-{run}"), format!("bench-{run}"));
    InventoryServiceClient::new(channel("inventory")?)
        .restock(RestockRequest {
            tenant_id: "bench".into(),
            sku: sku.clone(),
            quantity: 1_000_000,
        })
        .await
        .context("restock (is the platform running? `make run`)")?;
    PaymentServiceClient::new(channel("payment")?)
        .open_account(OpenAccountRequest {
            account_id: account.clone(),
            tenant_id: "bench".into(),
            opening_balance: Some(Money {
                amount_minor: 1_000_000_000_000,
                currency: "USD".into(),
            }),
        })
        .await?;

    let mut points = Vec::new();
    for &rate in rates {
        let started = Instant::now();
        let mut interval =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let mut tasks = Vec::new();
        let total = u64::from(rate) * seconds;
        for i in 0..total {
            interval.tick().await;
            let mut client = order.clone();
            let request = PlaceOrderRequest {
                idempotency_key: format!("bench-{run}-{rate}-{i}"),
                tenant_id: "bench".into(),
                customer_id: format!("c-{}", i % 100),
                items: vec![LineItem {
                    sku: sku.clone(),
                    quantity: 1,
                    unit_price: Some(Money {
                        amount_minor: 999,
                        currency: "USD".into(),
                    }),
                }],
                shipping_address: Some(Address {
                    name: "Bench".into(),
                    line1: "1 Bench St".into(),
                    line2: String::new(),
                    city: "Berlin".into(),
                    postal_code: "10115".into(),
                    country: "DE".into(),
                }),
                payment_account_id: account.clone(),
            };
            tasks.push(tokio::spawn(async move {
                client.place_order(request).await.map(|r| r.into_inner())
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            if let Ok(Ok(r)) = t.await {
                ids.extend(r.order.map(|o| o.order_id));
            }
        }
        // Await every saga.
        let mut durations = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut pending = ids.clone();
        while !pending.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for id in pending {
                let o = order
                    .clone()
                    .get_order(GetOrderRequest {
                        order_id: id.clone(),
                        min_stream_version: 0,
                    })
                    .await?
                    .into_inner();
                match o.status() {
                    OrderStatus::Pending => still.push(id),
                    OrderStatus::Completed => {
                        if let (Some(a), Some(b)) = (&o.created_at, &o.updated_at) {
                            durations.push(
                                ((b.seconds - a.seconds) as f64) * 1000.0
                                    + f64::from(b.nanos - a.nanos) / 1e6,
                            );
                        }
                    }
                    _ => {}
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let span = started.elapsed().as_secs_f64();
        durations.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            durations
                .get(((durations.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let point = RatePoint {
            offered_per_sec: rate,
            placed: ids.len(),
            completed: durations.len(),
            completed_per_sec: (durations.len() as f64 / span * 10.0).round() / 10.0,
            saga_p50_ms: pct(0.5).round(),
            saga_p99_ms: pct(0.99).round(),
        };
        println!(
            "offered {:>4}/s  placed {:>5}  completed {:>5}  {:>6.1} completed/s  saga p50 {:>6.0} ms  p99 {:>6.0} ms",
            point.offered_per_sec,
            point.placed,
            point.completed,
            point.completed_per_sec,
            point.saga_p50_ms,
            point.saga_p99_ms
        );
        points.push(point);
    }

    let tps = pgbench(pg_url).await?;
    println!("pgbench (TPC-B, 8 clients, 10 s) on the same server: {tps:.0} tps");
    let best = points
        .iter()
        .map(|p| p.completed_per_sec)
        .fold(0.0, f64::max);
    let result = SagaBench {
        points,
        pgbench_tps: tps.round(),
        best_completed_per_sec: best,
        best_vs_pgbench_tps: (best / tps.max(1e-9) * 1000.0).round() / 1000.0,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// pgbench's TPC-B-like commit rate on a scratch database of the same server.
async fn pgbench(pg_url: &str) -> anyhow::Result<f64> {
    let options: sqlx::postgres::PgConnectOptions = pg_url.parse()?;
    let db = "shop_bench_pgbench";
    let url = format!("{}/{db}", pg_url.rsplit_once('/').context("pg url")?.0);
    shop_core::db::drop_database(&url).await?;
    shop_core::db::create_database_if_missing(&options.clone().database(db)).await?;
    let bin = ["/usr/lib/postgresql/15/bin/pgbench", "pgbench"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists() || which(b))
        .context("pgbench not found (Debian: postgresql-client or postgresql-15)")?;
    let common = |cmd: &mut tokio::process::Command| {
        cmd.env("PGPASSWORD", "shop").args([
            "-h",
            options.get_host(),
            "-p",
            &options.get_port().to_string(),
            "-U",
            "shop",
        ]);
    };
    let mut init = tokio::process::Command::new(bin);
    common(&mut init);
    let status = init.args(["-i", "-q", "-s", "4", db]).output().await?;
    anyhow::ensure!(
        status.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut run = tokio::process::Command::new(bin);
    common(&mut run);
    let out = run
        .args(["-c", "8", "-j", "2", "-T", "10", db])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<f64>().ok())
        .context("no tps line in pgbench's output")?;
    shop_core::db::drop_database(&url).await?;
    Ok(tps)
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).exists()))
}
