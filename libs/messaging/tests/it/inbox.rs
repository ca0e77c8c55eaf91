use std::{sync::atomic::Ordering, time::Duration};

use prost::Message as _;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};
use shop_messaging::{NewEvent, kafka::dead_letter_topic, smoke};
use shop_proto::events::SmokeTick;

use crate::helpers::*;

#[tokio::test]
async fn the_same_message_delivered_three_times_has_one_effect() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "dup").await;
    let event = smoke::tick(&topic, "agg-1", 1);
    let bytes = event.envelope.encode_to_vec();
    for _ in 0..3 {
        produce_raw(&kafka, &topic, "agg-1", &bytes).await;
    }
    let (stats, stop, task) = start_inbox(&db, &kafka, &topic, |_| {});
    eventually(Duration::from_secs(30), "three deliveries consumed", || {
        let s = stats.clone();
        async move { s.processed.load(Ordering::Relaxed) + s.duplicates.load(Ordering::Relaxed) >= 3 }
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");

    assert_eq!(stats.processed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 2);
    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, 1, "one effect for three deliveries");
    db.drop_db().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_messages_after_it_are_still_processed() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "poison").await;
    // One key, so all land on one partition: the poison sits in front of ticks 2 and 3.
    let key = "agg-p";
    let poison = NewEvent::new(
        &topic,
        smoke::POISON_TYPE,
        "smoke",
        key,
        &SmokeTick { sequence: 0 },
    );
    produce_raw(
        &kafka,
        &topic,
        key,
        &smoke::tick(&topic, key, 1).envelope.encode_to_vec(),
    )
    .await;
    produce_raw(&kafka, &topic, key, &poison.envelope.encode_to_vec()).await;
    produce_raw(&kafka, &topic, key, b"\xff\xff not protobuf").await;
    produce_raw(
        &kafka,
        &topic,
        key,
        &smoke::tick(&topic, key, 2).envelope.encode_to_vec(),
    )
    .await;
    produce_raw(
        &kafka,
        &topic,
        key,
        &smoke::tick(&topic, key, 3).envelope.encode_to_vec(),
    )
    .await;

    let (stats, stop, task) = start_inbox(&db, &kafka, &topic, |c| {
        c.max_attempts = 3;
        c.initial_backoff = Duration::from_millis(20);
        c.max_backoff = Duration::from_millis(100);
    });
    eventually(
        Duration::from_secs(30),
        "ticks after the poison applied",
        || {
            let pool = db.pool.clone();
            async move { smoke::effects(&pool).await.expect("effects").applied >= 3 }
        },
    )
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");

    assert_eq!(
        stats.dead_lettered.load(Ordering::Relaxed),
        2,
        "the poison and the garbage"
    );
    assert_eq!(
        stats.retries.load(Ordering::Relaxed),
        2,
        "the poison was tried 3 times"
    );
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM inbox WHERE event_id = $1::uuid")
        .bind(poison.event_id())
        .fetch_one(&db.pool)
        .await
        .expect("inbox row of the poison");
    assert_eq!(
        outcome, "dead_lettered",
        "a redelivery of the poison will be skipped"
    );

    // The dead-letter topic holds both, with the error and the attempts.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set(
            "group.id",
            format!("dlq-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    reader
        .subscribe(&[dead_letter_topic(&topic).as_str()])
        .expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("dead letters arrive")
            .expect("consume");
        let headers = m.headers().expect("dlq headers");
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        seen.push((get("dlq.attempts"), get("dlq.error")));
    }
    assert_eq!(seen[0].0, "3");
    assert!(seen[0].1.contains("poison"), "{:?}", seen[0]);
    assert_eq!(seen[1].0, "1", "garbage is not retried");
    assert!(seen[1].1.contains("undecodable"), "{:?}", seen[1]);
    db.drop_db().await;
}

#[tokio::test]
async fn a_database_error_mid_batch_rewinds_every_partition_in_the_batch() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "rewind").await;
    // The inbox table is gone for a while: every batch fails at its first insert, as it would
    // on a dropped connection. (A rename, because the test role may do anything.)
    sqlx::query("ALTER TABLE inbox RENAME TO inbox_away")
        .execute(&db.pool)
        .await
        .expect("hide the inbox");
    // 8 keys x 5 ticks, over every partition, all fetched before the first batch is applied.
    let (keys, ticks) = (8, 5);
    let producer = kafka.producer(Duration::from_secs(10)).expect("producer");
    for seq in 1..=ticks {
        for k in 0..keys {
            let key = format!("agg-{k}");
            let tick = smoke::tick(&topic, &key, seq).envelope.encode_to_vec();
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&tick),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    }
    let (stats, stop, task) = start_inbox(&db, &kafka, &topic, |c| {
        c.max_backoff = Duration::from_millis(300);
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("ALTER TABLE inbox_away RENAME TO inbox")
        .execute(&db.pool)
        .await
        .expect("the inbox is back");
    let total = (keys * ticks) as i64;
    eventually(Duration::from_secs(30), "every tick applied", || {
        let pool = db.pool.clone();
        async move { smoke::effects(&pool).await.expect("effects").applied >= total }
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");
    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, total, "nothing lost");
    assert_eq!(effects.applied_twice, 0, "nothing twice");
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    db.drop_db().await;
}

/// [`smoke::OrderedTicks`], behind a database connection that dies under the first `kills`
/// attempts (the server ends the backend, as in a restart or a failover).
struct DyingConnection {
    kills: u32,
    calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl shop_messaging::inbox::Handler for DyingConnection {
    async fn handle(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &shop_messaging::EventEnvelope,
    ) -> Result<(), shop_messaging::inbox::HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.kills {
            sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                .execute(&mut *conn)
                .await?;
        }
        smoke::OrderedTicks.handle(conn, event).await
    }
}

#[tokio::test]
async fn a_lost_database_connection_is_retried_until_it_is_back_and_never_dead_lettered() {
    use shop_messaging::inbox::{Inbox, InboxConfig};
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "outage").await;
    let tick = smoke::tick(&topic, "agg-o", 1);
    produce_raw(&kafka, &topic, "agg-o", &tick.envelope.encode_to_vec()).await;
    // Fewer tries than lost connections: a try-counting retry would dead-letter the command.
    let mut config = InboxConfig::new(
        format!("group-{}", uuid::Uuid::new_v4().simple()),
        &[&topic],
    );
    config.max_attempts = 2;
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let handler = DyingConnection {
        kills: 4,
        calls: calls.clone(),
    };
    let inbox = Inbox::new(db.pool.clone(), &kafka, config, handler).expect("inbox");
    let stats = inbox.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(inbox.run(stop.clone()));
    eventually(
        Duration::from_secs(30),
        "the tick applied or dead-lettered",
        || {
            let s = stats.clone();
            async move {
                s.processed.load(Ordering::Relaxed) + s.dead_lettered.load(Ordering::Relaxed) >= 1
            }
        },
    )
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");
    assert_eq!(
        stats.dead_lettered.load(Ordering::Relaxed),
        0,
        "not dead-lettered"
    );
    assert_eq!(stats.processed.load(Ordering::Relaxed), 1);
    assert!(
        calls.load(Ordering::SeqCst) > 4,
        "it outlived every lost connection"
    );
    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, 1);
    db.drop_db().await;
}

/// [`smoke::OrderedTicks`] that wants only the ticks of aggregate `agg-want`.
struct Choosy;

impl shop_messaging::inbox::Handler for Choosy {
    fn wants(&self, event: &shop_messaging::EventEnvelope) -> bool {
        event.aggregate_id == "agg-want"
    }

    async fn handle(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &shop_messaging::EventEnvelope,
    ) -> Result<(), shop_messaging::inbox::HandlerError> {
        smoke::OrderedTicks.handle(conn, event).await
    }
}

#[tokio::test]
async fn a_message_the_handler_does_not_want_costs_no_inbox_row_and_the_ones_after_it_apply() {
    use shop_messaging::inbox::{Inbox, InboxConfig};
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "wants").await;
    for (agg, seq) in [
        ("agg-other", 1),
        ("agg-want", 1),
        ("agg-other", 2),
        ("agg-want", 2),
    ] {
        let tick = smoke::tick(&topic, agg, seq);
        produce_raw(&kafka, &topic, agg, &tick.envelope.encode_to_vec()).await;
    }
    let consumer = format!("group-{}", uuid::Uuid::new_v4().simple());
    let config = InboxConfig::new(consumer.clone(), &[&topic]);
    let inbox = Inbox::new(db.pool.clone(), &kafka, config, Choosy).expect("inbox");
    let stats = inbox.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(inbox.run(stop.clone()));
    eventually(Duration::from_secs(30), "the wanted ticks applied", || {
        let s = stats.clone();
        async move { s.processed.load(Ordering::Relaxed) >= 2 }
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1")
        .bind(&consumer)
        .fetch_one(&db.pool)
        .await
        .expect("inbox rows");
    assert_eq!(rows, 2, "an inbox row for each wanted message only");
    assert_eq!(smoke::effects(&db.pool).await.expect("effects").applied, 2);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    db.drop_db().await;
}
