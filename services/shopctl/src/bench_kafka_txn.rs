//! `bench kafka-txn`: what Kafka transactions cost on a consume-then-produce path whose outputs all
//! go to Kafka (the shape of a stream processor, or of the inbox's dead-letter forwarding).
//!
//! The same work twice, on the same broker in the same run: read N messages from an input topic
//! and write each to an output topic, in batches.
//! - **at-least-once** (what the platform does): the idempotent producer sends the batch, the
//!   batch's acks are awaited, then the consumer's offsets are *stored* and committed in the
//!   background every 5 s (`KafkaSettings::consumer_config`). A crash re-sends what came after the
//!   last commit: duplicates downstream, which an inbox absorbs.
//! - **exactly-once**: a transactional producer; per batch `begin`, the sends, the consumer's
//!   offsets inside the transaction (`send_offsets_to_transaction`), `commit`. Readers with
//!   `isolation.level=read_committed` never see a batch twice or a half batch.
//!
//! Reported: messages/s for each, their ratio, and the per-batch time from the batch's first
//! message in hand to its offsets stored or its transaction committed (p50/p99).

use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde::Serialize;
use shop_messaging::kafka::KafkaSettings;

#[derive(Debug, Serialize)]
struct Mode {
    messages_per_sec: f64,
    batch_p50_ms: f64,
    batch_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct TxnBench {
    messages: usize,
    batch: usize,
    payload_bytes: usize,
    raw_produce_per_sec: f64,
    at_least_once: Mode,
    exactly_once: Mode,
    exactly_once_vs_at_least_once: f64,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(
    kafka: &KafkaSettings,
    group: &str,
    input: &str,
    transactional: bool,
) -> anyhow::Result<StreamConsumer> {
    // The platform's consumer settings; in a transaction the offsets are the transaction's.
    let mut config = kafka.consumer_config(group);
    if transactional {
        config.set("enable.auto.commit", "false");
    }
    let c: StreamConsumer = config.create()?;
    c.subscribe(&[input])?;
    Ok(c)
}

/// Consumes `messages` from `input` and writes them to `output`, `batch` at a time; `transactional`
/// chooses the mode. Returns messages/s and the per-batch commit histogram (microseconds).
async fn pipe(
    kafka: &KafkaSettings,
    input: &str,
    output: &str,
    messages: usize,
    batch: usize,
    transactional: bool,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let group = format!("bench-txn-{}", uuid::Uuid::now_v7().simple());
    let consumer = consumer(kafka, &group, input, transactional)?;
    // The platform's idempotent producer, plus a transactional id in that mode.
    let mut config = kafka.producer_config(TIMEOUT);
    if transactional {
        config.set("transactional.id", &group);
    }
    let producer: FutureProducer = config.create()?;
    if transactional {
        producer.init_transactions(TIMEOUT)?;
    }
    let mut batches = Histogram::<u64>::new(3)?;
    let mut done = 0;
    let mut started = None;
    while done < messages {
        let mut msgs = vec![consumer.recv().await?.detach()];
        let batch_started = Instant::now();
        started.get_or_insert(batch_started);
        while msgs.len() < batch.min(messages - done) {
            match tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await {
                Ok(m) => msgs.push(m?.detach()),
                Err(_) => break,
            }
        }
        // The next offset to read, per partition: one entry each.
        let mut next = std::collections::BTreeMap::new();
        for m in &msgs {
            let at = next.entry(m.partition()).or_insert(0);
            *at = (m.offset() + 1).max(*at);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in next {
            offsets.add_partition_offset(input, partition, Offset::Offset(offset))?;
        }
        if transactional {
            producer.begin_transaction()?;
        }
        let sends = msgs.iter().map(|m| {
            let mut record = FutureRecord::to(output).payload(m.payload().unwrap_or_default());
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            producer.send(record, TIMEOUT)
        });
        for ack in join_all(sends).await {
            ack.map_err(|(e, _)| e)?;
        }
        if transactional {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("consumer has no group metadata"))?;
            producer.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)?;
            producer.commit_transaction(TIMEOUT)?;
        } else {
            consumer.store_offsets(&offsets)?;
        }
        batches.record(batch_started.elapsed().as_micros() as u64)?;
        done += msgs.len();
    }
    let secs = started.map_or(1.0, |s| s.elapsed().as_secs_f64());
    Ok((messages as f64 / secs, batches))
}

fn mode(rate: f64, h: &Histogram<u64>) -> Mode {
    Mode {
        messages_per_sec: rate,
        batch_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        batch_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

pub async fn run(kafka: &KafkaSettings, messages: usize, batch: usize) -> anyhow::Result<()> {
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let input = format!("bench.txn.in.{run}");
    let (out_alo, out_eos) = (
        format!("bench.txn.alo.{run}"),
        format!("bench.txn.eos.{run}"),
    );
    let topics = [input.as_str(), out_alo.as_str(), out_eos.as_str()];
    kafka.ensure_topics(&topics).await?;

    // Seed the input (and measure the raw idempotent produce rate of the same messages).
    let payload = vec![b'x'; 300];
    let producer = kafka.producer(TIMEOUT)?;
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("key-{}", i % 500)).collect();
        let sends = keys
            .iter()
            .map(|k| producer.send(FutureRecord::to(&input).key(k).payload(&payload), TIMEOUT));
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let raw = messages as f64 / started.elapsed().as_secs_f64();
    drop(producer);

    let (alo, alo_h) = pipe(kafka, &input, &out_alo, messages, batch, false).await?;
    let (eos, eos_h) = pipe(kafka, &input, &out_eos, messages, batch, true).await?;
    kafka.delete_topics(&topics).await?;

    let result = TxnBench {
        messages,
        batch,
        payload_bytes: payload.len(),
        raw_produce_per_sec: raw,
        at_least_once: mode(alo, &alo_h),
        exactly_once: mode(eos, &eos_h),
        exactly_once_vs_at_least_once: eos / alo,
    };
    println!(
        "consume -> produce, {messages} messages in batches of {batch}: at-least-once {alo:.0} msg/s (batch p50 {:.1} ms, p99 {:.1} ms), \
         transactions {eos:.0} msg/s (batch p50 {:.1} ms, p99 {:.1} ms) = {:.2}x; raw produce {raw:.0} msg/s",
        result.at_least_once.batch_p50_ms,
        result.at_least_once.batch_p99_ms,
        result.exactly_once.batch_p50_ms,
        result.exactly_once.batch_p99_ms,
        result.exactly_once_vs_at_least_once
    );
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
