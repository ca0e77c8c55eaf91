//! Fuzzing the request paths: hostile requests (NUL bytes, megabyte strings, integer extremes,
//! missing parts) to every RPC of order, inventory and payment, against the real stores. A
//! client's input may be refused, never answered with INTERNAL or a panic.

use proptest::prelude::*;
use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
use shop_proto::{
    common::PageRequest,
    inventory::{GetStockRequest, RestockRequest},
    order::{
        CompensateSagaRequest, GetOrderAsOfRequest, GetOrderRequest, GetSagaRequest,
        ListOrdersRequest, ListSagasRequest, PlaceOrderRequest, RetrySagaRequest,
        get_order_as_of_request::AsOf,
    },
    payment::{GetAccountRequest, ListMovementsRequest, OpenAccountRequest},
};

use crate::helpers::{Run, quick_saga, request, spawn_platform};

const CASES: usize = 150;

type Mutation = fn(&mut PlaceOrderRequest, String);

/// One field of a valid order replaced by a hostile string: reaches past the first check.
const MUTATIONS: &[Mutation] = &[
    |r, s| r.idempotency_key = s,
    |r, s| r.tenant_id = s,
    |r, s| r.customer_id = s,
    |r, s| r.payment_account_id = s,
    |r, s| r.items[0].sku = s,
    |r, s| r.items[0].unit_price.as_mut().expect("price").currency = s,
    |r, s| address(r).name = s,
    |r, s| address(r).line1 = s,
    |r, s| address(r).line2 = s,
    |r, s| address(r).city = s,
    |r, s| address(r).postal_code = s,
    |r, s| address(r).country = s,
];

fn address(r: &mut PlaceOrderRequest) -> &mut shop_proto::common::Address {
    r.shipping_address.as_mut().expect("address")
}

fn place_orders() -> impl Strategy<Value = PlaceOrderRequest> {
    let mutated = (0..MUTATIONS.len(), arbitrary::string()).prop_map(|(i, s)| {
        let mut r = request("fuzz", "fuzz-sku", 1, 100, "fuzz-acc", "DE");
        MUTATIONS[i](&mut r, s);
        r
    });
    let numbers = (arbitrary::u32_edge(), arbitrary::i64_edge()).prop_map(|(q, minor)| {
        let mut r = request("fuzz-n", "fuzz-sku", q, minor, "fuzz-acc", "DE");
        r.idempotency_key = format!("fuzz-{q}-{minor}");
        r
    });
    let anything = (
        arbitrary::string(),
        arbitrary::string(),
        arbitrary::string(),
        arbitrary::line_items(4),
        arbitrary::address(),
        arbitrary::string(),
    )
        .prop_map(
            |(idempotency_key, tenant_id, customer_id, items, shipping_address, account)| {
                PlaceOrderRequest {
                    idempotency_key,
                    tenant_id,
                    customer_id,
                    items,
                    shipping_address,
                    payment_account_id: account,
                    ..Default::default()
                }
            },
        );
    prop_oneof![3 => mutated, 1 => numbers, 2 => anything]
}

fn page() -> impl Strategy<Value = Option<PageRequest>> {
    proptest::option::of((arbitrary::u32_edge(), arbitrary::string()).prop_map(
        |(page_size, page_token)| PageRequest {
            page_size,
            page_token,
        },
    ))
}

#[tokio::test]
async fn no_request_to_order_inventory_or_payment_is_answered_with_a_server_fault() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    let (mut order, mut inventory, mut payment) =
        (p.order.clone(), p.inventory.clone(), p.payment.clone());

    for (i, r) in sample(place_orders(), CASES, 1).into_iter().enumerate() {
        let got = order.place_order(r.clone()).await;
        assert_no_server_fault(&format!("PlaceOrder #{i}"), &r, &got);
    }
    let strings = sample(arbitrary::string(), CASES, 2);
    let versions = sample(arbitrary::u64_edge(), CASES, 3);
    let pages = sample(page(), CASES, 4);
    for ((s, v), page) in strings.iter().zip(&versions).zip(&pages) {
        let (s, v, page) = (s.clone(), *v, page.clone());
        let r = GetOrderRequest {
            order_id: s.clone(),
            min_stream_version: v.min(3),
        };
        assert_no_server_fault("GetOrder", &r, &order.get_order(r.clone()).await);
        let r = GetOrderAsOfRequest {
            order_id: s.clone(),
            as_of: Some(AsOf::Version(v)),
        };
        assert_no_server_fault("GetOrderAsOf", &r, &order.get_order_as_of(r.clone()).await);
        let r = ListOrdersRequest {
            tenant_id: s.clone(),
            customer_id: s.clone(),
            page: page.clone(),
        };
        assert_no_server_fault("ListOrders", &r, &order.list_orders(r.clone()).await);
        let r = ListSagasRequest {
            page: page.clone(),
            ..Default::default()
        };
        assert_no_server_fault("ListSagas", &r, &order.list_sagas(r.clone()).await);
        let r = GetSagaRequest { saga_id: s.clone() };
        assert_no_server_fault("GetSaga", &r, &order.get_saga(r.clone()).await);
        let r = RetrySagaRequest { saga_id: s.clone() };
        assert_no_server_fault("RetrySaga", &r, &order.retry_saga(r.clone()).await);
        let r = CompensateSagaRequest {
            saga_id: s.clone(),
            reason: s.clone(),
        };
        assert_no_server_fault(
            "CompensateSaga",
            &r,
            &order.compensate_saga(r.clone()).await,
        );

        let r = GetStockRequest {
            tenant_id: s.clone(),
            sku: s.clone(),
        };
        assert_no_server_fault("GetStock", &r, &inventory.get_stock(r.clone()).await);
        let r = RestockRequest {
            tenant_id: "fuzz".into(),
            sku: s.clone(),
            quantity: u32::try_from(v % (u64::from(u32::MAX) + 1)).unwrap_or(0),
        };
        assert_no_server_fault("Restock", &r, &inventory.restock(r.clone()).await);

        let r = OpenAccountRequest {
            account_id: s.clone(),
            tenant_id: s.clone(),
            opening_balance: Some(shop_proto::common::Money {
                amount_minor: v as i64,
                currency: "USD".into(),
            }),
        };
        assert_no_server_fault("OpenAccount", &r, &payment.open_account(r.clone()).await);
        let r = GetAccountRequest {
            account_id: s.clone(),
        };
        assert_no_server_fault("GetAccount", &r, &payment.get_account(r.clone()).await);
        let r = ListMovementsRequest {
            account_id: s.clone(),
            page,
        };
        assert_no_server_fault(
            "ListMovements",
            &r,
            &payment.list_movements(r.clone()).await,
        );
    }
    p.stop().await;
}
