//! Kafka -> ClickHouse in batches. A batch closes at `batch_rows` messages or `batch_ms` after its
//! first message; it is inserted (retried with backoff until it succeeds), and only then are its
//! offsets stored for commit. A crash in between re-delivers the batch; the tables absorb it
//! (see [`crate::store`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use prost::Message as _;
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use shop_messaging::{envelope::EventEnvelope, kafka::KafkaSettings};
use tokio_util::sync::CancellationToken;

use crate::{rows, store::Store};

#[derive(Debug, Default)]
pub struct IngestStats {
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub skipped: AtomicU64,
}

pub struct Ingest {
    consumer: Arc<StreamConsumer>,
    store: Store,
    batch_rows: usize,
    batch_time: Duration,
    stats: Arc<IngestStats>,
}

impl Ingest {
    pub fn new(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[&str],
        store: Store,
        batch_rows: usize,
        batch_ms: u64,
    ) -> anyhow::Result<Self> {
        let consumer = kafka.consumer(group)?;
        consumer.subscribe(topics)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            store,
            batch_rows,
            batch_time: Duration::from_millis(batch_ms),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let Ok(first) =
                first.inspect_err(|e| tracing::warn!(error = %e, "kafka consume error"))
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let closes = Instant::now() + self.batch_time;
            let mut batch = vec![first];
            while batch.len() < self.batch_rows {
                let left = closes.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m),
                    Ok(Err(e)) => tracing::warn!(error = %e, "kafka consume error"),
                    Err(_) => break,
                }
            }
            let (mut events, mut lines) = (Vec::with_capacity(batch.len()), Vec::new());
            for m in &batch {
                match m
                    .payload()
                    .map(EventEnvelope::decode)
                    .map(|r| r.map(|e| rows::rows(&e)))
                {
                    Some(Ok(Ok((row, l)))) => {
                        events.push(row);
                        lines.extend(l);
                    }
                    _ => {
                        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("analytics_skipped_total").increment(1);
                    }
                }
            }
            let mut backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times()
                .build();
            while let Err(e) = self.store.insert(&events, &lines).await {
                tracing::error!(error = ?e, rows = events.len(), "clickhouse insert failed, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()), // offsets not stored: redelivered
                    () = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))) => {}
                }
            }
            for m in &batch {
                if let Err(e) = self.consumer.store_offset_from_message(m) {
                    tracing::warn!(error = %e, "cannot store offset; the batch may be redelivered");
                }
            }
            self.stats
                .rows
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("analytics_rows_total").increment(events.len() as u64);
        }
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        Ok(())
    }
}
