//! Inventory as a two-phase-commit participant (`shop_messaging::twopc` over the real
//! PostgreSQL): a prepared reservation holds its stock and its row locks until the decision,
//! survives its session, is not done twice, and hostile requests never reach the SQL.

use std::time::Duration;

use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
use shop_messaging::twopc::gid;
use shop_proto::{
    events::{ChargePayment, ReserveStock},
    twopc::{
        Decision, ListPreparedRequest, PrepareRequest, participant_client::ParticipantClient,
        prepare_request::Work,
    },
};
use tonic::Code;

use crate::helpers::*;

fn prepare(order_id: &str, sku: &str, quantity: u32) -> PrepareRequest {
    PrepareRequest {
        gid: gid(order_id, "inventory"),
        tenant_id: TENANT.into(),
        work: Some(Work::ReserveStock(ReserveStock {
            order_id: order_id.into(),
            items: items(&[(sku, quantity)]),
        })),
    }
}

#[tokio::test]
async fn a_prepared_reservation_holds_stock_and_locks_until_the_decision_and_is_done_once() {
    let app = spawn_app().await;
    let mut p = ParticipantClient::connect(app.url.clone())
        .await
        .expect("connect");
    app.restock("pc-1", 10).await;
    let order = uuid::Uuid::now_v7().to_string();
    let vote = p
        .prepare(prepare(&order, "pc-1", 4))
        .await
        .expect("prepare")
        .into_inner();
    assert!(vote.yes, "{vote:?}");
    // Not visible to others before the decision, and the stock row is locked.
    assert_eq!(app.stock("pc-1").await, (10, 0));
    let locked = sqlx::query("SELECT 1 FROM stock WHERE sku = 'pc-1' FOR UPDATE NOWAIT")
        .execute(&app.pool)
        .await;
    assert!(
        locked.is_err(),
        "the prepared transaction must hold the row lock"
    );
    // A retry of the prepare votes yes again and prepares nothing more.
    assert!(
        p.prepare(prepare(&order, "pc-1", 4))
            .await
            .expect("again")
            .into_inner()
            .yes
    );
    let listed = p
        .list_prepared(ListPreparedRequest {
            prefix: gid(&order, ""),
        })
        .await
        .expect("list")
        .into_inner()
        .prepared;
    assert_eq!(listed.len(), 1, "{listed:?}");
    // Commit: the stock leaves; a second commit finds nothing to do.
    let d = Decision {
        gid: gid(&order, "inventory"),
    };
    assert!(
        p.commit(d.clone())
            .await
            .expect("commit")
            .into_inner()
            .was_prepared
    );
    assert!(
        !p.commit(d.clone())
            .await
            .expect("commit again")
            .into_inner()
            .was_prepared
    );
    assert_eq!(app.stock("pc-1").await, (6, 0));
    // Prepared again after the commit (a late copy): nothing is taken twice.
    assert!(
        p.prepare(prepare(&order, "pc-1", 4))
            .await
            .expect("late")
            .into_inner()
            .yes
    );
    assert!(p.rollback(d.clone()).await.is_ok());
    assert_eq!(app.stock("pc-1").await, (6, 0));
    // Too much: a no, and nothing stays prepared.
    let other = uuid::Uuid::now_v7().to_string();
    let no = p
        .prepare(prepare(&other, "pc-1", 50))
        .await
        .expect("prepare")
        .into_inner();
    assert!(!no.yes && no.reason.contains("pc-1"), "{no:?}");
    let left = p
        .list_prepared(ListPreparedRequest {
            prefix: gid(&other, ""),
        })
        .await
        .expect("list")
        .into_inner()
        .prepared;
    assert!(left.is_empty());
    // Rolled back: the stock is as before.
    let third = uuid::Uuid::now_v7().to_string();
    assert!(
        p.prepare(prepare(&third, "pc-1", 6))
            .await
            .expect("prepare")
            .into_inner()
            .yes
    );
    p.rollback(Decision {
        gid: gid(&third, "inventory"),
    })
    .await
    .expect("rollback");
    assert_eq!(app.stock("pc-1").await, (6, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.stop().await;
}

#[tokio::test]
async fn no_participant_request_is_answered_with_a_server_fault_or_reaches_the_sql() {
    let app = spawn_app().await;
    let mut p = ParticipantClient::connect(app.url.clone())
        .await
        .expect("connect");
    let strings = sample(arbitrary::string(), 100, 51);
    for (i, s) in strings.into_iter().enumerate() {
        let order = if i % 2 == 0 {
            uuid::Uuid::now_v7().to_string()
        } else {
            s.clone()
        };
        let work = match i % 3 {
            0 => Some(Work::ReserveStock(ReserveStock {
                order_id: order.clone(),
                items: items(&[(&s, 1)]),
            })),
            1 => Some(Work::ChargePayment(ChargePayment {
                order_id: order.clone(),
                ..Default::default()
            })),
            _ => None,
        };
        let r = PrepareRequest {
            gid: if i % 4 == 0 {
                gid(&order, "inventory")
            } else {
                format!("x'; ROLLBACK; --{s}")
            },
            tenant_id: if i % 5 == 0 { s.clone() } else { TENANT.into() },
            work,
        };
        let answer = p.prepare(r.clone()).await;
        assert_no_server_fault("Prepare", &r, &answer);
        if answer.is_ok_and(|v| v.get_ref().yes) {
            p.rollback(Decision { gid: r.gid.clone() })
                .await
                .expect("rollback");
        }
        let d = Decision { gid: s.clone() };
        assert_no_server_fault("Commit", &d, &p.commit(d.clone()).await);
        assert_no_server_fault("Rollback", &d, &p.rollback(d.clone()).await);
        let l = ListPreparedRequest { prefix: s };
        assert_no_server_fault("ListPrepared", &l, &p.list_prepared(l.clone()).await);
    }
    let e = p
        .commit(Decision { gid: "a'b".into() })
        .await
        .expect_err("a quote");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("gid"), "{}", e.message());
    app.stop().await;
}
