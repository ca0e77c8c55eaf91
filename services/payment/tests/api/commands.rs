use prost::Message as _;
use shop_messaging::topics::types;
use shop_payment::{domain::Money, repository};
use shop_proto::events::{ChargePayment, PaymentDeclined, PaymentRefunded, RefundPayment};

use crate::helpers::*;

fn charge(order_id: &str, account_id: &str, amount_minor: i64) -> ChargePayment {
    ChargePayment {
        order_id: order_id.into(),
        account_id: account_id.into(),
        amount: usd(amount_minor),
    }
}

#[tokio::test]
async fn an_order_is_charged_once_whatever_the_redeliveries_and_retries() {
    let app = spawn_app().await;
    app.open("acc-1", 10_000).await;
    let cmd = app
        .saga
        .command(types::CHARGE_PAYMENT, "o-1", &charge("o-1", "acc-1", 2_500));
    for _ in 0..3 {
        app.saga.send(&cmd).await;
    }
    assert_eq!(
        app.saga.next_about("o-1", &[]).await.event_type,
        types::PAYMENT_CHARGED
    );
    let retry = app
        .saga
        .command(types::CHARGE_PAYMENT, "o-1", &charge("o-1", "acc-1", 2_500));
    app.saga.send(&retry).await;
    let again = app.saga.next_about("o-1", &[]).await;
    assert_eq!(
        again.event_type,
        types::PAYMENT_CHARGED,
        "the retry gets the first answer"
    );
    assert_eq!(again.causation_id, retry.event_id);
    assert_eq!(app.balance("acc-1").await, 7_500, "charged once");
    assert_eq!(app.ledger_gap("acc-1").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn insufficient_funds_declines_and_moves_nothing() {
    let app = spawn_app().await;
    app.open("acc-2", 1_000).await;
    app.saga
        .send(
            &app.saga
                .command(types::CHARGE_PAYMENT, "o-2", &charge("o-2", "acc-2", 2_000)),
        )
        .await;
    let reply = app.saga.next_about("o-2", &[]).await;
    assert_eq!(reply.event_type, types::PAYMENT_DECLINED);
    let reason = PaymentDeclined::decode(reply.payload.as_slice())
        .expect("payload")
        .reason;
    assert_eq!(reason, "insufficient funds: 2000 needed, 1000 available");
    assert_eq!(app.balance("acc-2").await, 1_000);
    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM movement")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(movements, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_refund_gives_the_money_back_and_a_charge_after_a_refund_is_declined() {
    let app = spawn_app().await;
    app.open("acc-3", 5_000).await;
    app.saga
        .send(
            &app.saga
                .command(types::CHARGE_PAYMENT, "o-3", &charge("o-3", "acc-3", 3_000)),
        )
        .await;
    assert_eq!(
        app.saga.next_about("o-3", &[]).await.event_type,
        types::PAYMENT_CHARGED
    );
    app.saga
        .send(&app.saga.command(
            types::REFUND_PAYMENT,
            "o-3",
            &RefundPayment {
                order_id: "o-3".into(),
            },
        ))
        .await;
    let refunded = app.saga.next_about("o-3", &[]).await;
    assert_eq!(refunded.event_type, types::PAYMENT_REFUNDED);
    let amount = PaymentRefunded::decode(refunded.payload.as_slice())
        .expect("payload")
        .amount
        .expect("amount");
    assert_eq!(amount.amount_minor, 3_000);
    assert_eq!(app.balance("acc-3").await, 5_000);
    assert_eq!(
        app.ledger_gap("acc-3").await,
        0,
        "opening + movements = balance"
    );

    // The saga compensated before the charge arrived: the late charge must not take money.
    app.saga
        .send(&app.saga.command(
            types::REFUND_PAYMENT,
            "o-4",
            &RefundPayment {
                order_id: "o-4".into(),
            },
        ))
        .await;
    assert_eq!(
        app.saga.next_about("o-4", &[]).await.event_type,
        types::PAYMENT_REFUNDED
    );
    app.saga
        .send(
            &app.saga
                .command(types::CHARGE_PAYMENT, "o-4", &charge("o-4", "acc-3", 1_000)),
        )
        .await;
    let late = app.saga.next_about("o-4", &[]).await;
    assert_eq!(late.event_type, types::PAYMENT_DECLINED);
    assert_eq!(
        PaymentDeclined::decode(late.payload.as_slice())
            .expect("payload")
            .reason,
        "order already refunded"
    );
    assert_eq!(app.balance("acc-3").await, 5_000);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_charges_on_one_account_never_overdraw_it() {
    let app = spawn_app().await;
    app.open("acc-5", 5_000).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                let amount = Money {
                    minor: 100,
                    currency: shop_payment::domain::Currency::parse("currency", "USD")
                        .expect("USD"),
                };
                let mut tx = pool.begin().await.expect("begin");
                let outcome = repository::charge(&mut tx, &format!("race-{i}"), "acc-5", amount)
                    .await
                    .expect("charge");
                tx.commit().await.expect("commit");
                outcome == repository::Charge::Charged
            })
        })
        .collect();
    let mut charged = 0;
    for t in tasks {
        charged += usize::from(t.await.expect("join"));
    }
    assert_eq!(charged, 50);
    assert_eq!(app.balance("acc-5").await, 0);
    assert_eq!(app.ledger_gap("acc-5").await, 0);
    app.stop().await;
}
