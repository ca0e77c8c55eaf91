//! Analytics against the real ClickHouse and broker: exact answers for a known event set, the
//! same answers when everything is delivered twice, retention dropping only expired partitions.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_analytics::{Settings, rows, store::Store};
use shop_messaging::{NewEvent, envelope::EventEnvelope, testing, topics, topics::types};
use shop_proto::{
    analytics::{
        FunnelRequest, Granularity, RevenueRequest, SagaDurationsRequest, SagaOutcomesRequest,
        TopProductsRequest, analytics_service_client::AnalyticsServiceClient,
    },
    common::{LineItem, Money},
    events::{OrderCancelled, OrderCompleted, OrderPlaced, PaymentCharged, ShipmentCreated},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const T0: i64 = 1_795_658_700; // 2026-11-20 10:05:00 UTC
const TENANT: &str = "t";

fn usd(m: i64) -> Option<Money> {
    Some(Money {
        amount_minor: m,
        currency: "USD".into(),
    })
}

fn at(
    topic: &str,
    event_type: &str,
    order: &str,
    secs: i64,
    ms: i32,
    payload: &impl prost::Message,
) -> (String, EventEnvelope) {
    let mut e = NewEvent::new(topic, event_type, "order", order, payload)
        .tenant(TENANT)
        .envelope;
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: secs,
        nanos: ms * 1_000_000,
    });
    (topic.to_owned(), e)
}

fn known_events(s: &Settings) -> Vec<(String, EventEnvelope)> {
    let (orders, payments, shipping) = (
        s.kafka.topic(topics::ORDER_EVENTS),
        s.kafka.topic(topics::PAYMENT_EVENTS),
        s.kafka.topic(topics::SHIPPING_EVENTS),
    );
    let line = |sku: &str, q: u32, p: i64| LineItem {
        sku: sku.into(),
        quantity: q,
        unit_price: usd(p),
    };
    let placed = |id: &str, items: Vec<LineItem>, total: i64| OrderPlaced {
        order_id: id.into(),
        items,
        total: usd(total),
        ..Default::default()
    };
    vec![
        at(
            &orders,
            types::ORDER_PLACED,
            "A",
            T0,
            0,
            &placed("A", vec![line("x", 2, 500), line("y", 1, 1000)], 2000),
        ),
        at(
            &payments,
            types::PAYMENT_CHARGED,
            "A",
            T0 + 1,
            0,
            &PaymentCharged {
                order_id: "A".into(),
                amount: usd(2000),
            },
        ),
        at(
            &shipping,
            types::SHIPMENT_CREATED,
            "A",
            T0 + 1,
            500,
            &ShipmentCreated {
                order_id: "A".into(),
                shipment_id: "s1".into(),
            },
        ),
        at(
            &orders,
            types::ORDER_COMPLETED,
            "A",
            T0 + 2,
            0,
            &OrderCompleted {
                order_id: "A".into(),
                total: usd(2000),
                ..Default::default()
            },
        ),
        at(
            &orders,
            types::ORDER_PLACED,
            "B",
            T0 + 25 * 60,
            0,
            &placed("B", vec![line("x", 1, 500)], 500),
        ),
        at(
            &payments,
            types::PAYMENT_CHARGED,
            "B",
            T0 + 26 * 60,
            0,
            &PaymentCharged {
                order_id: "B".into(),
                amount: usd(500),
            },
        ),
        at(
            &shipping,
            types::SHIPMENT_CREATED,
            "B",
            T0 + 27 * 60,
            0,
            &ShipmentCreated {
                order_id: "B".into(),
                shipment_id: "s2".into(),
            },
        ),
        at(
            &orders,
            types::ORDER_COMPLETED,
            "B",
            T0 + 65 * 60,
            0,
            &OrderCompleted {
                order_id: "B".into(),
                total: usd(500),
                ..Default::default()
            },
        ),
        at(
            &orders,
            types::ORDER_PLACED,
            "C",
            T0 + 75 * 60,
            0,
            &placed("C", vec![line("y", 5, 1000)], 5000),
        ),
        at(
            &orders,
            types::ORDER_CANCELLED,
            "C",
            T0 + 75 * 60 + 1,
            0,
            &OrderCancelled {
                order_id: "C".into(),
                reason: "insufficient funds".into(),
            },
        ),
    ]
}

struct App {
    grpc: AnalyticsServiceClient<Channel>,
    settings: Settings,
    store: Store,
    stop: CancellationToken,
}

async fn spawn_app() -> App {
    let base = testing::service_settings("analytics");
    let run = &base.kafka.topic_prefix[4..16];
    let mut settings = Settings {
        kafka: base.kafka.clone(),
        batch_ms: 200,
        ..Settings::default()
    };
    settings.server.grpc_port = 0;
    settings.server.metrics_port = 0;
    settings.clickhouse.database = format!("test_analytics_{run}");
    let stop = CancellationToken::new();
    let app = shop_analytics::build(&settings, stop.clone())
        .await
        .expect("build (is ClickHouse up?)");
    let addr = app.grpc_addr();
    tokio::spawn(app.run_until_stopped());
    App {
        grpc: AnalyticsServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc"),
        store: Store::new(&settings.clickhouse),
        settings,
        stop,
    }
}

impl App {
    async fn deliver(&self, events: &[(String, EventEnvelope)]) {
        let producer: FutureProducer = self
            .settings
            .kafka
            .producer(Duration::from_secs(10))
            .expect("producer");
        for (topic, e) in events {
            let body = e.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(topic).key(&e.aggregate_id).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    }

    /// Waits until `n` event rows were inserted (duplicates included, before merges).
    async fn wait_rows(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let count: u64 = self
                .store
                .client
                .query(&format!(
                    "SELECT count() FROM {}.events",
                    self.store.database
                ))
                .fetch_one()
                .await
                .expect("count");
            if count >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {count} of {n} rows ingested"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn answers(&self) -> String {
        let mut g = self.grpc.clone();
        let hour = g
            .revenue(RevenueRequest {
                tenant_id: TENANT.into(),
                range: None,
                granularity: Granularity::Hour.into(),
            })
            .await
            .expect("revenue")
            .into_inner();
        let day = g
            .revenue(RevenueRequest {
                tenant_id: TENANT.into(),
                range: None,
                granularity: Granularity::Day.into(),
            })
            .await
            .expect("revenue")
            .into_inner();
        let top = g
            .top_products(TopProductsRequest {
                tenant_id: TENANT.into(),
                range: None,
                limit: 10,
            })
            .await
            .expect("top")
            .into_inner();
        let outcomes = g
            .saga_outcomes(SagaOutcomesRequest {
                tenant_id: TENANT.into(),
                range: None,
            })
            .await
            .expect("outcomes")
            .into_inner();
        let funnel = g
            .funnel(FunnelRequest {
                tenant_id: TENANT.into(),
                range: None,
            })
            .await
            .expect("funnel")
            .into_inner();
        let durations = g
            .saga_durations(SagaDurationsRequest {
                tenant_id: TENANT.into(),
                range: None,
            })
            .await
            .expect("durations")
            .into_inner();
        format!("{hour:?}\n{day:?}\n{top:?}\n{outcomes:?}\n{funnel:?}\n{durations:?}")
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self
            .store
            .client
            .query(&format!("DROP DATABASE IF EXISTS {}", self.store.database))
            .execute()
            .await;
    }
}

#[tokio::test]
async fn a_known_event_set_gives_exact_answers_and_the_same_answers_when_delivered_twice() {
    let app = spawn_app().await;
    let events = known_events(&app.settings);
    app.deliver(&events).await;
    app.wait_rows(events.len() as u64).await;
    let mut g = app.grpc.clone();

    let hour = g
        .revenue(RevenueRequest {
            tenant_id: TENANT.into(),
            range: None,
            granularity: Granularity::Hour.into(),
        })
        .await
        .expect("revenue")
        .into_inner();
    let buckets: Vec<(i64, i64, u64)> = hour
        .buckets
        .iter()
        .map(|b| {
            (
                b.start.as_ref().map_or(0, |t| t.seconds),
                b.revenue_minor,
                b.orders,
            )
        })
        .collect();
    let hour_start = T0 - T0 % 3600;
    assert_eq!(
        buckets,
        vec![(hour_start, 2000, 1), (hour_start + 3600, 500, 1)]
    );
    assert_eq!(hour.currency, "USD");
    let day = g
        .revenue(RevenueRequest {
            tenant_id: TENANT.into(),
            range: None,
            granularity: Granularity::Day.into(),
        })
        .await
        .expect("revenue")
        .into_inner();
    assert_eq!(
        day.buckets
            .iter()
            .map(|b| (b.revenue_minor, b.orders))
            .collect::<Vec<_>>(),
        vec![(2500, 2)]
    );

    let top = g
        .top_products(TopProductsRequest {
            tenant_id: TENANT.into(),
            range: None,
            limit: 10,
        })
        .await
        .expect("top")
        .into_inner();
    let top: Vec<(String, u64, i64)> = top
        .products
        .into_iter()
        .map(|p| (p.sku, p.units, p.revenue_minor))
        .collect();
    assert_eq!(
        top,
        vec![("x".into(), 3, 1500), ("y".into(), 1, 1000)],
        "cancelled C's five y's do not count"
    );

    let outcomes = g
        .saga_outcomes(SagaOutcomesRequest {
            tenant_id: TENANT.into(),
            range: None,
        })
        .await
        .expect("outcomes")
        .into_inner();
    assert_eq!(outcomes.completed, 2);
    assert_eq!(
        outcomes.cancelled_by_reason.get("insufficient funds"),
        Some(&1)
    );

    let funnel = g
        .funnel(FunnelRequest {
            tenant_id: TENANT.into(),
            range: None,
        })
        .await
        .expect("funnel")
        .into_inner();
    assert_eq!(
        (
            funnel.carts_checked_out,
            funnel.orders_placed,
            funnel.orders_paid,
            funnel.orders_shipped
        ),
        (0, 3, 2, 2)
    );

    let d = g
        .saga_durations(SagaDurationsRequest {
            tenant_id: TENANT.into(),
            range: None,
        })
        .await
        .expect("durations")
        .into_inner();
    assert_eq!(
        (d.count, d.p50_ms, d.p99_ms),
        (3, 2000.0, 2_400_000.0),
        "durations 1 s, 2 s, 40 min"
    );

    let before = app.answers().await;
    app.deliver(&events).await; // every event again
    app.wait_rows(2 * events.len() as u64).await;
    assert_eq!(
        app.answers().await,
        before,
        "a redelivered event changes no answer"
    );
    app.stop().await;
}

#[tokio::test]
async fn retention_drops_only_expired_partitions() {
    let app = spawn_app().await;
    let row = |id: &str, event_type: &str, secs: i64| {
        let e = NewEvent::new("t", event_type, "order", id, &OrderCompleted::default())
            .tenant(TENANT)
            .envelope;
        let mut e = e;
        e.occurred_at = Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        });
        rows::rows(&e).expect("rows").0
    };
    let jan_2021 = 1_610_000_000; // 2021-01-07
    let oct_2026 = 1_792_000_000; // 2026-10-14
    let events = vec![
        row("old-order", types::ORDER_COMPLETED, jan_2021), // finance, 7 y: kept
        row("old-stock", types::STOCK_LEVEL_CHANGED, jan_2021), // other, 2 y: expired
        row("new-stock", types::STOCK_LEVEL_CHANGED, oct_2026), // other, recent: kept
    ];
    app.store
        .insert(&events, &[])
        .await
        .expect("insert back-dated rows");
    let dropped = app.store.drop_expired(202611).await.expect("retention");
    assert_eq!(dropped, vec!["events (2, 202101)".to_owned()]);
    let left: Vec<String> = app
        .store
        .client
        .query(&format!(
            "SELECT aggregate_id FROM {}.events ORDER BY aggregate_id",
            app.store.database
        ))
        .fetch_all()
        .await
        .expect("left");
    assert_eq!(left, vec!["new-stock".to_owned(), "old-order".to_owned()]);
    app.stop().await;
}

/// Hostile requests (NUL bytes, megabyte tenant ids, timestamps at the integer edges) are
/// refused or answered, never INTERNAL: a megabyte tenant id used to reach ClickHouse's query
/// size limit.
#[tokio::test]
async fn no_request_is_answered_with_a_server_fault() {
    use shop_fields::arbitrary::{self, assert_no_server_fault, sample};
    use shop_proto::analytics::TimeRange;
    let app = spawn_app().await;
    let mut grpc = app.grpc.clone();
    let tenants = sample(arbitrary::string(), 120, 11);
    let edges = sample(arbitrary::i64_edge(), 120, 12);
    for (i, (tenant_id, edge)) in tenants.into_iter().zip(edges).enumerate() {
        let stamp = |seconds: i64, nanos: i32| prost_types::Timestamp { seconds, nanos };
        let range = match i % 4 {
            0 => None,
            1 => Some(TimeRange {
                from: Some(stamp(edge, 0)),
                to: Some(stamp(edge.saturating_add(3_600), 0)),
            }),
            2 => Some(TimeRange {
                from: Some(stamp(0, i32::try_from(edge % 2_000_000_000).unwrap_or(-1))),
                to: None,
            }),
            _ => Some(TimeRange {
                from: Some(stamp(1_700_000_000, 0)),
                to: Some(stamp(edge, 0)),
            }),
        };
        let r = RevenueRequest {
            tenant_id: tenant_id.clone(),
            range,
            granularity: i32::try_from(edge % 5).unwrap_or(0),
        };
        assert_no_server_fault("Revenue", &r, &grpc.revenue(r.clone()).await);
        let r = TopProductsRequest {
            tenant_id: tenant_id.clone(),
            range,
            limit: u32::try_from(edge.unsigned_abs() % 5_000).unwrap_or(0),
        };
        assert_no_server_fault("TopProducts", &r, &grpc.top_products(r.clone()).await);
        let r = SagaOutcomesRequest {
            tenant_id: tenant_id.clone(),
            range,
        };
        assert_no_server_fault("SagaOutcomes", &r, &grpc.saga_outcomes(r.clone()).await);
        let r = FunnelRequest {
            tenant_id: tenant_id.clone(),
            range,
        };
        assert_no_server_fault("Funnel", &r, &grpc.funnel(r.clone()).await);
        let r = SagaDurationsRequest { tenant_id, range };
        assert_no_server_fault("SagaDurations", &r, &grpc.saga_durations(r.clone()).await);
    }
    app.stop().await;
}
