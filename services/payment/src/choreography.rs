//! Payment's part in a choreographed order ([`shop_messaging::choreography`]): nobody sends it
//! a command; it reacts to the other services' events with the commands an orchestrator would
//! have sent, run by the same [`crate::commands::Commands`] handler. The account and the amount
//! come from the order the events carry.
//!
//! | on | it runs |
//! |---|---|
//! | `inventory.stock_reserved` | charge the order's total to its account |
//! | `shipping.shipment_refused` | refund the charge |

use prost::Message as _;
use shop_messaging::topics::types;
use shop_proto::events::{ChargePayment, OrderPlaced, RefundPayment};

pub const TRIGGERS: &[&str] = &[types::STOCK_RESERVED, types::SHIPMENT_REFUSED];

pub fn react(trigger: &str, order: &OrderPlaced) -> Option<(&'static str, Vec<u8>)> {
    let order_id = order.order_id.clone();
    Some(match trigger {
        types::STOCK_RESERVED => (
            types::CHARGE_PAYMENT,
            ChargePayment {
                order_id,
                account_id: order.payment_account_id.clone(),
                amount: order.total.clone(),
            }
            .encode_to_vec(),
        ),
        types::SHIPMENT_REFUSED => (
            types::REFUND_PAYMENT,
            RefundPayment { order_id }.encode_to_vec(),
        ),
        _ => return None,
    })
}
