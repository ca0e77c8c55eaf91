//! # shop-proto
//!
//! The wire contracts of the platform, generated at build time from `proto/shop/**`:
//!
//! - [`common`]: money (integer minor units), line items, addresses, paging.
//! - [`events`]: [`events::EventEnvelope`], the one envelope every Kafka message travels in,
//!   and the payloads (commands, replies and facts) it carries.
//! - one module per service (`order`, `payment`, ...) with its tonic client and server.
//!
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(clippy::all, clippy::pedantic)]

/// Generated code, nested as the protobuf packages are (`shop.<name>.v1`), so that
/// cross-package references resolve.
pub mod shop {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("shop.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("shop.events.v1");
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("shop.order.v1");
        }
    }
    pub mod payment {
        pub mod v1 {
            tonic::include_proto!("shop.payment.v1");
        }
    }
    pub mod inventory {
        pub mod v1 {
            tonic::include_proto!("shop.inventory.v1");
        }
    }
    pub mod shipping {
        pub mod v1 {
            tonic::include_proto!("shop.shipping.v1");
        }
    }
    pub mod catalog {
        pub mod v1 {
            tonic::include_proto!("shop.catalog.v1");
        }
    }
    pub mod cart {
        pub mod v1 {
            tonic::include_proto!("shop.cart.v1");
        }
    }
    pub mod analytics {
        pub mod v1 {
            tonic::include_proto!("shop.analytics.v1");
        }
    }
    pub mod twopc {
        pub mod v1 {
            tonic::include_proto!("shop.twopc.v1");
        }
    }
}

pub use shop::analytics::v1 as analytics;
pub use shop::cart::v1 as cart;
pub use shop::catalog::v1 as catalog;
pub use shop::common::v1 as common;
pub use shop::events::v1 as events;
pub use shop::inventory::v1 as inventory;
pub use shop::order::v1 as order;
pub use shop::payment::v1 as payment;
pub use shop::shipping::v1 as shipping;
pub use shop::twopc::v1 as twopc;

/// Encoded `FileDescriptorSet` of every proto above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shop_descriptor");

pub use prost;
pub use prost_types;
