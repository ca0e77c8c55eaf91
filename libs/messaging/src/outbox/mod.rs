//! The transactional outbox and its relay.
//!
//! **Writing.** [`enqueue`] inserts the event into `outbox` through the caller's connection, so
//! it commits or rolls back with the state change. Write the state change first: it takes the
//! aggregate's row lock, which orders the outbox ids of one aggregate the way its transactions
//! commit.
//!
//! **Relaying.** Each round of [`Relay::relay_once`] is one transaction:
//!
//! 1. claim up to `max_buckets` buckets that have pending rows, oldest first, each with a
//!    transaction-scoped advisory lock taken with `pg_try_advisory_xact_lock` (a bucket held by
//!    another relay is skipped, so relays share the work and never publish one key from two
//!    places; unlike row locks these take no transaction id while the round waits on the
//!    broker);
//! 2. read up to `batch_size` pending rows of those buckets in id order;
//! 3. hand them all to the idempotent producer (keyed by aggregate id), then wait for the acks;
//! 4. per bucket, mark published the rows up to the first failure; a failed row records its
//!    error and stops its bucket for this round, so nothing after it is marked ahead of it;
//! 5. a row the broker refuses for good ([`permanent`]: too large, unknown topic, not
//!    authorised) is **parked** after `park_after` attempts: set aside with its error, so the
//!    rest of its bucket moves on. Later rows of the same key wait behind it (their order is
//!    kept); `shopctl outbox list` shows them and `shopctl outbox redrive` puts them back;
//! 6. commit. A crash before this commit leaves every row pending: they are published again
//!    (duplicates, absorbed by the consumers' inbox), never lost.
//!
//! [`Relay::run`] loops: straight on while rounds come back full, otherwise it sleeps until a
//! `NOTIFY outbox` (sent by a trigger at commit) or the poll interval, whichever is first.
//! Published rows are deleted after `retention` by a background sweep.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::future::join_all;
use prost::Message;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use sqlx::{PgConnection, PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

mod admin;

pub use admin::{Backlog, Parked, backlog, delete_published, parked, permanent, redrive};

use crate::{
    envelope::{NewEvent, bucket_of},
    kafka::KafkaSettings,
};

/// Buckets in `outbox_bucket` (fixed by the migration).
pub const BUCKETS: u64 = 64;
const NOTIFY_CHANNEL: &str = "outbox";

/// Writes `event` to the outbox in the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, event: &NewEvent) -> Result<(), sqlx::Error> {
    let env = &event.envelope;
    let event_id = uuid::Uuid::parse_str(&env.event_id)
        .map_err(|e| sqlx::Error::Protocol(format!("event_id is not a UUID: {e}")))?;
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, partition_key, bucket, event_type, payload)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(&event.topic)
    .bind(&env.aggregate_id)
    .bind(bucket_of(&env.aggregate_id, BUCKETS))
    .bind(&env.event_type)
    .bind(env.encode_to_vec())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes several events in one statement, in order (their ids follow the slice order).
pub async fn enqueue_all(conn: &mut PgConnection, events: &[NewEvent]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut topics = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut buckets = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        let env = &event.envelope;
        ids.push(
            uuid::Uuid::parse_str(&env.event_id)
                .map_err(|e| sqlx::Error::Protocol(format!("event_id is not a UUID: {e}")))?,
        );
        topics.push(event.topic.clone());
        keys.push(env.aggregate_id.clone());
        buckets.push(bucket_of(&env.aggregate_id, BUCKETS));
        types.push(env.event_type.clone());
        payloads.push(env.encode_to_vec());
    }
    // WITH ORDINALITY keeps the slice order, so identity ids follow it.
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, partition_key, bucket, event_type, payload)
         SELECT e, t, k, b, y, p
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::bytea[])
              WITH ORDINALITY AS u(e, t, k, b, y, p, n)
         ORDER BY n",
    )
    .bind(&ids)
    .bind(&topics)
    .bind(&keys)
    .bind(&buckets)
    .bind(&types)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows published in one round.
    pub batch_size: i64,
    /// Most buckets one relay holds in one round; below 64 lets several relays share the load.
    pub max_buckets: i64,
    /// Fallback wake-up when no notification arrives (LISTEN is down, or a missed NOTIFY).
    pub poll_interval: Duration,
    /// How long one publish may take, broker retries included, before the row counts as failed.
    pub delivery_timeout: Duration,
    /// Pause after a failed round before the next.
    pub error_backoff: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    pub cleanup_interval: Duration,
    /// How often backlog gauges are refreshed.
    pub metrics_interval: Duration,
    /// Attempts after which a row failing with a [`permanent`] error is parked.
    pub park_after: i32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_buckets: 16,
            poll_interval: Duration::from_millis(500),
            delivery_timeout: Duration::from_secs(15),
            error_backoff: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(5),
            park_after: 5,
        }
    }
}

/// Test-only failure injection: what a crash at a chosen point would leave behind.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Publish and receive the acks, then lose the transaction as a `kill -9` would.
    CrashAfterPublish,
    /// Publish and receive the acks, then end the process before marking (the fault matrix
    /// sets it with `SHOP_FAULT_RELAY_EXIT_AFTER_PUBLISH=1` and restarts the service).
    ExitAfterPublish,
}

/// Counters of one relay, for tests and the demo (Prometheus gets the same figures).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub failed: AtomicU64,
    pub rounds: AtomicU64,
}

/// Publishes outbox rows to Kafka. Any number may run against one database.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    kafka: KafkaSettings,
    /// Replaced after a round with failures; see [`Relay::relay_once`].
    producer: Arc<Mutex<FutureProducer>>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    fault: Fault,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Rows read from the outbox.
    pub claimed: usize,
    pub published: usize,
    pub failed: usize,
    /// Rows set aside this round (see [`permanent`]).
    pub parked: usize,
}

struct Row {
    id: i64,
    bucket: i16,
    event_id: uuid::Uuid,
    topic: String,
    partition_key: String,
    event_type: String,
    payload: Vec<u8>,
}

impl Relay {
    pub fn new(pool: PgPool, kafka: &KafkaSettings, config: RelayConfig) -> anyhow::Result<Self> {
        let producer = kafka.producer(config.delivery_timeout)?;
        Ok(Self {
            pool,
            kafka: kafka.clone(),
            producer: Arc::new(Mutex::new(producer)),
            config,
            stats: Arc::default(),
            fault: if std::env::var_os("SHOP_FAULT_RELAY_EXIT_AFTER_PUBLISH").is_some() {
                Fault::ExitAfterPublish
            } else {
                Fault::None
            },
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces a producer that librdkafka declared fatally failed (e.g. an idempotence
    /// sequence it cannot recover, or a fenced producer id): such a producer fails every later
    /// send. Ordinary failures (broker down, delivery timeout) need no new producer: librdkafka
    /// bumps the idempotent epoch itself (KIP-360) and the failed rows go out again, in order,
    /// in the next round.
    fn renew_producer_if_fatal(&self) -> anyhow::Result<()> {
        let producer = self.producer();
        let Some((code, reason)) = producer.client().fatal_error() else {
            return Ok(());
        };
        tracing::warn!(?code, %reason, "kafka producer failed fatally, replacing it");
        metrics::counter!("outbox_producer_renewals_total").increment(1);
        let fresh = self.kafka.producer(self.config.delivery_timeout)?;
        *self.producer.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    #[doc(hidden)]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`: relays rounds, sweeps published rows, exports backlog gauges.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sweeper = tokio::spawn(self.clone().sweep(shutdown.clone()));
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox listen failed, polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "outbox listener connect failed, polling only");
                None
            }
        };
        tracing::info!(batch_size = self.config.batch_size, "outbox relay started");
        while !shutdown.is_cancelled() {
            match self.relay_once().await {
                // A full round: more is waiting, go straight on.
                Ok(o) if o.claimed as i64 >= self.config.batch_size && o.failed == 0 => continue,
                Ok(o) if o.failed > 0 => self.pause(self.config.error_backoff, &shutdown).await,
                Ok(_) => self.wait_for_work(listener.as_mut(), &shutdown).await,
                Err(e) => {
                    tracing::error!(error = ?e, "outbox relay round failed");
                    self.pause(self.config.error_backoff, &shutdown).await;
                }
            }
        }
        sweeper.abort();
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    async fn pause(&self, d: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(d) => {},
            () = shutdown.cancelled() => {},
        }
    }

    async fn wait_for_work(&self, listener: Option<&mut PgListener>, shutdown: &CancellationToken) {
        let poll = self.config.poll_interval;
        match listener {
            Some(l) => {
                tokio::select! {
                    r = l.recv() => if let Err(e) = r {
                        // PgListener reconnects on the next recv; until then, poll.
                        tracing::warn!(error = %e, "outbox listener lost its connection");
                        tokio::time::sleep(poll).await;
                    },
                    () = tokio::time::sleep(poll) => {},
                    () = shutdown.cancelled() => {},
                }
            }
            None => self.pause(poll, shutdown).await,
        }
    }

    /// One claim -> publish -> mark round, in one transaction. See the module docs.
    pub async fn relay_once(&self) -> anyhow::Result<RoundOutcome> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await.context("begin relay round")?;
        // Advisory locks, not row locks: they take no transaction id, so a round waiting on
        // the broker does not hold back anything that waits for older transactions to finish
        // (e.g. a projection reading in commit-safe order). The subquery is a fence (OFFSET 0,
        // a volatile filter is not pushed into it): buckets are tried oldest first and the
        // LIMIT stops the trying, so no more than `max_buckets` locks are taken.
        let buckets: Vec<i16> = sqlx::query_scalar(
            "SELECT c.bucket FROM (
                 SELECT b.bucket,
                        (SELECT min(o.id) FROM outbox o WHERE o.bucket = b.bucket AND o.published_at IS NULL AND o.parked_at IS NULL) AS oldest
                 FROM outbox_bucket b
                 WHERE EXISTS (SELECT 1 FROM outbox o WHERE o.bucket = b.bucket AND o.published_at IS NULL AND o.parked_at IS NULL)
                 ORDER BY oldest OFFSET 0
             ) c
             WHERE pg_try_advisory_xact_lock(hashtext('shop.outbox_bucket'), c.bucket)
             LIMIT $1",
        )
        .bind(self.config.max_buckets)
        .fetch_all(&mut *tx)
        .await
        .context("claim outbox buckets")?;
        if buckets.is_empty() {
            return Ok(RoundOutcome::default());
        }
        let rows: Vec<Row> = sqlx::query_as::<
            _,
            (i64, i16, uuid::Uuid, String, String, String, Vec<u8>),
        >(
            "SELECT id, bucket, event_id, topic, partition_key, event_type, payload FROM outbox o
             WHERE bucket = ANY($1) AND published_at IS NULL AND parked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.parked_at IS NOT NULL
                               AND p.partition_key = o.partition_key AND p.id < o.id)
             ORDER BY id
             LIMIT $2",
        )
        .bind(&buckets)
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await
        .context("read outbox rows")?
        .into_iter()
        .map(
            |(id, bucket, event_id, topic, partition_key, event_type, payload)| Row {
                id,
                bucket,
                event_id,
                topic,
                partition_key,
                event_type,
                payload,
            },
        )
        .collect();

        let results = self.publish(&rows).await;

        // Mark, per bucket, the prefix before the first failure.
        let mut stopped: HashSet<i16> = HashSet::new();
        let mut published_ids = Vec::with_capacity(rows.len());
        let mut failures: Vec<(i64, String, bool)> = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            if stopped.contains(&row.bucket) {
                continue;
            }
            match result {
                Ok(()) => published_ids.push(row.id),
                Err(e) => {
                    stopped.insert(row.bucket);
                    failures.push((row.id, e.to_string(), permanent(&e)));
                }
            }
        }
        if self.fault == Fault::ExitAfterPublish && !published_ids.is_empty() {
            tracing::error!(
                acked = published_ids.len(),
                "fault injection: exiting between publish and mark"
            );
            std::process::exit(137);
        }
        if self.fault == Fault::CrashAfterPublish {
            // Dropping the transaction rolls it back, exactly as a dead process's connection would.
            drop(tx);
            anyhow::bail!(
                "injected crash after publish ({} rows acked, none marked)",
                published_ids.len()
            );
        }
        sqlx::query(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
        )
        .bind(&published_ids)
        .execute(&mut *tx)
        .await
        .context("mark outbox rows published")?;
        let mut parked = 0;
        for (id, error, permanent) in &failures {
            let parks: bool = sqlx::query_scalar(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                        parked_at = CASE WHEN $3 AND attempts + 1 >= $4 THEN now() END
                 WHERE id = $1 RETURNING parked_at IS NOT NULL",
            )
            .bind(id)
            .bind(error)
            .bind(permanent)
            .bind(self.config.park_after)
            .fetch_one(&mut *tx)
            .await
            .context("record outbox failure")?;
            if parks {
                parked += 1;
                tracing::error!(id, error = %error, "outbox row parked: the broker refuses it for good; `shopctl outbox list` shows it, `shopctl outbox redrive` retries it");
            }
        }
        tx.commit().await.context("commit relay round")?;

        let outcome = RoundOutcome {
            claimed: rows.len(),
            published: published_ids.len(),
            failed: failures.len(),
            parked,
        };
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .published
            .fetch_add(outcome.published as u64, Ordering::Relaxed);
        self.stats
            .failed
            .fetch_add(outcome.failed as u64, Ordering::Relaxed);
        metrics::counter!("outbox_published_total").increment(outcome.published as u64);
        metrics::counter!("outbox_publish_failures_total").increment(outcome.failed as u64);
        metrics::counter!("outbox_parked_total").increment(outcome.parked as u64);
        metrics::histogram!("outbox_round_seconds").record(started.elapsed().as_secs_f64());
        if let Some((id, error, _)) = failures.first() {
            tracing::warn!(failed = failures.len(), first_id = id, error = %error, "outbox publish failed, will retry");
            self.renew_producer_if_fatal()?;
        }
        Ok(outcome)
    }

    /// Queues every row with the producer in order, then waits for all acks.
    /// The idempotent producer keeps the queue order per partition.
    async fn publish(&self, rows: &[Row]) -> Vec<Result<(), KafkaError>> {
        let producer = self.producer();
        let mut pending = Vec::with_capacity(rows.len());
        // A row refused before it was queued (too large for the producer, unknown topic)
        // stops its bucket: nothing after it is queued this round, so no later row of its key
        // reaches the broker ahead of it. (Those rows would not be marked anyway.)
        let mut refused: HashSet<i16> = HashSet::new();
        for row in rows {
            if refused.contains(&row.bucket) {
                pending.push(Err(KafkaError::Canceled));
                continue;
            }
            let event_id = row.event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "event_id",
                    value: Some(event_id.as_str()),
                })
                .insert(Header {
                    key: "event_type",
                    value: Some(row.event_type.as_str()),
                });
            let mut record = FutureRecord::to(&row.topic)
                .key(row.partition_key.as_str())
                .payload(row.payload.as_slice())
                .headers(headers);
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(delivery) => break Ok(delivery),
                    // The local queue is full: let it drain, then queue the same record again,
                    // so the order is kept.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            if delivery.is_err() {
                refused.insert(row.bucket);
            }
            pending.push(delivery);
        }
        let mut results = Vec::with_capacity(pending.len());
        let futures: Vec<_> = pending
            .into_iter()
            .map(|d| async move {
                match d {
                    Ok(fut) => match fut.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e),
                        Err(_cancelled) => Err(KafkaError::Canceled),
                    },
                    Err(e) => Err(e),
                }
            })
            .collect();
        results.extend(join_all(futures).await);
        results
    }

    /// Deletes published rows past retention and refreshes the backlog gauges.
    async fn sweep(self, shutdown: CancellationToken) {
        let mut cleanup = tokio::time::interval(self.config.cleanup_interval);
        let mut gauges = tokio::time::interval(self.config.metrics_interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = cleanup.tick() => {
                    match delete_published(&self.pool, self.config.retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "outbox cleanup"),
                        Err(e) => tracing::warn!(error = ?e, "outbox cleanup failed"),
                    }
                }
                _ = gauges.tick() => {
                    match backlog(&self.pool).await {
                        Ok(b) => {
                            metrics::gauge!("outbox_backlog").set(b.pending as f64);
                            metrics::gauge!("outbox_oldest_unpublished_age_seconds").set(b.oldest_age_seconds);
                            metrics::gauge!("outbox_parked").set(b.parked as f64);
                        }
                        Err(e) => tracing::warn!(error = ?e, "outbox backlog query failed"),
                    }
                }
            }
        }
    }
}

/// The loop of a relay over another store's outbox (the cart's Redis stream, the catalog's
/// in-document outbox): `round` publishes a batch and says whether more is waiting; then the
/// next round comes at once, otherwise after `poll` (after `5 x poll` when the round failed),
/// until `shutdown`.
pub async fn run_rounds<F, Fut>(
    what: &str,
    poll: Duration,
    shutdown: CancellationToken,
    mut round: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    while !shutdown.is_cancelled() {
        let wait = match round().await {
            Ok(true) => Duration::ZERO,
            Ok(false) => poll,
            Err(e) => {
                tracing::warn!(relay = what, error = %e, "outbox round failed");
                poll * 5
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    Ok(())
}
