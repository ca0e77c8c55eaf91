//! The shipping service against the real PostgreSQL and broker.

use prost::Message as _;
use shop_messaging::{
    service::PgServiceSettings, testing, testing::CommandChannel, topics, topics::types,
};
use shop_proto::{
    common::Address,
    events::{CancelShipment, CreateShipment, ShipmentCreated, ShipmentRefused},
    shipping::{
        GetShipmentRequest, ValidateAddressRequest, shipping_service_client::ShippingServiceClient,
    },
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

struct TestApp {
    grpc: ShippingServiceClient<Channel>,
    saga: CommandChannel,
    settings: PgServiceSettings,
    shutdown: CancellationToken,
}

async fn spawn_app() -> TestApp {
    let settings = shop_shipping::Settings {
        service: testing::service_settings("shipping"),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let app = shop_shipping::build(&settings, shutdown.clone())
        .await
        .expect("build");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        grpc: ShippingServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc"),
        saga: CommandChannel::new(
            &settings.service.kafka,
            topics::SHIPPING_COMMANDS,
            topics::SHIPPING_EVENTS,
            "acme",
        ),
        settings: settings.service,
        shutdown,
    }
}

impl TestApp {
    async fn stop(self) {
        self.shutdown.cancel();
        testing::drop_database(&self.settings).await;
    }
}

fn address(country: &str) -> Option<Address> {
    Some(Address {
        name: "Ada Lovelace".into(),
        line1: "1 Main St".into(),
        line2: String::new(),
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: country.into(),
    })
}

fn create(order_id: &str, country: &str) -> CreateShipment {
    CreateShipment {
        order_id: order_id.into(),
        address: address(country),
        items: vec![],
    }
}

#[tokio::test]
async fn a_shipment_is_created_once_and_can_be_cancelled() {
    let app = spawn_app().await;
    let cmd = app
        .saga
        .command(types::CREATE_SHIPMENT, "o-1", &create("o-1", "DE"));
    for _ in 0..3 {
        app.saga.send(&cmd).await;
    }
    let created = app.saga.next_about("o-1", &[]).await;
    assert_eq!(created.event_type, types::SHIPMENT_CREATED);
    let first_id = ShipmentCreated::decode(created.payload.as_slice())
        .expect("payload")
        .shipment_id;
    // A retry (new message, same order) gets the same shipment.
    app.saga
        .send(
            &app.saga
                .command(types::CREATE_SHIPMENT, "o-1", &create("o-1", "DE")),
        )
        .await;
    let again = app.saga.next_about("o-1", &[]).await;
    assert_eq!(
        ShipmentCreated::decode(again.payload.as_slice())
            .expect("payload")
            .shipment_id,
        first_id
    );

    let mut grpc = app.grpc.clone();
    let s = grpc
        .get_shipment(GetShipmentRequest {
            shipment_id: first_id.clone(),
            order_id: String::new(),
        })
        .await
        .expect("get");
    assert_eq!(s.into_inner().status, "created");

    app.saga
        .send(&app.saga.command(
            types::CANCEL_SHIPMENT,
            "o-1",
            &CancelShipment {
                order_id: "o-1".into(),
            },
        ))
        .await;
    assert_eq!(
        app.saga.next_about("o-1", &[]).await.event_type,
        types::SHIPMENT_CANCELLED
    );
    let s = grpc
        .get_shipment(GetShipmentRequest {
            shipment_id: String::new(),
            order_id: "o-1".into(),
        })
        .await
        .expect("get");
    assert_eq!(s.into_inner().status, "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn destinations_outside_the_zones_are_refused_and_a_create_after_a_cancel_too() {
    let app = spawn_app().await;
    app.saga
        .send(
            &app.saga
                .command(types::CREATE_SHIPMENT, "o-2", &create("o-2", "AQ")),
        )
        .await;
    let refused = app.saga.next_about("o-2", &[]).await;
    assert_eq!(refused.event_type, types::SHIPMENT_REFUSED);
    assert_eq!(
        ShipmentRefused::decode(refused.payload.as_slice())
            .expect("payload")
            .reason,
        "we do not ship to AQ"
    );
    // GetShipment reports it with a status the contract lists, and why.
    let shipment = app
        .grpc
        .clone()
        .get_shipment(GetShipmentRequest {
            order_id: "o-2".into(),
            ..Default::default()
        })
        .await
        .expect("the refusal is recorded")
        .into_inner();
    assert_eq!(
        (shipment.status.as_str(), shipment.reason.as_str()),
        ("refused", "we do not ship to AQ")
    );

    app.saga
        .send(&app.saga.command(
            types::CANCEL_SHIPMENT,
            "o-3",
            &CancelShipment {
                order_id: "o-3".into(),
            },
        ))
        .await;
    assert_eq!(
        app.saga.next_about("o-3", &[]).await.event_type,
        types::SHIPMENT_CANCELLED
    );
    app.saga
        .send(
            &app.saga
                .command(types::CREATE_SHIPMENT, "o-3", &create("o-3", "DE")),
        )
        .await;
    let late = app.saga.next_about("o-3", &[]).await;
    assert_eq!(late.event_type, types::SHIPMENT_REFUSED);
    assert_eq!(
        ShipmentRefused::decode(late.payload.as_slice())
            .expect("payload")
            .reason,
        "order already cancelled"
    );
    app.stop().await;
}

#[tokio::test]
async fn address_validation_names_the_field() {
    let app = spawn_app().await;
    let mut grpc = app.grpc.clone();
    let ok = grpc
        .validate_address(ValidateAddressRequest {
            address: address("FR"),
        })
        .await
        .expect("ok")
        .into_inner();
    assert!(ok.deliverable);
    let no = grpc
        .validate_address(ValidateAddressRequest {
            address: address("AQ"),
        })
        .await
        .expect("ok")
        .into_inner();
    assert!(!no.deliverable);
    assert_eq!(no.reason, "we do not ship to AQ");
    let err = grpc
        .validate_address(ValidateAddressRequest {
            address: address("france"),
        })
        .await
        .expect_err("bad country");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("address.country"),
        "{}",
        err.message()
    );
    let err = grpc
        .get_shipment(GetShipmentRequest::default())
        .await
        .expect_err("no id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = grpc
        .get_shipment(GetShipmentRequest {
            shipment_id: String::new(),
            order_id: "nope".into(),
        })
        .await
        .expect_err("none");
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
}

/// Hostile requests (NUL bytes, megabyte strings, missing parts) are refused or answered, never
/// INTERNAL: a NUL in an order id used to reach PostgreSQL and come back as INTERNAL.
#[tokio::test]
async fn no_request_is_answered_with_a_server_fault() {
    use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
    let app = spawn_app().await;
    let mut grpc = app.grpc.clone();
    let ids = sample(arbitrary::string(), 150, 21);
    let addresses = sample(arbitrary::address(), 150, 22);
    for (i, (id, address)) in ids.into_iter().zip(addresses).enumerate() {
        let r = if i % 2 == 0 {
            GetShipmentRequest {
                shipment_id: String::new(),
                order_id: id,
            }
        } else {
            GetShipmentRequest {
                shipment_id: id,
                order_id: String::new(),
            }
        };
        assert_no_server_fault("GetShipment", &r, &grpc.get_shipment(r.clone()).await);
        let r = ValidateAddressRequest { address };
        assert_no_server_fault(
            "ValidateAddress",
            &r,
            &grpc.validate_address(r.clone()).await,
        );
    }
    app.stop().await;
}
