//! The cart's outbox relay: entries of the `outbox:cart` stream (written by the same Lua script
//! as the change they describe) go to Kafka oldest first, and are deleted from the stream only
//! after the broker acknowledged them. A crash in between publishes them again (duplicates, which
//! consumers absorb by event id), never loses them. One relay at a time holds a lease
//! (`SET NX PX`), so several cart instances do not publish the same entries twice over.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::{AsyncCommands, aio::ConnectionManager, streams::StreamRangeReply};
use tokio_util::sync::CancellationToken;

use crate::store::OUTBOX_STREAM;

const LEASE_KEY: &str = "outbox:cart:lease";
const BATCH: usize = 200;

pub struct Relay {
    pub redis: ConnectionManager,
    pub producer: FutureProducer,
    pub instance: String,
    pub poll: Duration,
}

impl Relay {
    /// One round: publish up to a batch, delete what was acknowledged. Returns how many.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut conn = self.redis.clone();
        // Hold (or take) the lease for a few polls.
        let lease_ms = (self.poll.as_millis() as u64 * 10).max(2_000);
        let holder: Option<String> = conn.get(LEASE_KEY).await?;
        if holder.as_deref() == Some(self.instance.as_str()) {
            let _: () = conn.pexpire(LEASE_KEY, lease_ms as i64).await?;
        } else {
            let took: bool = redis::cmd("SET")
                .arg(LEASE_KEY)
                .arg(&self.instance)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async::<Option<String>>(&mut conn)
                .await?
                .is_some();
            if !took {
                return Ok(0);
            }
        }
        let reply: StreamRangeReply = conn.xrange_count(OUTBOX_STREAM, "-", "+", BATCH).await?;
        if reply.ids.is_empty() {
            return Ok(0);
        }
        // Enqueue everything in stream order (the idempotent producer keeps that order), then
        // delete the prefix that was acknowledged, stopping at the first failure.
        let mut deliveries = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            let field = |name: &str| -> Option<Vec<u8>> {
                entry
                    .map
                    .get(name)
                    .and_then(|v| redis::from_redis_value::<Vec<u8>>(v.clone()).ok())
            };
            let (Some(topic), Some(key), Some(payload)) =
                (field("topic"), field("key"), field("payload"))
            else {
                tracing::error!(id = %entry.id, "malformed outbox entry dropped");
                deliveries.push(None);
                continue;
            };
            let topic = String::from_utf8_lossy(&topic).into_owned();
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(Some(delivery)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "cart outbox enqueue failed, will retry");
                    break;
                }
            }
        }
        let mut done = Vec::new();
        for (entry, delivery) in reply.ids.iter().zip(deliveries) {
            match delivery {
                None => done.push(entry.id.clone()),
                Some(d) => match d.await {
                    Ok(Ok(_)) => done.push(entry.id.clone()),
                    Ok(Err((e, _))) => {
                        tracing::warn!(error = %e, "cart outbox publish failed, will retry");
                        break;
                    }
                    Err(_) => break,
                },
            }
        }
        if !done.is_empty() {
            let _: i64 = conn.xdel(OUTBOX_STREAM, &done).await?;
            metrics::counter!("outbox_published_total").increment(done.len() as u64);
        }
        Ok(done.len())
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        shop_messaging::outbox::run_rounds("cart", self.poll, shutdown, || async {
            Ok(self.relay_once().await? >= BATCH)
        })
        .await
    }
}
