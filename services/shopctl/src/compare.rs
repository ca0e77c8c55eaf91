//! `shopctl compare`: the same workload through the orchestrated saga, the choreographed saga
//! and two-phase commit, in one run against the running platform, side by side (issue 14):
//!
//! - throughput and latency (PlaceOrder sent -> the order COMPLETED or CANCELLED);
//! - what each holds across services: 2PC's participants hold row locks from PREPARE to the
//!   decision's arrival (from the coordinator's log); the saga holds no lock across services
//!   (each step is one local transaction) but holds the stock and the money of an order until
//!   it ends (a reservation, a charge that may be refunded);
//! - optionally (`--pause-secs`) the same with the shipping service frozen (SIGSTOP) for that
//!   long mid-run: 2PC refuses or blocks, the sagas wait and carry on;
//! - optionally (`--kill-order`) the same with the order service (orchestrator and
//!   coordinator; for choreography only the recorder) SIGKILLed mid-run and started again;
//! - and `shopctl check` for the run's tenant after each run (0 violations expected).
//!
//! A few orders of each mode go first, not counted (a warm-up: a platform just started has
//! consumer groups still joining).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser};
use futures::{StreamExt, stream};
use serde::Serialize;
use shop_proto::{
    common::{Address, LineItem, Money},
    inventory::{RestockRequest, inventory_service_client::InventoryServiceClient},
    order::{
        Coordination, GetOrderRequest, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    payment::{OpenAccountRequest, payment_service_client::PaymentServiceClient},
};
use tonic::{Code, transport::Channel};

use crate::{check, demo::channel, outbox::Databases};

#[derive(Args, Clone)]
pub struct CompareArgs {
    /// Orders per mode and run.
    #[arg(long, default_value_t = 200)]
    pub orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// SKUs the orders share (fewer: more contention on the same stock rows).
    #[arg(long, default_value_t = 8)]
    pub skus: usize,
    /// Also a run per mode with shipping frozen (SIGSTOP) this many seconds mid-run (0: none).
    #[arg(long, default_value_t = 0)]
    pub pause_secs: u64,
    /// Also a run per mode with the order service SIGKILLed mid-run and restarted.
    #[arg(long)]
    pub kill_order: bool,
    /// Where the native stack keeps its pid files (services.sh's `.stack`): `<dir>/run/<service>.pid`.
    #[arg(long, default_value = ".stack")]
    pub stack_dir: String,
    /// What starts the killed order service again (the fault matrix, which supervises its own
    /// processes, passes `true` and restarts it itself).
    #[arg(long, default_value = "infra/local/services.sh up")]
    pub restart_cmd: String,
    /// Write the rows as JSON here too.
    #[arg(long)]
    pub json_out: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    PauseShipping(u64),
    KillOrder,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub mode: &'static str,
    pub fault: String,
    pub orders: usize,
    pub completed: usize,
    pub cancelled: usize,
    /// Not ended within the wait (after the fault was over).
    pub pending: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// 2PC: how long the participants held their prepared transactions (row locks), p50/p99.
    pub locks_p50_ms: Option<u64>,
    pub locks_p99_ms: Option<u64>,
    /// 2PC: from the log row to the decision (participants prepared and waiting), p99.
    pub in_doubt_p99_ms: Option<u64>,
    pub violations: u64,
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "USD".into(),
    })
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `sig` to the native stack's `service` process.
fn signal(stack_dir: &str, service: &str, sig: &str) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(format!("{stack_dir}/run/{service}.pid"))
        .with_context(|| format!("{service}'s pid file (is the native stack running?)"))?;
    let ok = std::process::Command::new("kill")
        .args([sig, pid.trim()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {service} ({}) failed", pid.trim());
    Ok(())
}

struct Setup {
    tenant: String,
    skus: Vec<String>,
    rich: String,
    poor: String,
}

async fn setup(run: &str, label: &str, skus: usize, orders: usize) -> anyhow::Result<Setup> {
    let tenant = format!("cmp-{run}-{label}");
    let mut inventory = InventoryServiceClient::new(channel("inventory")?);
    let mut payment = PaymentServiceClient::new(channel("payment")?);
    let skus: Vec<String> = (0..skus).map(|i| format!("{tenant}-sku{i}")).collect();
    for sku in &skus {
        inventory
            .restock(RestockRequest {
                tenant_id: tenant.clone(),
                sku: sku.clone(),
                quantity: u32::try_from(orders * 2).unwrap_or(u32::MAX),
            })
            .await
            .context("restock (is the platform up? make run)")?;
    }
    let (rich, poor) = (format!("{tenant}-rich"), format!("{tenant}-poor"));
    for (account, minor) in [(&rich, 1_000_000_000), (&poor, 100)] {
        payment
            .open_account(OpenAccountRequest {
                account_id: account.clone(),
                tenant_id: tenant.clone(),
                opening_balance: usd(minor),
            })
            .await?;
    }
    Ok(Setup {
        tenant,
        skus,
        rich,
        poor,
    })
}

/// Order `i` of the workload: mostly fine; 1 in 20 cannot pay, 1 in 20 goes where shipping
/// does not.
fn request(s: &Setup, i: usize, coordination: Coordination) -> PlaceOrderRequest {
    let (account, country) = match i % 20 {
        7 => (&s.poor, "DE"),
        13 => (&s.rich, "AQ"),
        _ => (&s.rich, "DE"),
    };
    PlaceOrderRequest {
        idempotency_key: format!("{}-{i}", s.tenant),
        tenant_id: s.tenant.clone(),
        customer_id: format!("customer-{}", i % 13),
        items: vec![LineItem {
            sku: s.skus[i % s.skus.len()].clone(),
            quantity: 1,
            unit_price: usd(1_500),
        }],
        shipping_address: Some(Address {
            name: "Compare Customer".into(),
            line1: "1 Main St".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: country.into(),
            ..Default::default()
        }),
        payment_account_id: account.clone(),
        coordination: coordination.into(),
    }
}

/// Places order `i` (retrying what a client retries: shedding, a coordinator that is not there
/// or is deciding) and waits for its end; the latency from the first send, and its status.
async fn one(
    order: OrderServiceClient<Channel>,
    r: PlaceOrderRequest,
    give_up: Instant,
) -> Option<(u64, OrderStatus)> {
    let started = Instant::now();
    let mut client = order;
    let id = loop {
        match client.place_order(r.clone()).await {
            Ok(placed) => {
                let o = placed.into_inner().order?;
                if o.status() != OrderStatus::Pending {
                    return Some((started.elapsed().as_millis() as u64, o.status()));
                }
                break o.order_id;
            }
            Err(e)
                if matches!(
                    e.code(),
                    Code::ResourceExhausted
                        | Code::Unavailable
                        | Code::Aborted
                        | Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                ) && Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return None,
        }
    };
    while Instant::now() < give_up {
        let got = client
            .get_order(GetOrderRequest {
                order_id: id.clone(),
                min_stream_version: 0,
            })
            .await;
        if let Ok(o) = got
            && o.get_ref().status() != OrderStatus::Pending
        {
            return Some((started.elapsed().as_millis() as u64, o.get_ref().status()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn measure(
    args: &CompareArgs,
    dbs: &Databases,
    run: &str,
    mode: Coordination,
    fault: Fault,
) -> anyhow::Result<Row> {
    let label = match mode {
        Coordination::Saga => "saga",
        Coordination::Choreography => "choreography",
        Coordination::TwoPhaseCommit => "2pc",
    };
    let fault_label = match fault {
        Fault::None => "none".to_owned(),
        Fault::PauseShipping(s) => format!("shipping frozen {s} s"),
        Fault::KillOrder => "order service killed".to_owned(),
    };
    let tag = format!(
        "{label}{}",
        match fault {
            Fault::None => "",
            Fault::PauseShipping(_) => "-pause",
            Fault::KillOrder => "-kill",
        }
    );
    let s = setup(run, &tag, args.skus, args.orders).await?;
    let order = OrderServiceClient::new(channel("order")?);
    let started = Instant::now();
    let give_up = started + Duration::from_secs(180);
    let injector = {
        let stack = args.stack_dir.clone();
        let restart = args.restart_cmd.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match fault {
                Fault::None => Ok(()),
                Fault::PauseShipping(secs) => {
                    signal(&stack, "shipping", "-STOP")?;
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    signal(&stack, "shipping", "-CONT")
                }
                Fault::KillOrder => {
                    signal(&stack, "order", "-KILL")?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let ok = tokio::process::Command::new("sh")
                        .args(["-c", &restart])
                        .status()
                        .await?
                        .success();
                    anyhow::ensure!(ok, "{restart} failed");
                    Ok(())
                }
            }
        })
    };
    let results: Vec<Option<(u64, OrderStatus)>> = stream::iter(0..args.orders)
        .map(|i| one(order.clone(), request(&s, i, mode), give_up))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    injector.await??;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = results.iter().flatten().map(|(ms, _)| *ms).collect();
    latencies.sort_unstable();
    let count = |want: OrderStatus| results.iter().flatten().filter(|(_, s)| *s == want).count();
    let (completed, cancelled) = (count(OrderStatus::Completed), count(OrderStatus::Cancelled));
    let (locks, in_doubt) = if mode == Coordination::TwoPhaseCommit {
        twopc_windows(dbs, &s.tenant).await?
    } else {
        (vec![], vec![])
    };
    let report = check::run_once(dbs, &check_args(&s.tenant)).await?;
    Ok(Row {
        mode: label,
        fault: fault_label,
        orders: args.orders,
        completed,
        cancelled,
        pending: args.orders - completed - cancelled,
        seconds,
        per_second: (completed + cancelled) as f64 / seconds.max(1e-9),
        p50_ms: pct(&latencies, 0.5),
        p99_ms: pct(&latencies, 0.99),
        locks_p50_ms: (!locks.is_empty()).then(|| pct(&locks, 0.5)),
        locks_p99_ms: (!locks.is_empty()).then(|| pct(&locks, 0.99)),
        in_doubt_p99_ms: (!in_doubt.is_empty()).then(|| pct(&in_doubt, 0.99)),
        violations: report.violations,
    })
}

fn check_args(tenant: &str) -> check::CheckArgs {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: check::CheckArgs,
    }
    Wrapper::parse_from(["check", "--tenant", tenant, "--core-only"]).args
}

/// Per 2PC order of `tenant`: how long the participants held their prepared transactions
/// (log row to end: phase one, the decision, phase two) and how long to the decision.
async fn twopc_windows(dbs: &Databases, tenant: &str) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let order = crate::outbox::service_pool(dbs, "order").await?;
    let rows: Vec<(Option<f64>, Option<f64>)> = sqlx::query_as(
        "SELECT extract(epoch FROM ended_at - started_at)::float8 * 1000,
                extract(epoch FROM decided_at - started_at)::float8 * 1000
         FROM twopc WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&order)
    .await?;
    order.close().await;
    let mut held: Vec<u64> = rows.iter().filter_map(|r| r.0).map(|v| v as u64).collect();
    let mut doubt: Vec<u64> = rows.iter().filter_map(|r| r.1).map(|v| v as u64).collect();
    held.sort_unstable();
    doubt.sort_unstable();
    Ok((held, doubt))
}

const MODES: [Coordination; 3] = [
    Coordination::Saga,
    Coordination::Choreography,
    Coordination::TwoPhaseCommit,
];

/// A few orders of `mode` before anything is measured, not counted: a platform just started
/// (its consumer groups still joining, its pools still opening) would otherwise weigh on the
/// first mode's figures only.
async fn warm_up(args: &CompareArgs, run: &str, mode: Coordination) -> anyhow::Result<()> {
    const ORDERS: usize = 6;
    let s = setup(run, &format!("warmup{}", mode as i32), args.skus, ORDERS).await?;
    let order = OrderServiceClient::new(channel("order")?);
    let give_up = Instant::now() + Duration::from_secs(60);
    stream::iter(0..ORDERS)
        .map(|i| one(order.clone(), request(&s, i, mode), give_up))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;
    Ok(())
}

pub async fn run(dbs: &Databases, args: &CompareArgs) -> anyhow::Result<Vec<Row>> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let run = &run[20..];
    let mut faults = vec![Fault::None];
    if args.pause_secs > 0 {
        faults.push(Fault::PauseShipping(args.pause_secs));
    }
    if args.kill_order {
        faults.push(Fault::KillOrder);
    }
    for mode in MODES {
        warm_up(args, run, mode).await?;
    }
    let mut rows = Vec::new();
    for fault in faults {
        for mode in MODES {
            let row = measure(args, dbs, run, mode, fault).await?;
            eprintln!(
                "  {} / {}: done in {:.1} s",
                row.mode, row.fault, row.seconds
            );
            rows.push(row);
        }
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(rows)
}

pub fn print(rows: &[Row], args: &CompareArgs) {
    println!(
        "compare: {} orders per run, {} at a time, {} SKUs (1 in 20 cannot pay, 1 in 20 unshippable)",
        args.orders, args.concurrency, args.skus
    );
    println!(
        "  {:<12} {:<22} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>17} {:>12} {:>10}",
        "mode",
        "fault",
        "completed",
        "cancelled",
        "pending",
        "orders/s",
        "p50 ms",
        "p99 ms",
        "locks p50/p99 ms",
        "in doubt p99",
        "violations"
    );
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for r in rows {
        println!(
            "  {:<12} {:<22} {:>9} {:>9} {:>7} {:>8.1} {:>8} {:>8} {:>17} {:>12} {:>10}",
            r.mode,
            r.fault,
            r.completed,
            r.cancelled,
            r.pending,
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            if r.locks_p50_ms.is_some() {
                format!("{}/{}", ms(r.locks_p50_ms), ms(r.locks_p99_ms))
            } else {
                "none held".to_owned()
            },
            ms(r.in_doubt_p99_ms),
            r.violations
        );
    }
}
