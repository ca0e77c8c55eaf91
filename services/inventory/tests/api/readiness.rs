//! Readiness (gRPC health) against the real PostgreSQL and broker: SERVING while both answer,
//! NOT_SERVING while the database is unreachable and SERVING again once it is back, and
//! NOT_SERVING from the moment shutdown begins while calls are still answered.
//!
//! The database becomes unreachable through a TCP proxy this test owns (stopped, then started
//! again on the same port), so the shared PostgreSQL server is never disturbed.

use std::{
    net::SocketAddr,
    str::FromStr,
    time::{Duration, Instant},
};

use shop_messaging::{service::PgServiceSettings, testing};
use shop_proto::inventory::{
    GetStockRequest, inventory_service_client::InventoryServiceClient,
    inventory_service_server::InventoryServiceServer,
};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SERVICE: &str =
    <InventoryServiceServer<shop_inventory::grpc::Inventory> as NamedService>::NAME;

#[tokio::test]
async fn serving_while_its_database_and_broker_answer() {
    let settings = quick(testing::service_settings("inventory"));
    let app = App::spawn(&settings).await;
    for service in ["", SERVICE, "liveness"] {
        assert_eq!(
            app.status(service).await,
            Ok(ServingStatus::Serving),
            "{service:?}"
        );
    }
    app.stop().await;
    testing::drop_database(&settings).await;
}

#[tokio::test]
async fn not_serving_while_its_database_is_unreachable_and_serving_again_once_it_is_back() {
    let mut settings = quick(testing::service_settings("inventory"));
    let upstream = pg_addr(&settings.database.url);
    let mut proxy = Proxy::start(upstream).await;
    settings.database.url =
        settings
            .database
            .url
            .replacen(&upstream.to_string(), &proxy.addr.to_string(), 1);
    let app = App::spawn(&settings).await;
    assert_eq!(app.status("").await, Ok(ServingStatus::Serving));

    proxy.cut().await;
    let down = app.wait_for("", ServingStatus::NotServing).await;
    println!("database cut: NOT_SERVING after {down:?}");
    assert!(down < Duration::from_secs(5), "took {down:?}");
    assert_eq!(app.status(SERVICE).await, Ok(ServingStatus::NotServing));
    assert_eq!(
        app.status("liveness").await,
        Ok(ServingStatus::Serving),
        "an outage must not fail liveness (it would restart the pod)"
    );

    proxy.resume().await;
    let up = app.wait_for("", ServingStatus::Serving).await;
    println!("database back: SERVING after {up:?}");
    assert!(up < Duration::from_secs(5), "took {up:?}");
    assert_eq!(app.status(SERVICE).await, Ok(ServingStatus::Serving));

    app.stop().await;
    testing::drop_database(&settings).await;
    proxy.cut().await;
}

// Multi-threaded, like the binaries (`#[tokio::main]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_from_the_moment_shutdown_begins_while_calls_are_still_answered() {
    let mut settings = quick(testing::service_settings("inventory"));
    settings.server.shutdown_delay_ms = 3_000;
    let app = App::spawn(&settings).await;
    assert_eq!(app.status("").await, Ok(ServingStatus::Serving));

    app.shutdown.cancel();
    let down = app.wait_for("", ServingStatus::NotServing).await;
    println!("shutdown: NOT_SERVING after {down:?}");
    // At once, not after the 3 s delay (1 s of slack: this machine is shared with builds).
    assert!(down < Duration::from_secs(1), "took {down:?}");
    assert_eq!(app.status(SERVICE).await, Ok(ServingStatus::NotServing));
    // Still draining: the port is open and calls are answered.
    let answered = InventoryServiceClient::new(app.channel.clone())
        .get_stock(GetStockRequest {
            tenant_id: "acme".into(),
            sku: "never-stocked".into(),
        })
        .await;
    assert_eq!(
        answered.map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound),
        "a call during the drain is answered by the service"
    );
    assert!(!app.running.is_finished(), "still draining");

    let stopped = tokio::time::timeout(Duration::from_secs(15), app.running)
        .await
        .expect("stops after the delay, within the grace period")
        .expect("join");
    stopped.expect("clean stop");
    testing::drop_database(&settings).await;
}

#[tokio::test]
async fn the_broker_probe_passes_while_the_broker_answers_and_fails_without_one() {
    let settings = testing::service_settings("inventory");
    let kafka = settings.kafka.clone();
    let topic = kafka.topic("readiness");
    kafka.ensure_topics(&[&topic]).await.expect("topic");
    let timeout = Duration::from_millis(500);
    let probe = kafka.probe(&topic, timeout).expect("client");
    probe().await.expect("the broker answers");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let nowhere = shop_messaging::kafka::KafkaSettings {
        brokers: closed.to_string(),
        ..kafka.clone()
    };
    let probe = nowhere.probe(&topic, timeout).expect("client");
    let start = Instant::now();
    let err = probe().await.expect_err("no broker on that port");
    println!("no broker: {err:#} after {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    kafka.delete_topics(&[&topic]).await.expect("delete topic");
}

/// Probes every 200 ms, each within 500 ms.
fn quick(mut settings: PgServiceSettings) -> PgServiceSettings {
    settings.server.readiness_interval_ms = 200;
    settings.server.readiness_timeout_ms = 500;
    settings
}

struct App {
    channel: Channel,
    shutdown: CancellationToken,
    running: JoinHandle<anyhow::Result<()>>,
}

impl App {
    async fn spawn(settings: &PgServiceSettings) -> Self {
        let shutdown = CancellationToken::new();
        let app = shop_inventory::build(settings, shutdown.clone())
            .await
            .expect("build");
        let addr = app.grpc_addr();
        let running = tokio::spawn(app.run_until_stopped());
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .expect("connect");
        Self {
            channel,
            shutdown,
            running,
        }
    }

    async fn status(&self, service: &str) -> Result<ServingStatus, tonic::Code> {
        HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    /// How long until `service` reports `want` (panics after 10 s).
    async fn wait_for(&self, service: &str, want: ServingStatus) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.status(service).await;
            if got == Ok(want) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{service:?} still {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.running).await;
    }
}

fn pg_addr(url: &str) -> SocketAddr {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("database url");
    format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .expect("the test database is at an IP address")
}

/// A TCP proxy to `upstream` on a port of its own. `cut` closes the port and every connection
/// through it (as an unreachable server would look); `resume` opens the same port again.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let mut proxy = Self {
            addr: "127.0.0.1:0".parse().expect("addr"),
            upstream,
            task: None,
        };
        proxy.resume().await;
        proxy
    }

    async fn resume(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("bind the proxy's port");
        let listener = socket.listen(64).expect("listen");
        self.addr = listener.local_addr().expect("addr");
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: aborting it closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}
