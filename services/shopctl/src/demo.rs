//! The main job of `make run`: a burst of orders through the running services, some designed to
//! fail in each way, then the outcome and the invariants, checked from the services' own APIs.
//!
//! The mix (per 20 orders): 14 ordinary; 2 for a scarce SKU that runs out; 2 from an account
//! that cannot pay; 1 to a destination shipping refuses; 1 ordinary large one.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use futures::{StreamExt, stream};
use serde::Serialize;
use shop_proto::{
    analytics::{SagaOutcomesRequest, TimeRange, analytics_service_client::AnalyticsServiceClient},
    common::{Address, LineItem, Money, PageRequest},
    inventory::{
        GetStockRequest, RestockRequest, inventory_service_client::InventoryServiceClient,
    },
    order::{
        Coordination, GetOrderRequest, ListSagasRequest, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    payment::{
        GetAccountRequest, ListMovementsRequest, OpenAccountRequest,
        payment_service_client::PaymentServiceClient,
    },
};
use tonic::transport::Channel;

/// Places `request` as a client should when the order service sheds load: RESOURCE_EXHAUSTED
/// (sagas in flight at their bound) is retried with exponential backoff and jitter, for up to
/// two minutes; the idempotency key makes every retry the same order.
pub async fn place_order_shed_aware(
    client: &mut shop_proto::order::order_service_client::OrderServiceClient<Channel>,
    request: PlaceOrderRequest,
) -> Result<shop_proto::order::PlaceOrderResponse, tonic::Status> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut wait = Duration::from_millis(100);
    loop {
        match client.place_order(request.clone()).await {
            Err(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64())).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 200)]
    pub orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Give up waiting for sagas to finish after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
    /// Storefront shoppers (search, cart, recommendations, checkout); 0 skips the storefront.
    #[arg(long, default_value_t = 20)]
    pub shoppers: usize,
}

#[derive(Debug, Serialize)]
pub struct DemoSummary {
    pub orders: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub cancelled_by_reason: BTreeMap<String, usize>,
    /// Of them choreographed (a third): placed, completed.
    pub choreographed: (usize, usize),
    pub saga_p50_ms: f64,
    pub saga_p99_ms: f64,
    pub place_seconds: f64,
    pub total_seconds: f64,
    pub oversold_units: i64,
    pub stock_mismatch_units: i64,
    pub double_charges: usize,
    pub non_terminal_sagas: usize,
    pub stuck_sagas: usize,
    pub money_mismatches: usize,
    /// Completed + cancelled counts that analytics (ClickHouse, eventually consistent) still
    /// disagrees on after waiting for it; and how long it took to agree.
    pub analytics_mismatch: i64,
    pub analytics_caught_up_ms: u64,
}

impl DemoSummary {
    pub fn is_consistent(&self) -> bool {
        self.oversold_units == 0
            && self.stock_mismatch_units == 0
            && self.double_charges == 0
            && self.non_terminal_sagas == 0
            && self.money_mismatches == 0
            && self.analytics_mismatch == 0
    }
}

struct Kind {
    sku: String,
    account: String,
    country: &'static str,
    quantity: u32,
    unit_minor: i64,
}

/// A lazy channel to service `name` at [`crate::health::url`].
pub fn channel(name: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(crate::health::url(name))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "USD".into(),
    })
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<DemoSummary> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    // A tenant per run: every figure below (analytics' included) is about this run only.
    let tenant = format!("demo-{run}");
    let tenant = tenant.as_str();
    let order = OrderServiceClient::new(channel("order")?);
    let mut payment = PaymentServiceClient::new(channel("payment")?);
    let mut inventory = InventoryServiceClient::new(channel("inventory")?);

    // The catalogue and the wallets of this run.
    let (plenty, scarce) = (format!("demo-{run}-mug"), format!("demo-{run}-lamp"));
    let (rich, poor) = (format!("demo-{run}-rich"), format!("demo-{run}-poor"));
    let scarce_stock = (args.orders / 20).max(1) as u32; // a quarter of the scarce orders fit
    let stock: BTreeMap<String, u32> =
        [(plenty.clone(), 100_000), (scarce.clone(), scarce_stock)].into();
    for (sku, quantity) in &stock {
        inventory
            .restock(RestockRequest {
                tenant_id: tenant.into(),
                sku: sku.clone(),
                quantity: *quantity,
            })
            .await
            .context("restock (is the inventory service up?)")?;
    }
    for (account, minor) in [(&rich, 1_000_000_000_i64), (&poor, 500)] {
        payment
            .open_account(OpenAccountRequest {
                account_id: account.clone(),
                tenant_id: tenant.into(),
                opening_balance: usd(minor),
            })
            .await
            .context("open account (is the payment service up?)")?;
    }

    let kinds: Vec<Kind> = (0..args.orders)
        .map(|i| match i % 20 {
            3 | 13 => Kind {
                sku: scarce.clone(),
                account: rich.clone(),
                country: "DE",
                quantity: 2,
                unit_minor: 4_500,
            },
            5 | 15 => Kind {
                sku: plenty.clone(),
                account: poor.clone(),
                country: "FR",
                quantity: 1,
                unit_minor: 2_000,
            },
            7 => Kind {
                sku: plenty.clone(),
                account: rich.clone(),
                country: "AQ",
                quantity: 1,
                unit_minor: 1_200,
            },
            11 => Kind {
                sku: plenty.clone(),
                account: rich.clone(),
                country: "US",
                quantity: 5,
                unit_minor: 1_200,
            },
            _ => Kind {
                sku: plenty.clone(),
                account: rich.clone(),
                country: "DE",
                quantity: 1,
                unit_minor: 1_200,
            },
        })
        .collect();

    // Place them, `concurrency` at a time.
    let started = std::time::Instant::now();
    let placed: Vec<anyhow::Result<(String, usize)>> = stream::iter(kinds.iter().enumerate())
        .map(|(i, k)| {
            let mut client = order.clone();
            let request = PlaceOrderRequest {
                idempotency_key: format!("demo-{run}-{i}"),
                tenant_id: tenant.into(),
                customer_id: format!("customer-{}", i % 17),
                items: vec![LineItem {
                    sku: k.sku.clone(),
                    quantity: k.quantity,
                    unit_price: usd(k.unit_minor),
                }],
                shipping_address: Some(Address {
                    name: "Demo Customer".into(),
                    line1: "1 Demo Street".into(),
                    line2: String::new(),
                    city: "Demo City".into(),
                    postal_code: "12345".into(),
                    country: k.country.into(),
                }),
                payment_account_id: k.account.clone(),
                coordination: if choreographed(i) {
                    Coordination::Choreography.into()
                } else {
                    Coordination::Saga.into()
                },
            };
            async move {
                let r = place_order_shed_aware(&mut client, request)
                    .await
                    .context("place order (is the order service up?)")?;
                let id = r.order.context("no order in the response")?.order_id;
                Ok((id, i))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let placed: Vec<(String, usize)> = placed.into_iter().collect::<anyhow::Result<_>>()?;
    let place_seconds = started.elapsed().as_secs_f64();

    // Wait for every saga to finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut outcomes: BTreeMap<String, (OrderStatus, String, f64, usize)> = BTreeMap::new();
    while outcomes.len() < placed.len() && tokio::time::Instant::now() < deadline {
        for (id, i) in &placed {
            if outcomes.contains_key(id) {
                continue;
            }
            let o = order
                .clone()
                .get_order(GetOrderRequest {
                    order_id: id.clone(),
                    min_stream_version: 0,
                })
                .await?
                .into_inner();
            if o.status() != OrderStatus::Pending {
                let ms = match (&o.created_at, &o.updated_at) {
                    (Some(a), Some(b)) => {
                        ((b.seconds - a.seconds) as f64) * 1000.0
                            + f64::from(b.nanos - a.nanos) / 1e6
                    }
                    _ => 0.0,
                };
                outcomes.insert(id.clone(), (o.status(), o.cancel_reason.clone(), ms, *i));
            }
        }
        if outcomes.len() < placed.len() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let total_seconds = started.elapsed().as_secs_f64();

    // Outcome.
    let mut durations: Vec<f64> = outcomes.values().map(|(_, _, ms, _)| *ms).collect();
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        durations
            .get(((durations.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let completed = outcomes
        .values()
        .filter(|(s, ..)| *s == OrderStatus::Completed)
        .count();
    let choreographed_completed = outcomes
        .values()
        .filter(|(s, _, _, i)| *s == OrderStatus::Completed && choreographed(*i))
        .count();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (status, reason, ..) in outcomes.values() {
        if *status == OrderStatus::Cancelled {
            *by_reason.entry(reason_class(reason)).or_default() += 1;
        }
    }

    // Invariants. Stock: units gone = units of completed orders; never more than there was.
    let mut oversold = 0;
    let mut stock_mismatch = 0;
    for (sku, restocked) in &stock {
        let s = inventory
            .get_stock(GetStockRequest {
                tenant_id: tenant.into(),
                sku: sku.clone(),
            })
            .await?
            .into_inner();
        let gone = i64::from(*restocked) - s.available - s.reserved;
        let sold: i64 = outcomes
            .values()
            .filter(|(st, _, _, i)| *st == OrderStatus::Completed && kinds[*i].sku == *sku)
            .map(|(.., i)| i64::from(kinds[*i].quantity))
            .sum();
        oversold += (gone - i64::from(*restocked)).max(0) + i64::from(s.available < 0);
        stock_mismatch += (gone - sold).abs() + s.reserved;
    }
    // Money: per order, charged minus refunded = total if completed, 0 if cancelled; no order
    // charged twice; each ledger adds up.
    let mut charges: BTreeMap<String, usize> = BTreeMap::new();
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    let mut ledger_gaps = 0;
    for account in [&rich, &poor] {
        let mut token = String::new();
        let mut moved = 0;
        loop {
            let page = payment
                .list_movements(ListMovementsRequest {
                    account_id: account.clone(),
                    page: Some(PageRequest {
                        page_size: 500,
                        page_token: token.clone(),
                    }),
                })
                .await?
                .into_inner();
            for m in &page.movements {
                let amount = m.amount.as_ref().map_or(0, |a| a.amount_minor);
                moved += amount;
                *net.entry(m.order_id.clone()).or_default() -= amount;
                if m.kind == "charge" {
                    *charges.entry(m.order_id.clone()).or_default() += 1;
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let a = payment
            .get_account(GetAccountRequest {
                account_id: account.clone(),
            })
            .await?
            .into_inner();
        let (opening, balance) = (
            a.opening_balance.map_or(0, |m| m.amount_minor),
            a.balance.map_or(0, |m| m.amount_minor),
        );
        ledger_gaps += usize::from(opening + moved != balance);
    }
    let money_mismatches = ledger_gaps
        + placed
            .iter()
            .filter(|(id, i)| {
                let k = &kinds[*i];
                let expected = match outcomes.get(id) {
                    Some((OrderStatus::Completed, ..)) => i64::from(k.quantity) * k.unit_minor,
                    _ => 0,
                };
                net.get(id).copied().unwrap_or(0) != expected
            })
            .count();
    let stuck = order
        .clone()
        .list_sagas(ListSagasRequest {
            state: 0,
            stuck_only: true,
            page: Some(PageRequest {
                page_size: 500,
                page_token: String::new(),
            }),
        })
        .await?
        .into_inner()
        .sagas
        .len();

    // Analytics sees the same outcomes, eventually (it reads the order events from Kafka).
    let run_start = std::time::SystemTime::now() - started.elapsed() - Duration::from_secs(2);
    let range = Some(TimeRange {
        from: Some(prost_types::Timestamp::from(run_start)),
        to: Some(prost_types::Timestamp::from(
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )),
    });
    let mut analytics = AnalyticsServiceClient::new(channel("analytics")?);
    let waited = std::time::Instant::now();
    let cancelled = outcomes.len() - completed;
    let analytics_mismatch = loop {
        let o = analytics
            .saga_outcomes(SagaOutcomesRequest {
                tenant_id: tenant.into(),
                range,
            })
            .await
            .context("saga outcomes (is the analytics service up?)")?
            .into_inner();
        let seen_cancelled: u64 = o.cancelled_by_reason.values().sum();
        let gap = (o.completed as i64 - completed as i64).abs()
            + (seen_cancelled as i64 - cancelled as i64).abs();
        if gap == 0 || waited.elapsed() > Duration::from_secs(60) {
            break gap;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let analytics_caught_up_ms = waited.elapsed().as_millis() as u64;

    Ok(DemoSummary {
        orders: placed.len(),
        completed,
        cancelled: outcomes.len() - completed,
        cancelled_by_reason: by_reason,
        choreographed: (
            placed.iter().filter(|(_, i)| choreographed(*i)).count(),
            choreographed_completed,
        ),
        saga_p50_ms: (pct(0.5) * 10.0).round() / 10.0,
        saga_p99_ms: (pct(0.99) * 10.0).round() / 10.0,
        place_seconds,
        total_seconds,
        oversold_units: oversold,
        stock_mismatch_units: stock_mismatch,
        double_charges: charges.values().filter(|n| **n > 1).count(),
        non_terminal_sagas: placed.len() - outcomes.len(),
        stuck_sagas: stuck,
        money_mismatches,
        analytics_mismatch,
        analytics_caught_up_ms,
    })
}

/// Groups cancel reasons (which name SKUs and amounts) into their kind.
fn reason_class(reason: &str) -> String {
    for class in [
        "insufficient stock",
        "insufficient funds",
        "we do not ship to",
        "timed out",
        "compensated by an operator",
    ] {
        if reason.contains(class) {
            return class.to_owned();
        }
    }
    reason.to_owned()
}

/// A third of the demo's orders are choreographed (as many of each kind); the rest orchestrated.
fn choreographed(i: usize) -> bool {
    i.is_multiple_of(3)
}

pub fn print(s: &DemoSummary) {
    println!();
    println!(
        "order saga demo: {} orders placed in {:.1}s, all settled after {:.1}s",
        s.orders, s.place_seconds, s.total_seconds
    );
    println!("  completed   {:>6}", s.completed);
    println!("  cancelled   {:>6}", s.cancelled);
    for (reason, n) in &s.cancelled_by_reason {
        println!("    {n:>6}  {reason}");
    }
    println!(
        "  of them choreographed {} (no orchestrator: the participants react to each other's events), {} completed",
        s.choreographed.0, s.choreographed.1
    );
    println!(
        "  saga time   p50 {:.0} ms, p99 {:.0} ms (placed -> completed or cancelled)",
        s.saga_p50_ms, s.saga_p99_ms
    );
    println!("invariants (all must be 0)");
    println!("  oversold units       {}", s.oversold_units);
    println!(
        "  stock mismatch       {} (units gone vs units of completed orders, units left reserved)",
        s.stock_mismatch_units
    );
    println!("  double charges       {}", s.double_charges);
    println!(
        "  money mismatches     {} (per order: charged - refunded vs total; per account: ledger)",
        s.money_mismatches
    );
    println!("  non-terminal sagas   {}", s.non_terminal_sagas);
    println!(
        "  analytics mismatch   {} (ClickHouse outcome counts vs the saga's; agreed after {} ms)",
        s.analytics_mismatch, s.analytics_caught_up_ms
    );
}
