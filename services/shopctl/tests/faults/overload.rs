//! Overload must not be permanent: orders offered far past what the platform can do, with step
//! timeouts short enough that steps time out while their commands still queue, then the load
//! stops. Every saga must end, and every outbox drain, within a bounded time, with the
//! invariants intact. Before the fix, such a burst left sagas in flight for more than ten
//! minutes while each timeout enqueued another copy of an unsent command (the backlog grew by
//! 90 rows/s).

use std::time::{Duration, Instant};

use shop_proto::{
    common::{Address, LineItem, Money},
    inventory::RestockRequest,
    order::PlaceOrderRequest,
    payment::OpenAccountRequest,
};
use tonic::Code;

use crate::{
    load::{self, Clients, retrying},
    platform::{PG_GROUPS, PG_URL, Platform},
};

/// Offered load and for how long: far past what a debug build of the platform completes.
const RATE: u64 = 150;
const SECONDS: u64 = 12;
/// The bound on sagas in flight for the scenario (the default is for release builds).
pub const MAX_IN_FLIGHT: &str = "80";
/// Step timeouts short enough to fire while commands still queue (shipping's is already 3 s).
pub const SETTINGS: &[(&str, &str)] = &[
    ("SHOP__SAGA__MAX_IN_FLIGHT", MAX_IN_FLIGHT),
    ("SHOP__SAGA__RESERVE_TIMEOUT_MS", "1500"),
    ("SHOP__SAGA__CHARGE_TIMEOUT_MS", "1500"),
    ("SHOP__SAGA__SETTLE_TIMEOUT_MS", "1500"),
];

pub struct Outcome {
    pub ids: Vec<String>,
    pub shed: usize,
    /// Pending outbox rows of every PostgreSQL service once the sagas ended, and how long
    /// they took to reach zero after that (None: they did not within the bound).
    pub drained_after: Option<Duration>,
}

/// Seeds plenty of stock and money for `tenant`, offers `RATE` orders/s for `SECONDS` without
/// retrying a shed one, and returns what was accepted and shed. The sagas are then waited for
/// by the caller; [`drained`] waits for the outboxes.
pub async fn offer(c: &Clients, tenant: &str) -> (Vec<String>, usize) {
    let r = RestockRequest {
        tenant_id: tenant.into(),
        sku: format!("{tenant}-hot"),
        quantity: 1_000_000,
    };
    retrying("restock", || {
        let (mut client, r) = (c.inventory.clone(), r.clone());
        async move { client.restock(r).await }
    })
    .await
    .expect("restock");
    let r = OpenAccountRequest {
        account_id: format!("{tenant}-deep"),
        tenant_id: tenant.into(),
        opening_balance: Some(Money {
            amount_minor: 1_000_000_000,
            currency: "USD".into(),
        }),
    };
    retrying("open account", || {
        let (mut client, r) = (c.payment.clone(), r.clone());
        async move { client.open_account(r).await }
    })
    .await
    .expect("open account");

    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut calls = Vec::new();
    for i in 0..RATE * SECONDS {
        tick.tick().await;
        let mut order = c.order.clone();
        let r = PlaceOrderRequest {
            idempotency_key: format!("{tenant}-flood-{i}"),
            tenant_id: tenant.into(),
            customer_id: format!("flood-{}", i % 50),
            items: vec![LineItem {
                sku: format!("{tenant}-hot"),
                quantity: 1,
                unit_price: Some(Money {
                    amount_minor: 100,
                    currency: "USD".into(),
                }),
            }],
            shipping_address: Some(Address {
                name: "Flood".into(),
                line1: "1 Surge St".into(),
                line2: String::new(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
            payment_account_id: format!("{tenant}-deep"),
            ..Default::default()
        };
        calls.push(tokio::spawn(async move { order.place_order(r).await }));
    }
    let (mut ids, mut shed) = (Vec::new(), 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(r) => ids.extend(r.into_inner().order.map(|o| o.order_id)),
            Err(s) if s.code() == Code::ResourceExhausted => shed += 1,
            // Anything else past saturation (a deadline) is the client's loss, not the test's:
            // what matters is what was accepted.
            Err(s) => tracing::debug!(status = ?s, "place order failed"),
        }
    }
    (ids, shed)
}

/// Pending (unpublished, unparked) outbox rows over the platform's PostgreSQL services.
async fn backlog(p: &Platform) -> i64 {
    let mut total = 0;
    for (service, _) in PG_GROUPS {
        let url = PG_URL.replace("/postgres", &format!("/{}_{service}", p.run));
        let pool = sqlx::PgPool::connect(&url).await.expect("database");
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .expect("outbox backlog");
        total += n;
        pool.close().await;
    }
    total
}

/// Waits up to `within` for every outbox to be empty; how long it took.
pub async fn drained(p: &Platform, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if backlog(p).await == 0 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// The whole scenario: settings on, flood, every saga waited for (bounded), outboxes drained
/// (bounded), settings off again.
pub async fn run(p: &mut Platform, c: &Clients, tenant: &str) -> Outcome {
    p.restart("order", SETTINGS).await;
    let (ids, shed) = offer(c, tenant).await;
    let _ = load::settle(c, &ids, Duration::from_secs(150)).await;
    let drained_after = drained(p, Duration::from_secs(60)).await;
    let off: Vec<(&str, &str)> = SETTINGS.iter().map(|(k, _)| (*k, "")).collect();
    p.restart("order", &off).await;
    Outcome {
        ids,
        shed,
        drained_after,
    }
}
