//! Topic names and event types: the Kafka half of the contract (the payloads are in
//! `proto/shop/events/v1/payloads.proto`). Every topic is keyed by aggregate id; for the saga's
//! commands and replies that is the order id, so one order's messages stay in order.
//!
//! Commands go to `shop.<participant>.commands`; each service publishes its replies and facts to
//! its own `shop.<service>.events`, which the order saga and any other interested service consume.

pub const ORDER_EVENTS: &str = "shop.order.events";
/// Every decision of the order saga (`order.saga_progressed`), for whoever follows sagas closely.
pub const ORDER_SAGA: &str = "shop.order.saga";
pub const INVENTORY_COMMANDS: &str = "shop.inventory.commands";
pub const INVENTORY_EVENTS: &str = "shop.inventory.events";
pub const PAYMENT_COMMANDS: &str = "shop.payment.commands";
pub const PAYMENT_EVENTS: &str = "shop.payment.events";
pub const SHIPPING_COMMANDS: &str = "shop.shipping.commands";
pub const SHIPPING_EVENTS: &str = "shop.shipping.events";
pub const CATALOG_EVENTS: &str = "shop.catalog.events";
/// Profile updates between the regions' replicas (causal; keyed by user id).
pub const CATALOG_PROFILES: &str = "shop.catalog.profiles";
/// Per-region product counters (views, likes) as whole CRDT states, keyed by SKU.
pub const CATALOG_COUNTERS: &str = "shop.catalog.counters";
pub const CART_EVENTS: &str = "shop.cart.events";

/// `event_type` values, one per payload message.
pub mod types {
    pub const RESERVE_STOCK: &str = "inventory.reserve_stock";
    pub const RELEASE_STOCK: &str = "inventory.release_stock";
    pub const COMMIT_STOCK: &str = "inventory.commit_stock";
    pub const STOCK_RESERVED: &str = "inventory.stock_reserved";
    pub const STOCK_RESERVATION_FAILED: &str = "inventory.stock_reservation_failed";
    pub const STOCK_RELEASED: &str = "inventory.stock_released";
    pub const STOCK_COMMITTED: &str = "inventory.stock_committed";
    pub const STOCK_LEVEL_CHANGED: &str = "inventory.stock_level_changed";

    pub const CHARGE_PAYMENT: &str = "payment.charge";
    pub const REFUND_PAYMENT: &str = "payment.refund";
    pub const PAYMENT_CHARGED: &str = "payment.charged";
    pub const PAYMENT_DECLINED: &str = "payment.declined";
    pub const PAYMENT_REFUNDED: &str = "payment.refunded";

    pub const CREATE_SHIPMENT: &str = "shipping.create_shipment";
    pub const CANCEL_SHIPMENT: &str = "shipping.cancel_shipment";
    pub const SHIPMENT_CREATED: &str = "shipping.shipment_created";
    pub const SHIPMENT_REFUSED: &str = "shipping.shipment_refused";
    pub const SHIPMENT_CANCELLED: &str = "shipping.shipment_cancelled";

    pub const ORDER_PLACED: &str = "order.placed";
    pub const ORDER_COMPLETED: &str = "order.completed";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    pub const ORDER_SAGA_PROGRESSED: &str = "order.saga_progressed";

    pub const PRODUCT_CHANGED: &str = "catalog.product_changed";
    pub const PROFILE_UPDATED: &str = "catalog.profile_updated";
    pub const PRODUCT_COUNTERS: &str = "catalog.product_counters";
    pub const CART_CHECKED_OUT: &str = "cart.checked_out";
}
