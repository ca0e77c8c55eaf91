//! The workload of one scenario: a tenant of its own, stock and accounts, a burst of orders and
//! cart checkouts that retries whatever a fault makes fail (same idempotency keys, so a retry
//! is never a second order), then waiting until every order has ended.

use std::{future::Future, time::Duration};

use futures::{StreamExt, stream};
use shop_proto::{
    cart::{AddItemRequest, CheckoutRequest, cart_service_client::CartServiceClient},
    catalog::{CreateProductRequest, Product, catalog_service_client::CatalogServiceClient},
    common::{Address, LineItem, Money},
    inventory::{RestockRequest, inventory_service_client::InventoryServiceClient},
    order::{
        Coordination, GetOrderRequest, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    payment::{OpenAccountRequest, payment_service_client::PaymentServiceClient},
};
use tonic::{Code, Status, transport::Channel};

use crate::platform::Platform;

pub const ORDERS: usize = 48;
pub const CHECKOUTS: usize = 6;
const SKUS: usize = 4;
const UNITS_PER_SKU: u32 = 25;

fn channel(url: String) -> Channel {
    Channel::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Calls `f` until it answers something other than a fault of the moment (a killed service, a
/// broker or database away): up to two minutes.
pub async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match f().await {
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Internal
                ) && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(what, status = ?s, "retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "USD".into(),
    })
}

fn address(country: &str) -> Option<Address> {
    Some(Address {
        name: "Fault Tester".into(),
        line1: "1 Chaos Road".into(),
        line2: String::new(),
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: country.into(),
    })
}

pub struct Clients {
    pub order: OrderServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
    pub payment: PaymentServiceClient<Channel>,
    pub catalog: CatalogServiceClient<Channel>,
    pub cart: CartServiceClient<Channel>,
}

impl Clients {
    pub fn new(p: &Platform) -> Self {
        Self {
            order: OrderServiceClient::new(channel(p.url("order"))),
            inventory: InventoryServiceClient::new(channel(p.url("inventory"))),
            payment: PaymentServiceClient::new(channel(p.url("payment"))),
            catalog: CatalogServiceClient::new(channel(p.url("catalog"))),
            cart: CartServiceClient::new(channel(p.url("cart"))),
        }
    }
}

/// Stock, two accounts (one too poor for most orders) and the cart's product for `tenant`.
pub async fn seed(c: &Clients, tenant: &str) {
    for i in 0..SKUS {
        let r = RestockRequest {
            tenant_id: tenant.into(),
            sku: format!("{tenant}-{i}"),
            quantity: UNITS_PER_SKU,
        };
        retrying("restock", || {
            let (mut client, r) = (c.inventory.clone(), r.clone());
            async move { client.restock(r).await }
        })
        .await
        .expect("restock");
    }
    for (account, minor) in [("rich", 10_000_000), ("poor", 700)] {
        let r = OpenAccountRequest {
            account_id: format!("{tenant}-{account}"),
            tenant_id: tenant.into(),
            opening_balance: usd(minor),
        };
        retrying("open account", || {
            let (mut client, r) = (c.payment.clone(), r.clone());
            async move { client.open_account(r).await }
        })
        .await
        .expect("open account");
    }
    let r = CreateProductRequest {
        product: Some(Product {
            sku: format!("{tenant}-0"),
            name: "Fault tolerant teapot".into(),
            category: "kitchen".into(),
            price: usd(250),
            ..Default::default()
        }),
    };
    let created = retrying("create product", || {
        let (mut client, r) = (c.catalog.clone(), r.clone());
        async move { client.create_product(r).await }
    })
    .await;
    assert!(
        created.is_ok()
            || created
                .as_ref()
                .is_err_and(|s| s.code() == Code::FailedPrecondition),
        "create product: {created:?}"
    );
}

/// The burst: `ORDERS` orders (some refused by rule: out of zone, too poor, out of stock; a
/// third of them choreographed, the rest orchestrated) and
/// `CHECKOUTS` cart checkouts, six at a time. Returns every order id placed.
pub async fn burst(c: &Clients, tenant: &str) -> Vec<String> {
    let orders = stream::iter(0..ORDERS)
        .map(|i| {
            let order = c.order.clone();
            let r = PlaceOrderRequest {
                idempotency_key: format!("{tenant}-order-{i}"),
                tenant_id: tenant.into(),
                customer_id: format!("customer-{}", i % 5),
                items: vec![LineItem {
                    sku: format!("{tenant}-{}", i % SKUS),
                    quantity: 1 + (i % 3) as u32,
                    unit_price: usd(250),
                }],
                shipping_address: address(if i % 12 == 5 { "AQ" } else { "DE" }),
                payment_account_id: format!(
                    "{tenant}-{}",
                    if i % 8 == 3 { "poor" } else { "rich" }
                ),
                // A third choreographed (among them refusals of both kinds: 11 and 35 cannot
                // pay, 5, 17, 29 and 41 go out of zone), the rest orchestrated.
                coordination: if i % 3 == 2 {
                    Coordination::Choreography.into()
                } else {
                    Coordination::Saga.into()
                },
            };
            async move {
                // Spread over ~3 s, so the fault lands mid-burst.
                tokio::time::sleep(Duration::from_millis(60 * i as u64)).await;
                let placed = retrying("place order", || {
                    let (mut client, r) = (order.clone(), r.clone());
                    async move { client.place_order(r).await }
                })
                .await
                .expect("place order");
                placed.into_inner().order.expect("order").order_id
            }
        })
        .buffer_unordered(6);
    let checkouts = stream::iter(0..CHECKOUTS)
        .map(|i| {
            let cart = c.cart.clone();
            let session = format!("{tenant}-session-{i}");
            let sku = format!("{tenant}-0");
            let tenant = tenant.to_owned();
            async move {
                tokio::time::sleep(Duration::from_millis(400 * i as u64)).await;
                let add = AddItemRequest {
                    session_id: session.clone(),
                    sku,
                    quantity: 1,
                };
                retrying("add item", || {
                    let (mut client, r) = (cart.clone(), add.clone());
                    async move { client.add_item(r).await }
                })
                .await
                .expect("add item");
                let r = CheckoutRequest {
                    session_id: session,
                    tenant_id: tenant.clone(),
                    customer_id: "cart-customer".into(),
                    shipping_address: address("DE"),
                    payment_account_id: format!("{tenant}-rich"),
                };
                let out = retrying("checkout", || {
                    let (mut client, r) = (cart.clone(), r.clone());
                    async move { client.checkout(r).await }
                })
                .await
                .expect("checkout");
                out.into_inner().order_id
            }
        })
        .buffer_unordered(3);
    let (mut ids, more): (Vec<String>, Vec<String>) =
        futures::join!(orders.collect(), checkouts.collect());
    ids.extend(more);
    ids
}

/// Waits until every order has ended; (completed, cancelled, still pending).
pub async fn settle(c: &Clients, ids: &[String], within: Duration) -> (usize, usize, usize) {
    let deadline = std::time::Instant::now() + within;
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < ids.len() && std::time::Instant::now() < deadline {
        for id in ids {
            if ended.contains_key(id) {
                continue;
            }
            let r = GetOrderRequest {
                order_id: id.clone(),
                min_stream_version: 0,
            };
            if let Ok(o) = c.order.clone().get_order(r).await {
                let status = o.into_inner().status();
                if status != OrderStatus::Pending {
                    ended.insert(id.clone(), status);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let completed = ended
        .values()
        .filter(|s| **s == OrderStatus::Completed)
        .count();
    (completed, ended.len() - completed, ids.len() - ended.len())
}

/// Changes the tenant's catalog product (its price), so the catalog's relay has an event to
/// publish.
pub async fn touch_product(c: &Clients, tenant: &str) {
    use shop_proto::catalog::{GetProductRequest, UpdateProductRequest};
    let get = GetProductRequest {
        sku: format!("{tenant}-0"),
    };
    let current = retrying("get product", || {
        let (mut client, r) = (c.catalog.clone(), get.clone());
        async move { client.get_product(r).await }
    })
    .await
    .expect("get product")
    .into_inner();
    let r = UpdateProductRequest {
        expected_version: current.version,
        product: Some(Product {
            price: usd(275),
            ..current
        }),
    };
    let updated = retrying("update product", || {
        let (mut client, r) = (c.catalog.clone(), r.clone());
        async move { client.update_product(r).await }
    })
    .await;
    assert!(updated.is_ok(), "update product: {updated:?}");
}
