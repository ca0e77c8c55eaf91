use prost::Message as _;
use shop_messaging::topics::types;
use shop_proto::events::{ReleaseStock, ReserveStock, StockReservationFailed};

use crate::helpers::*;

#[tokio::test]
async fn a_reservation_is_all_or_nothing_and_a_release_returns_the_stock() {
    let app = spawn_app().await;
    app.restock("apple", 5).await;
    app.restock("pear", 1).await;

    // Two pears are wanted, one is there: nothing at all is taken.
    let too_much = app.command(
        types::RESERVE_STOCK,
        "o-1",
        &ReserveStock {
            order_id: "o-1".into(),
            items: items(&[("apple", 2), ("pear", 2)]),
        },
    );
    app.send(&too_much).await;
    let reply = app.reply("o-1").await;
    assert_eq!(reply.event_type, types::STOCK_RESERVATION_FAILED);
    let reason = StockReservationFailed::decode(reply.payload.as_slice())
        .expect("payload")
        .reason;
    assert_eq!(reason, "insufficient stock for pear: 2 wanted, 1 available");
    assert_eq!(
        reply.causation_id, too_much.event_id,
        "the reply names the command it answers"
    );
    assert_eq!(app.stock("apple").await, (5, 0));
    assert_eq!(app.stock("pear").await, (1, 0));

    let ok = app.command(
        types::RESERVE_STOCK,
        "o-2",
        &ReserveStock {
            order_id: "o-2".into(),
            items: items(&[("apple", 2), ("pear", 1)]),
        },
    );
    app.send(&ok).await;
    assert_eq!(app.reply("o-2").await.event_type, types::STOCK_RESERVED);
    assert_eq!(app.stock("apple").await, (3, 2));
    assert_eq!(app.stock("pear").await, (0, 1));

    app.send(&app.command(
        types::RELEASE_STOCK,
        "o-2",
        &ReleaseStock {
            order_id: "o-2".into(),
        },
    ))
    .await;
    assert_eq!(app.reply("o-2").await.event_type, types::STOCK_RELEASED);
    assert_eq!(app.stock("apple").await, (5, 0));
    assert_eq!(app.stock("pear").await, (1, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_command_delivered_three_times_and_retried_reserves_once() {
    let app = spawn_app().await;
    app.restock("plum", 10).await;
    let cmd = app.command(
        types::RESERVE_STOCK,
        "o-3",
        &ReserveStock {
            order_id: "o-3".into(),
            items: items(&[("plum", 4)]),
        },
    );
    for _ in 0..3 {
        app.send(&cmd).await;
    }
    assert_eq!(app.reply("o-3").await.event_type, types::STOCK_RESERVED);
    // The saga's retry after a timeout is a new message for the same order: the same answer.
    let retry = app.command(
        types::RESERVE_STOCK,
        "o-3",
        &ReserveStock {
            order_id: "o-3".into(),
            items: items(&[("plum", 4)]),
        },
    );
    app.send(&retry).await;
    let again = app.reply("o-3").await;
    assert_eq!(again.event_type, types::STOCK_RESERVED);
    assert_eq!(again.causation_id, retry.event_id);
    assert_eq!(app.stock("plum").await, (6, 4), "four units taken once");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(
        inbox, 2,
        "two distinct messages applied; the two redeliveries skipped"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_reserve_arriving_after_its_release_is_refused() {
    let app = spawn_app().await;
    app.restock("fig", 3).await;
    // The saga timed out waiting, compensated, and only then did the reserve arrive.
    app.send(&app.command(
        types::RELEASE_STOCK,
        "o-4",
        &ReleaseStock {
            order_id: "o-4".into(),
        },
    ))
    .await;
    assert_eq!(app.reply("o-4").await.event_type, types::STOCK_RELEASED);
    app.send(&app.command(
        types::RESERVE_STOCK,
        "o-4",
        &ReserveStock {
            order_id: "o-4".into(),
            items: items(&[("fig", 1)]),
        },
    ))
    .await;
    let reply = app.reply("o-4").await;
    assert_eq!(reply.event_type, types::STOCK_RESERVATION_FAILED);
    assert_eq!(
        StockReservationFailed::decode(reply.payload.as_slice())
            .expect("payload")
            .reason,
        "order already released"
    );
    assert_eq!(
        app.stock("fig").await,
        (3, 0),
        "nothing held for a released order"
    );
    app.stop().await;
}
