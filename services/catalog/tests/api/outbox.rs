//! The in-document outbox is bounded (issue 12: a product updated faster than the relay clears
//! it grew without bound). The store is used without a relay, so nothing is published until the
//! test starts one.

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use shop_catalog::{domain::Product, grpc::product_changed, store::ProductStore};
use shop_messaging::{testing, topics};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// `shop_catalog::store::OUTBOX_LIMIT`, written out so this test says what it expects.
const LIMIT: usize = 64;

fn mug(price_minor: i64) -> Product {
    Product {
        sku: "mug-9".into(),
        name: "Mug".into(),
        description: "a mug".into(),
        category: "kitchen".into(),
        price_minor,
        currency: "EUR".into(),
        attributes: Default::default(),
        stock: 0,
        version: 0,
    }
}

async fn pending(products: &mongodb::Collection<Document>) -> usize {
    products
        .find_one(doc! { "_id": "mug-9" })
        .await
        .expect("find")
        .expect("the product")
        .get_array("outbox")
        .expect("outbox")
        .len()
}

#[tokio::test]
async fn an_update_is_refused_while_the_outbox_is_full_and_accepted_once_it_drained() {
    let kafka = testing::service_settings("catalog").kafka;
    let topic = kafka.topic(topics::CATALOG_EVENTS);
    kafka.ensure_topics(&[&topic]).await.expect("topics");
    let mongo = mongodb::Client::with_uri_str(shop_catalog::MongoSettings::default().url)
        .await
        .expect("mongo");
    let db = mongo.database(&format!(
        "test_outbox_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    let products = db.collection::<Document>("products");
    let store = ProductStore::new(products.clone());
    let redis = redis::aio::ConnectionManager::new(
        redis::Client::open(shop_core::config::RedisSettings::default().url.as_str()).expect("url"),
    )
    .await
    .expect("redis");
    let lease = format!("{}outbox:catalog:lease", kafka.topic_prefix);
    let relay = || {
        shop_catalog::relay::relay(
            products.clone(),
            store.locks.clone(),
            redis.clone(),
            lease.clone(),
            &kafka,
            Duration::from_millis(50),
        )
        .expect("relay")
    };
    // Created, and its event published: the outbox is empty.
    let created = store
        .create(&mug(1000), product_changed(&topic, &mug(1000)))
        .await
        .expect("create");
    assert_eq!(relay().relay_once().await.expect("relay").published, 1);
    assert_eq!(pending(&products).await, 0);

    // No relay from here on: LIMIT updates fill the outbox.
    let mut version = created.version;
    for n in 1..=LIMIT as i64 {
        let p = mug(1000 + n);
        version = store
            .update(&p, version, product_changed(&topic, &p))
            .await
            .unwrap_or_else(|e| panic!("update {n} of {LIMIT}: {e}"))
            .version;
    }
    assert_eq!(pending(&products).await, LIMIT);
    let full = store.get("mug-9").await.expect("get").expect("the product");

    // The next one is refused and changes nothing.
    let refused = store
        .update(&mug(1), version, product_changed(&topic, &mug(1)))
        .await
        .expect_err("an update beyond the outbox's limit");
    let status = Status::from(refused);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        format!("product mug-9 has {LIMIT} unpublished changes; retry after they are published")
    );
    assert_eq!(
        store.get("mug-9").await.expect("get").expect("the product"),
        full
    );
    assert_eq!(pending(&products).await, LIMIT);
    // A stale writer is still told about the version, a missing product is still not found.
    let stale = store
        .update(&mug(2), version - 1, product_changed(&topic, &mug(2)))
        .await
        .expect_err("stale version");
    assert_eq!(Status::from(stale).code(), Code::FailedPrecondition);
    let mut other = mug(3);
    other.sku = "nope-9".into();
    let missing = store
        .update(&other, 1, product_changed(&topic, &other))
        .await
        .expect_err("missing product");
    assert_eq!(Status::from(missing).code(), Code::NotFound);

    // The relay runs again: the outbox drains, and updates are accepted again.
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay().run(stop.clone()));
    let started = Instant::now();
    while pending(&products).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = mug(7);
    let accepted = store
        .update(&p, version, product_changed(&topic, &p))
        .await
        .expect("an update once the outbox drained");
    assert_eq!((accepted.version, accepted.price_minor), (version + 1, 7));
    stop.cancel();
    running.await.expect("relay task").expect("relay");
    db.drop().await.expect("drop");
    kafka.delete_topics(&[&topic]).await.expect("delete topic");
}

/// FerretDB 1.24 runs a conditional update as read, filter, write back: two writers at one
/// version could both succeed (one change and its event lost). The store's per-product locks
/// make one instance's writes to a product one at a time: of two updates at the same version,
/// exactly one wins, every round.
#[tokio::test]
async fn of_two_concurrent_updates_at_one_version_exactly_one_wins() {
    let kafka = testing::service_settings("catalog").kafka;
    let topic = kafka.topic(topics::CATALOG_EVENTS);
    let mongo = mongodb::Client::with_uri_str(shop_catalog::MongoSettings::default().url)
        .await
        .expect("mongo");
    let db = mongo.database(&format!(
        "test_race_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    let store = ProductStore::new(db.collection::<Document>("products"));
    store
        .create(&mug(100), product_changed(&topic, &mug(100)))
        .await
        .expect("create");
    for version in 1..=40u64 {
        let (a, b) = (mug(200 + version as i64), mug(300 + version as i64));
        let (ra, rb) = tokio::join!(
            store.update(&a, version, product_changed(&topic, &a)),
            store.update(&b, version, product_changed(&topic, &b)),
        );
        assert_eq!(
            usize::from(ra.is_ok()) + usize::from(rb.is_ok()),
            1,
            "round {version}: {ra:?} / {rb:?}"
        );
        let current = store.get("mug-9").await.expect("get").expect("product");
        assert_eq!(current.version, version + 1);
        // The outbox holds one event per accepted change: nothing was overwritten.
        let outbox = db
            .collection::<Document>("products")
            .find_one(doc! { "_id": "mug-9" })
            .await
            .expect("find")
            .expect("doc")
            .get_array("outbox")
            .expect("outbox")
            .len();
        assert_eq!(outbox, (version + 1) as usize);
        if outbox >= LIMIT - 1 {
            break;
        }
    }
    db.drop().await.expect("drop");
}
