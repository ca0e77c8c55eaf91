//! A checked-out cart is frozen until its order ends: edits and another checkout are refused,
//! a completed order deletes the cart, a cancelled one opens it again.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use shop_messaging::{testing::CommandChannel, topics};
use shop_proto::{
    cart::{RemoveItemRequest, SetQuantityRequest},
    order::ListOrdersRequest,
};
use tonic::Code;

use crate::helpers::*;

fn events(p: &Platform) -> CommandChannel {
    CommandChannel::new(&p.kafka, topics::ORDER_EVENTS, topics::CART_EVENTS, "t")
}

/// A refusal because the cart is checked out: FAILED_PRECONDITION that names the cart and order.
fn assert_frozen(e: &tonic::Status, session: &str, order_id: &str) {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("cart {session} is checked out"))
            && e.message().contains(order_id),
        "{}",
        e.message()
    );
}

/// A refusal while the checkout is under way (its order not placed yet) or done.
fn assert_checking_out(e: &tonic::Status, session: &str, order_id: &str) {
    if e.message().contains("is being checked out") {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    } else {
        assert_frozen(e, session, order_id);
    }
}

#[tokio::test]
async fn an_item_added_after_checkout_is_refused_and_the_cart_is_unchanged() {
    let p = spawn(Limits::default()).await;
    p.product("mug", 1_250).await;
    p.product("pen", 150).await;
    let s = session();
    p.add(&s, "mug", 2).await.expect("add mug");
    let order = p.checkout(&s).await.expect("checkout");
    let before = p.get(&s).await;

    let add = p.add(&s, "pen", 1).await.expect_err("add after checkout");
    assert_frozen(&add, &s, &order.order_id);
    let more = p.add(&s, "mug", 1).await.expect_err("more of a line");
    assert_frozen(&more, &s, &order.order_id);
    let set = p
        .cart
        .clone()
        .set_quantity(SetQuantityRequest {
            session_id: s.clone(),
            sku: "mug".into(),
            quantity: 5,
        })
        .await
        .expect_err("set quantity after checkout");
    assert_frozen(&set, &s, &order.order_id);
    let remove = p
        .cart
        .clone()
        .remove_item(RemoveItemRequest {
            session_id: s.clone(),
            sku: "mug".into(),
        })
        .await
        .expect_err("remove after checkout");
    assert_frozen(&remove, &s, &order.order_id);

    assert_eq!(p.get(&s).await, before, "the refusals changed nothing");
    assert_eq!(
        p.order_items(&order.order_id).await,
        [("mug".to_owned(), 2)],
        "the order has the cart as it was checked out"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_second_checkout_while_checked_out_is_refused_not_a_second_order() {
    let p = spawn(Limits::default()).await;
    p.product("mug", 1_250).await;
    p.product("pen", 150).await;
    let s = session();
    p.add(&s, "mug", 1).await.expect("add mug");
    let first = p.checkout(&s).await.expect("checkout");
    assert!(first.created);
    // The shopper goes on shopping (refused) and checks out again.
    let _ = p.add(&s, "pen", 1).await;
    let retry = p.checkout(&s).await.expect("the same checkout again");
    assert_eq!(
        (retry.order_id.as_str(), retry.created),
        (first.order_id.as_str(), false),
        "the same request is a retry: the first order, not a second"
    );
    let other = p
        .checkout_paying(&s, "another-account")
        .await
        .expect_err("another checkout while the first order is in progress");
    assert_frozen(&other, &s, &first.order_id);

    // The order service has the one order (its customer list is a read model: wait for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
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
            .into_inner()
            .orders;
        assert!(orders.len() <= 1, "a second order: {orders:?}");
        if orders.len() == 1 {
            assert_eq!(orders[0].order_id, first.order_id);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no order listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        p.order_items(&first.order_id).await,
        [("mug".to_owned(), 1)]
    );
    p.stop().await;
}

#[tokio::test]
async fn a_completed_order_deletes_its_cart_and_a_cancelled_one_opens_it_again() {
    let p = spawn(Limits::default()).await;
    p.product("mug", 1_250).await;
    p.product("pen", 150).await;
    let events = events(&p);

    // Completed: the cart (still as checked out: the late add was refused) is gone.
    let s = session();
    p.add(&s, "mug", 1).await.expect("add mug");
    let done = p.checkout(&s).await.expect("checkout");
    let late = p.add(&s, "pen", 1).await.expect_err("add after checkout");
    assert_frozen(&late, &s, &done.order_id);
    p.end_order(&events, &done.order_id, true).await;
    p.end_order(&events, &done.order_id, true).await; // a redelivery
    let gone = p.eventually(&s, |c| c.items.is_empty()).await;
    assert_eq!(gone.version, 0, "deleted: {gone:?}");

    // Cancelled: the cart is open again, with its lines, for edits and a new order.
    let s = session();
    p.add(&s, "mug", 1).await.expect("add mug");
    let cancelled = p.checkout(&s).await.expect("checkout");
    let refused = p.add(&s, "pen", 1).await.expect_err("add after checkout");
    assert_frozen(&refused, &s, &cancelled.order_id);
    p.end_order(&events, &cancelled.order_id, false).await;
    let open = p.eventually(&s, |c| c.version == 2).await;
    assert_eq!(open.items.len(), 1, "the cancelled order's lines stay");
    p.add(&s, "pen", 3).await.expect("add after the cancel");
    p.cart
        .clone()
        .set_quantity(SetQuantityRequest {
            session_id: s.clone(),
            sku: "mug".into(),
            quantity: 2,
        })
        .await
        .expect("set quantity after the cancel");
    let again = p.checkout(&s).await.expect("checkout again");
    assert_ne!(again.order_id, cancelled.order_id, "a new order");
    assert!(again.created);
    assert_eq!(
        p.order_items(&again.order_id).await,
        [("mug".to_owned(), 2), ("pen".to_owned(), 3)]
    );
    // The cancelled order's event again: the cart is checked out as the new order, unchanged.
    let before = p.get(&s).await;
    p.end_order(&events, &cancelled.order_id, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.get(&s).await, before);
    let still = p
        .add(&s, "pen", 1)
        .await
        .expect_err("frozen for the new order");
    assert_frozen(&still, &s, &again.order_id);
    p.stop().await;
}

#[tokio::test]
async fn edits_racing_a_checkout_are_in_the_order_or_refused_none_is_lost() {
    const EDITS: usize = 20;
    let p = spawn(Limits::default()).await;
    p.product("base", 100).await;
    for i in 0..EDITS {
        p.product(&format!("sku-{i}"), 10 + i as i64).await;
    }
    let s = session();
    p.add(&s, "base", 1).await.expect("add base");
    let p = Arc::new(p);
    let landed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(EDITS + 1));

    let edits: Vec<_> = (0..EDITS)
        .map(|i| {
            let (p, s, landed, gate) = (p.clone(), s.clone(), landed.clone(), gate.clone());
            tokio::spawn(async move {
                gate.wait().await;
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                let sku = format!("sku-{i}");
                let r = p.add(&s, &sku, 1).await;
                landed.fetch_add(1, Ordering::SeqCst);
                (sku, r)
            })
        })
        .collect();
    let checkout = {
        let (p, s, landed) = (p.clone(), s.clone(), landed.clone());
        tokio::spawn(async move {
            // In the middle of the edits: a few have landed, the rest are on their way.
            while landed.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            p.checkout(&s).await
        })
    };
    gate.wait().await;
    let order = checkout.await.expect("task").expect("checkout");

    let (mut accepted, mut refused, mut while_placing) = (BTreeSet::new(), BTreeSet::new(), 0);
    for e in edits {
        let (sku, r) = e.await.expect("task");
        match r {
            Ok(_) => accepted.insert(sku),
            Err(e) => {
                assert_checking_out(&e, &s, &order.order_id);
                while_placing += usize::from(e.message().contains("being checked out"));
                refused.insert(sku)
            }
        };
    }
    println!(
        "{} edits accepted, {} refused ({while_placing} while the order was being placed)",
        accepted.len(),
        refused.len()
    );

    let ordered: BTreeSet<String> = p
        .order_items(&order.order_id)
        .await
        .into_iter()
        .map(|(sku, q)| {
            assert_eq!(q, 1, "{sku}");
            sku
        })
        .collect();
    let mut expected = accepted.clone();
    expected.insert("base".to_owned());
    assert_eq!(
        ordered, expected,
        "every accepted edit is in the order, no refused one is"
    );
    let cart: BTreeSet<String> = p.get(&s).await.items.into_iter().map(|i| i.sku).collect();
    assert_eq!(
        cart, ordered,
        "the cart is what was ordered, nothing beside it"
    );
    // And an edit certainly after the checkout.
    let after = p.add(&s, "sku-0", 1).await.expect_err("after the checkout");
    assert_frozen(&after, &s, &order.order_id);

    // The order completes: the cart goes, and with it nothing that was not ordered.
    let events = events(&p);
    p.end_order(&events, &order.order_id, true).await;
    p.eventually(&s, |c| c.items.is_empty()).await;
    let Ok(p) = Arc::try_unwrap(p) else {
        panic!("a task still holds the platform")
    };
    p.stop().await;
}
