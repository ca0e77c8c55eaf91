//! Kafka clients with the settings the outbox and inbox rely on.
//!
//! - Producer: idempotent (`enable.idempotence`, `acks=all`): per partition, messages land in
//!   the order they were sent and a retried send never duplicates on the broker.
//! - Consumer: auto-commit on, but of *stored* offsets only (`enable.auto.offset.store=false`):
//!   the inbox stores an offset after the message's transaction commits, so a crash re-delivers
//!   rather than skips.
//! - Topics are created explicitly at start-up with this service's partition count (the native
//!   broker has `auto.create.topics.enable=false`, as production clusters often do).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use futures::future::BoxFuture;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::StreamConsumer,
    error::RDKafkaErrorCode,
    producer::FutureProducer,
};
use serde::{Deserialize, Serialize};

/// A consumer that stops heartbeating for this long leaves its group.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`
    pub brokers: String,
    pub client_id: String,
    /// Partitions for topics this service creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Prepended to every topic name (e.g. `staging.`): several environments or test runs
    /// share one cluster without seeing each other's messages.
    pub topic_prefix: String,
    /// Extra librdkafka properties, applied last (e.g. `security.protocol`).
    pub extra: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The defaults, with `client_id` naming the service.
    pub fn for_client(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            ..Self::default()
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "shop".into(),
            partitions: 4,
            replication_factor: 1,
            topic_prefix: String::new(),
            extra: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    /// The full name of topic `name` (see `topic_prefix`).
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        // librdkafka's own debug contexts (e.g. `cgrp,fetch`), for diagnosing a broker.
        if let Ok(contexts) = std::env::var("SHOP_KAFKA_DEBUG") {
            config.set("debug", contexts);
        }
        config
    }

    fn with_extra(&self, mut config: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra {
            config.set(k, v);
        }
        config
    }

    /// The idempotent producer. `delivery_timeout` bounds how long one send may take,
    /// retries included, before it is reported failed.
    pub fn producer(&self, delivery_timeout: Duration) -> anyhow::Result<FutureProducer> {
        self.producer_config(delivery_timeout)
            .create()
            .context("cannot create Kafka producer")
    }

    /// The idempotent producer's settings, for a caller that adds its own (e.g. a
    /// `transactional.id`).
    pub fn producer_config(&self, delivery_timeout: Duration) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        self.with_extra(config)
    }

    /// A consumer in `group`: reads from the earliest offset when the group has none,
    /// commits only offsets the application stored.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            // Stored offsets are committed every 5 s (librdkafka's default, said here because
            // it bounds redelivery): a crash redelivers at most 5 s of messages, which the inbox
            // (or the idempotent effect) absorbs.
            .set("auto.commit.interval.ms", "5000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            );
        self.with_extra(config)
    }

    pub fn consumer(&self, group: &str) -> anyhow::Result<StreamConsumer> {
        self.consumer_config(group)
            .create()
            .context("cannot create Kafka consumer")
    }

    /// Creates `topics` that do not exist yet (each with this service's partition count).
    pub async fn ensure_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .with_extra(self.base())
            .create()
            .context("cannot create Kafka admin client")?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(new.iter(), &options)
            .await
            .context("create_topics request failed")?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// A readiness probe of the broker (`shop_core::readiness`): a metadata request for `topic`
    /// (one the service uses: a cheap request, unlike the whole cluster's metadata), answered
    /// within `timeout`. One client, made here, serves every round.
    pub fn probe(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<impl Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static>
    {
        let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
            self.with_extra(self.base())
                .create()
                .context("cannot create Kafka admin client")?,
        );
        let topic = topic.to_owned();
        Ok(move || -> BoxFuture<'static, anyhow::Result<()>> {
            let (admin, topic) = (admin.clone(), topic.clone());
            Box::pin(async move {
                // librdkafka's call blocks; it gives up after `timeout` by itself.
                tokio::task::spawn_blocking(move || {
                    admin.inner().fetch_metadata(Some(&topic), timeout)
                })
                .await?
                .context("no metadata from the broker")?;
                Ok(())
            })
        })
    }

    /// Deletes `topics` (demo, test and benchmark scratch topics: scratch runs clean up after
    /// themselves, so a long-lived broker does not accumulate thousands of partitions).
    pub async fn delete_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .with_extra(self.base())
            .create()
            .context("cannot create Kafka admin client")?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin
            .delete_topics(topics, &options)
            .await
            .context("delete_topics request failed")?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => anyhow::bail!("cannot delete topic {topic}: {code}"),
            }
        }
        Ok(())
    }
}

impl KafkaSettings {
    /// Deletes every topic whose name starts with one of `prefixes` (the scratch topics tests
    /// and benchmarks leave on a long-lived broker: past about 20 000 partitions the native
    /// broker runs out of file descriptors). Returns how many were deleted.
    pub async fn delete_topics_with_prefix(&self, prefixes: &[String]) -> anyhow::Result<usize> {
        let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
            self.with_extra(self.base())
                .create()
                .context("cannot create Kafka admin client")?,
        );
        // librdkafka's call blocks.
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, Duration::from_secs(30))
        })
        .await?
        .context("no metadata from the broker")?;
        let names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| {
                prefixes
                    .iter()
                    .any(|p| !p.is_empty() && n.starts_with(p.as_str()))
            })
            .collect();
        for chunk in names.chunks(200) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.delete_topics(&chunk).await?;
        }
        Ok(names.len())
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
