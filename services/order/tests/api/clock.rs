//! The step's clock against the real PostgreSQL: a deadline that passes while the command is
//! still in the outbox retries nothing; once the command is out, the step times out one wait
//! after its publication. (Before: each passed deadline enqueued another copy of the unsent
//! command, and under load the backlog fed itself.)

use shop_order::{
    domain::{order::NewOrder, saga::Policy},
    orders::OrderStore,
    saga::{Orchestrator, Topics},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{event_sourcing::scratch_store, helpers::request};

/// (attempts, reserve_stock commands in the outbox, deadline - now in ms).
async fn look(pool: &PgPool, id: Uuid) -> (i32, i64, i64) {
    sqlx::query_as(
        "SELECT s.attempts,
                (SELECT count(*) FROM outbox WHERE partition_key = $1::text AND event_type = 'inventory.reserve_stock'),
                (extract(epoch FROM s.deadline - now()) * 1000)::bigint
         FROM saga s WHERE s.saga_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("saga")
}

async fn deadline_passed(pool: &PgPool, id: Uuid) {
    sqlx::query("UPDATE saga SET deadline = now() - interval '1 second' WHERE saga_id = $1")
        .bind(id)
        .execute(pool)
        .await
        .expect("deadline");
}

async fn published(pool: &PgPool, id: Uuid, ago: &str) {
    sqlx::query(&format!(
        "UPDATE outbox SET published_at = now() - interval '{ago}' WHERE partition_key = $1::text AND published_at IS NULL"
    ))
    .bind(id)
    .execute(pool)
    .await
    .expect("mark published");
}

#[tokio::test]
async fn a_step_times_out_one_wait_after_its_command_is_published_not_while_it_is_unsent() {
    let (pool, settings) = scratch_store().await;
    let policy = Policy::default(); // reserve: 30 s, 3 tries
    let saga = Orchestrator {
        topics: Topics::new(&settings.kafka),
        policy,
        store: OrderStore { snapshot_every: 0 },
        publish_progress: false,
    };
    // No relay runs here: the order's first command stays in the outbox.
    let id = Uuid::now_v7();
    let new = NewOrder::parse(&request("clock-1", "mug", 1, 500, "acc", "DE")).expect("order");
    let mut tx = pool.begin().await.expect("begin");
    saga.start(&mut tx, id, &new, false).await.expect("start");
    tx.commit().await.expect("commit");

    // The deadline passes with the command unsent: nothing is retried, the deadline moves on.
    deadline_passed(&pool, id).await;
    assert_eq!(saga.time_out_due(&pool).await.expect("sweep"), 0);
    let (attempts, commands, ahead_ms) = look(&pool, id).await;
    assert_eq!(
        (attempts, commands),
        (1, 1),
        "an unsent command is not sent again"
    );
    assert!(
        ahead_ms > 29_000,
        "the deadline moved one wait on: {ahead_ms} ms"
    );

    // Published 10 s ago: the deadline becomes its publication plus the wait (30-37.5 s).
    published(&pool, id, "10 seconds").await;
    deadline_passed(&pool, id).await;
    assert_eq!(saga.time_out_due(&pool).await.expect("sweep"), 0);
    let (attempts, commands, ahead_ms) = look(&pool, id).await;
    assert_eq!((attempts, commands), (1, 1));
    assert!(
        (19_000..=28_000).contains(&ahead_ms),
        "20-27.5 s left of the wait since publication: {ahead_ms} ms"
    );

    // Published longer ago than any wait: the step times out and is sent again, once.
    sqlx::query("UPDATE outbox SET published_at = now() - interval '10 minutes' WHERE partition_key = $1::text")
        .bind(id)
        .execute(&pool)
        .await
        .expect("long ago");
    deadline_passed(&pool, id).await;
    assert_eq!(saga.time_out_due(&pool).await.expect("sweep"), 1);
    let (attempts, commands, ahead_ms) = look(&pool, id).await;
    assert_eq!((attempts, commands), (2, 2), "one retry, one more command");
    // The second try waits twice the timeout, plus jitter.
    assert!(
        (59_000..=76_000).contains(&ahead_ms),
        "the retry backs off: {ahead_ms} ms"
    );

    // The retry is unsent: a passed deadline again retries nothing.
    deadline_passed(&pool, id).await;
    assert_eq!(saga.time_out_due(&pool).await.expect("sweep"), 0);
    assert_eq!(look(&pool, id).await.0, 2);
    pool.close().await;
}
