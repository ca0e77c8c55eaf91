//! `shopctl bench analytics`: events/s from Kafka into ClickHouse through the analytics
//! ingestion (decode, map, batch, insert, store offsets), beside the raw insert rate of the same
//! rows into the same ClickHouse server, in the same run. Seed 001's target is 100k rows/s.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use shop_analytics::{
    ingest::Ingest,
    rows,
    store::{ClickHouseSettings, Store},
};
use shop_messaging::{NewEvent, kafka::KafkaSettings, topics::types};
use shop_proto::{common::Money, events::PaymentCharged};
use tokio_util::sync::CancellationToken;

#[derive(Serialize)]
struct AnalyticsBench {
    events: u64,
    raw_insert_rows_per_sec: f64,
    kafka_to_clickhouse_rows_per_sec: f64,
    pipeline_vs_raw: f64,
}

async fn count(store: &Store) -> anyhow::Result<u64> {
    Ok(store
        .client
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await?)
}

pub async fn run(kafka: &KafkaSettings, events: u64) -> anyhow::Result<()> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let envelopes: Vec<_> = (0..events)
        .map(|i| {
            let p = PaymentCharged {
                order_id: format!("o-{i}"),
                amount: Some(Money {
                    amount_minor: 999,
                    currency: "USD".into(),
                }),
            };
            NewEvent::new("t", types::PAYMENT_CHARGED, "order", format!("o-{i}"), &p)
                .tenant("bench")
                .envelope
        })
        .collect();

    // 1. Raw: the same rows inserted straight into ClickHouse, 10k per INSERT.
    let raw_store = Store::new(&ClickHouseSettings {
        database: format!("bench_raw_{run}"),
        ..Default::default()
    });
    raw_store.migrate().await?;
    let rows: Vec<_> = envelopes
        .iter()
        .map(|e| rows::rows(e).map(|r| r.0))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for chunk in rows.chunks(10_000) {
        raw_store.insert(chunk, &[]).await?;
    }
    let raw = events as f64 / started.elapsed().as_secs_f64();
    println!("raw insert           {events} rows  {raw:>10.0} rows/s");

    // 2. Through Kafka: produce everything first, then time the ingestion draining it.
    let topic = format!("bench.analytics.{run}");
    kafka.ensure_topics(&[&topic]).await?;
    let producer = kafka.producer(Duration::from_secs(60))?;
    for chunk in envelopes.chunks(5_000) {
        let sends = chunk.iter().map(|e| {
            let body = e.encode_to_vec();
            let producer = producer.clone();
            let (topic, key) = (topic.clone(), e.aggregate_id.clone());
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&body),
                        Duration::from_secs(60),
                    )
                    .await
            }
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let store = Store::new(&ClickHouseSettings {
        database: format!("bench_pipe_{run}"),
        ..Default::default()
    });
    store.migrate().await?;
    let ingest = Ingest::new(
        kafka,
        &format!("bench-{run}"),
        &[&topic],
        store.clone(),
        10_000,
        1_000,
    )?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(ingest.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(&store).await? < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let piped = count(&store).await? as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    println!(
        "kafka -> clickhouse  {events} rows  {piped:>10.0} rows/s  ({:.2} x raw)",
        piped / raw
    );
    for db in [&raw_store.database, &store.database] {
        store
            .client
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await?;
    }
    drop(producer);
    let _ = kafka.delete_topics(&[&topic]).await;
    let result = AnalyticsBench {
        events,
        raw_insert_rows_per_sec: raw.round(),
        kafka_to_clickhouse_rows_per_sec: piped.round(),
        pipeline_vs_raw: (piped / raw * 100.0).round() / 100.0,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
