use shop_proto::inventory::{GetStockRequest, RestockRequest};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = spawn_app().await;
    let mut grpc = app.grpc.clone();
    let err = grpc
        .restock(RestockRequest {
            tenant_id: TENANT.into(),
            sku: "kiwi".into(),
            quantity: 0,
        })
        .await
        .expect_err("zero units");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("quantity"), "{}", err.message());

    let err = grpc
        .restock(RestockRequest {
            tenant_id: String::new(),
            sku: "kiwi".into(),
            quantity: 1,
        })
        .await
        .expect_err("no tenant");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("tenant_id"), "{}", err.message());

    let err = grpc
        .restock(RestockRequest {
            tenant_id: TENANT.into(),
            sku: "no spaces".into(),
            quantity: 1,
        })
        .await
        .expect_err("bad sku");
    assert!(err.message().contains("sku"), "{}", err.message());

    let err = grpc
        .get_stock(GetStockRequest {
            tenant_id: TENANT.into(),
            sku: "kiwi".into(),
        })
        .await
        .expect_err("nothing was created");
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
}
