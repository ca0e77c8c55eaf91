use shop_proto::order::{GetSagaRequest, ListSagasRequest, OrderStatus, SagaState};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn the_happy_path_reserves_charges_ships_and_completes() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("book", 10).await;
    p.open_account("acc", 10_000).await;
    let placed = p.place(request("k-1", "book", 2, 1_500, "acc", "DE")).await;
    assert!(placed.created);
    let id = placed.order.expect("order").order_id;
    let order = p.settled(&id).await;
    assert_eq!(
        order.status(),
        OrderStatus::Completed,
        "{}",
        order.cancel_reason
    );
    assert_eq!(
        p.stock("book").await,
        (8, 0),
        "two units left the warehouse"
    );
    assert_eq!(p.balance("acc").await, 7_000);

    let saga = p
        .order
        .clone()
        .get_saga(GetSagaRequest {
            saga_id: id.clone(),
        })
        .await
        .expect("saga")
        .into_inner();
    assert_eq!(saga.state(), SagaState::Completed);
    let steps: Vec<(String, String)> = saga
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.status.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            "reserve_stock",
            "charge_payment",
            "create_shipment",
            "commit_stock"
        ]
        .map(|s| (s.to_owned(), "done".to_owned()))
    );
    p.stop().await;
}

#[tokio::test]
async fn out_of_stock_cancels_and_charges_nothing() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("lamp", 1).await;
    p.open_account("acc", 10_000).await;
    let id = p
        .place(request("k-2", "lamp", 3, 1_000, "acc", "DE"))
        .await
        .order
        .expect("order")
        .order_id;
    let order = p.settled(&id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancel_reason,
        "insufficient stock for lamp: 3 wanted, 1 available"
    );
    assert_eq!(p.balance("acc").await, 10_000);
    assert_eq!(p.stock("lamp").await, (1, 0));
    p.stop().await;
}

#[tokio::test]
async fn insufficient_funds_releases_the_stock() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("desk", 5).await;
    p.open_account("poor", 100).await;
    let id = p
        .place(request("k-3", "desk", 1, 50_000, "poor", "DE"))
        .await
        .order
        .expect("order")
        .order_id;
    let order = p.settled(&id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert!(
        order.cancel_reason.starts_with("insufficient funds"),
        "{}",
        order.cancel_reason
    );
    assert_eq!(p.stock("desk").await, (5, 0), "reservation released");
    assert_eq!(p.balance("poor").await, 100);
    p.stop().await;
}

#[tokio::test]
async fn a_shipping_refusal_refunds_and_releases() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("sled", 5).await;
    p.open_account("acc", 10_000).await;
    let id = p
        .place(request("k-4", "sled", 1, 2_000, "acc", "AQ"))
        .await
        .order
        .expect("order")
        .order_id;
    let order = p.settled(&id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(order.cancel_reason, "we do not ship to AQ");
    assert_eq!(p.balance("acc").await, 10_000, "refunded");
    assert_eq!(p.stock("sled").await, (5, 0), "released");
    assert_eq!(
        p.net_charged().await.get(&id).copied(),
        Some(0),
        "charged then refunded, in the ledger"
    );
    p.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_makes_one_order() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("pen", 5).await;
    p.open_account("acc", 10_000).await;
    let first = p.place(request("k-5", "pen", 1, 100, "acc", "DE")).await;
    let again = p.place(request("k-5", "pen", 1, 100, "acc", "DE")).await;
    assert!(first.created && !again.created);
    assert_eq!(
        first.order.as_ref().map(|o| &o.order_id),
        again.order.as_ref().map(|o| &o.order_id)
    );
    let err = p
        .order
        .clone()
        .place_order(request("k-5", "pen", 2, 100, "acc", "DE"))
        .await
        .expect_err("same key, other request");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let id = first.order.expect("order").order_id;
    assert_eq!(p.settled(&id).await.status(), OrderStatus::Completed);
    assert_eq!(p.balance("acc").await, 9_900, "one charge");
    let sagas = p
        .order
        .clone()
        .list_sagas(ListSagasRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(sagas.sagas.len(), 1, "one saga");
    p.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_orders_for_fifty_units_complete_exactly_fifty() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("hot", 50).await;
    for a in 0..10 {
        p.open_account(&format!("acc-{a}"), 1_000_000).await;
    }
    let placing: Vec<_> = (0..200)
        .map(|i| {
            let mut client = p.order.clone();
            tokio::spawn(async move {
                let r = request(
                    &format!("race-{i}"),
                    "hot",
                    1,
                    999,
                    &format!("acc-{}", i % 10),
                    "DE",
                );
                client
                    .place_order(r)
                    .await
                    .expect("place")
                    .into_inner()
                    .order
                    .expect("order")
                    .order_id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in placing {
        ids.push(t.await.expect("join"));
    }
    let mut completed = 0;
    for id in &ids {
        if p.settled(id).await.status() == OrderStatus::Completed {
            completed += 1;
        }
    }
    assert_eq!(completed, 50, "exactly the stock on hand");
    assert_eq!(p.stock("hot").await, (0, 0));
    let mut total_balance = 0;
    for a in 0..10 {
        total_balance += p.balance(&format!("acc-{a}")).await;
    }
    assert_eq!(
        10 * 1_000_000 - total_balance,
        50 * 999,
        "charged total = sum of completed orders"
    );
    assert_eq!(p.double_charges().await, 0);
    p.stop().await;
}

#[tokio::test]
async fn a_participant_that_never_answers_times_out_retries_and_compensates() {
    // No shipping service: create_shipment is never answered.
    let mut p = spawn_platform(
        quick_saga(),
        Run {
            order: true,
            shipping: false,
        },
    )
    .await;
    p.restock("drum", 3).await;
    p.open_account("acc", 10_000).await;
    let id = p
        .place(request("k-7", "drum", 1, 4_000, "acc", "DE"))
        .await
        .order
        .expect("order")
        .order_id;
    // Two tries, then the steps done are undone (refund, release) while the silent participant's
    // compensation waits for it: the saga is not terminal until everything is settled.
    let saga = p
        .saga_when(&id, "refunded and released", |s| {
            step_done(s, "refund_payment") && step_done(s, "release_stock")
        })
        .await;
    assert_eq!(saga.state(), SagaState::Compensating);
    assert_eq!(saga.last_error, "create_shipment timed out after 2 tries");
    let ship = saga
        .steps
        .iter()
        .find(|s| s.name == "create_shipment")
        .expect("ship step");
    assert_eq!((ship.status.as_str(), ship.attempts), ("timed_out", 2));
    assert_eq!(
        p.balance("acc").await,
        10_000,
        "refunded while shipping is still silent"
    );
    assert_eq!(
        p.stock("drum").await,
        (3, 0),
        "released while shipping is still silent"
    );

    // Shipping comes back: it finds the cancel before any create (a tombstone), answers, and the
    // saga ends; the stale create commands behind it are refused, not applied.
    p.start_shipping().await;
    let order = p.settled(&id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancel_reason,
        "create_shipment timed out after 2 tries"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_operator_can_list_retry_and_compensate_a_waiting_saga() {
    use shop_proto::order::{CompensateSagaRequest, RetrySagaRequest};
    // No shipping service and a long ship timeout: the saga waits at PAYMENT_CHARGED.
    let saga = shop_order::SagaSettings {
        ship_timeout_ms: 120_000,
        ..quick_saga()
    };
    let mut p = spawn_platform(
        saga,
        Run {
            order: true,
            shipping: false,
        },
    )
    .await;
    p.restock("harp", 2).await;
    p.open_account("acc", 50_000).await;
    let id = p
        .place(request("k-8", "harp", 1, 30_000, "acc", "DE"))
        .await
        .order
        .expect("order")
        .order_id;
    let mut client = p.order.clone();
    let waiting = loop {
        let s = client
            .get_saga(GetSagaRequest {
                saga_id: id.clone(),
            })
            .await
            .expect("saga")
            .into_inner();
        if s.state() == SagaState::PaymentCharged {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!waiting.stuck, "not past its deadline yet");
    let listed = client
        .list_sagas(ListSagasRequest {
            state: SagaState::PaymentCharged.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .sagas
            .iter()
            .map(|s| s.saga_id.clone())
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );

    let retried = client
        .retry_saga(RetrySagaRequest {
            saga_id: id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    let ship = retried
        .steps
        .iter()
        .find(|s| s.name == "create_shipment")
        .expect("ship step");
    assert_eq!(ship.attempts, 2, "the command was sent again");

    let compensated = client
        .compensate_saga(CompensateSagaRequest {
            saga_id: id.clone(),
            reason: "carrier strike".into(),
        })
        .await
        .expect("compensate")
        .into_inner();
    assert_eq!(compensated.state(), SagaState::Compensating);
    // The in-flight shipment's compensation is answered once shipping is back.
    p.start_shipping().await;
    let order = p.settled(&id).await;
    assert_eq!(order.status(), OrderStatus::Cancelled);
    assert_eq!(
        order.cancel_reason,
        "compensated by an operator: carrier strike"
    );
    assert_eq!(p.balance("acc").await, 50_000, "refunded");
    assert_eq!(p.stock("harp").await, (2, 0), "released");

    let err = client
        .compensate_saga(CompensateSagaRequest {
            saga_id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("a cancelled saga cannot be compensated again");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .get_saga(GetSagaRequest {
            saga_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    p.stop().await;
}

#[tokio::test]
async fn a_saga_that_cannot_advance_does_not_hold_back_the_timeout_sweep() {
    // No shipping service: both sagas wait at PAYMENT_CHARGED and time out on create_shipment.
    let p = spawn_platform(
        quick_saga(),
        Run {
            order: true,
            shipping: false,
        },
    )
    .await;
    p.restock("lute", 2).await;
    p.open_account("acc", 100_000).await;
    let mut ids = vec![];
    for key in ["k-s1", "k-s2"] {
        let id = p
            .place(request(key, "lute", 1, 4_000, "acc", "DE"))
            .await
            .order
            .expect("order")
            .order_id;
        ids.push(id);
    }
    for id in &ids {
        p.saga_when(id, "waiting for shipping", |s| {
            s.state() == SagaState::PaymentCharged
        })
        .await;
    }
    // The first saga's stream gains an event this build cannot decode (written by a newer one,
    // say), and its deadline becomes the oldest: every sweep meets it first.
    let broken = uuid::Uuid::parse_str(&ids[0]).expect("uuid");
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_type, schema_version, payload) \
         SELECT $1, max(version) + 1, 'order_from_the_future', 1, '{}' FROM events WHERE stream_id = $1",
    )
    .bind(broken)
    .execute(&p.order_db)
    .await
    .expect("append an undecodable event");
    sqlx::query("UPDATE saga SET deadline = now() - interval '1 hour' WHERE saga_id = $1")
        .bind(broken)
        .execute(&p.order_db)
        .await
        .expect("oldest deadline");

    // The other one still times out, exhausts its tries and undoes its steps.
    p.saga_when(&ids[1], "the sweep reached the second saga", |s| {
        step_done(s, "refund_payment") && step_done(s, "release_stock")
    })
    .await;
    // The broken one is left for an operator: its error recorded, its deadline pushed back.
    let (last_error, later): (Option<String>, bool) =
        sqlx::query_as("SELECT last_error, deadline > now() FROM saga WHERE saga_id = $1")
            .bind(broken)
            .fetch_one(&p.order_db)
            .await
            .expect("saga row");
    let last_error = last_error.unwrap_or_default();
    assert!(last_error.contains("order_from_the_future"), "{last_error}");
    assert!(later, "its deadline was pushed back");
    p.stop().await;
}
