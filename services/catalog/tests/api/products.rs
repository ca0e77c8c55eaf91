//! Products: versioned updates, the embedded outbox to Kafka, search visibility, recommendations.

use std::time::{Duration, Instant};

use prost::Message as _;
use shop_messaging::{testing::CommandChannel, topics};
use shop_proto::{
    catalog::{
        GetProductRequest, GetRecommendationsRequest, SearchProductsRequest, UpdateProductRequest,
    },
    common::{LineItem, Money},
    events::{OrderCompleted, ProductChanged, StockLevelChanged},
};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn versioned_updates_conflict_and_every_change_reaches_kafka_in_order() {
    let c = spawn_catalog().await;
    let events = CommandChannel::new(
        &c.settings.kafka,
        topics::CATALOG_EVENTS,
        topics::CATALOG_EVENTS,
        "t",
    );
    let created = c.create(product("mug-1", "Mug", "kitchen", 1250)).await;
    assert_eq!(created.version, 1);
    // Read-after-write for the writer: the product is there at once.
    let mut client = c.client.clone();
    let got = client
        .get_product(GetProductRequest {
            sku: "mug-1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.version, 1);
    assert_eq!(got.price.clone().expect("price").amount_minor, 1250);

    let mut changed = product("mug-1", "Mug", "kitchen", 1100);
    changed.description = "now cheaper".into();
    let updated = client
        .update_product(UpdateProductRequest {
            product: Some(changed.clone()),
            expected_version: 1,
        })
        .await
        .expect("update at the version read")
        .into_inner();
    assert_eq!(updated.version, 2);
    // A writer still holding version 1 conflicts and changes nothing.
    let stale = client
        .update_product(UpdateProductRequest {
            product: Some(product("mug-1", "Mug", "kitchen", 9999)),
            expected_version: 1,
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("version"), "{}", stale.message());
    let after = client
        .get_product(GetProductRequest {
            sku: "mug-1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(after.price.expect("price").amount_minor, 1100);
    assert_eq!(after.version, 2);

    // Bad input and missing products.
    let dup = client
        .create_product(shop_proto::catalog::CreateProductRequest {
            product: Some(product("mug-1", "Mug", "kitchen", 1)),
        })
        .await
        .expect_err("taken sku");
    assert_eq!(dup.code(), Code::FailedPrecondition);
    let bad = client
        .create_product(shop_proto::catalog::CreateProductRequest {
            product: Some(product("bad sku", "X", "kitchen", 1)),
        })
        .await
        .expect_err("bad sku");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("product.sku"));
    let missing = client
        .get_product(GetProductRequest { sku: "nope".into() })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    // The largest versions: a clear error, no overflow (it used to panic the handler).
    for expected_version in [u64::MAX, i64::MAX as u64] {
        let huge = client
            .update_product(UpdateProductRequest {
                product: Some(changed.clone()),
                expected_version,
            })
            .await
            .expect_err("huge version");
        assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
        assert!(huge.message().contains("expected_version"));
    }
    let no_version = client
        .update_product(UpdateProductRequest {
            product: Some(changed),
            expected_version: 0,
        })
        .await
        .expect_err("no version");
    assert!(no_version.message().contains("expected_version"));

    // Both changes were relayed from the documents' outbox, in order. At least once: a round
    // that published v1 while the update pushed v2 cannot clear what it read, and sends v1
    // again with v2 (consumers keep the highest version), so copies may come between them.
    let v = |e: &shop_messaging::EventEnvelope| {
        ProductChanged::decode(e.payload.as_slice()).expect("decode")
    };
    let mut versions = Vec::new();
    let second = loop {
        let e = events.next_about("mug-1", &[]).await;
        versions.push(v(&e).version);
        if v(&e).version == 2 || versions.len() > 10 {
            break e;
        }
    };
    assert_eq!(versions.first(), Some(&1), "{versions:?}");
    assert_eq!(versions.last(), Some(&2), "{versions:?}");
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "in order: {versions:?}"
    );
    assert_eq!(v(&second).price.expect("price").amount_minor, 1100);
    c.stop().await;
}

async fn search_until(
    c: &Catalog,
    r: SearchProductsRequest,
    ok: impl Fn(&shop_proto::catalog::SearchProductsResponse) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let resp = c
            .client
            .clone()
            .search_products(r.clone())
            .await
            .expect("search")
            .into_inner();
        if ok(&resp) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "search did not reflect the change within 60 s: {resp:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn search_finds_a_product_after_create_and_reflects_price_and_stock_changes() {
    let c = spawn_catalog().await;
    let stock = CommandChannel::new(
        &c.settings.kafka,
        topics::INVENTORY_EVENTS,
        topics::INVENTORY_EVENTS,
        "t",
    );
    c.create(product("lamp-7", "Reading lamp", "lighting", 4900))
        .await;
    let query = SearchProductsRequest {
        query: "lamp".into(),
        ..Default::default()
    };
    let created = search_until(&c, query.clone(), |r| {
        r.products.iter().any(|p| p.sku == "lamp-7")
    })
    .await;
    let mut client = c.client.clone();
    client
        .update_product(UpdateProductRequest {
            product: Some(product("lamp-7", "Reading lamp", "lighting", 3900)),
            expected_version: 1,
        })
        .await
        .expect("price change");
    let price = search_until(&c, query.clone(), |r| {
        r.products
            .iter()
            .any(|p| p.sku == "lamp-7" && p.price.as_ref().is_some_and(|m| m.amount_minor == 3900))
    })
    .await;
    // Out of stock until inventory says otherwise.
    let in_stock = SearchProductsRequest {
        in_stock_only: true,
        ..query.clone()
    };
    let none = client
        .search_products(in_stock.clone())
        .await
        .expect("search")
        .into_inner();
    assert!(none.products.is_empty());
    let level = stock.command(
        topics::types::STOCK_LEVEL_CHANGED,
        "lamp-7",
        &StockLevelChanged {
            sku: "lamp-7".into(),
            available: 12,
            tenant_id: "t".into(),
        },
    );
    stock.send(&level).await;
    let stock_visible = search_until(&c, in_stock, |r| {
        r.products
            .iter()
            .any(|p| p.sku == "lamp-7" && p.stock == 12)
    })
    .await;
    // The product itself carries the stock too.
    let p = client
        .get_product(GetProductRequest {
            sku: "lamp-7".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(p.stock, 12);
    println!(
        "search visibility on this machine: create {created:?}, price change {price:?}, stock change {stock_visible:?} (seed 001: stock < 1 min, price < 5 min)"
    );
    c.stop().await;
}

#[tokio::test]
async fn recommendations_count_each_completed_order_once() {
    let c = spawn_catalog().await;
    let orders = CommandChannel::new(
        &c.settings.kafka,
        topics::ORDER_EVENTS,
        topics::ORDER_EVENTS,
        "t",
    );
    let line = |sku: &str| LineItem {
        sku: sku.into(),
        quantity: 1,
        unit_price: Some(Money {
            amount_minor: 100,
            currency: "EUR".into(),
        }),
    };
    let completed = |id: &str, skus: &[&str]| {
        orders.command(
            topics::types::ORDER_COMPLETED,
            id,
            &OrderCompleted {
                order_id: id.into(),
                items: skus.iter().map(|s| line(s)).collect(),
                ..Default::default()
            },
        )
    };
    let first = completed("o1", &["pen", "ink", "pad"]);
    orders.send(&first).await;
    orders.send(&first).await; // redelivered
    orders.send(&completed("o2", &["pen", "ink"])).await;
    orders.send(&completed("o2", &["pen", "ink"])).await; // a new copy of the same order's event
    orders.send(&completed("o3", &["pad", "tape"])).await;
    let mut client = c.client.clone();
    let started = Instant::now();
    let recs = loop {
        let r = client
            .get_recommendations(GetRecommendationsRequest {
                sku: "pen".into(),
                limit: 5,
            })
            .await
            .expect("recommendations")
            .into_inner();
        let pad = client
            .get_recommendations(GetRecommendationsRequest {
                sku: "tape".into(),
                limit: 5,
            })
            .await
            .expect("recommendations")
            .into_inner();
        let ink = r.items.iter().find(|i| i.sku == "ink").map(|i| i.score);
        if ink == Some(2.0) && !pad.items.is_empty() {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not counted: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let any further (duplicate) deliveries land, then check nothing moved.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = client
        .get_recommendations(GetRecommendationsRequest {
            sku: "pen".into(),
            limit: 5,
        })
        .await
        .expect("recommendations")
        .into_inner();
    assert_eq!(again, recs, "redeliveries changed nothing");
    let scores: Vec<(String, f64)> = recs.items.into_iter().map(|i| (i.sku, i.score)).collect();
    assert_eq!(scores, vec![("ink".into(), 2.0), ("pad".into(), 1.0)]);
    let bad = client
        .get_recommendations(GetRecommendationsRequest {
            sku: "pen".into(),
            limit: 1000,
        })
        .await
        .expect_err("limit");
    assert_eq!(bad.code(), Code::InvalidArgument);
    c.stop().await;
}
