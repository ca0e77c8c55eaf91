//! The store's scripts on the real Redis, in states the API cannot reach: a cart changed after
//! its checkout (written before carts froze), a checkout whose attempt died.

use redis::AsyncCommands;
use shop_cart::{
    domain::Cart,
    store::{Change, cart_key},
};
use shop_core::ServiceError;
use shop_messaging::{NewEvent, testing, topics};
use shop_proto::events::CartCheckedOut;

use crate::helpers::*;

async fn put(store: &CartStore, session: &str, cart: &serde_json::Value) {
    let _: () = store
        .redis()
        .set_ex(cart_key(session), cart.to_string(), 600)
        .await
        .expect("set cart");
}

async fn raw(store: &CartStore, session: &str) -> Option<Cart> {
    let raw: Option<String> = store.redis().get(cart_key(session)).await.expect("get");
    raw.map(|r| serde_json::from_str(&r).expect("cart json"))
}

fn mug() -> serde_json::Value {
    serde_json::json!({"mug": {"q": 1, "p": 1250, "c": "EUR", "n": 1}, "pen": {"q": 2, "p": 150, "c": "EUR", "n": 2}})
}

#[tokio::test]
async fn a_completed_order_keeps_a_cart_that_changed_after_its_checkout() {
    let store = store().await;
    let s = session();
    let order = format!("o-{}", uuid::Uuid::now_v7().simple());
    // Checked out at version 1 as `order`, then changed (version 2).
    put(
        &store,
        &s,
        &serde_json::json!({"v": 2, "seq": 2, "lines": mug(), "checkout": {"v": 1, "order": order}}),
    )
    .await;
    let _: () = store
        .redis()
        .set_ex(format!("cart-order:{order}"), &s, 600)
        .await
        .expect("order map");

    assert!(store.order_ended(&order, true).await.expect("ended"));
    let kept = raw(&store, &s).await.expect("the cart is kept");
    assert_eq!(kept.lines.len(), 2, "nothing in it lost: {kept:?}");
    assert_eq!((kept.v, kept.checkout), (3, None), "open again");
    // A redelivery changes nothing.
    assert!(!store.order_ended(&order, true).await.expect("again"));
    assert_eq!(raw(&store, &s).await.map(|c| c.v), Some(3));
}

#[tokio::test]
async fn a_checkout_that_placed_no_order_opens_the_cart_and_an_abandoned_one_ends_with_its_lease() {
    let store = store().await;
    let add = |sku| Change::Add {
        sku,
        quantity: 1,
        unit_price_minor: 100,
        currency: "EUR",
    };
    let s = session();
    store.change(&s, add("mug")).await.expect("add");
    let frozen = store.begin_checkout(&s).await.expect("begin");
    assert_eq!(frozen.v, 1);
    let refused = store
        .change(&s, add("pen"))
        .await
        .expect_err("being checked out");
    assert!(
        matches!(&refused, ServiceError::FailedPrecondition(m) if m.contains("is being checked out")),
        "{refused:?}"
    );
    // A double submit joins it; each attempt that placed no order leaves; the last opens it.
    store.begin_checkout(&s).await.expect("join");
    store.checkout_failed(&s, 1).await;
    store
        .change(&s, add("pen"))
        .await
        .expect_err("one attempt left");
    store.checkout_failed(&s, 1).await;
    let open = store.change(&s, add("pen")).await.expect("open again");
    assert_eq!((open.v, open.lines.len()), (2, 2));

    // An attempt that died (its freeze written long ago): the next edit opens the cart.
    store.begin_checkout(&s).await.expect("begin");
    let mut stale = serde_json::to_value(raw(&store, &s).await.expect("cart")).expect("json");
    stale["checkout"]["at"] = 0.into();
    stale["checkout"]["n"] = 1.into();
    stale["checkout"]["order"] = "".into();
    put(&store, &s, &stale).await;
    let edited = store.change(&s, add("ink")).await.expect("lease over");
    assert_eq!((edited.v, edited.checkout), (3, None));
}

#[tokio::test]
async fn a_retry_that_comes_back_after_its_order_was_cancelled_does_not_freeze_the_cart_again() {
    let store = store().await;
    let s = session();
    let order = format!("o-{}", uuid::Uuid::now_v7().simple());
    let event = NewEvent::new(
        // A private topic, as every test's (any cart relay on this Redis may publish it).
        testing::service_settings("cart")
            .kafka
            .topic(topics::CART_EVENTS),
        topics::types::CART_CHECKED_OUT,
        "cart",
        &s,
        &CartCheckedOut {
            cart_id: s.clone(),
            order_id: order.clone(),
        },
    );
    store
        .change(
            &s,
            Change::Add {
                sku: "mug",
                quantity: 1,
                unit_price_minor: 100,
                currency: "EUR",
            },
        )
        .await
        .expect("add");
    let v = store.begin_checkout(&s).await.expect("begin").v;
    store
        .checked_out(&s, v, &order, &event)
        .await
        .expect("record");
    // A retry begins (the order is recorded: it will get the same order back) ...
    assert_eq!(store.begin_checkout(&s).await.expect("retry").v, v);
    // ... the order is cancelled: the cart opens (version + 1) ...
    assert!(store.order_ended(&order, false).await.expect("cancelled"));
    // ... and then the retry records what it got back: the cancelled order.
    store
        .checked_out(&s, v, &order, &event)
        .await
        .expect("late");
    let cart = raw(&store, &s).await.expect("cart");
    assert_eq!((cart.v, cart.checkout), (v + 1, None), "still open");
}
