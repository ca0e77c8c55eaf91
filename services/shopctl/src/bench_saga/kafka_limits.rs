//! Kafka's share of the limits, on fresh topics `bench-limits-<run>-*` (deleted afterwards),
//! with the platform's client settings (`KafkaSettings`: idempotent producer with `acks=all`,
//! consumers in a group storing offsets after each message).
//!
//! - produce -> consume throughput of small messages, and single messages' latency at a low rate;
//! - an 8-hop ping-pong: one task per hop consumes `hop<i>` and produces to `hop<i+1>` (as each
//!   saga hop is one service consuming and, through its outbox, producing), the last hop
//!   completing the round. Rounds are injected at a fixed rate, then one at a time at idle: the
//!   floor for the saga's eight sequential hops.
//!
//! Every message carries its injection instant (8 bytes, nanoseconds after the run's start).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::future::join_all;
use hdrhistogram::Histogram;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use serde::Serialize;
use shop_messaging::kafka::KafkaSettings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::{self, Latency, per_sec};

const TIMEOUT: Duration = Duration::from_secs(30);
const PAYLOAD_BYTES: usize = 300;
pub const HOPS: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct KafkaLimits {
    pub messages: usize,
    pub payload_bytes: usize,
    pub produce_per_sec: f64,
    pub produce_to_consume_per_sec: f64,
    pub latency_under_throughput: Latency,
    pub single_rate_per_sec: u32,
    pub single: Latency,
    pub ping_pong: PingPong,
}

#[derive(Debug, Clone, Serialize)]
pub struct PingPong {
    pub hops: usize,
    pub offered_per_sec: u32,
    pub seconds: u64,
    pub rounds_sent: usize,
    pub rounds_completed: usize,
    /// Rounds completed over the span from the first injection to the last completion.
    pub rounds_per_sec: f64,
    pub round_trip: Latency,
    pub idle_round_trip: Latency,
    pub delivery_errors: u64,
}

/// Timestamps relative to one start, carried in the payload.
#[derive(Clone, Copy)]
struct Stamp(Instant);

impl Stamp {
    fn payload(&self, at: Instant) -> Vec<u8> {
        let mut p = vec![b'x'; PAYLOAD_BYTES];
        let nanos = u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(0);
        p[..8].copy_from_slice(&nanos.to_be_bytes());
        p
    }

    /// The instant carried by `payload`.
    fn read(&self, payload: &[u8]) -> Option<Instant> {
        let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
        Some(self.0 + Duration::from_nanos(u64::from_be_bytes(bytes)))
    }
}

pub async fn run(kafka: &KafkaSettings, run: &str, messages: usize) -> anyhow::Result<KafkaLimits> {
    let prefix = format!("bench-limits-{run}-");
    let names: Vec<String> = ["raw", "single"]
        .iter()
        .map(|s| format!("{prefix}{s}"))
        .chain((0..HOPS).map(|i| format!("{prefix}hop{i}")))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    kafka.ensure_topics(&refs).await?;
    let result = measure(kafka, &names, messages).await;
    if let Err(e) = kafka.delete_topics(&refs).await {
        tracing::warn!(error = %e, "cannot delete the limit topics");
    }
    result
}

async fn measure(
    kafka: &KafkaSettings,
    names: &[String],
    messages: usize,
) -> anyhow::Result<KafkaLimits> {
    let [raw, single, hops @ ..] = names else {
        anyhow::bail!("topic names");
    };
    let stamp = Stamp(Instant::now());
    let producer = kafka.producer(TIMEOUT)?;

    // Throughput: everything at once, in chunks of 1000 concurrent sends.
    let sink = Sink::start(kafka, raw, stamp).await?;
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        let bodies: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|i| (format!("key-{}", i % 1000), stamp.payload(Instant::now())))
            .collect();
        let sends = bodies
            .iter()
            .map(|(k, p)| producer.send(FutureRecord::to(raw).key(k).payload(p), TIMEOUT));
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let produce_per_sec = per_sec(messages, started.elapsed().as_secs_f64());
    let (got, last, under_load) = sink.finish(messages).await?;
    let end_to_end = last.map_or(0.0, |l| per_sec(got, (l - started).as_secs_f64()));

    // Single messages at a low rate.
    let single_rate = 50_u32;
    let single_n = 200;
    let sink = Sink::start(kafka, single, stamp).await?;
    let start = Instant::now();
    for i in 0..single_n {
        let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(single_rate));
        tokio::time::sleep_until(due.into()).await;
        let key = format!("key-{i}");
        let payload = stamp.payload(Instant::now());
        producer
            .send(
                FutureRecord::to(single).key(&key).payload(&payload),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let (_, _, single_latency) = sink.finish(single_n as usize).await?;

    let ping_pong = ping_pong(kafka, hops, stamp, 500, 10).await?;
    Ok(KafkaLimits {
        messages,
        payload_bytes: PAYLOAD_BYTES,
        produce_per_sec,
        produce_to_consume_per_sec: end_to_end,
        latency_under_throughput: Latency::from_micros(&under_load),
        single_rate_per_sec: single_rate,
        single: Latency::from_micros(&single_latency),
        ping_pong,
    })
}

/// Received, when the last one was, their latencies (µs).
type Received = (usize, Option<Instant>, Histogram<u64>);

/// A consumer (platform settings, own group) counting what arrives and how late.
struct Sink {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<Received>>,
    count: Arc<AtomicU64>,
}

fn group_consumer(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Arc<StreamConsumer>> {
    let group = format!("bench-limits-{}", uuid::Uuid::now_v7().simple());
    let consumer = Arc::new(kafka.consumer(&group)?);
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Waits until the group gave `consumer` its partitions (its poll loop must be running).
async fn assigned(consumer: &StreamConsumer) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while consumer.assignment()?.count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no partitions assigned in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl Sink {
    async fn start(kafka: &KafkaSettings, topic: &str, stamp: Stamp) -> anyhow::Result<Self> {
        let consumer = group_consumer(kafka, topic)?;
        let stop = CancellationToken::new();
        let count = Arc::new(AtomicU64::new(0));
        let (c, s, n) = (consumer.clone(), stop.clone(), count.clone());
        let task = tokio::spawn(async move {
            let mut h = stats::micros_histogram()?;
            let mut last = None;
            loop {
                let m = tokio::select! {
                    () = s.cancelled() => break,
                    m = c.recv() => match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "limits consumer error");
                            continue;
                        }
                    },
                };
                let at = Instant::now();
                if let Some(sent) = m.payload().and_then(|p| stamp.read(p)) {
                    stats::record(&mut h, at.saturating_duration_since(sent));
                }
                c.store_offset_from_message(&m)?;
                last = Some(at);
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok((h.len() as usize, last, h))
        });
        assigned(&consumer).await?;
        Ok(Self { stop, task, count })
    }

    /// Waits for `n` messages (at most 60 s), then stops: (received, last at, latencies).
    async fn finish(self, n: usize) -> anyhow::Result<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.count.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        self.task.await?
    }
}

/// One hop: consume `from`, produce the same message to `to` (or, for the last, report the
/// round as done) without waiting for the ack (the platform's handlers hand their output to
/// the outbox and go on; the relay publishes).
async fn hop(
    consumer: Arc<StreamConsumer>,
    producer: FutureProducer,
    to: Option<String>,
    done: mpsc::UnboundedSender<(Vec<u8>, Instant)>,
    errors: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = consumer.recv() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "ping-pong consumer error");
                    continue;
                }
            },
        };
        let payload = m.payload().unwrap_or_default();
        match &to {
            None => {
                let _ = done.send((payload.to_vec(), Instant::now()));
            }
            Some(to) => {
                let record = FutureRecord::to(to)
                    .key(m.key().unwrap_or_default())
                    .payload(payload);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        let errors = errors.clone();
                        tokio::spawn(async move {
                            if !matches!(delivery.await, Ok(Ok(_))) {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        consumer.store_offset_from_message(&m)?;
    }
}

async fn ping_pong(
    kafka: &KafkaSettings,
    hops: &[String],
    stamp: Stamp,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<PingPong> {
    let first = hops.first().context("no hop topics")?;
    let stop = CancellationToken::new();
    let errors = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut consumers = Vec::new();
    let mut tasks = Vec::new();
    for (i, from) in hops.iter().enumerate() {
        let consumer = group_consumer(kafka, from)?;
        consumers.push(consumer.clone());
        tasks.push(tokio::spawn(hop(
            consumer,
            kafka.producer(TIMEOUT)?,
            hops.get(i + 1).cloned(),
            done_tx.clone(),
            errors.clone(),
            stop.clone(),
        )));
    }
    for c in &consumers {
        assigned(c).await?;
    }
    let injector = kafka.producer(TIMEOUT)?;
    let round = |payload: &[u8], at: Instant| {
        stamp
            .read(payload)
            .map(|sent| at.saturating_duration_since(sent))
    };

    // Open loop at `rate`.
    let total = u64::from(rate) * seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let key = format!("r-{}", i % 1000);
        let payload = stamp.payload(due);
        if injector
            .send_result(FutureRecord::to(first).key(&key).payload(&payload))
            .is_err()
        {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut round_trip = stats::micros_histogram()?;
    let mut last = start;
    let deadline = Instant::now() + TIMEOUT;
    while round_trip.len() < total {
        match tokio::time::timeout_at(deadline.into(), done.recv()).await {
            Ok(Some((p, at))) => {
                if let Some(d) = round(&p, at) {
                    stats::record(&mut round_trip, d);
                }
                last = at;
            }
            _ => break,
        }
    }
    let completed = round_trip.len() as usize;

    // At idle: one round at a time.
    let mut idle = stats::micros_histogram()?;
    for i in 0..50 {
        let key = format!("idle-{i}");
        let payload = stamp.payload(Instant::now());
        injector
            .send(FutureRecord::to(first).key(&key).payload(&payload), TIMEOUT)
            .await
            .map_err(|(e, _)| e)?;
        match tokio::time::timeout(TIMEOUT, done.recv()).await {
            Ok(Some((p, at))) => {
                if let Some(d) = round(&p, at) {
                    stats::record(&mut idle, d);
                }
            }
            _ => break,
        }
    }
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    Ok(PingPong {
        hops: hops.len(),
        offered_per_sec: rate,
        seconds,
        rounds_sent: total as usize,
        rounds_completed: completed,
        rounds_per_sec: per_sec(completed, (last - start).as_secs_f64()),
        round_trip: Latency::from_micros(&round_trip),
        idle_round_trip: Latency::from_micros(&idle),
        delivery_errors: errors.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_instant() {
        let s = Stamp(Instant::now());
        let at = s.0 + Duration::from_micros(1234);
        let p = s.payload(at);
        assert_eq!(p.len(), PAYLOAD_BYTES);
        assert_eq!(s.read(&p), Some(at));
        assert_eq!(s.read(&[1, 2]), None);
    }
}
