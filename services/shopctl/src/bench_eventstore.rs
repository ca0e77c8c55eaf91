//! `bench event-store`: what event sourcing costs on reads, and how fast the projection runs,
//! beside the raw PostgreSQL doing the same I/O on the same server in the same run.
//!
//! - Aggregate load time against stream length: for each length, streams of that many events are
//!   written; then each is loaded (a) as raw rows (`SELECT` of the stream, nothing else: the
//!   floor), (b) replayed from event 1 (decode + upcast + fold), (c) from its newest snapshot
//!   plus the tail.
//! - Projection throughput: a backlog of order events projected into fresh read models (both
//!   models, checkpoint per batch), beside raw single-row `INSERT`s in the same batch size.

use std::time::Instant;

use serde::Serialize;
use shop_order::{
    domain::{
        saga::{SagaEvent, Step},
        stream::{Line, Order, OrderEvent, Placed, ShipTo},
    },
    eventstore::{self, Until},
    orders::{Meta, OrderStore},
    projection,
};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Serialize)]
struct LoadRow {
    stream_length: u64,
    streams: usize,
    raw_select_ms: f64,
    replay_ms: f64,
    snapshot_ms: f64,
    replay_vs_raw: f64,
    snapshot_vs_raw: f64,
    snapshot_speedup: f64,
}

#[derive(Debug, Serialize)]
struct ProjectionRow {
    events: u64,
    raw_insert_per_sec: f64,
    projection_per_sec: f64,
    projection_vs_raw: f64,
}

fn placed(i: usize) -> Placed {
    Placed {
        tenant_id: "bench".into(),
        customer_id: format!("c{}", i % 100),
        items: vec![Line {
            sku: "sku".into(),
            quantity: 1,
            unit_price_minor: 999,
        }],
        currency: "EUR".into(),
        total_minor: 999,
        shipping_address: ShipTo {
            country: "DE".into(),
            ..ShipTo::default()
        },
        payment_account_id: "acc".into(),
        choreographed: false,
    }
}

/// A valid stream of `length` events: placed, operator retries, then the first steps.
fn stream_of(length: u64, i: usize) -> Vec<OrderEvent> {
    let mut order = Order::new(Uuid::nil());
    let mut events = vec![OrderEvent::Placed(placed(i))];
    order.apply(&events[0], 1, chrono::Utc::now());
    while (events.len() as u64) < length {
        let fact = SagaEvent::Retried {
            attempt: order.saga.attempts + 1,
            cause: "retried by an operator".into(),
        };
        for e in order.events_for(vec![fact]) {
            let v = order.version + 1;
            order.apply(&e, v, chrono::Utc::now());
            events.push(e);
        }
    }
    events
}

fn meta() -> Meta {
    Meta {
        tenant_id: "bench".into(),
        correlation_id: "bench".into(),
        causation_id: None,
    }
}

async fn write_streams(pool: &PgPool, length: u64, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let store = OrderStore { snapshot_every: 0 };
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = Uuid::now_v7();
        let mut tx = pool.begin().await?;
        let mut order = Order::new(id);
        for chunk in stream_of(length, i).chunks(500) {
            store.append(&mut tx, &mut order, chunk, &meta()).await?;
        }
        tx.commit().await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn load_times(
    pool: &PgPool,
    length: u64,
    streams: usize,
    snapshot_every: u64,
) -> anyhow::Result<LoadRow> {
    let ids = write_streams(pool, length, streams).await?;
    let store = OrderStore { snapshot_every };
    let mut conn = pool.acquire().await?;
    // Snapshots where the store would have taken them: at the last multiple of N.
    for id in &ids {
        let at = (length / snapshot_every) * snapshot_every;
        if at == 0 {
            continue;
        }
        let o = store
            .load_replayed(&mut conn, *id, Until::Version(at))
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream {id} missing"))?;
        eventstore::save_snapshot(
            &mut conn,
            *id,
            at,
            shop_order::domain::stream::SNAPSHOT_SCHEMA,
            &serde_json::to_value(&o)?,
        )
        .await?;
    }
    let per_load = |t: Instant| t.elapsed().as_secs_f64() * 1000.0 / ids.len() as f64;
    // Warm the cache once, then measure each way over the same streams.
    for id in &ids {
        eventstore::read(&mut conn, *id, 0, Until::End).await?;
    }
    let t = Instant::now();
    for id in &ids {
        let rows = eventstore::read(&mut conn, *id, 0, Until::End).await?;
        anyhow::ensure!(rows.len() as u64 == length, "raw read short");
    }
    let raw = per_load(t);
    let t = Instant::now();
    for id in &ids {
        let o = store.load_replayed(&mut conn, *id, Until::End).await?;
        anyhow::ensure!(o.map(|o| o.version) == Some(length), "replay short");
    }
    let replay = per_load(t);
    let t = Instant::now();
    for id in &ids {
        let o = store.load(&mut conn, *id).await?;
        anyhow::ensure!(o.map(|o| o.version) == Some(length), "snapshot load short");
    }
    let snapshot = per_load(t);
    Ok(LoadRow {
        stream_length: length,
        streams,
        raw_select_ms: raw,
        replay_ms: replay,
        snapshot_ms: snapshot,
        replay_vs_raw: replay / raw,
        snapshot_vs_raw: snapshot / raw,
        snapshot_speedup: replay / snapshot,
    })
}

async fn projection_throughput(pool: &PgPool, orders: usize) -> anyhow::Result<ProjectionRow> {
    // A realistic backlog: each order placed, reserved, charged, shipped, committed, completed.
    let store = OrderStore { snapshot_every: 0 };
    for chunk in (0..orders).collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin().await?;
        for i in chunk {
            let mut order = Order::new(Uuid::now_v7());
            store
                .append(
                    &mut tx,
                    &mut order,
                    &[OrderEvent::Placed(placed(*i))],
                    &meta(),
                )
                .await?;
            for step in [Step::Reserve, Step::Charge, Step::Ship, Step::Commit] {
                let events = order.events_for(vec![SagaEvent::StepDone { step }]);
                store.append(&mut tx, &mut order, &events, &meta()).await?;
            }
        }
        tx.commit().await?;
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    // Project everything from the start.
    sqlx::query("UPDATE projection_checkpoint SET last_tx = 0, last_position = 0")
        .execute(pool)
        .await?;
    let t = Instant::now();
    let mut projected = 0;
    while projected < events as usize {
        projected += projection::catch_up(pool).await?;
        if t.elapsed().as_secs() > 600 {
            anyhow::bail!("projection did not finish in 10 minutes");
        }
    }
    let projection_secs = t.elapsed().as_secs_f64();
    // Raw: one single-row INSERT per event, 500 per transaction (the projection's batch).
    sqlx::query(
        "CREATE TABLE raw_rows (id BIGINT PRIMARY KEY, stream UUID, body JSONB, at TIMESTAMPTZ)",
    )
    .execute(pool)
    .await?;
    let t = Instant::now();
    let mut i: i64 = 0;
    while i < events {
        let mut tx = pool.begin().await?;
        for _ in 0..projection::BATCH.min(events - i) {
            sqlx::query("INSERT INTO raw_rows VALUES ($1, $2, $3, now())")
                .bind(i)
                .bind(Uuid::now_v7())
                .bind(serde_json::json!({"sku": "sku", "quantity": 1}))
                .execute(&mut *tx)
                .await?;
            i += 1;
        }
        tx.commit().await?;
    }
    let raw_secs = t.elapsed().as_secs_f64();
    let raw = events as f64 / raw_secs;
    let proj = events as f64 / projection_secs;
    Ok(ProjectionRow {
        events: events as u64,
        raw_insert_per_sec: raw,
        projection_per_sec: proj,
        projection_vs_raw: proj / raw,
    })
}

pub async fn run(
    pg_url: &str,
    lengths: &[u64],
    streams: usize,
    snapshot_every: u64,
    orders: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(snapshot_every > 0, "--snapshot-every must be 1 or more");
    let pool = crate::smoke::scratch_database(pg_url, "shop_bench_event_store").await?;
    shop_order::migrator().run(&pool).await?;
    projection::init(&pool).await?;
    println!(
        "aggregate load time ({streams} streams per length, snapshot every {snapshot_every}):"
    );
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9}",
        "events", "raw ms", "replay ms", "snapshot ms", "replay/raw", "snap/raw", "speedup"
    );
    let mut rows = Vec::new();
    for &length in lengths {
        let r = load_times(&pool, length, streams, snapshot_every).await?;
        println!(
            "{:>8} {:>12.3} {:>12.3} {:>12.3} {:>9.2}x {:>9.2}x {:>8.1}x",
            r.stream_length,
            r.raw_select_ms,
            r.replay_ms,
            r.snapshot_ms,
            r.replay_vs_raw,
            r.snapshot_vs_raw,
            r.snapshot_speedup
        );
        rows.push(r);
    }
    // The projection measures from an empty store of its own.
    pool.close().await;
    let pool = crate::smoke::scratch_database(pg_url, "shop_bench_event_store").await?;
    shop_order::migrator().run(&pool).await?;
    projection::init(&pool).await?;
    let p = projection_throughput(&pool, orders).await?;
    println!(
        "projection: {} events at {:.0} events/s; raw single-row inserts {:.0} rows/s ({:.2}x raw)",
        p.events, p.projection_per_sec, p.raw_insert_per_sec, p.projection_vs_raw
    );
    println!(
        "{}",
        serde_json::json!({ "bench": "event_store", "load": rows, "projection": p })
    );
    pool.close().await;
    Ok(())
}
