//! Hostile requests to every catalog RPC (NUL bytes, megabyte strings, integer extremes,
//! missing parts), against the real MongoDB-wire server and search node: refused or answered,
//! never INTERNAL or a panic (an `expected_version` of u64::MAX used to panic the handler).

use proptest::prelude::*;
use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
use shop_proto::{
    catalog::{
        CreateProductRequest, GetProductRequest, GetProductStatsRequest, GetProfileRequest,
        GetRecommendationsRequest, LikeProductRequest, Product, RecordViewRequest,
        SearchProductsRequest, SessionToken, UpdateProductRequest, UpdateProfileRequest,
    },
    common::PageRequest,
};

use crate::helpers::{product, spawn_catalog};

type Mutation = fn(&mut Product, String);

const MUTATIONS: &[Mutation] = &[
    |p, s| p.sku = s,
    |p, s| p.name = s,
    |p, s| p.description = s,
    |p, s| p.category = s,
    |p, s| p.price.as_mut().expect("price").currency = s,
    |p, s| {
        p.attributes.insert(s.clone(), s);
    },
    |p, s| {
        p.attributes.insert("colour".into(), s);
    },
];

fn products() -> impl Strategy<Value = Product> {
    let mutated = (0..MUTATIONS.len(), arbitrary::string()).prop_map(|(i, s)| {
        let mut p = product("fuzz-1", "Fuzz", "tools", 100);
        MUTATIONS[i](&mut p, s);
        p
    });
    let priced = (arbitrary::i64_edge(), arbitrary::i64_edge()).prop_map(|(minor, stock)| {
        let mut p = product("fuzz-2", "Fuzz", "tools", minor);
        p.stock = stock;
        p
    });
    prop_oneof![3 => mutated, 1 => priced]
}

#[tokio::test]
async fn no_request_to_the_catalog_is_answered_with_a_server_fault() {
    let catalog = spawn_catalog().await;
    let mut c = catalog.client.clone();
    let created = c
        .create_product(CreateProductRequest {
            product: Some(product("fuzz-0", "Fuzz", "tools", 100)),
        })
        .await
        .expect("a valid product")
        .into_inner();

    let products = sample(products(), 120, 31);
    let versions = sample(arbitrary::u64_edge(), 120, 32);
    let strings = sample(arbitrary::string(), 120, 33);
    let numbers = sample((arbitrary::i64_edge(), arbitrary::u32_edge()), 120, 34);
    for (((p, v), s), (n, limit)) in products.into_iter().zip(versions).zip(strings).zip(numbers) {
        let r = CreateProductRequest {
            product: Some(p.clone()),
        };
        assert_no_server_fault("CreateProduct", &r, &c.create_product(r.clone()).await);
        let r = UpdateProductRequest {
            product: Some(Product {
                sku: created.sku.clone(),
                ..p
            }),
            expected_version: v,
        };
        assert_no_server_fault("UpdateProduct", &r, &c.update_product(r.clone()).await);
        let r = GetProductRequest { sku: s.clone() };
        assert_no_server_fault("GetProduct", &r, &c.get_product(r.clone()).await);
        let r = SearchProductsRequest {
            query: s.clone(),
            category: s.clone(),
            min_price_minor: n,
            max_price_minor: n.saturating_mul(2),
            in_stock_only: n % 2 == 0,
            sort: i32::try_from(n % 7).unwrap_or(0),
            page: Some(PageRequest {
                page_size: limit,
                page_token: s.clone(),
            }),
        };
        assert_no_server_fault("SearchProducts", &r, &c.search_products(r.clone()).await);
        let r = GetRecommendationsRequest { sku: s, limit };
        assert_no_server_fault(
            "GetRecommendations",
            &r,
            &c.get_recommendations(r.clone()).await,
        );
    }
    catalog.stop().await;
}

#[tokio::test]
async fn no_request_to_the_profiles_is_answered_with_a_server_fault() {
    let catalog = spawn_catalog().await;
    let mut c = catalog.profiles.clone();
    catalog
        .create(product("fuzz-stats", "Fuzz", "tools", 100))
        .await;
    let strings = sample(arbitrary::string(), 150, 41);
    let numbers = sample((arbitrary::u64_edge(), arbitrary::u32_edge()), 150, 42);
    let regions = ["eu", "us", ""];
    for (i, (s, (n, wait))) in strings.into_iter().zip(numbers).enumerate() {
        let region = if i % 4 == 3 {
            s.clone()
        } else {
            regions[i % 3].to_owned()
        };
        // Waits stay short: a token far ahead makes a valid request wait this long.
        let wait_ms = wait % 50;
        let session = Some(SessionToken {
            clock: [(
                if i % 2 == 0 {
                    "eu".to_owned()
                } else {
                    s.clone()
                },
                n,
            )]
            .into(),
            region: s.clone(),
        });
        let r = UpdateProfileRequest {
            region: region.clone(),
            user_id: if i % 5 == 0 {
                s.clone()
            } else {
                "fuzz-user".into()
            },
            set: [(s.clone(), s.clone()), ("name".into(), s.clone())].into(),
            remove: vec![s.clone()],
            session: session.clone().filter(|_| i % 3 == 0),
            wait_ms: if i % 7 == 0 && wait > 2000 {
                wait
            } else {
                wait_ms
            },
        };
        assert_no_server_fault("UpdateProfile", &r, &c.update_profile(r.clone()).await);
        let r = GetProfileRequest {
            region,
            user_id: s.clone(),
            session,
            wait_ms,
        };
        assert_no_server_fault("GetProfile", &r, &c.get_profile(r.clone()).await);
        let mut stats = catalog.stats.clone();
        let sku = if i % 2 == 0 {
            "fuzz-stats".to_owned()
        } else {
            s.clone()
        };
        let r = RecordViewRequest {
            region: r.region.clone(),
            sku: sku.clone(),
            count: wait,
        };
        assert_no_server_fault("RecordView", &r, &stats.record_view(r.clone()).await);
        let r = LikeProductRequest {
            region: r.region,
            sku,
            like: i % 3 == 0,
        };
        assert_no_server_fault("LikeProduct", &r, &stats.like_product(r.clone()).await);
        let r = GetProductStatsRequest {
            region: r.region,
            sku: r.sku,
        };
        assert_no_server_fault(
            "GetProductStats",
            &r,
            &stats.get_product_stats(r.clone()).await,
        );
    }
    catalog.stop().await;
}
