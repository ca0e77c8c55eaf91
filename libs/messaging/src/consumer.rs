//! At-least-once consumption for stores without transactions shared with an inbox table (Redis,
//! MongoDB, a search index): the handler's effect must be idempotent on its own (a
//! compare-and-set, a versioned upsert, a Lua script that records the event id with the effect).
//! The offset is stored only after the effect succeeded, so a crash redelivers, never skips.
//!
//! A transient error is retried with exponential backoff (the partition waits: per-key order
//! matters more than throughput here); a message that does not decode, or a permanent error, is
//! logged, counted and skipped.

use std::{future::Future, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
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
    let consumer: Arc<StreamConsumer> = Arc::new(kafka.consumer(group)?);
    consumer.subscribe(topics)?;
    tracing::info!(group, ?topics, "consumer started");
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(group, error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let outcome = match EventEnvelope::decode(msg.payload().unwrap_or_default()) {
            Err(e) => Err(HandlerError::Permanent(e.into())),
            Ok(event) => {
                let attempt = || handle(event.clone());
                let retried = attempt
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
                    });
                retried.await
            }
        };
        match outcome {
            Ok(()) => metrics::counter!("consumer_processed_total", "group" => group.to_owned())
                .increment(1),
            Err(HandlerError::Transient(e) | HandlerError::Unavailable(e)) => {
                // Only when shutting down: leave the offset, the message comes again.
                tracing::info!(group, error = %e, "stopping with a message unfinished");
                break;
            }
            Err(HandlerError::Permanent(e)) => {
                tracing::error!(group, topic = msg.topic(), offset = msg.offset(), error = %e, "message skipped");
                metrics::counter!("consumer_skipped_total", "group" => group.to_owned())
                    .increment(1);
            }
        }
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            tracing::warn!(group, error = %e, "cannot store offset");
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(group, error = %e, "final offset commit failed");
    }
    tracing::info!(group, "consumer stopped");
    Ok(())
}
