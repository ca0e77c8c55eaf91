//! `spawn_platform()`: the four saga services on free ports, with their own databases and a
//! topic prefix of their own, plus clients and invariant checks.

use std::time::Duration;

use shop_messaging::{service::PgServiceSettings, testing};
use shop_order::SagaSettings;
use shop_proto::{
    common::{Address, LineItem, Money},
    inventory::{
        GetStockRequest, RestockRequest, inventory_service_client::InventoryServiceClient,
    },
    order::{
        GetOrderRequest, GetSagaRequest, Order, OrderStatus, PlaceOrderRequest, PlaceOrderResponse,
        Saga, order_service_client::OrderServiceClient,
    },
    payment::{
        GetAccountRequest, OpenAccountRequest, payment_service_client::PaymentServiceClient,
    },
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const TENANT: &str = "acme";

pub struct Platform {
    pub order: OrderServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
    pub payment: PaymentServiceClient<Channel>,
    pub order_db: PgPool,
    pub payment_db: PgPool,
    pub settings: Vec<PgServiceSettings>,
    pub order_settings: shop_order::Settings,
    ship_settings: PgServiceSettings,
    stops: Vec<CancellationToken>,
}

/// Which services to run (a test leaves one out to play a participant that never answers).
#[derive(Clone, Copy)]
pub struct Run {
    pub order: bool,
    pub shipping: bool,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            order: true,
            shipping: true,
        }
    }
}

/// Fast timeouts so the failure paths run in seconds.
pub fn quick_saga() -> SagaSettings {
    SagaSettings {
        reserve_timeout_ms: 5_000,
        charge_timeout_ms: 5_000,
        ship_timeout_ms: 1_500,
        ship_attempts: 2,
        settle_timeout_ms: 5_000,
        sweep_interval_ms: 200,
        ..SagaSettings::default()
    }
}

fn with_db(base: &PgServiceSettings, service: &str) -> PgServiceSettings {
    let mut s = base.clone();
    s.database.url = format!("{}_{service}", base.database.url);
    s
}

pub async fn spawn_platform(saga: SagaSettings, run: Run) -> Platform {
    spawn_platform_with(saga, run, shop_order::twopc::TwoPcSettings::default()).await
}

/// As [`spawn_platform`], with two-phase-commit settings of the test's own.
pub async fn spawn_platform_with(
    saga: SagaSettings,
    run: Run,
    twopc: shop_order::twopc::TwoPcSettings,
) -> Platform {
    let base = testing::service_settings("saga");
    let (inv, pay, ship) = (
        with_db(&base, "inventory"),
        with_db(&base, "payment"),
        with_db(&base, "shipping"),
    );
    let mut order_settings = shop_order::Settings {
        service: with_db(&base, "order"),
        saga,
        event_store: shop_order::EventStoreSettings {
            // Small, so the saga tests cross snapshots too.
            snapshot_every: 3,
            projection_poll_ms: 100,
            ..Default::default()
        },
        twopc,
        // Nobody there until the participants below are up.
        shipping_url: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    let mut stops = Vec::new();
    let mut start = |stop: CancellationToken| stops.push(stop);

    let stop = CancellationToken::new();
    let app = shop_inventory::build(&inv, stop.clone())
        .await
        .expect("inventory");
    let inventory_addr = app.grpc_addr();
    order_settings.inventory_url = format!("http://{inventory_addr}");
    tokio::spawn(app.run_until_stopped());
    start(stop);

    let stop = CancellationToken::new();
    let app = shop_payment::build(&pay, stop.clone())
        .await
        .expect("payment");
    let payment_addr = app.grpc_addr();
    order_settings.payment_url = format!("http://{payment_addr}");
    tokio::spawn(app.run_until_stopped());
    start(stop);

    if run.shipping {
        let stop = CancellationToken::new();
        let settings = shop_shipping::Settings {
            service: ship.clone(),
            ..Default::default()
        };
        let app = shop_shipping::build(&settings, stop.clone())
            .await
            .expect("shipping");
        order_settings.shipping_url = format!("http://{}", app.grpc_addr());
        tokio::spawn(app.run_until_stopped());
        start(stop);
    }

    let order_addr = if run.order {
        let stop = CancellationToken::new();
        let app = shop_order::build(&order_settings, stop.clone())
            .await
            .expect("order");
        let addr = app.grpc_addr();
        tokio::spawn(app.run_until_stopped());
        start(stop);
        addr.to_string()
    } else {
        "127.0.0.1:1".to_owned() // replaced by the test that runs the order service itself
    };
    let connect = |addr: String| async move {
        Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy()
    };
    Platform {
        order: OrderServiceClient::new(connect(order_addr).await),
        inventory: InventoryServiceClient::new(connect(inventory_addr.to_string()).await),
        payment: PaymentServiceClient::new(connect(payment_addr.to_string()).await),
        order_db: pool_or_lazy(&order_settings.service).await,
        payment_db: testing::pool(&pay).await,
        settings: vec![inv, pay, ship.clone(), order_settings.service.clone()],
        order_settings,
        ship_settings: ship,
        stops,
    }
}

/// The order database may not exist yet when the order service runs as a separate process.
async fn pool_or_lazy(settings: &PgServiceSettings) -> PgPool {
    shop_core::db::create_database_if_missing(&settings.database.url.parse().expect("url"))
        .await
        .expect("create db");
    testing::pool(settings).await
}

pub fn address(country: &str) -> Address {
    Address {
        name: "Ada Lovelace".into(),
        line1: "1 Main St".into(),
        line2: String::new(),
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: country.into(),
    }
}

pub fn request(
    key: &str,
    sku: &str,
    quantity: u32,
    unit_minor: i64,
    account: &str,
    country: &str,
) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        tenant_id: TENANT.into(),
        customer_id: "cust-1".into(),
        items: vec![LineItem {
            sku: sku.into(),
            quantity,
            unit_price: Some(Money {
                amount_minor: unit_minor,
                currency: "USD".into(),
            }),
        }],
        shipping_address: Some(address(country)),
        payment_account_id: account.into(),
        ..Default::default()
    }
}

/// Whether saga step `name` (a step or a compensation) is done.
pub fn step_done(s: &Saga, name: &str) -> bool {
    s.steps
        .iter()
        .any(|st| st.name == name && st.status == "done")
}

impl Platform {
    /// Polls saga `id` until `until` holds (60 s at most), and returns it.
    pub async fn saga_when(&self, id: &str, what: &str, until: impl Fn(&Saga) -> bool) -> Saga {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = self
                .order
                .clone()
                .get_saga(GetSagaRequest {
                    saga_id: id.to_owned(),
                })
                .await
                .expect("saga")
                .into_inner();
            if until(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga never got there ({what}): {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the shipping service (for tests that began without it).
    pub async fn start_shipping(&mut self) {
        let stop = CancellationToken::new();
        let settings = shop_shipping::Settings {
            service: self.ship_settings.clone(),
            ..Default::default()
        };
        let app = shop_shipping::build(&settings, stop.clone())
            .await
            .expect("shipping");
        tokio::spawn(app.run_until_stopped());
        self.stops.push(stop);
    }

    pub async fn restock(&self, sku: &str, quantity: u32) {
        self.inventory
            .clone()
            .restock(RestockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
                quantity,
            })
            .await
            .expect("restock");
    }

    pub async fn open_account(&self, account: &str, minor: i64) {
        self.payment
            .clone()
            .open_account(OpenAccountRequest {
                account_id: account.into(),
                tenant_id: TENANT.into(),
                opening_balance: Some(Money {
                    amount_minor: minor,
                    currency: "USD".into(),
                }),
            })
            .await
            .expect("open account");
    }

    /// (available, reserved)
    pub async fn stock(&self, sku: &str) -> (i64, i64) {
        let s = self
            .inventory
            .clone()
            .get_stock(GetStockRequest {
                tenant_id: TENANT.into(),
                sku: sku.into(),
            })
            .await
            .expect("stock")
            .into_inner();
        (s.available, s.reserved)
    }

    pub async fn balance(&self, account: &str) -> i64 {
        self.payment
            .clone()
            .get_account(GetAccountRequest {
                account_id: account.into(),
            })
            .await
            .expect("account")
            .into_inner()
            .balance
            .map_or(0, |m| m.amount_minor)
    }

    pub async fn place(&self, r: PlaceOrderRequest) -> PlaceOrderResponse {
        self.order
            .clone()
            .place_order(r)
            .await
            .expect("place order")
            .into_inner()
    }

    /// Places `r` and returns the order's id.
    pub async fn place_id(&self, r: PlaceOrderRequest) -> String {
        self.place(r).await.order.expect("order").order_id
    }

    /// Waits until the order is COMPLETED or CANCELLED.
    pub async fn settled(&self, order_id: &str) -> Order {
        self.settled_within(order_id, Duration::from_secs(60)).await
    }

    pub async fn settled_within(&self, order_id: &str, within: Duration) -> Order {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let o = self
                .order
                .clone()
                .get_order(GetOrderRequest {
                    order_id: order_id.into(),
                    min_stream_version: 0,
                })
                .await
                .expect("get order")
                .into_inner();
            if o.status() != OrderStatus::Pending {
                return o;
            }
            if tokio::time::Instant::now() >= deadline {
                let saga = self
                    .order
                    .clone()
                    .get_saga(shop_proto::order::GetSagaRequest {
                        saga_id: order_id.into(),
                    })
                    .await;
                let trace = self.trace(order_id).await;
                panic!("order {order_id} did not settle within {within:?}: {saga:#?}\n{trace}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message keyed by `order_id` that any of the four services enqueued, with when it
    /// was published and which consumers applied it (for a test that failed to settle).
    pub async fn trace(&self, order_id: &str) -> String {
        type Sent = (uuid::Uuid, String, String, String, Option<String>, i32);
        type Applied = (uuid::Uuid, String, i32, i64, String, String);
        let mut sent: Vec<(String, Sent)> = Vec::new();
        let mut applied: Vec<Applied> = Vec::new();
        let mut pools = Vec::new();
        for s in &self.settings {
            let name = s.database.url.rsplit('_').next().unwrap_or("?").to_owned();
            let Ok(pool) = sqlx::PgPool::connect(&s.database.url).await else {
                continue;
            };
            let rows: Vec<Sent> = sqlx::query_as(
                "SELECT event_id, topic, event_type, created_at::text, published_at::text, attempts
                   FROM outbox WHERE partition_key = $1 ORDER BY id",
            )
            .bind(order_id)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            sent.extend(rows.into_iter().map(|r| (name.clone(), r)));
            pools.push(pool);
        }
        let ids: Vec<uuid::Uuid> = sent.iter().map(|(_, r)| r.0).collect();
        for pool in &pools {
            let rows: Vec<Applied> = sqlx::query_as(
                "SELECT event_id, consumer, kafka_partition, kafka_offset, outcome,
                        processed_at::text FROM inbox WHERE event_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await
            .unwrap_or_default();
            applied.extend(rows);
            pool.close().await;
        }
        let mut out = format!("messages keyed {order_id}:\n");
        for (from, (id, topic, kind, created, published, attempts)) in &sent {
            out.push_str(&format!(
                "  {created} {from} -> {topic} {kind} {id} published={published:?} attempts={attempts}\n"
            ));
            for (_, consumer, partition, offset, outcome, at) in
                applied.iter().filter(|a| a.0 == *id)
            {
                out.push_str(&format!(
                    "      applied by {consumer} from partition {partition} offset {offset}: {outcome} at {at}\n"
                ));
            }
        }
        out
    }

    /// Orders charged more than once, in the payment ledger: must be 0.
    pub async fn double_charges(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT order_id FROM movement WHERE kind = 'charge'
                                   GROUP BY order_id HAVING count(*) > 1) d",
        )
        .fetch_one(&self.payment_db)
        .await
        .expect("double charges")
    }

    /// Net money taken per order (charges minus refunds), keyed by order id.
    pub async fn net_charged(&self) -> std::collections::HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT order_id, (-sum(amount_minor))::bigint FROM movement GROUP BY order_id",
        )
        .fetch_all(&self.payment_db)
        .await
        .expect("net charged")
        .into_iter()
        .collect()
    }

    /// Stops the order service (the last one started) as if it died, and starts another on
    /// the same database with `settings`: what a restarted coordinator finds.
    pub async fn restart_order(&mut self, settings: shop_order::Settings) {
        self.stop_order().await;
        self.start_order(settings).await;
    }

    /// Stops the order service (the last one started) as if it died.
    pub async fn stop_order(&mut self) {
        if let Some(old) = self.stops.pop() {
            old.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Starts an order service on the same database with `settings` (after [`Self::stop_order`]).
    pub async fn start_order(&mut self, settings: shop_order::Settings) {
        let stop = CancellationToken::new();
        let app = shop_order::build(&settings, stop.clone())
            .await
            .expect("order again");
        let addr = app.grpc_addr();
        tokio::spawn(app.run_until_stopped());
        self.stops.push(stop);
        self.order = OrderServiceClient::new(
            Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect_lazy(),
        );
        self.order_settings = settings;
    }

    /// A pool on the shipping database.
    pub async fn shipping_db(&self) -> PgPool {
        testing::pool(&self.ship_settings).await
    }

    pub async fn stop(self) {
        for s in &self.stops {
            s.cancel();
        }
        self.order_db.close().await;
        self.payment_db.close().await;
        for s in &self.settings {
            testing::drop_database(s).await;
        }
    }
}
