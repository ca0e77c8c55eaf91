use std::time::Duration;

use shop_messaging::{
    outbox::{self, Fault, RelayConfig},
    smoke,
};

use crate::helpers::*;

/// Enqueues `per_key` ticks for each of `keys` aggregates, one transaction per tick, interleaved.
async fn enqueue_ticks(db: &TestDb, topic: &str, keys: usize, per_key: u64) -> usize {
    for seq in 1..=per_key {
        for k in 0..keys {
            let mut tx = db.pool.begin().await.expect("begin");
            outbox::enqueue(&mut tx, &smoke::tick(topic, &format!("agg-{k}"), seq))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
        }
    }
    keys * per_key as usize
}

fn fast() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(100),
        delivery_timeout: Duration::from_secs(3),
        error_backoff: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn relay_killed_between_publish_and_mark_loses_nothing_and_inbox_absorbs_the_duplicates() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "crash").await;
    let total = enqueue_ticks(&db, &topic, 10, 20).await;

    // The first relay publishes everything, gets the acks, and dies before marking.
    let crashing = relay(&db, &kafka, fast()).with_fault(Fault::CrashAfterPublish);
    let err = crashing
        .relay_once()
        .await
        .expect_err("the injected crash surfaces");
    assert!(err.to_string().contains("injected crash"), "{err:#}");
    let backlog = outbox::backlog(&db.pool).await.expect("backlog");
    assert_eq!(
        backlog.pending, total as i64,
        "nothing is marked by a relay that died"
    );

    // A healthy relay publishes them all again (once the dead relay's locks are gone: until
    // its rollback completes, SKIP LOCKED makes the healthy one skip those buckets).
    let healthy = relay(&db, &kafka, fast());
    eventually(Duration::from_secs(30), "backlog republished", || {
        let (healthy, pool) = (healthy.clone(), db.pool.clone());
        async move {
            healthy.relay_once().await.expect("round");
            outbox::backlog(&pool).await.expect("backlog").pending == 0
        }
    })
    .await;

    // The broker has every event twice; the consumer applies each once, in order.
    let on_broker = read_all(&kafka, &topic, 2 * total).await;
    assert_eq!(
        on_broker.len(),
        2 * total,
        "both publications reached the broker"
    );
    let (stats, stop, task) = start_inbox(&db, &kafka, &topic, |_| {});
    eventually(Duration::from_secs(60), "all copies consumed", || {
        let s = stats.clone();
        async move {
            s.processed.load(std::sync::atomic::Ordering::Relaxed)
                + s.duplicates.load(std::sync::atomic::Ordering::Relaxed)
                >= 2 * total as u64
        }
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");

    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, total as i64, "every event applied");
    assert_eq!(effects.applied_twice, 0, "no event applied twice");
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        total as u64
    );
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no tick out of order"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn broker_down_rows_accumulate_then_drain_in_per_key_order() {
    let db = TestDb::new().await;
    let mut broker = PrivateBroker::start().await;
    let kafka = broker.settings();
    let topic = topic(&kafka, "outage").await;

    let relay = relay(&db, &kafka, fast());
    let stop = tokio_util::sync::CancellationToken::new();
    let relay_task = tokio::spawn(relay.clone().run(stop.clone()));

    // Some traffic while the broker is up.
    let before = enqueue_ticks(&db, &topic, 8, 5).await;
    eventually(Duration::from_secs(30), "first events relayed", || {
        let pool = db.pool.clone();
        async move { outbox::backlog(&pool).await.expect("backlog").pending == 0 }
    })
    .await;

    // The broker dies; the service keeps committing; rows pile up in the outbox.
    broker.kill();
    for seq in 6..=15 {
        for k in 0..8 {
            let mut tx = db.pool.begin().await.expect("begin");
            outbox::enqueue(&mut tx, &smoke::tick(&topic, &format!("agg-{k}"), seq))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
        }
    }
    let stats = relay.stats();
    eventually(
        Duration::from_secs(30),
        "publishes fail while the broker is down",
        || {
            let stats = stats.clone();
            async move { stats.failed.load(std::sync::atomic::Ordering::Relaxed) > 0 }
        },
    )
    .await;
    let during = outbox::backlog(&db.pool).await.expect("backlog");
    assert_eq!(
        during.pending, 80,
        "rows accumulate while the broker is down"
    );

    // The broker comes back: the backlog drains by itself.
    broker.restart().await;
    eventually(
        Duration::from_secs(60),
        "backlog drained after the outage",
        || {
            let pool = db.pool.clone();
            async move { outbox::backlog(&pool).await.expect("backlog").pending == 0 }
        },
    )
    .await;
    stop.cancel();
    relay_task.await.expect("join").expect("relay ran");

    // Per key, the first copy of each tick arrives in order (retries may add duplicates).
    let total = before + 80;
    let (stats, stop, task) = start_inbox(&db, &kafka, &topic, |_| {});
    eventually(Duration::from_secs(60), "all events applied", || {
        let pool = db.pool.clone();
        async move { smoke::effects(&pool).await.expect("effects").applied >= total as i64 }
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("inbox ran");
    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, total as i64);
    assert_eq!(effects.applied_twice, 0);
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a tick out of order would have been dead-lettered"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_relays_share_the_work_and_keep_per_key_order() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "concurrent").await;
    let total = enqueue_ticks(&db, &topic, 40, 25).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let config = RelayConfig {
        batch_size: 50,
        max_buckets: 4,
        ..fast()
    };
    let relays: Vec<_> = (0..3).map(|_| relay(&db, &kafka, config.clone())).collect();
    let tasks: Vec<_> = relays
        .iter()
        .map(|r| tokio::spawn(r.clone().run(stop.clone())))
        .collect();
    let (stats, inbox_stop, inbox_task) = start_inbox(&db, &kafka, &topic, |_| {});
    eventually(Duration::from_secs(90), "all events applied", || {
        let pool = db.pool.clone();
        async move { smoke::effects(&pool).await.expect("effects").applied >= total as i64 }
    })
    .await;
    stop.cancel();
    inbox_stop.cancel();
    for t in tasks {
        t.await.expect("join").expect("relay ran");
    }
    inbox_task.await.expect("join").expect("inbox ran");

    let published: Vec<u64> = relays
        .iter()
        .map(|r| {
            r.stats()
                .published
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .collect();
    assert_eq!(
        published.iter().sum::<u64>(),
        total as u64,
        "each row published exactly once: {published:?}"
    );
    assert!(
        published.iter().filter(|p| **p > 0).count() >= 2,
        "the relays shared the work: {published:?}"
    );
    let effects = smoke::effects(&db.pool).await.expect("effects");
    assert_eq!(effects.applied, total as i64);
    assert_eq!(
        stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "order kept per key"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_commit_wakes_the_relay_without_waiting_for_the_poll() {
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "notify").await;
    let relay = relay(
        &db,
        &kafka,
        RelayConfig {
            poll_interval: Duration::from_secs(120),
            ..fast()
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(stop.clone()));
    // Let the relay finish its first (empty) round and start listening.
    tokio::time::sleep(Duration::from_millis(500)).await;

    enqueue_ticks(&db, &topic, 1, 1).await;
    eventually(
        Duration::from_secs(10),
        "published well before the 120 s poll",
        || {
            let pool = db.pool.clone();
            async move { outbox::backlog(&pool).await.expect("backlog").pending == 0 }
        },
    )
    .await;
    stop.cancel();
    task.await.expect("join").expect("relay ran");
    db.drop_db().await;
}

#[tokio::test]
async fn rollback_leaves_no_event_and_cleanup_removes_only_old_published_rows() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &smoke::tick("t", "a", 1))
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        outbox::backlog(&db.pool).await.expect("backlog").pending,
        0,
        "rolled back with the state"
    );

    let events: Vec<_> = (1..=3).map(|s| smoke::tick("t", "a", s)).collect();
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue_all(&mut tx, &events)
        .await
        .expect("enqueue_all");
    tx.commit().await.expect("commit");
    let order: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    let expected: Vec<String> = events.iter().map(|e| e.event_id().to_owned()).collect();
    assert_eq!(order, expected, "enqueue_all keeps the slice order");

    sqlx::query("UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = (SELECT min(id) FROM outbox)")
        .execute(&db.pool)
        .await
        .expect("age one row");
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = (SELECT max(id) FROM outbox)")
        .execute(&db.pool)
        .await
        .expect("publish one row now");
    let deleted = outbox::delete_published(&db.pool, Duration::from_secs(3600))
        .await
        .expect("cleanup");
    assert_eq!(deleted, 1, "only the row published two hours ago goes");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        left, 2,
        "the pending row and the freshly published row stay"
    );
    db.drop_db().await;
}

/// The 1 MB address wedge: a row the broker can never take (here 2 MB, past
/// `message.max.bytes`) used to be retried for ever, and every later row of its bucket waited
/// behind it. Now it is parked after `park_after` attempts; the other keys of its bucket flow,
/// in order; the later row of the parked key waits (its order is kept); `redrive` puts it back.
#[tokio::test]
async fn a_row_the_broker_refuses_for_good_is_parked_and_the_rest_of_its_bucket_moves_on() {
    use shop_messaging::envelope::bucket_of;
    let db = TestDb::new().await;
    let kafka = kafka();
    let topic = topic(&kafka, "parking").await;
    let bucket = bucket_of("big", outbox::BUCKETS);
    let neighbours: Vec<String> = (0..)
        .map(|i| format!("n-{i}"))
        .filter(|k| bucket_of(k, outbox::BUCKETS) == bucket)
        .take(3)
        .collect();
    let mut huge = smoke::tick(&topic, "big", 1);
    huge.envelope.payload = vec![7; 2 << 20];
    let mut tx = db.pool.begin().await.expect("begin");
    outbox::enqueue(&mut tx, &huge).await.expect("enqueue");
    outbox::enqueue(&mut tx, &smoke::tick(&topic, "big", 2))
        .await
        .expect("enqueue");
    for seq in 1..=5 {
        for k in &neighbours {
            outbox::enqueue(&mut tx, &smoke::tick(&topic, k, seq))
                .await
                .expect("enqueue");
        }
    }
    tx.commit().await.expect("commit");

    let stop = tokio_util::sync::CancellationToken::new();
    let config = RelayConfig {
        park_after: 3,
        error_backoff: Duration::from_millis(50),
        ..fast()
    };
    let relay = tokio::spawn(relay(&db, &kafka, config).run(stop.clone()));
    // Rows after a failure in one round are sent again the next (at least once), so count
    // distinct (key, sequence) pairs.
    let got = distinct_ticks(&kafka, &topic, 15).await;
    assert_eq!(
        got.len(),
        15,
        "every neighbour's row was published: {got:?}"
    );
    assert!(!got.iter().any(|(k, _)| k == "big"), "{got:?}");
    eventually(Duration::from_secs(10), "the huge row parked", || {
        let pool = db.pool.clone();
        async move { outbox::backlog(&pool).await.expect("backlog").parked == 1 }
    })
    .await;
    let parked = outbox::parked(&db.pool, 10).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].partition_key, "big");
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].waiting_behind, 1, "big:2 waits behind big:1");
    let error = parked[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("too large"), "{error}");

    // An operator fixes the cause (here: the payload) and redrives: big:1 then big:2 follow.
    sqlx::query("UPDATE outbox SET payload = $1 WHERE id = $2")
        .bind(prost::Message::encode_to_vec(
            &smoke::tick(&topic, "big", 1).envelope,
        ))
        .bind(parked[0].id)
        .execute(&db.pool)
        .await
        .expect("fix");
    assert_eq!(outbox::redrive(&db.pool, None).await.expect("redrive"), 1);
    let all = distinct_ticks(&kafka, &topic, 17).await;
    let big: Vec<u64> = all
        .iter()
        .filter(|(k, _)| k == "big")
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(big, vec![1, 2], "the parked key's rows, in order");
    assert_eq!(outbox::backlog(&db.pool).await.expect("backlog").pending, 0);
    stop.cancel();
    relay.await.expect("join").expect("relay ran");
    db.drop_db().await;
}

/// The distinct (key, sequence) ticks on `topic` in the order they first appear (per key: the
/// order of its partition), read until `want` of them or 60 s.
async fn distinct_ticks(
    kafka: &shop_messaging::kafka::KafkaSettings,
    topic: &str,
    want: usize,
) -> Vec<(String, u64)> {
    let mut seen: Vec<(String, u64)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut ask = want;
    while seen.len() < want && std::time::Instant::now() < deadline {
        let messages = read_all(kafka, topic, ask).await;
        // Not enough distinct ones among them: read past them next time.
        ask = messages.len() + 1;
        seen.clear();
        for (k, v) in messages {
            let env =
                <shop_messaging::envelope::EventEnvelope as prost::Message>::decode(v.as_slice())
                    .expect("envelope");
            let tick =
                <shop_proto::events::SmokeTick as prost::Message>::decode(env.payload.as_slice())
                    .expect("tick");
            let tick = (String::from_utf8_lossy(&k).into_owned(), tick.sequence);
            if !seen.contains(&tick) {
                seen.push(tick);
            }
        }
    }
    seen
}
