//! Orders placed with two-phase commit against the real PostgreSQL: inventory, payment and
//! shipping prepare (PREPARE TRANSACTION in their own databases), the order service decides
//! and commits. The coordinator is stopped at every point of the protocol, and a restarted one
//! must resolve every transaction from its log: nothing left prepared, and each order done
//! everywhere or nowhere.

use std::time::Duration;

use shop_order::twopc::{CrashPoint, TwoPcSettings};
use shop_proto::order::{Coordination, OrderStatus, PlaceOrderRequest};
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::*;

fn two_phase(r: PlaceOrderRequest) -> PlaceOrderRequest {
    PlaceOrderRequest {
        coordination: Coordination::TwoPhaseCommit.into(),
        ..r
    }
}

fn quick(crash_at: Option<CrashPoint>) -> TwoPcSettings {
    TwoPcSettings {
        prepare_timeout_ms: 500,
        // The crashed coordinator never recovers on its own within a test: the restarted one
        // does (its first round runs at start).
        recovery_interval_ms: if crash_at.is_some() { 600_000 } else { 200 },
        crash_at: crash_at.map(|c| c.name().to_owned()).unwrap_or_default(),
    }
}

/// Transactions of `order_id` still prepared anywhere in the cluster.
async fn prepared(db: &PgPool, order_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE '%' || $1 || '%'")
        .bind(order_id)
        .fetch_one(db)
        .await
        .expect("pg_prepared_xacts")
}

async fn shipments(db: &PgPool, order_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM shipment WHERE order_id = $1")
        .bind(order_id)
        .fetch_all(db)
        .await
        .expect("shipments")
}

/// The order ended everywhere the same way: completed with the stock gone, one charge and a
/// shipment, or cancelled with nothing of it anywhere.
async fn all_or_nothing(
    p: &Platform,
    order_id: &str,
    sku: &str,
    account: &str,
    stock_before: i64,
    balance_before: i64,
) -> OrderStatus {
    let o = p.settled(order_id).await;
    let (available, reserved) = p.stock(sku).await;
    let balance = p.balance(account).await;
    let ships = shipments(&p.shipping_db().await, order_id).await;
    match o.status() {
        OrderStatus::Completed => {
            assert_eq!(
                (available, reserved),
                (stock_before - 2, 0),
                "stock of a completed order"
            );
            assert_eq!(balance, balance_before - 2 * 500, "one charge");
            assert_eq!(ships, vec!["created".to_owned()]);
            assert_eq!(p.net_charged().await.get(order_id), Some(&1000));
        }
        OrderStatus::Cancelled => {
            assert_eq!(
                (available, reserved),
                (stock_before, 0),
                "stock of a cancelled order"
            );
            assert_eq!(balance, balance_before, "no charge");
            assert!(ships.is_empty(), "{ships:?}");
        }
        s => panic!("order {order_id} is {s:?}"),
    }
    assert_eq!(p.double_charges().await, 0);
    o.status()
}

#[tokio::test]
async fn a_two_phase_order_commits_everywhere_at_once_and_a_refusal_changes_nothing_anywhere() {
    let p = spawn_platform_with(quick_saga(), Run::default(), quick(None)).await;
    p.restock("tp-1", 10).await;
    p.open_account("tp-rich", 100_000).await;
    p.open_account("tp-poor", 100).await;
    let placed = p
        .place(two_phase(request("tp-k1", "tp-1", 2, 500, "tp-rich", "DE")))
        .await;
    let order = placed.order.expect("order");
    // Decided before the answer: no saga runs after it.
    assert_eq!(order.status(), OrderStatus::Completed);
    assert!(placed.created);
    assert_eq!(
        all_or_nothing(&p, &order.order_id, "tp-1", "tp-rich", 10, 100_000).await,
        OrderStatus::Completed
    );
    assert_eq!(prepared(&p.order_db, &order.order_id).await, 0);
    // The same key again: the same order, nothing done twice.
    let again = p
        .place(two_phase(request("tp-k1", "tp-1", 2, 500, "tp-rich", "DE")))
        .await;
    assert!(!again.created);
    assert_eq!(again.order.expect("order").order_id, order.order_id);
    assert_eq!(p.stock("tp-1").await, (8, 0));
    // Payment votes no: inventory's and shipping's prepared work is rolled back.
    let refused = p
        .place(two_phase(request("tp-k2", "tp-1", 2, 500, "tp-poor", "DE")))
        .await
        .order
        .expect("order");
    assert_eq!(refused.status(), OrderStatus::Cancelled);
    assert!(
        refused.cancel_reason.contains("insufficient"),
        "{}",
        refused.cancel_reason
    );
    assert_eq!(
        all_or_nothing(&p, &refused.order_id, "tp-1", "tp-poor", 8, 100).await,
        OrderStatus::Cancelled
    );
    assert_eq!(prepared(&p.order_db, &refused.order_id).await, 0);
    // A coordination this service does not know is refused, naming the field.
    let e = p
        .order
        .clone()
        .place_order(PlaceOrderRequest {
            coordination: 7,
            ..request("tp-k9", "tp-1", 1, 500, "tp-rich", "DE")
        })
        .await
        .expect_err("unknown coordination");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("coordination"), "{}", e.message());
    // Shipping refuses the destination: the same.
    let nowhere = p
        .place(two_phase(request("tp-k3", "tp-1", 2, 500, "tp-rich", "KP")))
        .await
        .order
        .expect("order");
    assert_eq!(nowhere.status(), OrderStatus::Cancelled);
    all_or_nothing(&p, &nowhere.order_id, "tp-1", "tp-rich", 8, 99_000).await;
    p.stop().await;
}

#[tokio::test]
async fn a_participant_that_does_not_vote_in_time_rolls_the_order_back() {
    let p = spawn_platform_with(
        quick_saga(),
        Run {
            shipping: false,
            ..Run::default()
        },
        quick(None),
    )
    .await;
    p.restock("tp-2", 5).await;
    p.open_account("tp-acct", 10_000).await;
    let o = p
        .place(two_phase(request("tp-k4", "tp-2", 2, 500, "tp-acct", "DE")))
        .await
        .order
        .expect("order");
    assert_eq!(o.status(), OrderStatus::Cancelled);
    assert!(o.cancel_reason.contains("shipping"), "{}", o.cancel_reason);
    assert_eq!(p.stock("tp-2").await, (5, 0));
    assert_eq!(p.balance("tp-acct").await, 10_000);
    assert_eq!(prepared(&p.order_db, &o.order_id).await, 0);
    p.stop().await;
}

/// Stops the coordinator at `at` for one order, then restarts it: recovery must leave nothing
/// prepared and the order done everywhere or nowhere (`want`).
async fn crash_and_recover(at: CrashPoint, n: u32, want: OrderStatus) {
    let mut p = spawn_platform_with(quick_saga(), Run::default(), quick(Some(at))).await;
    let (sku, account) = (format!("tp-c{n}"), format!("tp-a{n}"));
    p.restock(&sku, 10).await;
    p.open_account(&account, 50_000).await;
    let r = two_phase(request(
        &format!("tp-crash-{n}"),
        &sku,
        2,
        500,
        &account,
        "DE",
    ));
    let e = p
        .order
        .clone()
        .place_order(r.clone())
        .await
        .expect_err("the coordinator stops");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // What the coordinator left behind, before anyone recovers it.
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'shop2pc:%'")
            .fetch_one(&p.order_db)
            .await
            .expect("prepared");
    if matches!(at, CrashPoint::AfterDecision | CrashPoint::DuringCommit) {
        assert!(
            left > 0,
            "{at:?}: the participants should be holding prepared transactions"
        );
    }
    let mut settings = p.order_settings.clone();
    settings.twopc = quick(None);
    p.restart_order(settings).await;
    // The client retries with the same key and gets the order as recovery decided it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let order = loop {
        match p.order.clone().place_order(r.clone()).await {
            Ok(placed) => break placed.into_inner().order.expect("order"),
            Err(e) if e.code() == Code::Aborted || e.code() == Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{at:?}: never decided: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{at:?}: {e:?}"),
        }
    };
    // Decided is not done everywhere yet: phase two (recovery's) follows the answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while prepared(&p.order_db, &order.order_id).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{at:?}: still prepared after recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        all_or_nothing(&p, &order.order_id, &sku, &account, 10, 50_000).await,
        want,
        "{at:?}"
    );
    // Settled for good: the stock and the money do not move again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        all_or_nothing(&p, &order.order_id, &sku, &account, 10, 50_000).await,
        want
    );
    p.stop().await;
}

#[tokio::test]
async fn a_coordinator_killed_before_any_prepare_is_rolled_back_by_recovery() {
    crash_and_recover(CrashPoint::BeforePrepare, 1, OrderStatus::Cancelled).await;
}

#[tokio::test]
async fn a_coordinator_killed_after_some_prepares_is_rolled_back_by_recovery() {
    crash_and_recover(CrashPoint::AfterFirstVote, 2, OrderStatus::Cancelled).await;
}

#[tokio::test]
async fn a_coordinator_killed_after_deciding_to_commit_is_committed_by_recovery() {
    crash_and_recover(CrashPoint::AfterDecision, 3, OrderStatus::Completed).await;
}

#[tokio::test]
async fn a_coordinator_killed_during_phase_two_is_committed_by_recovery() {
    crash_and_recover(CrashPoint::DuringCommit, 4, OrderStatus::Completed).await;
}
