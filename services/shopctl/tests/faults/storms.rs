//! The faults that are not a kill: a PostgreSQL restart, every message delivered again, poison
//! on every topic.

use std::{collections::BTreeMap, time::Duration};

use prost::Message as _;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::FutureRecord,
};
use shop_proto::events::EventEnvelope;

use crate::platform::{PG_GROUPS, PG_URL, Platform};

/// PostgreSQL restarted with a fast shutdown (every connection of every service dropped).
/// False when it could not be: a server stack.sh did not start (a developer's own) is left alone.
pub async fn restart_postgres() -> bool {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let status = tokio::process::Command::new(format!("{repo}/infra/local/stack.sh"))
        .args(["restart", "postgres"])
        .status()
        .await
        .expect("run stack.sh restart postgres");
    status.success()
}

/// Every topic of this platform (its prefix), with its partition count.
fn topics(p: &Platform) -> Vec<(String, i32)> {
    let kafka = p.kafka();
    let client: BaseConsumer = kafka
        .consumer_config("fault-metadata")
        .create()
        .expect("client");
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&kafka.topic_prefix))
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect()
}

/// The duplicate storm: stops the PostgreSQL consumers, sets each one's group back to the
/// first offset of every topic, and starts them again, so every message is delivered again.
pub async fn replay_everything(p: &mut Platform) {
    for (service, _) in PG_GROUPS {
        p.terminate(service).await;
    }
    let kafka = p.kafka();
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in topics(p) {
        for partition in 0..partitions {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(0))
                .expect("partition");
        }
    }
    for group in PG_GROUPS.iter().flat_map(|(_, groups)| groups.iter()) {
        let group = format!("{}{group}", kafka.topic_prefix);
        let consumer: BaseConsumer = kafka.consumer_config(&group).create().expect("consumer");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // The group must be empty (its members have left) before offsets can be set.
        while let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            assert!(std::time::Instant::now() < deadline, "reset {group}: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for (service, _) in PG_GROUPS {
        p.restart(service, &[]).await;
    }
    // Let them read everything again before the check looks.
    tokio::time::sleep(Duration::from_secs(8)).await;
}

/// Poison on every topic: bytes that are no envelope, an envelope of a type nobody knows, and
/// an envelope of a known type whose payload does not decode.
pub async fn poison(p: &Platform) {
    let kafka = p.kafka();
    let producer = kafka.producer(Duration::from_secs(10)).expect("producer");
    for (topic, _) in topics(p) {
        if topic.ends_with(".dlq") {
            continue;
        }
        let envelope = |event_type: &str, payload: Vec<u8>| EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            aggregate_id: "poison".into(),
            payload,
            ..Default::default()
        };
        let bodies = [
            b"\xff\x00 not a protobuf envelope".to_vec(),
            envelope("shop.unknown.v9", vec![1, 2, 3]).encode_to_vec(),
            envelope(known_type(&topic), vec![0xff; 7]).encode_to_vec(),
        ];
        for body in bodies {
            producer
                .send(
                    FutureRecord::to(&topic).key("poison").payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce poison");
        }
    }
}

/// A type the topic's consumer knows (so only the payload is wrong).
fn known_type(topic: &str) -> &'static str {
    use shop_messaging::topics::types;
    match topic.rsplit('.').nth(1) {
        Some("inventory") if topic.ends_with("commands") => types::RESERVE_STOCK,
        Some("payment") if topic.ends_with("commands") => types::CHARGE_PAYMENT,
        Some("shipping") if topic.ends_with("commands") => types::CREATE_SHIPMENT,
        _ => types::ORDER_COMPLETED,
    }
}

/// Dead letters recorded by each PostgreSQL consumer.
pub async fn dead_letters(p: &Platform) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (service, _) in PG_GROUPS {
        let url = PG_URL.replace("/postgres", &format!("/{}_{service}", p.run));
        let pool = sqlx::PgPool::connect(&url).await.expect("database");
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM inbox WHERE outcome = 'dead_lettered'")
                .fetch_one(&pool)
                .await
                .expect("dead letters");
        out.insert((*service).to_owned(), n);
        pool.close().await;
    }
    out
}
