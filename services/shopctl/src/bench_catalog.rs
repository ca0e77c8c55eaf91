//! `bench catalog`: the catalog's write path (a versioned insert, then versioned updates, each
//! with its event pushed onto the document's outbox in the same single-document write) against
//! the raw driver doing the same operations on the same server without the catalog's code: an
//! `insert_one`, then `find_one_and_update` by `{_id, version}`. Both run with the same
//! concurrency on the same MongoDB-wire server, in the same run, so the ratio is the catalog's
//! cost; the absolute figures compare servers (FerretDB or nx-27017 on the native stack).

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use futures::{StreamExt, stream};
use mongodb::{
    Collection,
    bson::{Document, doc},
    options::ReturnDocument,
};
use serde::Serialize;
use shop_catalog::{
    domain::Product,
    grpc::product_changed,
    store::{ProductStore, outbox_entry},
};

#[derive(Debug, Serialize)]
struct CatalogBench {
    server: String,
    products: usize,
    updates_per_product: usize,
    concurrency: usize,
    raw_writes_per_sec: f64,
    catalog_writes_per_sec: f64,
    catalog_vs_raw: f64,
}

fn product(n: usize) -> Product {
    Product {
        sku: format!("bench-{n:06}"),
        name: format!("Bench product {n}"),
        description: "a product of the catalog benchmark, about this long".into(),
        category: "bench".into(),
        price_minor: 1000 + n as i64,
        currency: "EUR".into(),
        attributes: BTreeMap::from([("colour".into(), "blue".into())]),
        stock: 0,
        version: 0,
    }
}

/// Runs `products` chains of one create and `updates` versioned updates, `concurrency` chains at
/// a time; returns writes per second.
async fn drive<F, Fut>(products: usize, concurrency: usize, chain: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let started = Instant::now();
    let writes: Vec<anyhow::Result<usize>> = stream::iter(0..products)
        .map(chain)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut total = 0;
    for w in writes {
        total += w?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(
    mongo_url: &str,
    products: usize,
    updates: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = mongodb::Client::with_uri_str(mongo_url).await?;
    let hello = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await?;
    let server = format!(
        "{} (reports MongoDB {})",
        if hello.contains_key("ferretdb") || hello.contains_key("ferretdbVersion") {
            "FerretDB"
        } else {
            "MongoDB-wire server"
        },
        hello.get_str("version").unwrap_or("?")
    );
    let db = client.database(&format!(
        "bench_catalog_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));

    let event = |p: &Product| product_changed("bench.catalog", p);
    // Raw: the same documents and filters through the driver alone.
    let raw: Collection<Document> = db.collection("raw");
    let raw_rate = drive(products, concurrency, |n| {
        let (raw, event) = (raw.clone(), event);
        async move {
            let p = product(n);
            // The same documents: attributes, and outbox entries of the same size.
            let entry = |version: u64| outbox_entry(&event(&p)(version));
            raw.insert_one(doc! {
                "_id": &p.sku, "name": &p.name, "description": &p.description,
                "category": &p.category, "price_minor": p.price_minor, "currency": &p.currency,
                "attributes": { "colour": "blue" }, "stock": 0_i64, "version": 1_i64,
                "outbox": [entry(1)], "outbox_pending": true,
            })
            .await?;
            for v in 1..=updates as i64 {
                raw.find_one_and_update(
                    doc! { "_id": &p.sku, "version": v },
                    doc! {
                        "$set": {
                            "name": &p.name, "description": &p.description, "category": &p.category,
                            "price_minor": p.price_minor + v, "currency": &p.currency,
                            "attributes": { "colour": "blue" }, "version": v + 1, "outbox_pending": true,
                        },
                        "$push": { "outbox": entry(v as u64 + 1) },
                    },
                )
                .return_document(ReturnDocument::After)
                .await?
                .ok_or_else(|| anyhow::anyhow!("raw update matched nothing"))?;
            }
            Ok(1 + updates)
        }
    })
    .await?;

    // The catalog's store: the same chains through ProductStore, events included.
    let store = Arc::new(ProductStore::new(db.collection("products")));
    let catalog_rate = drive(products, concurrency, |n| {
        let store = store.clone();
        async move {
            let mut p = product(n);
            let created = store.create(&p, event(&p)).await?;
            let mut version = created.version;
            for _ in 0..updates {
                p.price_minor += 1;
                version = store.update(&p, version, event(&p)).await?.version;
            }
            Ok(1 + updates)
        }
    })
    .await?;
    db.drop().await?;

    let result = CatalogBench {
        server,
        products,
        updates_per_product: updates,
        concurrency,
        raw_writes_per_sec: raw_rate,
        catalog_writes_per_sec: catalog_rate,
        catalog_vs_raw: catalog_rate / raw_rate,
    };
    println!(
        "catalog writes on {}: raw driver {:.0} writes/s, catalog store {:.0} writes/s ({:.2}x); {} products x (1 create + {} updates), {} at a time",
        result.server,
        result.raw_writes_per_sec,
        result.catalog_writes_per_sec,
        result.catalog_vs_raw,
        products,
        updates,
        concurrency
    );
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
