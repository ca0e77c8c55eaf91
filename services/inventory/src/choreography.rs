//! Inventory's part in a choreographed order ([`shop_messaging::choreography`]): nobody sends
//! it a command; it reacts to the other services' events with the commands an orchestrator
//! would have sent, run by the same [`crate::commands::Commands`] handler.
//!
//! | on | it runs |
//! |---|---|
//! | `order.placed` | reserve the order's items |
//! | `payment.declined`, `payment.refunded` | release the reservation |
//! | `shipping.shipment_created` | commit the stock (it leaves the warehouse) |

use prost::Message as _;
use shop_messaging::topics::types;
use shop_proto::events::{CommitStock, OrderPlaced, ReleaseStock, ReserveStock};

pub const TRIGGERS: &[&str] = &[
    types::ORDER_PLACED,
    types::PAYMENT_DECLINED,
    types::PAYMENT_REFUNDED,
    types::SHIPMENT_CREATED,
];

pub fn react(trigger: &str, order: &OrderPlaced) -> Option<(&'static str, Vec<u8>)> {
    let order_id = order.order_id.clone();
    Some(match trigger {
        types::ORDER_PLACED => (
            types::RESERVE_STOCK,
            ReserveStock {
                order_id,
                items: order.items.clone(),
            }
            .encode_to_vec(),
        ),
        types::PAYMENT_DECLINED | types::PAYMENT_REFUNDED => (
            types::RELEASE_STOCK,
            ReleaseStock { order_id }.encode_to_vec(),
        ),
        types::SHIPMENT_CREATED => (
            types::COMMIT_STOCK,
            CommitStock { order_id }.encode_to_vec(),
        ),
        _ => return None,
    })
}
