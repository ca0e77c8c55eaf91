//! Shipping's part in a choreographed order ([`shop_messaging::choreography`]): nobody sends it
//! a command; on `payment.charged` it creates the shipment an orchestrator would have asked
//! for, run by the same [`crate::commands::Commands`] handler, to the address and with the
//! items of the order the event carries. A refusal (`shipment_refused`) is what payment and
//! then inventory react to.

use prost::Message as _;
use shop_messaging::topics::types;
use shop_proto::events::{CreateShipment, OrderPlaced};

pub const TRIGGERS: &[&str] = &[types::PAYMENT_CHARGED];

pub fn react(trigger: &str, order: &OrderPlaced) -> Option<(&'static str, Vec<u8>)> {
    (trigger == types::PAYMENT_CHARGED).then(|| {
        let command = CreateShipment {
            order_id: order.order_id.clone(),
            address: order.shipping_address.clone(),
            items: order.items.clone(),
        };
        (types::CREATE_SHIPMENT, command.encode_to_vec())
    })
}
