//! SIGKILL the order service mid-run: every saga still ends terminal, and the invariants hold.

use std::{
    process::{Child, Command},
    time::Duration,
};

use shop_proto::order::OrderStatus;

use crate::helpers::*;

/// The order service's process, killed when dropped (also when the test fails half-way).
struct OrderProcess(Child);

impl Drop for OrderProcess {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn spawn_order_process(p: &Platform, grpc_port: u16, run: u32) -> OrderProcess {
    let s = &p.order_settings;
    // Its logs go to a file, for when this test fails.
    let log =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-order-{run}.log"));
    let log = std::fs::File::create(&log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_shop-order"))
        .env("SHOP__SERVER__GRPC_PORT", grpc_port.to_string())
        .env("SHOP__SERVER__METRICS_PORT", "0")
        .env("SHOP__DATABASE__URL", &s.service.database.url)
        .env("SHOP__KAFKA__BROKERS", &s.service.kafka.brokers)
        .env("SHOP__KAFKA__TOPIC_PREFIX", &s.service.kafka.topic_prefix)
        .env("SHOP__RELAY__POLL_INTERVAL_MS", "100")
        .env("SHOP__SAGA__RESERVE_TIMEOUT_MS", "5000")
        .env("SHOP__SAGA__CHARGE_TIMEOUT_MS", "5000")
        .env("SHOP__SAGA__SHIP_TIMEOUT_MS", "5000")
        .env("SHOP__SAGA__SETTLE_TIMEOUT_MS", "5000")
        .env("SHOP__SAGA__SWEEP_INTERVAL_MS", "200")
        // The consumer group's protocol too (librdkafka's `cgrp` debug context).
        .env("RUST_LOG", "warn,librdkafka=debug")
        .env("SHOP_KAFKA_DEBUG", "cgrp")
        // Logs are JSON lines on stdout.
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .map(OrderProcess)
        .expect("start shop-order")
}

#[tokio::test]
async fn sigkill_mid_run_then_restart_every_saga_ends_terminal_and_invariants_hold() {
    // Order runs as its own process; the participants in this one.
    let p = spawn_platform(
        quick_saga(),
        Run {
            order: false,
            shipping: true,
        },
    )
    .await;
    p.restock("gear", 30).await;
    p.open_account("acc", 10_000_000).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = spawn_order_process(&p, port, 1);
    let client = |port: u16| async move {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect_lazy();
        shop_proto::order::order_service_client::OrderServiceClient::new(channel)
    };
    let mut order = client(port).await;
    // Wait for it to serve.
    let mut ids = Vec::new();
    for i in 0..60 {
        let r = request(
            &format!("crash-{i}"),
            "gear",
            1,
            500,
            "acc",
            if i % 7 == 0 { "AQ" } else { "DE" },
        );
        let placed = loop {
            match order.place_order(r.clone()).await {
                Ok(resp) => break resp.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        ids.push(placed.order.expect("order").order_id);
        if i == 30 {
            // Mid-run, no goodbye.
            child.0.kill().expect("SIGKILL");
            child.0.wait().expect("reaped");
            tokio::time::sleep(Duration::from_millis(500)).await;
            child = spawn_order_process(&p, port, 2);
            order = client(port).await;
        }
    }
    let mut p = p;
    p.order = order;
    let mut completed = 0;
    for id in &ids {
        // Generous: under a loaded CI machine retries and compensations take their time.
        let o = p.settled_within(id, Duration::from_secs(180)).await;
        if o.status() == OrderStatus::Completed {
            completed += 1;
        }
    }
    let non_terminal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga WHERE state NOT IN ('COMPLETED', 'CANCELLED')",
    )
    .fetch_one(&p.order_db)
    .await
    .expect("count");
    assert_eq!(non_terminal, 0);
    let (available, reserved) = p.stock("gear").await;
    assert_eq!(reserved, 0, "nothing left reserved");
    assert_eq!(
        30 - available,
        completed,
        "units gone = completed orders (no oversell, nothing lost)"
    );
    let net = p.net_charged().await;
    assert_eq!(
        net.values().sum::<i64>(),
        completed * 500,
        "money taken = completed orders"
    );
    assert_eq!(p.double_charges().await, 0);
    drop(child);
    p.stop().await;
}
