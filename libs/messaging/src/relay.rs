//! The one relay loop, for every store's outbox.
//!
//! An outbox lives where its service's state lives: PostgreSQL rows ([`crate::outbox`]), a
//! Redis stream (the cart), an array in a MongoDB document (the catalog). What differs is how
//! pending messages are claimed and how the result is recorded; that is a [`Source`]. What is
//! the same is here, once:
//!
//! 1. **claim** ([`Source::claim`]): take the lease or locks that make this relay the only
//!    publisher of those messages until it settles them, and read them oldest first;
//! 2. **publish** in claim order with the idempotent producer, then wait for every ack. Each
//!    message has an ordering `group` (a key, a bucket, a document); a message refused before
//!    it is even queued (too large for the producer, unknown topic) stops its group for the
//!    round, so nothing of that group reaches the broker ahead of it;
//! 3. **settle** ([`Source::settle`]): mark as published, per group, the messages acked before
//!    the group's first failure; record the failure; a failure the broker will repeat for ever
//!    ([`crate::outbox::permanent`]) **parks** the message after `park_after` attempts, so the
//!    rest moves on (the source keeps the later messages of its key behind it).
//!
//! A crash anywhere before settle leaves every message pending: published again, absorbed by
//! the consumers' inboxes by event id, never lost. The loop also replaces a producer librdkafka
//! declared fatally failed, backs off after a failed round, exports `relay_*` metrics labelled
//! by source, and carries the fault hooks of the fault matrix
//! (`SHOP_FAULT_RELAY_EXIT_AFTER_PUBLISH`).

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use tokio_util::sync::CancellationToken;

use crate::{kafka::KafkaSettings, outbox::permanent};

/// One pending message, as claimed from a store.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// Sent as the `event_id` and `event_type` headers when present.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// Messages of one group are published in claim order; a failure stops the group.
    pub group: u64,
}

/// What became of one claimed message this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Acked,
    /// Refused or not acknowledged; `permanent` if retrying cannot help.
    Failed {
        error: String,
        permanent: bool,
    },
    /// Not sent: an earlier message of its group failed.
    NotSent,
}

/// What a source recorded when it settled a round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub published: usize,
    pub failed: usize,
    pub parked: usize,
}

/// Where a relay's messages come from and where their outcome goes. See the module docs.
pub trait Source: Send + Sync + 'static {
    /// What a claim holds until it is settled (a transaction, a lease, the ids read).
    type Claim: Send;

    /// Names the source in logs and metrics (`order`, `cart`, `catalog`).
    fn name(&self) -> &str;

    /// Up to `limit` pending messages, oldest first, with whatever makes this relay their only
    /// publisher until [`Source::settle`]; `None` when there is nothing to do or another relay
    /// holds them.
    fn claim(
        &self,
        limit: usize,
    ) -> impl Future<Output = anyhow::Result<Option<(Self::Claim, Vec<Message>)>>> + Send;

    /// Records `deliveries` (one per claimed message, same order): published ones marked,
    /// per group only those before the group's first failure; failures recorded, permanent ones
    /// parked once they have failed `park_after` times. Releases the claim.
    fn settle(
        &self,
        claim: Self::Claim,
        deliveries: Vec<Delivery>,
        park_after: u32,
    ) -> impl Future<Output = anyhow::Result<Settled>> + Send;

    /// Starts what runs beside the loop until `shutdown` (PostgreSQL: the cleanup and backlog
    /// gauges). Nothing by default.
    fn start(&self, shutdown: &CancellationToken) {
        let _ = shutdown;
    }

    /// Waits until there may be work: `poll` by default (PostgreSQL wakes on NOTIFY).
    fn wait(
        &self,
        poll: Duration,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = tokio::time::sleep(poll) => {},
                () = shutdown.cancelled() => {},
            }
        }
    }
}

/// What settling does with one claimed message, by the one rule every source follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate<'a> {
    /// Acked, and every earlier message of its group too: mark it published.
    Published,
    /// The first failure of its group: record it (and park it if `permanent` and due).
    Failed { error: &'a str, permanent: bool },
    /// After its group's first failure (or not sent): leave it pending, untouched.
    Held,
}

/// The fate of each delivery, given each message's ordering group (same order as claimed):
/// per group the acked prefix is published and the first failure recorded.
pub fn fates<'a>(
    groups: impl IntoIterator<Item = u64>,
    deliveries: &'a [Delivery],
) -> Vec<Fate<'a>> {
    let mut stopped: HashSet<u64> = HashSet::new();
    groups
        .into_iter()
        .zip(deliveries)
        .map(|(group, d)| {
            if stopped.contains(&group) {
                return Fate::Held;
            }
            match d {
                Delivery::Acked => Fate::Published,
                Delivery::Failed { error, permanent } => {
                    stopped.insert(group);
                    Fate::Failed {
                        error,
                        permanent: *permanent,
                    }
                }
                Delivery::NotSent => {
                    stopped.insert(group);
                    Fate::Held
                }
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Most messages claimed in one round.
    pub batch_size: usize,
    /// Wake-up when nothing signals work.
    pub poll_interval: Duration,
    /// How long one publish may take, broker retries included.
    pub delivery_timeout: Duration,
    /// Pause after a failed round.
    pub error_backoff: Duration,
    /// Attempts after which a message failing with a permanent error is parked.
    pub park_after: u32,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(500),
            delivery_timeout: Duration::from_secs(15),
            error_backoff: Duration::from_millis(500),
            park_after: 5,
        }
    }
}

/// Test-only failure injection: what a crash at a chosen point would leave behind.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Publish and receive the acks, then drop the claim unsettled, as a `kill -9` would.
    CrashAfterPublish,
    /// Publish and receive the acks, then end the process before settling (the fault matrix
    /// sets it with `SHOP_FAULT_RELAY_EXIT_AFTER_PUBLISH=1` and restarts the service).
    ExitAfterPublish,
}

/// Counters of one relay, for tests and the demo (Prometheus gets the same figures).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub failed: AtomicU64,
    pub parked: AtomicU64,
    pub rounds: AtomicU64,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Messages claimed.
    pub claimed: usize,
    pub published: usize,
    pub failed: usize,
    /// Messages set aside this round.
    pub parked: usize,
}

/// Publishes a [`Source`]'s messages. Any number may run against one store: the source's claim
/// decides who publishes what.
pub struct Relay<S> {
    source: Arc<S>,
    kafka: KafkaSettings,
    producer: Arc<Mutex<FutureProducer>>,
    config: LoopConfig,
    stats: Arc<RelayStats>,
    fault: Fault,
}

impl<S> Clone for Relay<S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            kafka: self.kafka.clone(),
            producer: self.producer.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            fault: self.fault,
        }
    }
}

impl<S: Source> Relay<S> {
    pub fn new(source: S, kafka: &KafkaSettings, config: LoopConfig) -> anyhow::Result<Self> {
        let producer = kafka.producer(config.delivery_timeout)?;
        Ok(Self {
            source: Arc::new(source),
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

    pub fn source(&self) -> &S {
        &self.source
    }

    #[doc(hidden)]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces a producer that librdkafka declared fatally failed (an idempotence sequence it
    /// cannot recover, a fenced producer id): such a producer fails every later send. Ordinary
    /// failures (broker down, delivery timeout) need no new producer: librdkafka bumps the
    /// idempotent epoch itself (KIP-360) and the failed messages go again, in order.
    fn renew_producer_if_fatal(&self) -> anyhow::Result<()> {
        let producer = self.producer();
        let Some((code, reason)) = producer.client().fatal_error() else {
            return Ok(());
        };
        tracing::warn!(relay = self.source.name(), ?code, %reason, "kafka producer failed fatally, replacing it");
        metrics::counter!("outbox_producer_renewals_total", "relay" => self.source.name().to_owned())
            .increment(1);
        let fresh = self.kafka.producer(self.config.delivery_timeout)?;
        *self.producer.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// One claim -> publish -> settle round.
    pub async fn relay_once(&self) -> anyhow::Result<RoundOutcome> {
        let started = Instant::now();
        let Some((claim, messages)) = self.source.claim(self.config.batch_size).await? else {
            return Ok(RoundOutcome::default());
        };
        let deliveries = self.publish(&messages).await;
        let acked = deliveries.iter().filter(|d| **d == Delivery::Acked).count();
        match self.fault {
            Fault::ExitAfterPublish if acked > 0 => {
                tracing::error!(acked, "fault injection: exiting between publish and mark");
                std::process::exit(137);
            }
            Fault::CrashAfterPublish => {
                // Dropping the claim releases it unsettled, as a dead process's would be.
                drop(claim);
                anyhow::bail!("injected crash after publish ({acked} acked, none marked)");
            }
            _ => {}
        }
        let first_error = deliveries.iter().find_map(|d| match d {
            Delivery::Failed { error, .. } => Some(error.clone()),
            _ => None,
        });
        let settled = self
            .source
            .settle(claim, deliveries, self.config.park_after)
            .await?;
        let outcome = RoundOutcome {
            claimed: messages.len(),
            published: settled.published,
            failed: settled.failed,
            parked: settled.parked,
        };
        let name = self.source.name().to_owned();
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .published
            .fetch_add(outcome.published as u64, Ordering::Relaxed);
        self.stats
            .failed
            .fetch_add(outcome.failed as u64, Ordering::Relaxed);
        self.stats
            .parked
            .fetch_add(outcome.parked as u64, Ordering::Relaxed);
        metrics::counter!("outbox_published_total", "relay" => name.clone())
            .increment(outcome.published as u64);
        metrics::counter!("outbox_publish_failures_total", "relay" => name.clone())
            .increment(outcome.failed as u64);
        metrics::counter!("outbox_parked_total", "relay" => name.clone())
            .increment(outcome.parked as u64);
        metrics::histogram!("outbox_round_seconds", "relay" => name)
            .record(started.elapsed().as_secs_f64());
        if let Some(error) = first_error {
            tracing::warn!(relay = self.source.name(), failed = outcome.failed, parked = outcome.parked, %error, "outbox publish failed, will retry");
            self.renew_producer_if_fatal()?;
        }
        Ok(outcome)
    }

    /// Queues every message with the producer in order, then waits for all acks. The
    /// idempotent producer keeps the queue order per partition.
    async fn publish(&self, messages: &[Message]) -> Vec<Delivery> {
        let producer = self.producer();
        let mut pending = Vec::with_capacity(messages.len());
        let mut refused: HashSet<u64> = HashSet::new();
        for m in messages {
            if refused.contains(&m.group) {
                pending.push(Err(None));
                continue;
            }
            let mut headers = OwnedHeaders::new();
            if let Some(id) = &m.event_id {
                headers = headers.insert(Header {
                    key: "event_id",
                    value: Some(id.as_str()),
                });
            }
            if let Some(t) = &m.event_type {
                headers = headers.insert(Header {
                    key: "event_type",
                    value: Some(t.as_str()),
                });
            }
            let mut record = FutureRecord::to(&m.topic)
                .key(m.key.as_slice())
                .payload(m.payload.as_slice())
                .headers(headers);
            let queued = loop {
                match producer.send_result(record) {
                    Ok(delivery) => break Ok(delivery),
                    // The local queue is full: let it drain, then queue the same record again,
                    // so the order is kept.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => break Err(Some(e)),
                }
            };
            if queued.is_err() {
                refused.insert(m.group);
            }
            pending.push(queued);
        }
        let waits = pending.into_iter().map(|p| async move {
            let failed = |e: KafkaError| Delivery::Failed {
                permanent: permanent(&e),
                error: e.to_string(),
            };
            match p {
                Ok(fut) => match fut.await {
                    Ok(Ok(_)) => Delivery::Acked,
                    Ok(Err((e, _))) => failed(e),
                    Err(_cancelled) => failed(KafkaError::Canceled),
                },
                Err(Some(e)) => failed(e),
                Err(None) => Delivery::NotSent,
            }
        });
        join_all(waits).await
    }

    /// Runs rounds until `shutdown`: straight on while rounds come back full, otherwise it
    /// waits for work ([`Source::wait`]); after a failed round, `error_backoff`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(relay = self.source.name(), "outbox relay started");
        self.source.start(&shutdown);
        while !shutdown.is_cancelled() {
            match self.relay_once().await {
                Ok(o) if o.claimed >= self.config.batch_size && o.failed == 0 => continue,
                Ok(o) if o.failed > 0 => pause(self.config.error_backoff, &shutdown).await,
                Ok(_) => {
                    self.source.wait(self.config.poll_interval, &shutdown).await;
                }
                Err(e) => {
                    tracing::error!(relay = self.source.name(), error = ?e, "outbox relay round failed");
                    pause(self.config.error_backoff, &shutdown).await;
                }
            }
        }
        tracing::info!(relay = self.source.name(), "outbox relay stopped");
        Ok(())
    }
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {},
        () = shutdown.cancelled() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: u64) -> Message {
        Message {
            topic: "t".into(),
            key: vec![],
            payload: vec![],
            event_id: None,
            event_type: None,
            group,
        }
    }

    #[test]
    fn only_the_acked_prefix_of_each_group_counts_as_published() {
        let messages = [m(1), m(2), m(1), m(2), m(1)];
        let failed = Delivery::Failed {
            error: "x".into(),
            permanent: false,
        };
        let deliveries = [
            Delivery::Acked,
            failed,
            Delivery::Acked,
            Delivery::Acked,
            Delivery::NotSent,
        ];
        let published: Vec<bool> = fates(messages.iter().map(|m| m.group), &deliveries)
            .into_iter()
            .map(|f| f == Fate::Published)
            .collect();
        assert_eq!(published, [true, false, true, false, false]);
    }
}
