//! The inbox: consume a topic so that each message's effect happens once.
//!
//! For every message, in partition order:
//!
//! 1. decode the [`EventEnvelope`] (undecodable -> dead-letter at once: retrying cannot help);
//! 2. in ONE transaction: insert `(consumer, event_id)` into `inbox`; if it was already there
//!    the message is a duplicate and nothing else happens; otherwise run the handler's effect
//!    on the same connection; commit;
//! 3. store the offset; librdkafka commits stored offsets in the background (and once more,
//!    synchronously, on shutdown). A crash between 2 and 3 re-delivers the message and step 2
//!    skips it.
//!
//! Messages already fetched are applied up to `batch_size` per transaction (step 2 for each, one
//! commit for all): the effects are the same, the fsyncs fewer. A message that fails inside a
//! batch rolls the batch back; the messages before it are applied again on their own, and the
//! failing one takes the single-message path below.
//!
//! A handler error rolls the transaction back. [`HandlerError::Unavailable`] (the database is
//! unreachable or going away) is retried with backoff until the store is back and uses up no
//! try; [`HandlerError::Transient`] is retried up to `max_attempts`; then, or at once for
//! [`HandlerError::Permanent`], the message goes to `<topic>.dlq` with its error and attempt
//! count in headers, an inbox row records it as dead-lettered, and the partition moves on.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::{
    ClientContext, Message, Statistics,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{BorrowedMessage, Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::{
    envelope::EventEnvelope,
    kafka::{KafkaSettings, dead_letter_topic},
};

/// Why a handler could not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The store is not there (connection lost or refused, pool exhausted, server shutting
    /// down or out of resources): retried with backoff until it is back, never dead-lettered,
    /// so a short outage or a failover costs time and loses no live command.
    #[error("store unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Might succeed later (a deadlock, a serialization failure, a lock timeout, a rule that a
    /// later message will satisfy): retried with backoff, dead-lettered after `max_attempts`.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed (a payload that does not decode, an unknown type): dead-lettered now.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

/// Whether `e` says the database itself is unreachable or going away, rather than anything about
/// this message: SQLSTATE classes 08 (connection), 53 (insufficient resources), 57P (operator
/// intervention: shutdown, crash recovery), and the driver's I/O, TLS and pool errors.
pub fn store_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")),
        _ => false,
    }
}

impl From<sqlx::Error> for HandlerError {
    /// An unreachable store is [`HandlerError::Unavailable`]; anything else (deadlocks,
    /// serialization failures, a unique violation lost to a racing writer) is
    /// [`HandlerError::Transient`]: it may well pass on the next try.
    fn from(e: sqlx::Error) -> Self {
        if store_unavailable(&e) {
            Self::Unavailable(e.into())
        } else {
            Self::Transient(e.into())
        }
    }
}

impl From<prost::DecodeError> for HandlerError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Permanent(e.into())
    }
}

/// The effect of a message. It runs inside the inbox transaction: write through `conn` only
/// (enqueue replies with `outbox::enqueue(conn, ..)`), so the effect, its replies and the inbox
/// row commit together.
pub trait Handler: Send + Sync + 'static {
    /// Whether this consumer acts on `event` at all. One it does not want costs no inbox row
    /// and no transaction of its own (a consumer of another service's events topic, say, that
    /// acts on a few of its types): its offset is stored and that is all.
    fn wants(&self, event: &EventEnvelope) -> bool {
        let _ = event;
        true
    }

    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// The consumer's name: the Kafka group id and the inbox's dedup scope.
    pub consumer: String,
    pub topics: Vec<String>,
    /// Most messages applied in one transaction. Messages already fetched are batched; the
    /// consumer never waits to fill a batch, so a quiet topic still sees per-message latency.
    pub batch_size: usize,
    /// Tries before a failing message is dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Inbox rows older than this are deleted. Must exceed the longest redelivery horizon
    /// (consumer-group offset retention), or a very late duplicate would be applied again.
    pub retention: Duration,
    /// Fault injection for the fault matrix: a pause before each batch is applied, making this
    /// consumer a slow participant. Zero unless `SHOP_FAULT_HANDLER_DELAY_MS` is set.
    pub handler_delay: Duration,
}

impl InboxConfig {
    pub fn new(consumer: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            consumer: consumer.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            batch_size: 200,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 24 * 3600),
            handler_delay: std::env::var("SHOP_FAULT_HANDLER_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(Duration::ZERO, Duration::from_millis),
        }
    }
}

/// Counters of one inbox consumer (Prometheus gets the same figures, labelled by consumer).
#[derive(Debug, Default)]
pub struct InboxStats {
    pub processed: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// Exports librdkafka's per-partition consumer lag as a gauge.
pub struct LagContext {
    consumer: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "inbox_consumer_lag",
                    "consumer" => self.consumer.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

pub struct Inbox<H> {
    pool: PgPool,
    consumer: Arc<StreamConsumer<LagContext>>,
    /// Replaced when librdkafka declares it fatally failed (as the relay's is).
    dlq_producer: std::sync::Mutex<FutureProducer>,
    kafka: KafkaSettings,
    handler: H,
    config: InboxConfig,
    stats: Arc<InboxStats>,
}

/// Where a batch stopped.
enum Stop {
    Clean,
    Undecodable,
    HandlerFailed,
}

/// The envelope and its id, or None if the message cannot be one of ours.
fn decode(msg: &BorrowedMessage<'_>) -> Option<(EventEnvelope, uuid::Uuid)> {
    let envelope = EventEnvelope::decode(msg.payload()?).ok()?;
    let event_id = uuid::Uuid::parse_str(&envelope.event_id).ok()?;
    Some((envelope, event_id))
}

enum Outcome {
    Processed,
    Duplicate,
    DeadLettered,
    /// Not for this consumer ([`Handler::wants`]).
    Ignored,
}

impl<H: Handler> Inbox<H> {
    /// Subscribes to `config.topics` as group `config.consumer`.
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        config: InboxConfig,
        handler: H,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer<LagContext> = kafka
            .consumer_config(&config.consumer)
            // Statistics feed the lag gauge (LagContext); plain consumers would only log them.
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagContext {
                consumer: config.consumer.clone(),
            })
            .context("cannot create Kafka consumer")?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("cannot subscribe")?;
        let dlq_producer = std::sync::Mutex::new(kafka.producer(Duration::from_secs(30))?);
        Ok(Self {
            pool,
            consumer: Arc::new(consumer),
            dlq_producer,
            kafka: kafka.clone(),
            handler,
            config,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<InboxStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown`; the message in hand is finished (or left for redelivery if it
    /// is between retries), then stored offsets are committed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(consumer = %self.config.consumer, topics = ?self.config.topics, "inbox consumer started");
        let mut cleanup = tokio::time::interval(Duration::from_secs(3600));
        'consume: loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = cleanup.tick() => {
                    if let Err(e) = self.delete_expired().await {
                        tracing::warn!(error = ?e, "inbox cleanup failed");
                    }
                    continue;
                }
                msg = self.consumer.recv() => msg,
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Take whatever else is already fetched, without waiting.
            let mut batch = vec![first];
            while batch.len() < self.config.batch_size {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        break;
                    }
                    None => break,
                }
            }
            let mut next = 0;
            while next < batch.len() {
                match self.apply_batch(&batch[next..]).await {
                    Ok((done, stuck)) => {
                        for (msg, outcome) in batch[next..next + done.len()].iter().zip(done.iter())
                        {
                            self.finish(msg, outcome);
                        }
                        next += done.len();
                        if stuck {
                            // batch[next] failed in the batch: give it the retry/dead-letter path.
                            match self.process(&batch[next], &shutdown).await {
                                Ok(Some(outcome)) => {
                                    self.finish(&batch[next], &outcome);
                                    next += 1;
                                }
                                // Shutdown while the message was between retries: leave it for redelivery.
                                Ok(None) => break 'consume,
                                Err(e) => {
                                    self.pause_on_infrastructure_error(
                                        &batch[next..],
                                        &e,
                                        &shutdown,
                                    )
                                    .await;
                                    // Everything from here on is fetched again after the seek.
                                    continue 'consume;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        self.pause_on_infrastructure_error(&batch[next..], &e, &shutdown)
                            .await;
                        continue 'consume;
                    }
                }
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last auto-commit is the common, harmless case.
            tracing::debug!(error = %e, "final offset commit");
        }
        tracing::info!(consumer = %self.config.consumer, "inbox consumer stopped");
        Ok(())
    }

    /// Counts the outcome and stores the message's offset (committed in the background).
    fn finish(&self, msg: &BorrowedMessage<'_>, outcome: &Outcome) {
        let c = &self.config.consumer;
        match outcome {
            Outcome::Processed => {
                self.stats.processed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("inbox_processed_total", "consumer" => c.clone()).increment(1);
            }
            Outcome::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("inbox_duplicates_total", "consumer" => c.clone()).increment(1);
            }
            Outcome::Ignored => {}
            Outcome::DeadLettered => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("inbox_dead_lettered_total", "consumer" => c.clone())
                    .increment(1);
            }
        }
        if let Err(e) = self.consumer.store_offset_from_message(msg) {
            tracing::warn!(error = %e, "cannot store offset; the message will be redelivered");
        }
    }

    /// The database or broker is unreachable: store no offset; seek every partition that has a
    /// message in `unapplied` (the rest of a fetched batch, which may span partitions) back to its
    /// first unapplied offset, and try again after a pause. (Rewinding only the failing message's
    /// partition lost the other partitions' messages of the batch: their positions had moved on.)
    async fn pause_on_infrastructure_error(
        &self,
        unapplied: &[BorrowedMessage<'_>],
        error: &anyhow::Error,
        shutdown: &CancellationToken,
    ) {
        tracing::error!(error = ?error, "inbox cannot process message, retrying");
        // Per partition, messages are in offset order: the first seen is the first unapplied.
        let mut first = std::collections::BTreeMap::new();
        for msg in unapplied {
            first
                .entry((msg.topic(), msg.partition()))
                .or_insert(msg.offset());
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(
                topic,
                partition,
                rdkafka::Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(error = %e, topic, partition, "seek back failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = tokio::time::sleep(self.config.max_backoff) => {},
        }
    }

    /// The fast path: as many of `msgs` as apply cleanly, in order, in ONE transaction (one
    /// commit, one fsync). Returns their outcomes, and whether it stopped at a message that needs
    /// the slow path (undecodable, or its handler failed). A handler failure rolls back the
    /// transaction; the clean prefix before it is then applied again on its own.
    async fn apply_batch(
        &self,
        msgs: &[BorrowedMessage<'_>],
    ) -> anyhow::Result<(Vec<Outcome>, bool)> {
        let mut end = msgs.len();
        if !self.config.handler_delay.is_zero() {
            tokio::time::sleep(self.config.handler_delay).await;
        }
        loop {
            let mut tx = self.pool.begin().await.context("begin inbox transaction")?;
            let mut outcomes = Vec::with_capacity(end);
            let mut stop = Stop::Clean;
            for msg in &msgs[..end] {
                let Some((envelope, event_id)) = decode(msg) else {
                    stop = Stop::Undecodable;
                    break;
                };
                if !self.handler.wants(&envelope) {
                    outcomes.push(Outcome::Ignored);
                    continue;
                }
                if !self
                    .insert_inbox_row(&mut tx, msg, &envelope, event_id)
                    .await?
                {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                if self.handler.handle(&mut tx, &envelope).await.is_err() {
                    stop = Stop::HandlerFailed;
                    break;
                }
                outcomes.push(Outcome::Processed);
            }
            match stop {
                Stop::Clean | Stop::Undecodable => {
                    tx.commit().await.context("commit inbox transaction")?;
                    crate::wake::committed();
                    let stuck = outcomes.len() < msgs.len();
                    return Ok((outcomes, stuck));
                }
                Stop::HandlerFailed => {
                    // Its partial writes, and the prefix's, are rolled back; apply the prefix alone.
                    tx.rollback().await.ok();
                    if outcomes.is_empty() {
                        return Ok((outcomes, true));
                    }
                    end = outcomes.len();
                }
            }
        }
    }

    /// Inserts the inbox row; false when it was already there (a duplicate).
    async fn insert_inbox_row(
        &self,
        conn: &mut PgConnection,
        msg: &BorrowedMessage<'_>,
        envelope: &EventEnvelope,
        event_id: uuid::Uuid,
    ) -> anyhow::Result<bool> {
        Ok(sqlx::query(
            "INSERT INTO inbox (consumer, event_id, event_type, topic, kafka_partition, kafka_offset, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, 'processed')
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.config.consumer)
        .bind(event_id)
        .bind(&envelope.event_type)
        .bind(msg.topic())
        .bind(msg.partition())
        .bind(msg.offset())
        .execute(conn)
        .await
        .context("insert inbox row")?
        .rows_affected()
            == 1)
    }

    /// The slow path for one message: retries with backoff, then the dead-letter topic.
    /// `Ok(None)` = interrupted by shutdown. `Err` = infrastructure failure (retry the message).
    async fn process(
        &self,
        msg: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Outcome>> {
        let envelope = match msg.payload().map(EventEnvelope::decode) {
            Some(Ok(env)) => env,
            Some(Err(e)) => {
                self.dead_letter(msg, None, &format!("undecodable envelope: {e}"), 1)
                    .await?;
                return Ok(Some(Outcome::DeadLettered));
            }
            None => {
                self.dead_letter(msg, None, "empty message", 1).await?;
                return Ok(Some(Outcome::DeadLettered));
            }
        };
        let Ok(event_id) = uuid::Uuid::parse_str(&envelope.event_id) else {
            self.dead_letter(msg, None, "event_id is not a UUID", 1)
                .await?;
            return Ok(Some(Outcome::DeadLettered));
        };
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.initial_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 0;
        loop {
            let error = match self.apply(msg, &envelope, event_id).await? {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(e) => e,
            };
            // An unavailable store says nothing about the message: it does not use up a try.
            if !matches!(error, HandlerError::Unavailable(_)) {
                attempt += 1;
            }
            let last =
                attempt >= self.config.max_attempts || matches!(error, HandlerError::Permanent(_));
            tracing::warn!(
                consumer = %self.config.consumer,
                event_id = %envelope.event_id,
                event_type = %envelope.event_type,
                attempt,
                error = %error,
                "handler failed"
            );
            if last {
                self.dead_letter(
                    msg,
                    Some((&envelope, event_id)),
                    &error.to_string(),
                    attempt,
                )
                .await?;
                return Ok(Some(Outcome::DeadLettered));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let delay = backoff.next().unwrap_or(self.config.max_backoff);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {},
            }
        }
    }

    /// One attempt: the inbox row and the effect in one transaction.
    /// Outer `Err` = could not even talk to the database; inner `Err` = the handler failed.
    async fn apply(
        &self,
        msg: &BorrowedMessage<'_>,
        envelope: &EventEnvelope,
        event_id: uuid::Uuid,
    ) -> anyhow::Result<Result<Outcome, HandlerError>> {
        if !self.handler.wants(envelope) {
            return Ok(Ok(Outcome::Ignored));
        }
        let mut tx = self.pool.begin().await.context("begin inbox transaction")?;
        let fresh = self
            .insert_inbox_row(&mut tx, msg, envelope, event_id)
            .await?;
        if !fresh {
            tx.commit().await?;
            tracing::debug!(event_id = %envelope.event_id, "duplicate skipped");
            return Ok(Ok(Outcome::Duplicate));
        }
        match self.handler.handle(&mut tx, envelope).await {
            Ok(()) => {
                tx.commit().await.context("commit inbox transaction")?;
                crate::wake::committed();
                Ok(Ok(Outcome::Processed))
            }
            Err(e) => {
                // Explicit for the reader: nothing of the failed attempt survives.
                tx.rollback().await.ok();
                Ok(Err(e))
            }
        }
    }

    /// Publishes the original message to `<topic>.dlq` (waiting for the ack), then records it in
    /// the inbox so a redelivery does not run it again.
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        envelope: Option<(&EventEnvelope, uuid::Uuid)>,
        error: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        let topic = dead_letter_topic(msg.topic());
        let attempts_s = attempts.to_string();
        let offset_s = msg.offset().to_string();
        let partition_s = msg.partition().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.error",
                value: Some(error),
            })
            .insert(Header {
                key: "dlq.attempts",
                value: Some(attempts_s.as_str()),
            })
            .insert(Header {
                key: "dlq.consumer",
                value: Some(self.config.consumer.as_str()),
            })
            .insert(Header {
                key: "dlq.original_topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "dlq.original_partition",
                value: Some(partition_s.as_str()),
            })
            .insert(Header {
                key: "dlq.original_offset",
                value: Some(offset_s.as_str()),
            });
        let mut record = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        let producer = self
            .dlq_producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Err((e, _)) = producer.send(record, Duration::from_secs(30)).await {
            use rdkafka::producer::Producer as _;
            if let Some((code, reason)) = producer.client().fatal_error() {
                tracing::warn!(?code, %reason, "dead-letter producer failed fatally, replacing it");
                metrics::counter!("outbox_producer_renewals_total", "relay" => "dead-letters")
                    .increment(1);
                *self.dlq_producer.lock().unwrap_or_else(|e| e.into_inner()) =
                    self.kafka.producer(Duration::from_secs(30))?;
            }
            anyhow::bail!("dead-letter publish to {topic} failed: {e}");
        }
        // An undecodable message has no event id of its own: it is recorded under one derived
        // from where it was read, so every dead letter is in the inbox (and `shopctl` shows it).
        let (event_id, event_type) = match envelope {
            Some((env, id)) => (id, env.event_type.as_str()),
            None => (
                uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset()).as_bytes(),
                ),
                "(undecodable)",
            ),
        };
        sqlx::query(
            "INSERT INTO inbox (consumer, event_id, event_type, topic, kafka_partition, kafka_offset, outcome, error)
             VALUES ($1, $2, $3, $4, $5, $6, 'dead_lettered', $7)
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.config.consumer)
        .bind(event_id)
        .bind(event_type)
        .bind(msg.topic())
        .bind(msg.partition())
        .bind(msg.offset())
        .bind(error)
        .execute(&self.pool)
        .await
        .context("record dead-lettered message")?;
        tracing::error!(
            consumer = %self.config.consumer,
            topic = %msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            attempts,
            error,
            "message dead-lettered"
        );
        Ok(())
    }

    async fn delete_expired(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM inbox WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)",
        )
        .bind(&self.config.consumer)
        .bind(self.config.retention.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// A message a consumer refused for good (its copy is on `<topic>.dlq`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    pub consumer: String,
    pub topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub event_type: String,
    pub error: Option<String>,
    pub processed_at: chrono::DateTime<chrono::Utc>,
}

/// The latest dead letters of this database's consumers (at most `limit`), and how many in all.
pub async fn dead_letters(
    pool: &sqlx::PgPool,
    limit: i64,
) -> Result<(i64, Vec<DeadLetter>), sqlx::Error> {
    let (total,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM inbox WHERE outcome = 'dead_lettered'")
            .fetch_one(pool)
            .await?;
    let latest = sqlx::query_as(
        "SELECT consumer, topic, kafka_partition, kafka_offset, event_type, error, processed_at
         FROM inbox WHERE outcome = 'dead_lettered' ORDER BY processed_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok((total, latest))
}
