//! Orders placed with choreography against the real stores: inventory, payment and shipping
//! react to each other's events and nobody sends a command; the order service only records
//! what happened. Refusals flow back (declined -> release; shipment refused -> refund ->
//! release), and the order service may be down for the whole flow and catch up afterwards.

use shop_proto::order::{
    CompensateSagaRequest, Coordination, OrderStatus, PlaceOrderRequest, SagaState,
};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

fn choreographed(r: PlaceOrderRequest) -> PlaceOrderRequest {
    PlaceOrderRequest {
        coordination: Coordination::Choreography.into(),
        ..r
    }
}

/// Commands the order service ever enqueued for `order_id` (its outbox keeps published rows).
async fn commands_sent(order_db: &PgPool, order_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE partition_key = $1 AND topic LIKE '%.commands'",
    )
    .bind(order_id)
    .fetch_one(order_db)
    .await
    .expect("outbox")
}

async fn shipment(db: &PgPool, order_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM shipment WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db)
        .await
        .expect("shipment")
}

#[tokio::test]
async fn participants_carry_a_choreographed_order_through_and_refusals_flow_back() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("ch-1", 10).await;
    p.open_account("ch-rich", 100_000).await;
    p.open_account("ch-poor", 100).await;
    let ships = p.shipping_db().await;

    // Completed by the participants alone: stock gone, one charge, a shipment.
    let placed = p
        .place(choreographed(request(
            "ch-k1", "ch-1", 2, 500, "ch-rich", "DE",
        )))
        .await;
    let id = placed.order.expect("order").order_id;
    assert_eq!(p.settled(&id).await.status(), OrderStatus::Completed);
    assert_eq!(p.stock("ch-1").await, (8, 0));
    assert_eq!(p.balance("ch-rich").await, 99_000);
    assert_eq!(p.net_charged().await.get(&id), Some(&1000));
    assert_eq!(shipment(&ships, &id).await.as_deref(), Some("created"));
    assert_eq!(commands_sent(&p.order_db, &id).await, 0, "no command sent");
    let saga = p
        .saga_when(&id, "completed", |s| s.state() == SagaState::Completed)
        .await;
    for step in [
        "reserve_stock",
        "charge_payment",
        "create_shipment",
        "commit_stock",
    ] {
        assert!(step_done(&saga, step), "{step} recorded: {saga:?}");
    }
    // The same key again: the same order, nothing twice.
    let again = p
        .place(choreographed(request(
            "ch-k1", "ch-1", 2, 500, "ch-rich", "DE",
        )))
        .await;
    assert!(!again.created);
    assert_eq!(p.stock("ch-1").await, (8, 0));
    // The same order orchestrated does send commands (so the zero above can fail).
    let orchestrated = p
        .place_id(request("ch-k0", "ch-1", 1, 500, "ch-rich", "DE"))
        .await;
    p.settled(&orchestrated).await;
    assert!(commands_sent(&p.order_db, &orchestrated).await > 0);
    assert_eq!(p.stock("ch-1").await, (7, 0));

    // Payment declines: inventory releases on `payment.declined`.
    let declined = p
        .place_id(choreographed(request(
            "ch-k2", "ch-1", 2, 500, "ch-poor", "DE",
        )))
        .await;
    assert_eq!(p.settled(&declined).await.status(), OrderStatus::Cancelled);
    assert_eq!(p.stock("ch-1").await, (7, 0), "reservation released");
    assert_eq!(p.balance("ch-poor").await, 100);
    let saga = p
        .saga_when(&declined, "cancelled", |s| {
            s.state() == SagaState::Cancelled
        })
        .await;
    assert!(step_done(&saga, "release_stock"), "{saga:?}");

    // Shipping refuses (no shipping to AQ): payment refunds on `shipment_refused`, inventory
    // releases on `payment.refunded`.
    let refused = p
        .place_id(choreographed(request(
            "ch-k3", "ch-1", 2, 500, "ch-rich", "AQ",
        )))
        .await;
    assert_eq!(p.settled(&refused).await.status(), OrderStatus::Cancelled);
    assert_eq!(p.stock("ch-1").await, (7, 0));
    assert_eq!(p.balance("ch-rich").await, 100_000 - 1000 - 500);
    assert_eq!(p.net_charged().await.get(&refused).copied().unwrap_or(0), 0);
    let saga = p
        .saga_when(&refused, "cancelled", |s| s.state() == SagaState::Cancelled)
        .await;
    assert!(step_done(&saga, "refund_payment") && step_done(&saga, "release_stock"));
    assert_eq!(commands_sent(&p.order_db, &refused).await, 0);

    // Out of stock: refused at the first step, nothing to undo.
    let short = p
        .place_id(choreographed(request(
            "ch-k4", "ch-1", 50, 500, "ch-rich", "DE",
        )))
        .await;
    assert_eq!(p.settled(&short).await.status(), OrderStatus::Cancelled);
    assert_eq!(p.double_charges().await, 0);

    // Nobody orchestrates it, so an operator cannot compensate it either.
    let err = p
        .order
        .clone()
        .compensate_saga(CompensateSagaRequest {
            saga_id: id.clone(),
            reason: "operator".into(),
        })
        .await
        .expect_err("no orchestrator");
    assert_eq!(err.code(), Code::FailedPrecondition);
    ships.close().await;
    p.stop().await;
}

/// The order service is only the recorder: with it down the participants finish the order;
/// started again, it gets the four events from three topics in whatever order they come and
/// records them in causal order.
#[tokio::test]
async fn a_choreography_runs_without_the_order_service_which_catches_up_in_causal_order() {
    let mut p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("cd-1", 10).await;
    p.open_account("cd-rich", 100_000).await;
    let ships = p.shipping_db().await;
    let id = p
        .place_id(choreographed(request(
            "cd-k1", "cd-1", 2, 500, "cd-rich", "DE",
        )))
        .await;
    // Once `order.placed` is out (inventory has reserved), the order service goes away.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while p.stock("cd-1").await == (10, 0) {
        assert!(tokio::time::Instant::now() < until, "never reserved");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    p.stop_order().await;
    // The participants go on: charged, shipped, committed.
    while p.stock("cd-1").await != (8, 0) || shipment(&ships, &id).await.is_none() {
        assert!(
            tokio::time::Instant::now() < until,
            "the participants stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(p.balance("cd-rich").await, 99_000);
    let settings = p.order_settings.clone();
    p.start_order(settings).await;
    assert_eq!(p.settled(&id).await.status(), OrderStatus::Completed);
    let saga = p
        .saga_when(&id, "completed", |s| s.state() == SagaState::Completed)
        .await;
    let names: Vec<&str> = saga.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reserve_stock",
            "charge_payment",
            "create_shipment",
            "commit_stock"
        ],
        "{saga:?}"
    );
    ships.close().await;
    p.stop().await;
}
