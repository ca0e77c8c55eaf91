//! Replicas: with the embedded index each catalog instance keeps an index of its own, so each
//! must read every partition of the search feed (issue 12: a shared consumer group gave each
//! replica only the partitions it was assigned, and so only part of the products).

use std::time::{Duration, Instant};

use shop_proto::catalog::SearchProductsRequest;

use crate::helpers::*;

/// The SKUs `c` finds for an empty query (everything listed).
async fn found(c: &Catalog) -> Vec<String> {
    let mut skus: Vec<String> = c
        .client
        .clone()
        .search_products(SearchProductsRequest {
            page: Some(shop_proto::common::PageRequest {
                page_size: 100,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .products
        .into_iter()
        .map(|p| p.sku)
        .collect();
    skus.sort();
    skus
}

/// Waits until every one of `replicas` finds exactly `want`, within `deadline`.
async fn until_all_find(replicas: &[(&str, &Catalog)], want: &[String], deadline: Instant) {
    for (name, c) in replicas {
        loop {
            let got = found(c).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name} finds {} of {} products: {got:?}",
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn every_replica_with_an_embedded_index_finds_every_product() {
    let mut settings = catalog_settings();
    settings.search = shop_catalog::SearchSettings {
        backend: "embedded".into(),
        dir: String::new(),
        ..settings.search
    };
    // The products' keys spread them over the topic's partitions (librdkafka's default
    // partitioner, CRC32 of the key: these 12 SKUs put 3 on each of the 4).
    assert!(settings.kafka.partitions > 1, "{:?}", settings.kafka);
    // Two replicas: same database, same topics, an in-memory index each.
    let a = spawn_catalog_with(settings.clone()).await;
    let b = spawn_catalog_with(settings.clone()).await;
    let mut want: Vec<String> = (0..12).map(|n| format!("replica-item-{n:02}")).collect();
    want.sort();
    for (n, sku) in want.iter().enumerate() {
        a.create(product(
            sku,
            &format!("Item {n}"),
            "kitchen",
            100 + n as i64,
        ))
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    until_all_find(&[("a", &a), ("b", &b)], &want, deadline).await;
    // A replica started later (a new pod, a restart) reads the feed from its beginning.
    let c = spawn_catalog_with(settings).await;
    until_all_find(
        &[("c", &c)],
        &want,
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    for r in [a, b, c] {
        r.stop().await;
    }
}
