//! Benchmarks. Each reports the platform's figure beside the raw store's, measured on the same
//! machine in the same run, because absolute numbers say little on a shared 2-core box.
//!
//! `bench relay`: how fast the outbox relay drains a backlog of N events, against how fast the
//! same idempotent producer publishes N messages of the same size straight to the same broker.
//! The gap is the price of the outbox (claim, read, mark published, commit).

use std::time::Instant;

use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use shop_messaging::{
    kafka::KafkaSettings,
    outbox::{self, Relay, RelayConfig},
    smoke,
};
use tokio_util::sync::CancellationToken;

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Rows/s from Kafka into ClickHouse beside raw inserts into the same server.
    Analytics {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// Whole sagas at constant open-loop offered loads (send -> terminal event, per-step
    /// breakdown, CPU per process), beside the box's limits: pgbench, 20-commit chains through
    /// PostgreSQL alone, raw Kafka and an 8-hop Kafka ping-pong.
    Saga(crate::bench_saga::SagaArgs),
    /// Order aggregate load time by stream length (replay vs snapshot vs raw SELECT), and the
    /// read-model projection's events/s beside raw single-row inserts.
    EventStore {
        /// Stream lengths, events.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,5000")]
        lengths: Vec<u64>,
        /// Streams per length (each is loaded once per method).
        #[arg(long, default_value_t = 20)]
        streams: usize,
        #[arg(long, default_value_t = 100)]
        snapshot_every: u64,
        /// Orders in the projection backlog (6 events each).
        #[arg(long, default_value_t = 5_000)]
        orders: usize,
    },
    /// Catalog writes/s (versioned, with their outbox events) beside the raw driver's same
    /// operations on the same MongoDB-wire server.
    Catalog {
        #[arg(
            long,
            env = "SHOP__MONGO__URL",
            default_value = "mongodb://127.0.0.1:27017"
        )]
        mongo_url: String,
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Versioned updates per product after its create.
        #[arg(long, default_value_t = 4)]
        updates: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Consume -> produce with Kafka transactions (exactly-once) beside at-least-once.
    KafkaTxn {
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Messages per batch (and per transaction).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Outbox relay events/s beside the raw producer rate.
    Relay {
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 1000)]
        aggregates: u64,
        /// Relay batch size.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
    },
}

#[derive(Debug, Serialize)]
struct RelayBench {
    events: u64,
    payload_bytes: usize,
    raw_producer_per_sec: f64,
    relay_1_per_sec: f64,
    relay_2_per_sec: f64,
    relay_1_vs_raw: f64,
    relay_2_vs_raw: f64,
}

pub async fn run(
    pg_url: &str,
    db_prefix: &str,
    kafka: &KafkaSettings,
    bench: Bench,
) -> anyhow::Result<()> {
    match bench {
        Bench::Relay {
            events,
            aggregates,
            batch,
        } => relay(pg_url, kafka, events, aggregates, batch).await,
        Bench::Saga(args) => crate::bench_saga::run(pg_url, db_prefix, kafka, args).await,
        Bench::Analytics { events } => crate::bench_analytics::run(kafka, events).await,
        Bench::Catalog {
            mongo_url,
            products,
            updates,
            concurrency,
        } => crate::bench_catalog::run(&mongo_url, products, updates, concurrency).await,
        Bench::KafkaTxn { messages, batch } => {
            crate::bench_kafka_txn::run(kafka, messages, batch).await
        }
        Bench::EventStore {
            lengths,
            streams,
            snapshot_every,
            orders,
        } => crate::bench_eventstore::run(pg_url, &lengths, streams, snapshot_every, orders).await,
    }
}

async fn relay(
    pg_url: &str,
    kafka: &KafkaSettings,
    events: u64,
    aggregates: u64,
    batch: i64,
) -> anyhow::Result<()> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[..12];
    let sample = smoke::tick("t", "agg-0", 1);
    let payload_bytes = prost::Message::encoded_len(&sample.envelope);

    // 1. Raw: the same producer settings, N messages straight to the broker.
    let raw_topic = format!("bench.raw.{run}");
    kafka.ensure_topics(&[raw_topic.as_str()]).await?;
    let producer = kafka.producer(RelayConfig::default().delivery_timeout)?;
    let bodies: Vec<(String, Vec<u8>)> = (0..events)
        .map(|i| {
            let e = smoke::tick(
                &raw_topic,
                &format!("agg-{}", i % aggregates),
                i / aggregates + 1,
            );
            (
                e.envelope.aggregate_id.clone(),
                prost::Message::encode_to_vec(&e.envelope),
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in bodies.chunks(batch.max(1) as usize) {
        let sends = chunk.iter().map(|(key, body)| {
            producer.send(
                FutureRecord::to(&raw_topic).key(key).payload(body),
                std::time::Duration::from_secs(30),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let raw = events as f64 / started.elapsed().as_secs_f64();
    println!("raw producer        {events} messages  {raw:>10.0} msg/s");

    // 2. The relay draining a backlog, with one and with two instances.
    let mut rates = Vec::new();
    for instances in [1_u64, 2] {
        let topic = format!("bench.relay{instances}.{run}");
        kafka.ensure_topics(&[topic.as_str()]).await?;
        let pool = crate::smoke::scratch_database(pg_url, "shop_bench_relay").await?;
        let rows: Vec<_> = (0..events)
            .map(|i| {
                smoke::tick(
                    &topic,
                    &format!("agg-{}", i % aggregates),
                    i / aggregates + 1,
                )
            })
            .collect();
        for chunk in rows.chunks(5000) {
            let mut tx = pool.begin().await?;
            outbox::enqueue_all(&mut tx, chunk).await?;
            tx.commit().await?;
        }
        let config = RelayConfig {
            batch_size: batch,
            max_buckets: 64 / instances as i64,
            ..RelayConfig::default()
        };
        let relays: Vec<Relay> = (0..instances)
            .map(|_| Relay::postgres(pool.clone(), kafka, config.clone()))
            .collect::<anyhow::Result<_>>()?;
        let stop = CancellationToken::new();
        let started = Instant::now();
        let tasks: Vec<_> = relays
            .iter()
            .map(|r| tokio::spawn(r.clone().run(stop.clone())))
            .collect();
        while outbox::backlog(&pool).await?.pending > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        stop.cancel();
        for t in tasks {
            t.await??;
        }
        pool.close().await;
        println!(
            "outbox relay x{instances}     {events} events    {rate:>10.0} events/s  ({:.2} x raw)",
            rate / raw
        );
        rates.push(rate);
    }
    let result = RelayBench {
        events,
        payload_bytes,
        raw_producer_per_sec: raw.round(),
        relay_1_per_sec: rates[0].round(),
        relay_2_per_sec: rates[1].round(),
        relay_1_vs_raw: (rates[0] / raw * 100.0).round() / 100.0,
        relay_2_vs_raw: (rates[1] / raw * 100.0).round() / 100.0,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
