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

/// Raw bytes as a request body: what a client sends when its message is not the method's.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, v.len());
        Ok(Some(v))
    }
}

/// A body that is no protobuf message at all used to come back INTERNAL (tonic's answer to an
/// undecodable request); the service frame answers INVALID_ARGUMENT.
#[tokio::test]
async fn a_request_that_is_not_a_protobuf_message_is_invalid_argument() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(app.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    for body in [vec![0xff, 0xff, 0xff], vec![0x0a, 0xff, 0x01], vec![0x12]] {
        grpc.ready().await.expect("ready");
        let got = grpc
            .unary(
                tonic::Request::new(body.clone()),
                http::uri::PathAndQuery::from_static(
                    "/shop.inventory.v1.InventoryService/GetStock",
                ),
                Raw,
            )
            .await
            .expect_err("not a message");
        assert_eq!(
            got.code(),
            tonic::Code::InvalidArgument,
            "{body:?}: {got:?}"
        );
    }
    app.stop().await;
}
