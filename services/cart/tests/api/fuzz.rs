//! Hostile requests to every cart RPC (NUL bytes, megabyte strings, integer extremes, missing
//! parts) against the real Redis, catalog and order service: refused or answered, never INTERNAL.

use shop_cart::domain::Limits;
use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
use shop_proto::cart::{
    AddItemRequest, CheckoutRequest, GetCartRequest, RemoveItemRequest, SetQuantityRequest,
};

use crate::helpers::{session, spawn};

#[tokio::test]
async fn no_request_to_the_cart_is_answered_with_a_server_fault() {
    let p = spawn(Limits::default()).await;
    p.product("fuzz-sku", 250).await;
    let mut cart = p.cart.clone();
    let strings = sample(arbitrary::string(), 120, 41);
    let quantities = sample(arbitrary::u32_edge(), 120, 42);
    let addresses = sample(arbitrary::address(), 120, 43);
    for (i, ((s, q), address)) in strings
        .into_iter()
        .zip(quantities)
        .zip(addresses)
        .enumerate()
    {
        // Alternate: the hostile value as the session, or as the SKU of a real session.
        let (session_id, sku) = if i % 2 == 0 {
            (s.clone(), "fuzz-sku".to_owned())
        } else {
            (session(), s.clone())
        };
        let r = AddItemRequest {
            session_id: session_id.clone(),
            sku: sku.clone(),
            quantity: q,
        };
        assert_no_server_fault("AddItem", &r, &cart.add_item(r.clone()).await);
        let r = SetQuantityRequest {
            session_id: session_id.clone(),
            sku: sku.clone(),
            quantity: q,
        };
        assert_no_server_fault("SetQuantity", &r, &cart.set_quantity(r.clone()).await);
        let r = GetCartRequest {
            session_id: session_id.clone(),
        };
        assert_no_server_fault("GetCart", &r, &cart.get_cart(r.clone()).await);
        let r = CheckoutRequest {
            session_id: session_id.clone(),
            tenant_id: s.clone(),
            customer_id: s.clone(),
            shipping_address: address,
            payment_account_id: s,
        };
        assert_no_server_fault("Checkout", &r, &cart.checkout(r.clone()).await);
        let r = RemoveItemRequest { session_id, sku };
        assert_no_server_fault("RemoveItem", &r, &cart.remove_item(r.clone()).await);
    }
    p.stop().await;
}
