use shop_inventory::{domain::Request, repository};

use crate::helpers::*;

#[tokio::test]
async fn two_hundred_concurrent_reservations_for_fifty_units_never_oversell() {
    let app = spawn_app().await;
    app.restock("widget", 50).await;
    app.restock("gadget", 1000).await;
    // Each order wants one widget and one gadget; lines in both orders, so lock ordering matters.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let pool = app.pool.clone();
            tokio::spawn(async move {
                let lines = if i % 2 == 0 {
                    [("widget", 1), ("gadget", 1)]
                } else {
                    [("gadget", 1), ("widget", 1)]
                };
                let request = Request::parse(&items(&lines)).expect("valid");
                let mut tx = pool.begin().await.expect("begin");
                let outcome = repository::reserve(&mut tx, TENANT, &format!("race-{i}"), &request)
                    .await
                    .expect("reserve");
                tx.commit().await.expect("commit");
                matches!(outcome, repository::Reserve::Reserved(_))
            })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        reserved += usize::from(t.await.expect("join"));
    }
    assert_eq!(reserved, 50, "exactly the stock on hand was reserved");
    assert_eq!(app.stock("widget").await, (0, 50));
    assert_eq!(
        app.stock("gadget").await,
        (950, 50),
        "rejected orders took nothing"
    );
    app.stop().await;
}
