//! At-least-once consumption for stores without transactions shared with an inbox table (Redis,
//! MongoDB, a search index): the handler's effect must be idempotent on its own (a
//! compare-and-set, a versioned upsert, a Lua script that records the event id with the effect).
//! The offset is stored only after the effect succeeded, so a crash redelivers, never skips.
//!
//! A transient error is retried with exponential backoff (the partition waits: per-key order
//! matters more than throughput here); a message that does not decode, or a permanent error, is
//! logged, counted and skipped. [`run_batched`] hands over what is already fetched in one call
//! (up to a bound), for handlers that coalesce or bulk-write; [`run`] is the same loop one event
//! at a time.

use std::{future::Future, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
};
use tokio_util::sync::CancellationToken;

use crate::{EventEnvelope, inbox::HandlerError, kafka::KafkaSettings};

/// Consumes `topics` as consumer group `group` until `shutdown`, calling `handle` for each event.
pub async fn run<F, Fut>(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[&str],
    shutdown: CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(EventEnvelope) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let one = |events: Vec<EventEnvelope>| {
        let first = events.into_iter().next();
        let done = first.map(&handle);
        async move {
            match done {
                Some(f) => f.await,
                None => Ok(()),
            }
        }
    };
    run_batched(kafka, group, topics, 1, shutdown, one).await
}

/// As [`run`], for a handler that does better with several events at once (coalescing updates
/// of one key, one bulk request): up to `max_batch` events already fetched are handed over
/// together, in partition order; the loop never waits to fill a batch. The effects must be
/// idempotent as a whole: a transient error retries the whole batch, and a permanent one
/// replays it one event at a time so that only the failing event is skipped. Offsets are
/// stored once the batch is applied.
pub async fn run_batched<F, Fut>(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[&str],
    max_batch: usize,
    shutdown: CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(Vec<EventEnvelope>) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let consumer: Arc<StreamConsumer> = Arc::new(kafka.consumer(group)?);
    consumer.subscribe(topics)?;
    tracing::info!(group, ?topics, max_batch, "consumer started");
    let skipped = |what: &str, e: &anyhow::Error| {
        tracing::error!(group, what, error = %e, "message skipped");
        metrics::counter!("consumer_skipped_total", "group" => group.to_owned()).increment(1);
    };
    'consume: loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let mut msgs = match first {
            Ok(m) => vec![m],
            Err(e) => {
                tracing::warn!(group, error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while msgs.len() < max_batch.max(1) {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => msgs.push(m),
                _ => break,
            }
        }
        let mut events = Vec::with_capacity(msgs.len());
        for m in &msgs {
            match EventEnvelope::decode(m.payload().unwrap_or_default()) {
                Ok(e) => events.push(e),
                Err(e) => skipped(&format!("{}@{}", m.topic(), m.offset()), &e.into()),
            }
        }
        let n = events.len();
        match applied(&handle, events.clone(), group, &shutdown).await {
            Ok(()) => metrics::counter!("consumer_processed_total", "group" => group.to_owned())
                .increment(n as u64),
            Err(HandlerError::Permanent(_)) if n > 1 => {
                for e in events {
                    let id = e.event_id.clone();
                    match applied(&handle, vec![e], group, &shutdown).await {
                        Ok(()) => {}
                        Err(HandlerError::Permanent(e)) => skipped(&id, &e),
                        Err(HandlerError::Transient(e) | HandlerError::Unavailable(e)) => {
                            tracing::info!(group, error = %e, "stopping with a message unfinished");
                            break 'consume;
                        }
                    }
                }
            }
            Err(HandlerError::Permanent(e)) => skipped("event", &e),
            Err(HandlerError::Transient(e) | HandlerError::Unavailable(e)) => {
                // Only when shutting down: leave the offsets, the messages come again.
                tracing::info!(group, error = %e, "stopping with a message unfinished");
                break;
            }
        }
        for m in &msgs {
            if let Err(e) = consumer.store_offset_from_message(m) {
                tracing::warn!(group, error = %e, "cannot store offset");
            }
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(group, error = %e, "final offset commit failed");
    }
    tracing::info!(group, "consumer stopped");
    Ok(())
}

/// `handle(events)`, retried with backoff while it fails transiently (until shutdown).
async fn applied<F, Fut>(
    handle: &F,
    events: Vec<EventEnvelope>,
    group: &str,
    shutdown: &CancellationToken,
) -> Result<(), HandlerError>
where
    F: Fn(Vec<EventEnvelope>) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let attempt = || handle(events.clone());
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .when(|e| {
            matches!(e, HandlerError::Transient(_) | HandlerError::Unavailable(_))
                && !shutdown.is_cancelled()
        })
        .notify(|e, after| {
            tracing::warn!(group, error = %e, ?after, "handler failed, retrying");
        })
        .await
}
