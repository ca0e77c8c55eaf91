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
//! writer of this process commits ([`crate::wake`]), a `NOTIFY outbox` (sent at commit by a
//! trigger, for writers outside the process), or the poll interval, whichever is first.
//! Marks commit with `synchronous_commit = off` (`async_marks`): a mark lost in a crash only
//! publishes its rows again, which the consumers' inboxes absorb.
//! Published rows are deleted after `retention` by a background sweep.

use std::time::Duration;

use anyhow::Context;
use prost::Message;
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
    /// Commit the marks without waiting for their WAL flush (a lost mark = a duplicate).
    pub async_marks: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_buckets: 64,
            poll_interval: Duration::from_millis(500),
            delivery_timeout: Duration::from_secs(15),
            error_backoff: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(5),
            park_after: 5,
            async_marks: true,
        }
    }
}

pub use crate::relay::{Fault, RelayStats, RoundOutcome};

/// The relay of a PostgreSQL outbox: the one loop ([`crate::relay`]) over [`PgOutbox`].
pub type Relay = crate::relay::Relay<PgOutbox>;

impl Relay {
    /// A relay of `pool`'s outbox. Any number may run against one database.
    pub fn postgres(
        pool: PgPool,
        kafka: &KafkaSettings,
        config: RelayConfig,
    ) -> anyhow::Result<Self> {
        let loop_config = crate::relay::LoopConfig {
            batch_size: usize::try_from(config.batch_size).unwrap_or(1000),
            poll_interval: config.poll_interval,
            delivery_timeout: config.delivery_timeout,
            error_backoff: config.error_backoff,
            park_after: u32::try_from(config.park_after).unwrap_or(5),
        };
        crate::relay::Relay::new(
            PgOutbox {
                pool,
                config,
                listener: tokio::sync::Mutex::new(None),
                waiter: tokio::sync::Mutex::new(crate::wake::Waiter::new()),
            },
            kafka,
            loop_config,
        )
    }
}

/// The `outbox` table as a relay [`crate::relay::Source`]: a claim is one transaction holding
/// the advisory locks of the buckets it read; settle marks and commits it.
pub struct PgOutbox {
    pool: PgPool,
    config: RelayConfig,
    /// `LISTEN outbox`, connected on the first wait.
    listener: tokio::sync::Mutex<Option<PgListener>>,
    /// Commits of this process's writers.
    waiter: tokio::sync::Mutex<crate::wake::Waiter>,
}

/// `id, bucket, event_id, topic, partition_key, event_type, payload` of a pending row.
type PendingRow = (i64, i16, uuid::Uuid, String, String, String, Vec<u8>);

/// A claimed round: its transaction (holding the buckets) and the rows' ids, in claim order.
pub struct PgClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<(i64, i16)>,
}

impl crate::relay::Source for PgOutbox {
    type Claim = PgClaim;

    fn name(&self) -> &str {
        "postgres"
    }

    async fn claim(
        &self,
        limit: usize,
    ) -> anyhow::Result<Option<(PgClaim, Vec<crate::relay::Message>)>> {
        let mut tx = self.pool.begin().await.context("begin relay round")?;
        if self.config.async_marks {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .context("relay round: synchronous_commit")?;
        }
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
            return Ok(None);
        }
        // A key with a parked row waits behind it (its order is kept).
        let rows: Vec<PendingRow> = sqlx::query_as(
            "SELECT id, bucket, event_id, topic, partition_key, event_type, payload FROM outbox o
             WHERE bucket = ANY($1) AND published_at IS NULL AND parked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.parked_at IS NOT NULL
                               AND p.partition_key = o.partition_key AND p.id < o.id)
             ORDER BY id
             LIMIT $2",
        )
        .bind(&buckets)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .context("read outbox rows")?;
        if rows.is_empty() {
            return Ok(None);
        }
        let ids = rows.iter().map(|r| (r.0, r.1)).collect();
        let messages = rows
            .into_iter()
            .map(
                |(_, bucket, event_id, topic, key, event_type, payload)| crate::relay::Message {
                    topic,
                    key: key.into_bytes(),
                    payload,
                    event_id: Some(event_id.to_string()),
                    event_type: Some(event_type),
                    group: u64::try_from(bucket).unwrap_or(0),
                },
            )
            .collect::<Vec<_>>();
        Ok(Some((PgClaim { tx, rows: ids }, messages)))
    }

    async fn settle(
        &self,
        claim: PgClaim,
        deliveries: Vec<crate::relay::Delivery>,
        park_after: u32,
    ) -> anyhow::Result<crate::relay::Settled> {
        use crate::relay::{Fate, fates};
        let PgClaim { mut tx, rows } = claim;
        // The groups are the buckets.
        let groups = rows.iter().map(|(_, b)| u64::try_from(*b).unwrap_or(0));
        let mut published = Vec::new();
        let mut failures: Vec<(i64, String, bool)> = Vec::new();
        for ((id, _), fate) in rows.iter().zip(fates(groups, &deliveries)) {
            match fate {
                Fate::Published => published.push(*id),
                Fate::Failed { error, permanent } => {
                    failures.push((*id, error.to_owned(), permanent));
                }
                Fate::Held => {}
            }
        }
        sqlx::query(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
        )
        .bind(&published)
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
            .bind(i32::try_from(park_after).unwrap_or(i32::MAX))
            .fetch_one(&mut *tx)
            .await
            .context("record outbox failure")?;
            if parks {
                parked += 1;
                tracing::error!(id, error = %error, "outbox row parked: the broker refuses it for good; `shopctl outbox list` shows it, `shopctl outbox redrive` retries it");
            }
        }
        tx.commit().await.context("commit relay round")?;
        Ok(crate::relay::Settled {
            published: published.len(),
            failed: failures.len(),
            parked,
        })
    }

    fn start(&self, shutdown: &CancellationToken) {
        tokio::spawn(sweep(
            self.pool.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
    }

    /// Until a commit of this process ([`crate::wake`]), a `NOTIFY outbox` (sent by a trigger
    /// at commit, for writers elsewhere) or `poll`, whichever is first.
    async fn wait(&self, poll: Duration, shutdown: &CancellationToken) {
        let mut waiter = self.waiter.lock().await;
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                    Ok(()) => *listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "outbox listen failed, polling"),
                },
                Err(e) => tracing::warn!(error = %e, "outbox listener connect failed, polling"),
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => {
                    if let Err(e) = l.recv().await {
                        // PgListener reconnects on the next recv; until then, poll.
                        tracing::warn!(error = %e, "outbox listener lost its connection");
                        tokio::time::sleep(poll).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = waiter.changed() => {},
            () = notified => {},
            () = tokio::time::sleep(poll) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

/// Deletes published rows past retention and refreshes the backlog gauges, until `shutdown`.
async fn sweep(pool: PgPool, config: RelayConfig, shutdown: CancellationToken) {
    let mut cleanup = tokio::time::interval(config.cleanup_interval);
    let mut gauges = tokio::time::interval(config.metrics_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = cleanup.tick() => {
                match delete_published(&pool, config.retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "outbox cleanup"),
                    Err(e) => tracing::warn!(error = ?e, "outbox cleanup failed"),
                }
            }
            _ = gauges.tick() => {
                match backlog(&pool).await {
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
