//! `spawn()`: catalog, order and cart on free ports, sharing one private topic namespace.

use std::time::Duration;

pub use shop_cart::{domain::Limits, store::CartStore};
use shop_core::config::RedisSettings;
use shop_messaging::{
    kafka::KafkaSettings,
    testing::{self, CommandChannel},
    topics,
};
use shop_proto::{
    cart::{
        AddItemRequest, Cart, CheckoutRequest, CheckoutResponse, GetCartRequest,
        cart_service_client::CartServiceClient,
    },
    catalog::{CreateProductRequest, Product, catalog_service_client::CatalogServiceClient},
    common::{Address, Money},
    events::{OrderCancelled, OrderCompleted},
    order::{GetOrderRequest, order_service_client::OrderServiceClient},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Platform {
    pub cart: CartServiceClient<Channel>,
    pub catalog: CatalogServiceClient<Channel>,
    pub order: OrderServiceClient<Channel>,
    pub kafka: KafkaSettings,
    order_settings: shop_order::Settings,
    catalog_settings: shop_catalog::Settings,
    stop: CancellationToken,
}

fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

/// The cart store on the test Redis, to set up states the API cannot reach.
pub async fn store() -> CartStore {
    let client = redis::Client::open(RedisSettings::default().url.as_str()).expect("redis url");
    let redis = redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis");
    CartStore::new(redis, Limits::default(), "")
}

pub fn session() -> String {
    format!("s-{}", uuid::Uuid::now_v7().simple())
}

pub async fn spawn(limits: Limits) -> Platform {
    let base = testing::service_settings("cart");
    let kafka = base.kafka.clone();
    let stop = CancellationToken::new();

    let catalog_settings = shop_catalog::Settings {
        // Port 0 (the default): free ports.
        server: shop_core::config::ServerSettings::default(),
        kafka: kafka.clone(),
        mongo: shop_catalog::MongoSettings {
            database: format!("test_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            ..Default::default()
        },
        // The cart's tests do not search: an in-memory index of the catalog's own.
        search: shop_catalog::SearchSettings {
            backend: "embedded".into(),
            dir: String::new(),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = shop_catalog::build(&catalog_settings, stop.clone())
        .await
        .expect("catalog");
    let catalog_addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());

    let order_settings = shop_order::Settings {
        service: base.clone(),
        ..Default::default()
    };
    let app = shop_order::build(&order_settings, stop.clone())
        .await
        .expect("order");
    let order_addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());

    let cart_settings = shop_cart::Settings {
        // Port 0 (the default): free ports.
        server: shop_core::config::ServerSettings::default(),
        kafka: kafka.clone(),
        catalog_url: format!("http://{catalog_addr}"),
        order_url: format!("http://{order_addr}"),
        cart: limits,
        relay_poll_ms: 50,
        ..Default::default()
    };
    let app = shop_cart::build(&cart_settings, stop.clone())
        .await
        .expect("cart");
    let cart_addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());

    Platform {
        cart: CartServiceClient::new(channel(cart_addr)),
        catalog: CatalogServiceClient::new(channel(catalog_addr)),
        order: OrderServiceClient::new(channel(order_addr)),
        kafka,
        order_settings,
        catalog_settings,
        stop,
    }
}

impl Platform {
    pub async fn product(&self, sku: &str, price_minor: i64) {
        self.catalog
            .clone()
            .create_product(CreateProductRequest {
                product: Some(Product {
                    sku: sku.into(),
                    name: sku.into(),
                    category: "test".into(),
                    price: Some(Money {
                        amount_minor: price_minor,
                        currency: "EUR".into(),
                    }),
                    ..Default::default()
                }),
            })
            .await
            .expect("create product");
    }

    pub async fn get(&self, session: &str) -> Cart {
        self.cart
            .clone()
            .get_cart(GetCartRequest {
                session_id: session.into(),
            })
            .await
            .expect("get cart")
            .into_inner()
    }

    pub async fn add(
        &self,
        session: &str,
        sku: &str,
        quantity: u32,
    ) -> Result<Cart, tonic::Status> {
        self.cart
            .clone()
            .add_item(AddItemRequest {
                session_id: session.into(),
                sku: sku.into(),
                quantity,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn checkout(&self, session: &str) -> Result<CheckoutResponse, tonic::Status> {
        self.checkout_paying(session, "acc").await
    }

    /// A checkout of `session` paid from `account` (another account: another request).
    pub async fn checkout_paying(
        &self,
        session: &str,
        account: &str,
    ) -> Result<CheckoutResponse, tonic::Status> {
        self.cart
            .clone()
            .checkout(CheckoutRequest {
                session_id: session.into(),
                tenant_id: "t".into(),
                customer_id: format!("customer-{session}"),
                shipping_address: Some(Address {
                    name: "Ada".into(),
                    line1: "Hauptstr. 1".into(),
                    city: "Berlin".into(),
                    postal_code: "10115".into(),
                    country: "DE".into(),
                    ..Default::default()
                }),
                payment_account_id: account.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The order's lines as (sku, quantity), in order.
    pub async fn order_items(&self, order_id: &str) -> Vec<(String, u32)> {
        self.order
            .clone()
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
                min_stream_version: 1,
            })
            .await
            .expect("order")
            .into_inner()
            .items
            .into_iter()
            .map(|i| (i.sku, i.quantity))
            .collect()
    }

    /// Sends the order's end (completed or cancelled) as the order service publishes it.
    pub async fn end_order(&self, events: &CommandChannel, order_id: &str, completed: bool) {
        let event = if completed {
            events.command(
                topics::types::ORDER_COMPLETED,
                order_id,
                &OrderCompleted {
                    order_id: order_id.into(),
                    ..Default::default()
                },
            )
        } else {
            events.command(
                topics::types::ORDER_CANCELLED,
                order_id,
                &OrderCancelled {
                    order_id: order_id.into(),
                    reason: "insufficient funds".into(),
                },
            )
        };
        events.send(&event).await;
    }

    /// The cart once `ok` holds (within 30 s).
    pub async fn eventually(&self, session: &str, ok: impl Fn(&Cart) -> bool) -> Cart {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.get(session).await;
            if ok(&c) {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cart never got there: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        testing::drop_database(&self.order_settings.service).await;
        if let Ok(client) = mongodb::Client::with_uri_str(&self.catalog_settings.mongo.url).await {
            let _ = client
                .database(&self.catalog_settings.mongo.database)
                .drop()
                .await;
        }
    }
}
