//! The gRPC server frame shared by every service: standard health (`grpc.health.v1`),
//! reflection (so `grpcurl` and k6 work without .proto files), and a graceful stop.
//! Field validation is not here: it is [`crate::fields`], one layer for every edge.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

/// Routes every service starts from: health and reflection. Add the service's own with
/// `routes.add_service(...)`; the reporter goes to a [`crate::readiness::Readiness`], which
/// sets the health statuses from then on.
pub fn base_routes() -> anyhow::Result<(Routes, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shop_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl speaks v1, some clients (older k6) only v1alpha.
    let v1 = reflection()
        .build_v1()
        .context("cannot build the reflection service")?;
    let v1alpha = reflection()
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    Ok((
        Routes::new(health).add_service(v1).add_service(v1alpha),
        reporter,
    ))
}

/// Binds the gRPC port (0 = any free port) and returns the listener with its address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind gRPC port {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, then lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.cancelled().await
        })
        .await
        .context("gRPC server failed")
}

/// A request body that is not the method's protobuf message is the client's mistake: tonic
/// answers it INTERNAL ("failed to decode Protobuf message", as gRPC's status code guide
/// suggests for a server that cannot parse); this frame answers INVALID_ARGUMENT instead, so
/// no client input is ever reported as a server fault.
fn undecodable_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
            });
    if undecodable {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
    response
}

/// Page size with a default and a hard cap: no unbounded reads.
pub fn page_size(requested: u32, default: u32, max: u32) -> u32 {
    match requested {
        0 => default,
        n => n.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_capped() {
        assert_eq!(page_size(0, 50, 500), 50);
        assert_eq!(page_size(10_000, 50, 500), 500);
        assert_eq!(page_size(7, 50, 500), 7);
    }
}
