//! The frame of a PostgreSQL service, end to end: database created and migrated, gRPC health
//! serving, Prometheus metrics exported, relay publishing, graceful stop.

use std::time::Duration;

use shop_core::config::{DatabaseSettings, ServerSettings};
use shop_messaging::{
    outbox,
    service::{self, PgServiceSettings},
    smoke,
};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

#[tokio::test]
async fn a_service_serves_health_and_metrics_relays_its_outbox_and_stops_on_signal() {
    init_logs();
    let name = format!("test_svc_{}", uuid::Uuid::new_v4().simple());
    let base = pg_base_url();
    let url = format!("{}/{name}", base.rsplit_once('/').expect("url").0);
    let kafka = kafka();
    let topic = topic(&kafka, "svc").await;
    let settings = PgServiceSettings {
        server: ServerSettings::default(), // ports 0: any free ones
        database: DatabaseSettings {
            url: url.clone(),
            max_connections: 4,
            create_if_missing: true,
            ..DatabaseSettings::default()
        },
        kafka: kafka.clone(),
        ..PgServiceSettings::default()
    };
    let shutdown = CancellationToken::new();
    let (app, pool) = service::build(
        "test",
        &settings,
        None,
        shutdown.clone(),
        async |routes, _, _| Ok(routes),
    )
    .await
    .expect("build");
    let (grpc, metrics) = (app.grpc_addr(), app.metrics_addr());
    let running = tokio::spawn(app.run_until_stopped());

    // Health over gRPC.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    // The relay in the service publishes what a transaction enqueues.
    smoke::migrate(&pool).await.expect("smoke tables");
    smoke::write_tick(&pool, &topic, "agg-1")
        .await
        .expect("write");
    eventually(
        Duration::from_secs(20),
        "the service's relay published the event",
        || {
            let pool = pool.clone();
            async move { outbox::backlog(&pool).await.expect("backlog").pending == 0 }
        },
    )
    .await;
    assert_eq!(read_all(&kafka, &topic, 1).await.len(), 1);

    // Prometheus metrics.
    let body = http_get(metrics, "/metrics").await;
    assert!(body.contains("outbox_published_total"), "metrics: {body}");

    // A shutdown signal drains and ends the service without error.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("stops within the grace period")
        .expect("join")
        .expect("clean stop");
    pool.close().await;
    shop_core::db::drop_database(&url).await.expect("drop");
}

/// A minimal HTTP/1.0 GET, enough for /metrics.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}
