//! The cart against the real Redis and broker, with the real catalog (prices) and order service
//! (checkout) running beside it, each with its own database and topic namespace.

mod checkout;
mod fuzz;
mod helpers;
mod relay;
mod store;

use std::time::Duration;

use helpers::*;
use shop_messaging::{testing::CommandChannel, topics};
use shop_proto::{
    cart::{AddItemRequest, GetCartRequest, RemoveItemRequest, SetQuantityRequest},
    events::{CartCheckedOut, OrderCancelled, OrderCompleted},
    order::{GetOrderRequest, ListOrdersRequest},
};
use tonic::Code;

#[tokio::test]
async fn racing_updates_to_one_cart_lose_nothing_and_the_session_reads_its_writes() {
    let p = spawn(Limits::default()).await;
    p.product("pen", 150).await;
    p.product("ink", 900).await;
    let session = session();
    // 40 concurrent "add one pen" and 10 concurrent "add one ink" on one cart.
    let adds = (0..50).map(|i| {
        let mut cart = p.cart.clone();
        let session = session.clone();
        async move {
            cart.add_item(AddItemRequest {
                session_id: session,
                sku: if i % 5 == 0 { "ink" } else { "pen" }.into(),
                quantity: 1,
            })
            .await
            .expect("add")
            .into_inner()
            .version
        }
    });
    let mut versions = futures::future::join_all(adds).await;
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=50).collect::<Vec<u64>>(),
        "each change saw the one before it"
    );
    let cart = p.get(&session).await;
    let q = |sku: &str| cart.items.iter().find(|i| i.sku == sku).map(|i| i.quantity);
    assert_eq!((q("pen"), q("ink")), (Some(40), Some(10)));
    assert_eq!(cart.total.expect("total").amount_minor, 40 * 150 + 10 * 900);
    assert_eq!(cart.version, 50);
    // Every mutation answers with the cart after it.
    let set = p
        .cart
        .clone()
        .set_quantity(SetQuantityRequest {
            session_id: session.clone(),
            sku: "pen".into(),
            quantity: 3,
        })
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.version, 51);
    assert_eq!(p.get(&session).await, set);
    let removed = p
        .cart
        .clone()
        .remove_item(RemoveItemRequest {
            session_id: session.clone(),
            sku: "ink".into(),
        })
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(removed.items.len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn limits_and_bad_input_get_clear_errors_and_change_nothing() {
    let p = spawn(Limits {
        max_lines: 2,
        max_quantity: 5,
        ttl_secs: 3600,
    })
    .await;
    for (sku, price) in [("a", 100), ("b", 200), ("c", 300)] {
        p.product(sku, price).await;
    }
    let s = session();
    let mut cart = p.cart.clone();
    let add = |sku: &str, quantity| AddItemRequest {
        session_id: s.clone(),
        sku: sku.into(),
        quantity,
    };
    cart.add_item(add("a", 5)).await.expect("a");
    cart.add_item(add("b", 1)).await.expect("b");
    let lines = cart.add_item(add("c", 1)).await.expect_err("third line");
    assert_eq!(lines.code(), Code::FailedPrecondition);
    assert!(lines.message().contains("2 lines"), "{}", lines.message());
    let over = cart.add_item(add("a", 1)).await.expect_err("quantity 6");
    assert_eq!(over.code(), Code::FailedPrecondition);
    let too_many = cart
        .add_item(add("b", 6))
        .await
        .expect_err("quantity field");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(too_many.message().contains("quantity"));
    let unknown = cart
        .add_item(add("nope", 1))
        .await
        .expect_err("unknown product");
    assert_eq!(unknown.code(), Code::NotFound);
    let not_in_cart = cart
        .set_quantity(SetQuantityRequest {
            session_id: s.clone(),
            sku: "c".into(),
            quantity: 1,
        })
        .await
        .expect_err("not in cart");
    assert_eq!(not_in_cart.code(), Code::NotFound);
    let bad_session = cart
        .get_cart(GetCartRequest {
            session_id: "no spaces".into(),
        })
        .await
        .expect_err("bad session");
    assert_eq!(bad_session.code(), Code::InvalidArgument);
    assert!(bad_session.message().contains("session_id"));
    // None of that changed the cart.
    let after = p.get(&s).await;
    assert_eq!(after.version, 2);
    assert_eq!(after.items.len(), 2);
    let empty = p
        .checkout(&session())
        .await
        .expect_err("an empty cart cannot be checked out");
    assert_eq!(empty.code(), Code::FailedPrecondition);
    p.stop().await;
}

#[tokio::test]
async fn a_cart_expires_after_its_ttl_unless_it_is_used() {
    let p = spawn(Limits {
        ttl_secs: 2,
        ..Limits::default()
    })
    .await;
    p.product("a", 100).await;
    let s = session();
    p.cart
        .clone()
        .add_item(AddItemRequest {
            session_id: s.clone(),
            sku: "a".into(),
            quantity: 1,
        })
        .await
        .expect("add");
    // Reads slide the TTL: used every 1.2 s, it outlives 2 s.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(p.get(&s).await.items.len(), 1, "still there while used");
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let gone = p.get(&s).await;
    assert!(gone.items.is_empty(), "expired: {gone:?}");
    assert_eq!(gone.version, 0);
    p.stop().await;
}

#[tokio::test]
async fn a_double_checkout_makes_one_order_and_the_cart_follows_the_order() {
    let p = spawn(Limits::default()).await;
    p.product("mug", 1_250).await;
    let events = CommandChannel::new(&p.kafka, topics::ORDER_EVENTS, topics::CART_EVENTS, "t");
    let s = session();
    p.cart
        .clone()
        .add_item(AddItemRequest {
            session_id: s.clone(),
            sku: "mug".into(),
            quantity: 2,
        })
        .await
        .expect("add");
    // Two submits at once (a double click), then a third later.
    let (a, b) = tokio::join!(p.checkout(&s), p.checkout(&s));
    let (a, b) = (a.expect("first submit"), b.expect("second submit"));
    assert_eq!(a.order_id, b.order_id, "one order");
    assert_eq!(u8::from(a.created) + u8::from(b.created), 1, "created once");
    let c = p.checkout(&s).await.expect("third submit");
    assert_eq!(c.order_id, a.order_id);
    assert!(!c.created);
    // The customer's history is a read model (eventually consistent): wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let orders = loop {
        let orders = p
            .order
            .clone()
            .list_orders(ListOrdersRequest {
                tenant_id: "t".into(),
                customer_id: format!("customer-{s}"),
                page: None,
            })
            .await
            .expect("orders")
            .into_inner();
        if !orders.orders.is_empty() || tokio::time::Instant::now() > deadline {
            break orders;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(orders.orders.len(), 1, "the order service has one order");
    let order = p
        .order
        .clone()
        .get_order(GetOrderRequest {
            order_id: a.order_id.clone(),
            min_stream_version: 1,
        })
        .await
        .expect("order")
        .into_inner();
    assert_eq!(order.total.expect("total").amount_minor, 2_500);
    // One cart.checked_out, relayed from the cart's Redis outbox.
    let checked_out = events.next_about(&s, &[]).await;
    let payload: CartCheckedOut =
        prost::Message::decode(checked_out.payload.as_slice()).expect("decode");
    assert_eq!(payload.order_id, a.order_id);

    // The order is cancelled: the cart stays, open for another checkout (a new order).
    events
        .send(&events.command(
            topics::types::ORDER_CANCELLED,
            &a.order_id,
            &OrderCancelled {
                order_id: a.order_id.clone(),
                reason: "insufficient funds".into(),
            },
        ))
        .await;
    let reopened = p
        .eventually(&s, |c| c.items.len() == 1 && c.version == 2)
        .await;
    assert_eq!(reopened.items[0].quantity, 2);
    let again = p.checkout(&s).await.expect("checkout again");
    assert_ne!(
        again.order_id, a.order_id,
        "a new order for the reopened cart"
    );
    assert!(again.created);

    // That order completes: the cart is cleared; a redelivery changes nothing more.
    let completed = events.command(
        topics::types::ORDER_COMPLETED,
        &again.order_id,
        &OrderCompleted {
            order_id: again.order_id.clone(),
            ..Default::default()
        },
    );
    events.send(&completed).await;
    events.send(&completed).await;
    let cleared = p.eventually(&s, |c| c.items.is_empty()).await;
    assert_eq!(cleared.version, 0);
    p.stop().await;
}
