//! One contract for every search backend, run against each in every `make test`: the embedded
//! index, and the Elasticsearch-API backend against the native stack's OpenSearch node.

use std::sync::Arc;

use shop_catalog::search::{
    IndexedProduct, Query, SearchBackend, Sort,
    elastic::{Elastic, delete_index},
    embedded::Embedded,
};

fn p(sku: &str, name: &str, category: &str, price: i64, version: u64) -> IndexedProduct {
    IndexedProduct {
        sku: sku.into(),
        name: name.into(),
        description: format!("{name} for everyday use"),
        category: category.into(),
        price_minor: price,
        currency: "EUR".into(),
        stock: 0,
        version,
        listed: true,
    }
}

fn skus(h: &shop_catalog::search::Hits) -> Vec<String> {
    h.products.iter().map(|p| p.sku.clone()).collect()
}

fn q(text: &str) -> Query {
    Query {
        text: text.into(),
        limit: 10,
        ..Default::default()
    }
}

/// Searches follow `refresh` (the OpenSearch index otherwise makes writes searchable within its
/// refresh interval); `get` is realtime on both backends.
async fn contract(b: Arc<dyn SearchBackend>) {
    let name = b.name();
    for x in [
        p("c-mug", "Coffee mug", "kitchen", 1200, 1),
        p("t-mug", "Travel mug", "kitchen", 2500, 1),
        p("teapot", "Glass teapot", "kitchen", 3900, 1),
        p("desk-lamp", "Desk lamp", "lighting", 4900, 1),
        p("floor-lamp", "Floor lamp", "lighting", 8900, 1),
    ] {
        assert!(b.upsert_product(x).await.expect("index"), "{name}");
    }
    b.refresh().await.expect("refresh");
    // Full text, every word must match.
    assert_eq!(
        skus(
            &b.search(&Query {
                sort: Sort::Name,
                ..q("mug")
            })
            .await
            .expect("search")
        ),
        ["c-mug", "t-mug"],
        "{name}"
    );
    assert_eq!(
        skus(&b.search(&q("travel mug")).await.expect("search")),
        ["t-mug"],
        "{name}"
    );
    // Filters: category, price range (inclusive), in stock.
    let kitchen = Query {
        category: Some("kitchen".into()),
        sort: Sort::PriceAsc,
        ..q("")
    };
    assert_eq!(
        skus(&b.search(&kitchen).await.expect("search")),
        ["c-mug", "t-mug", "teapot"],
        "{name}"
    );
    let band = Query {
        min_price_minor: Some(2500),
        max_price_minor: Some(4900),
        sort: Sort::PriceDesc,
        ..q("")
    };
    assert_eq!(
        skus(&b.search(&band).await.expect("search")),
        ["desk-lamp", "teapot", "t-mug"],
        "{name}"
    );
    let in_stock = Query {
        in_stock_only: true,
        ..q("")
    };
    assert!(
        b.search(&in_stock)
            .await
            .expect("search")
            .products
            .is_empty(),
        "{name}"
    );
    b.set_stock("teapot", 3).await.expect("stock");
    b.refresh().await.expect("refresh");
    let hits = b.search(&in_stock).await.expect("search");
    assert_eq!(skus(&hits), ["teapot"], "{name}");
    assert_eq!(hits.products[0].stock, 3);
    // Paging: totals count every match, pages do not overlap.
    let page = |offset| Query {
        sort: Sort::PriceAsc,
        offset,
        limit: 2,
        ..q("")
    };
    let (p1, p2, p3) = (
        b.search(&page(0)).await.expect("page 1"),
        b.search(&page(2)).await.expect("page 2"),
        b.search(&page(4)).await.expect("page 3"),
    );
    assert_eq!(p1.total, 5, "{name}");
    assert_eq!(
        [skus(&p1), skus(&p2), skus(&p3)].concat(),
        ["c-mug", "t-mug", "teapot", "desk-lamp", "floor-lamp"],
        "{name}"
    );
    // Versions: an older (or repeated) version changes nothing; a newer one keeps the stock.
    assert!(
        !b.upsert_product(p("teapot", "Old teapot", "kitchen", 1, 1))
            .await
            .expect("same version"),
        "{name}"
    );
    assert!(
        b.upsert_product(p("teapot", "Glass teapot", "kitchen", 3500, 2))
            .await
            .expect("newer"),
        "{name}"
    );
    let t = b.get("teapot").await.expect("get").expect("indexed");
    assert_eq!((t.price_minor, t.stock, t.version), (3500, 3, 2), "{name}");
    // Stock known before the product: not listed until the product arrives, then in stock.
    b.set_stock("kettle", 5).await.expect("stock first");
    b.refresh().await.expect("refresh");
    assert!(
        b.search(&q("kettle"))
            .await
            .expect("search")
            .products
            .is_empty(),
        "{name}"
    );
    b.upsert_product(p("kettle", "Electric kettle", "kitchen", 2900, 1))
        .await
        .expect("then the product");
    b.refresh().await.expect("refresh");
    let k = b
        .search(&Query {
            in_stock_only: true,
            ..q("kettle")
        })
        .await
        .expect("search");
    assert_eq!(skus(&k), ["kettle"], "{name}");
    assert_eq!(k.products[0].stock, 5);
    // A shopper's odd input is text, not an error.
    b.search(&q("mug\" AND (")).await.expect("lenient parsing");
    // Several stock levels at once (the feed's coalesced batch): a listed product keeps its
    // fields, an unknown SKU gets an unlisted stock-only document.
    b.set_stocks(&[("c-mug".into(), 7), ("not-yet-listed".into(), 2)])
        .await
        .expect("stock levels");
    let mug = b.get("c-mug").await.expect("get").expect("c-mug");
    assert_eq!(
        (mug.stock, mug.listed, mug.name.as_str()),
        (7, true, "Coffee mug"),
        "{name}"
    );
    let unknown = b
        .get("not-yet-listed")
        .await
        .expect("get")
        .expect("stock-only");
    assert_eq!((unknown.stock, unknown.listed), (2, false), "{name}");
}

#[tokio::test]
async fn the_embedded_index_meets_the_search_contract() {
    contract(Arc::new(Embedded::open(None).expect("index"))).await;
}

#[tokio::test]
async fn the_embedded_index_keeps_its_documents_across_a_restart() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("index-{}", uuid::Uuid::now_v7().simple()));
    {
        let b = Embedded::open(Some(&dir)).expect("index");
        b.upsert_product(p("c-mug", "Coffee mug", "kitchen", 1200, 1))
            .await
            .expect("index");
    }
    let b = Embedded::open(Some(&dir)).expect("reopened");
    assert_eq!(skus(&b.search(&q("mug")).await.expect("search")), ["c-mug"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Against the native stack's OpenSearch node (`SHOP_TEST_SEARCH_URL` points elsewhere, e.g. at
/// docker-compose's `search`).
#[tokio::test]
async fn the_elasticsearch_api_backend_meets_the_search_contract() {
    let url =
        std::env::var("SHOP_TEST_SEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let index = format!("products-test-{}", uuid::Uuid::now_v7().simple());
    let backend = Elastic::connect(&url, &index)
        .await
        .expect("search server reachable (infra/local/stack.sh up search)");
    contract(Arc::new(backend)).await;
    delete_index(&url, &index).await.expect("delete test index");
}
