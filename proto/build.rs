//! Compiles `shop/**/*.proto` with protox (a pure-Rust protobuf compiler, so no system `protoc`)
//! and generates prost messages and tonic clients/servers into OUT_DIR.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shop/common/v1/common.proto",
    "shop/events/v1/envelope.proto",
    "shop/events/v1/payloads.proto",
    "shop/order/v1/order.proto",
    "shop/payment/v1/payment.proto",
    "shop/inventory/v1/inventory.proto",
    "shop/shipping/v1/shipping.proto",
    "shop/catalog/v1/catalog.proto",
    "shop/catalog/v1/profiles.proto",
    "shop/cart/v1/cart.proto",
    "shop/analytics/v1/analytics.proto",
    "shop/twopc/v1/twopc.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Serialized descriptors for gRPC server reflection.
    std::fs::write(
        out_dir.join("shop_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
