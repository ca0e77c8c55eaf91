//! Product views and likes counted in two regions at once, merged through the real broker, with
//! stale and repeated states thrown in: both regions end at the exact totals.

use std::time::Duration;

use shop_catalog::regions::counters::{Counters, counters_changed};
use shop_messaging::{testing::CommandChannel, topics};
use shop_proto::catalog::{
    GetProductStatsRequest, LikeProductRequest, ProductStats, RecordViewRequest,
};
use tonic::Code;

use crate::{helpers::*, profiles::two_regions};

async fn view(c: &Catalog, region: &str, sku: &str, count: u32) -> ProductStats {
    c.stats
        .clone()
        .record_view(RecordViewRequest {
            region: region.into(),
            sku: sku.into(),
            count,
        })
        .await
        .expect("record view")
        .into_inner()
}

async fn like(c: &Catalog, region: &str, sku: &str, like: bool) -> ProductStats {
    c.stats
        .clone()
        .like_product(LikeProductRequest {
            region: region.into(),
            sku: sku.into(),
            like,
        })
        .await
        .expect("like")
        .into_inner()
}

async fn stats(c: &Catalog, region: &str, sku: &str) -> Result<ProductStats, tonic::Status> {
    c.stats
        .clone()
        .get_product_stats(GetProductStatsRequest {
            region: region.into(),
            sku: sku.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn views_and_likes_counted_in_two_regions_converge_to_the_exact_totals() {
    let (eu, us) = two_regions(0).await;
    let sku = format!("ctr-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    eu.create(product(&sku, "Counted", "tools", 100)).await;
    // A state of eu's from before any of this, sent late and twice: it must change nothing.
    let mut stale = Counters::default();
    stale.views.increment("eu", 1);
    let topic = eu.settings.kafka.topic(topics::CATALOG_COUNTERS);
    let channel = CommandChannel::new(
        &eu.settings.kafka,
        topics::CATALOG_COUNTERS,
        topics::CATALOG_COUNTERS,
        "",
    );
    // Both regions count at once, each only its own entry.
    let at_eu = async {
        for i in 0..20u32 {
            view(&eu, "eu", &sku, i % 3 + 1).await;
            like(&eu, "eu", &sku, i % 4 != 0).await;
        }
    };
    let at_us = async {
        for i in 0..15u32 {
            view(&us, "us", &sku, 2).await;
            like(&us, "us", &sku, i % 2 == 0).await;
        }
    };
    tokio::join!(at_eu, at_us);
    for _ in 0..2 {
        channel
            .send(&counters_changed(&topic, &sku, "eu", &stale).envelope)
            .await;
    }
    let views: u64 = (0..20u64).map(|i| i % 3 + 1).sum::<u64>() + 15 * 2;
    let likes: i64 = (0..20)
        .map(|i| if i % 4 != 0 { 1 } else { -1 })
        .sum::<i64>()
        + (0..15)
            .map(|i| if i % 2 == 0 { 1 } else { -1 })
            .sum::<i64>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (a, b) = loop {
        let (a, b) = (
            stats(&eu, "eu", &sku).await.expect("eu"),
            stats(&us, "us", &sku).await.expect("us"),
        );
        if (a.views, a.likes, b.views, b.likes) == (views, likes, views, likes) {
            break (a, b);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never converged: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a.per_region, b.per_region);
    assert_eq!(a.per_region["eu"].views, views - 30);
    assert_eq!(a.per_region["us"].views, 30);
    // Still exact once the stale copies have surely been read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = stats(&us, "us", &sku).await.expect("us");
    assert_eq!((late.views, late.likes), (views, likes));
    // Bad input changes nothing and names the field.
    let e = stats(&eu, "eu", "no-such-sku").await.expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = eu
        .stats
        .clone()
        .record_view(RecordViewRequest {
            region: "eu".into(),
            sku: sku.clone(),
            count: 1001,
        })
        .await
        .expect_err("too many");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("count"), "{}", e.message());
    assert_eq!(stats(&eu, "eu", &sku).await.expect("eu").views, views);
    eu.stop().await;
    us.stop().await;
}
