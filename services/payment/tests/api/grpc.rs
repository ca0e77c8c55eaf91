use shop_payment::{domain, repository};
use shop_proto::{
    common::{Money, PageRequest},
    payment::{GetAccountRequest, ListMovementsRequest, OpenAccountRequest},
};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = spawn_app().await;
    let mut grpc = app.grpc.clone();
    let err = grpc
        .open_account(OpenAccountRequest {
            account_id: "acc".into(),
            tenant_id: TENANT.into(),
            opening_balance: Some(Money {
                amount_minor: 100,
                currency: "usd".into(),
            }),
        })
        .await
        .expect_err("lowercase currency");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("opening_balance.currency"),
        "{}",
        err.message()
    );

    let err = grpc
        .get_account(GetAccountRequest {
            account_id: "acc".into(),
        })
        .await
        .expect_err("not opened");
    assert_eq!(err.code(), Code::NotFound);

    app.open("acc", 100).await;
    assert_eq!(
        app.open("acc", 100).await.account_id,
        "acc",
        "opening again with the same terms is a no-op"
    );
    let err = grpc
        .open_account(OpenAccountRequest {
            account_id: "acc".into(),
            tenant_id: TENANT.into(),
            opening_balance: usd(999),
        })
        .await
        .expect_err("other terms");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(app.balance("acc").await, 100);
    app.stop().await;
}

#[tokio::test]
async fn movements_are_listed_in_pages() {
    let app = spawn_app().await;
    app.open("acc-p", 10_000).await;
    for i in 0..5 {
        let mut tx = app.pool.begin().await.expect("begin");
        let amount = domain::Money {
            minor: 10,
            currency: shop_payment::domain::Currency::parse("currency", "USD").expect("USD"),
        };
        repository::charge(&mut tx, &format!("p-{i}"), "acc-p", amount)
            .await
            .expect("charge");
        tx.commit().await.expect("commit");
    }
    let mut grpc = app.grpc.clone();
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = grpc
            .list_movements(ListMovementsRequest {
                account_id: "acc-p".into(),
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.movements.len() <= 2);
        seen.extend(page.movements.iter().map(|m| {
            (
                m.order_id.clone(),
                m.amount.as_ref().map(|a| a.amount_minor),
            )
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = (0..5).map(|i| (format!("p-{i}"), Some(-10))).collect();
    assert_eq!(seen, expected);
    app.stop().await;
}
