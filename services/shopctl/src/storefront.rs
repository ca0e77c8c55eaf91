//! The storefront part of `make run`: products go into the catalog, shoppers search for them,
//! fill carts, look at recommendations and check out (some submit twice), and the outcome is
//! checked: one order per cart, every cart cleared once its order completed, recommendations
//! counting each completed order once. Its own tenant, SKUs and account, so the saga demo's
//! invariants stay about the saga demo.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, stream};
use serde::Serialize;
use shop_proto::{
    cart::{
        AddItemRequest, CheckoutRequest, GetCartRequest, cart_service_client::CartServiceClient,
    },
    catalog::{
        CreateProductRequest, GetRecommendationsRequest, Product, SearchProductsRequest,
        catalog_service_client::CatalogServiceClient,
    },
    common::{Address, Money},
    inventory::{RestockRequest, inventory_service_client::InventoryServiceClient},
    order::{GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
    payment::{OpenAccountRequest, payment_service_client::PaymentServiceClient},
};
use tonic::transport::Channel;

#[derive(Debug, Serialize)]
pub struct StorefrontSummary {
    pub shoppers: usize,
    pub searchable_after_ms: u64,
    pub checkouts: usize,
    pub orders: usize,
    pub completed: usize,
    /// Orders beyond one per cart (double submits must not make any): must be 0.
    pub duplicate_orders: usize,
    /// Carts still there although their order completed: must be 0.
    pub carts_not_cleared: usize,
    /// "Bought together" score of the pair every shopper bought, against the completed orders
    /// that had it: must be 0.
    pub recommendation_mismatch: i64,
}

impl StorefrontSummary {
    pub fn is_consistent(&self) -> bool {
        self.duplicate_orders == 0
            && self.carts_not_cleared == 0
            && self.recommendation_mismatch == 0
    }
}

fn usd(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "USD".into(),
    })
}

pub async fn run(
    run: &str,
    tenant: &str,
    shoppers: usize,
    channel: impl Fn(&str) -> anyhow::Result<Channel>,
) -> anyhow::Result<StorefrontSummary> {
    let mut catalog = CatalogServiceClient::new(channel("catalog")?);
    let cart = CartServiceClient::new(channel("cart")?);
    let order = OrderServiceClient::new(channel("order")?);
    let mut inventory = InventoryServiceClient::new(channel("inventory")?);
    let mut payment = PaymentServiceClient::new(channel("payment")?);
    let marker = format!("run{run}");
    let (tea, pot) = (format!("demo-{run}-tea"), format!("demo-{run}-teapot"));
    for (sku, name, price) in [(&tea, "Green tea", 900), (&pot, "Glass teapot", 3_900)] {
        catalog
            .create_product(CreateProductRequest {
                product: Some(Product {
                    sku: sku.clone(),
                    name: name.into(),
                    description: format!("{name} from the demo shop ({marker})"),
                    category: "tea".into(),
                    price: usd(price),
                    ..Default::default()
                }),
            })
            .await
            .context("create product (is the catalog service up?)")?;
        inventory
            .restock(RestockRequest {
                tenant_id: tenant.into(),
                sku: sku.clone(),
                quantity: 10_000,
            })
            .await?;
    }
    let account = format!("demo-{run}-shopper");
    payment
        .open_account(OpenAccountRequest {
            account_id: account.clone(),
            tenant_id: tenant.into(),
            opening_balance: usd(1_000_000_000),
        })
        .await?;

    // Browse: the new products show up in search (fed from Kafka, eventually), in stock.
    let started = Instant::now();
    loop {
        let hits = catalog
            .search_products(SearchProductsRequest {
                query: marker.clone(),
                category: "tea".into(),
                in_stock_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        if hits.total_hits == 2 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the demo products did not become searchable in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let searchable_after_ms = started.elapsed().as_millis() as u64;

    // Shop: fill a cart with what search found, look at recommendations, check out; every
    // fourth shopper clicks "buy" twice at once.
    let results: Vec<anyhow::Result<(String, String, usize)>> = stream::iter(0..shoppers)
        .map(|i| {
            let (mut cart, mut catalog) = (cart.clone(), catalog.clone());
            let (marker, account, tenant) = (marker.clone(), account.clone(), tenant.to_owned());
            async move {
                let session = format!("demo-{}-{i}", &marker);
                let found = catalog
                    .search_products(SearchProductsRequest {
                        query: marker.clone(),
                        category: "tea".into(),
                        in_stock_only: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                for p in &found.products {
                    cart.add_item(AddItemRequest {
                        session_id: session.clone(),
                        sku: p.sku.clone(),
                        quantity: 1,
                    })
                    .await?;
                }
                if let Some(p) = found.products.first() {
                    catalog
                        .get_recommendations(GetRecommendationsRequest {
                            sku: p.sku.clone(),
                            limit: 3,
                        })
                        .await?;
                }
                let checkout = CheckoutRequest {
                    session_id: session.clone(),
                    tenant_id: tenant,
                    customer_id: format!("shopper-{i}"),
                    shipping_address: Some(Address {
                        name: "Demo Shopper".into(),
                        line1: "2 Demo Street".into(),
                        line2: String::new(),
                        city: "Demo City".into(),
                        postal_code: "12345".into(),
                        country: "DE".into(),
                    }),
                    payment_account_id: account,
                };
                let submits = if i % 4 == 0 { 2 } else { 1 };
                let answers = futures::future::join_all((0..submits).map(|_| {
                    let mut cart = cart.clone();
                    let checkout = checkout.clone();
                    async move { cart.checkout(checkout).await }
                }))
                .await;
                let mut ids: Vec<String> = answers
                    .into_iter()
                    .map(|a| a.map(|a| a.into_inner().order_id))
                    .collect::<Result<_, _>>()?;
                ids.sort();
                ids.dedup();
                anyhow::ensure!(ids.len() == 1, "cart {session} made {} orders", ids.len());
                Ok((session, ids.remove(0), submits))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let carts: Vec<(String, String, usize)> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let checkouts = carts.iter().map(|(.., n)| n).sum();
    let mut ids: Vec<&String> = carts.iter().map(|(_, id, _)| id).collect();
    ids.sort();
    ids.dedup();

    // The orders settle; a completed order's cart is cleared (from order.completed).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut completed = 0;
    for (_, id, _) in &carts {
        loop {
            let o = order
                .clone()
                .get_order(GetOrderRequest {
                    order_id: id.clone(),
                    min_stream_version: 0,
                })
                .await?
                .into_inner();
            if o.status() != OrderStatus::Pending {
                completed += usize::from(o.status() == OrderStatus::Completed);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "order {id} did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut carts_not_cleared = 0;
    for (session, ..) in &carts {
        let cleared_by = Instant::now() + Duration::from_secs(30);
        loop {
            let c = cart
                .clone()
                .get_cart(GetCartRequest {
                    session_id: session.clone(),
                })
                .await?
                .into_inner();
            if c.items.is_empty() {
                break;
            }
            if Instant::now() > cleared_by {
                carts_not_cleared += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every completed order had tea and teapot: their pair scores that many, once each.
    let recommended_by = Instant::now() + Duration::from_secs(30);
    let recommendation_mismatch = loop {
        let r = catalog
            .get_recommendations(GetRecommendationsRequest {
                sku: tea.clone(),
                limit: 3,
            })
            .await?
            .into_inner();
        let score = r
            .items
            .iter()
            .find(|x| x.sku == pot)
            .map_or(0.0, |x| x.score);
        let gap = (score as i64 - completed as i64).abs();
        if gap == 0 || Instant::now() > recommended_by {
            break gap;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(StorefrontSummary {
        shoppers,
        searchable_after_ms,
        checkouts,
        orders: ids.len(),
        completed,
        duplicate_orders: ids.len().saturating_sub(carts.len()),
        carts_not_cleared,
        recommendation_mismatch,
    })
}

pub fn print(s: &StorefrontSummary) {
    println!();
    println!(
        "storefront: {} shoppers searched (new products searchable after {} ms), filled carts, checked out {} times -> {} orders, {} completed",
        s.shoppers, s.searchable_after_ms, s.checkouts, s.orders, s.completed
    );
    println!(
        "  duplicate orders        {} (double submits make no second order)",
        s.duplicate_orders
    );
    println!(
        "  carts not cleared       {} (a completed order clears its cart)",
        s.carts_not_cleared
    );
    println!(
        "  recommendation mismatch {} (tea+teapot bought together, counted once per completed order)",
        s.recommendation_mismatch
    );
}
