//! Where shopctl finds the services, and their gRPC health checks (`grpc.health.v1`).
//!
//! Service `name` is at `SHOP_<NAME>` (e.g. `SHOP_CATALOG=http://catalog:50055`, as the compose
//! file's `demo` service sets them), else at its native-stack port on 127.0.0.1.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The services and their default local gRPC ports (see each service's `main.rs`).
pub const SERVICES: &[(&str, u16)] = &[
    ("order", 50051),
    ("payment", 50052),
    ("inventory", 50053),
    ("shipping", 50054),
    ("catalog", 50055),
    ("cart", 50056),
    ("analytics", 50057),
];

pub struct Health {
    pub name: &'static str,
    pub addr: String,
    pub serving: bool,
    pub detail: String,
}

/// The gRPC URL of service `name` (one of [`SERVICES`]).
pub fn url(name: &str) -> String {
    let port = SERVICES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, port)| *port);
    std::env::var(format!("SHOP_{}", name.to_uppercase()))
        .unwrap_or_else(|_| format!("http://127.0.0.1:{port}"))
}

pub async fn check_all() -> Vec<Health> {
    let checks = SERVICES.iter().map(|(name, _)| async move {
        let addr = url(name);
        let (serving, detail) = match check(&addr).await {
            Ok(status) => (status == ServingStatus::Serving, format!("{status:?}")),
            Err(e) => (false, format!("{e:#}")),
        };
        Health {
            name,
            addr,
            serving,
            detail,
        }
    });
    futures::future::join_all(checks).await
}

async fn check(addr: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

pub fn print(report: &[Health]) {
    println!("services");
    for h in report {
        let mark = if h.serving { "ok  " } else { "DOWN" };
        println!("  {mark} {:<10} {:<24} {}", h.name, h.addr, h.detail);
    }
}
