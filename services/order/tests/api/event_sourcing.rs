//! The event store, snapshots, upcasting and the read models, against the real PostgreSQL.

use std::{str::FromStr, time::Duration};

use serde_json::json;
use shop_messaging::testing;
use shop_order::{
    domain::{
        saga::{SagaEvent, Step},
        stream::{Line, Order, OrderEvent, Placed, ShipTo},
    },
    eventstore::{self, AppendError, NewStreamEvent, Until},
    orders::{Meta, OrderStore, StoreError},
    projection,
};
use shop_proto::order::{
    GetOrderAsOfRequest, GetOrderRequest, ListOrdersRequest, OrderStatus, RebuildReadModelsRequest,
    SagaState, get_order_as_of_request::AsOf,
};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::*;

/// A scratch order database with the service's migrations and read models, no service running.
pub async fn scratch_store() -> (PgPool, shop_messaging::service::PgServiceSettings) {
    let settings = testing::service_settings("es");
    let options = PgConnectOptions::from_str(&settings.database.url).expect("url");
    shop_core::db::create_database_if_missing(&options)
        .await
        .expect("create database");
    let pool = testing::pool(&settings).await;
    shop_messaging::migrate(&pool).await.expect("outbox/inbox");
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await.expect("order migrations");
    projection::init(&pool).await.expect("read models");
    (pool, settings)
}

fn placed(customer: &str) -> Placed {
    Placed {
        tenant_id: TENANT.into(),
        customer_id: customer.into(),
        items: vec![Line {
            sku: "mug".into(),
            quantity: 2,
            unit_price_minor: 700,
        }],
        currency: "EUR".into(),
        total_minor: 1_400,
        shipping_address: ShipTo {
            country: "DE".into(),
            ..ShipTo::default()
        },
        payment_account_id: "acc".into(),
        choreographed: false,
    }
}

fn meta() -> Meta {
    Meta {
        tenant_id: TENANT.into(),
        correlation_id: "test".into(),
        causation_id: None,
    }
}

fn event(n: u64) -> NewStreamEvent {
    NewStreamEvent {
        event_type: "saga_retried".into(),
        schema_version: 1,
        payload: json!({ "attempt": n, "cause": "test" }),
        metadata: json!({}),
    }
}

#[tokio::test]
async fn concurrent_appends_at_the_same_version_exactly_one_wins() {
    let (pool, settings) = scratch_store().await;
    let stream = Uuid::now_v7();
    let mut conn = pool.acquire().await.expect("conn");
    eventstore::append(&mut conn, stream, 0, &[event(1)])
        .await
        .expect("first event");
    drop(conn);
    // Ten writers all loaded version 1 and append at once, each in its own transaction.
    let racers = (0..10).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("tx");
            let r = eventstore::append(&mut tx, stream, 1, &[event(100 + i)]).await;
            if r.is_ok() {
                tx.commit().await.expect("commit");
            }
            r.map(|_| ())
        })
    });
    let results = futures::future::join_all(racers).await;
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(|r| r.expect("task"))
        .partition(Result::is_ok);
    assert_eq!(won.len(), 1, "exactly one append wins");
    assert_eq!(lost.len(), 9);
    for l in lost {
        match l {
            Err(AppendError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, 1);
                assert_eq!(actual, 2, "the loser learns where the stream is");
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(eventstore::version(&mut conn, stream).await.expect("v"), 2);
    // A stale expected version ahead of the stream is a conflict too, and leaves no gap.
    assert!(matches!(
        eventstore::append(&mut conn, stream, 5, &[event(9)]).await,
        Err(AppendError::Conflict { actual: 2, .. })
    ));
    // The loser's transaction is still usable: reload and append in place (the command path).
    let mut tx = pool.begin().await.expect("tx");
    let err = eventstore::append(&mut tx, stream, 1, &[event(7)]).await;
    assert!(matches!(err, Err(AppendError::Conflict { actual: 2, .. })));
    let v = eventstore::version(&mut tx, stream).await.expect("reload");
    eventstore::append(&mut tx, stream, v, &[event(7)])
        .await
        .expect("retry at the reloaded version");
    tx.commit().await.expect("commit");
    assert_eq!(eventstore::version(&mut conn, stream).await.expect("v"), 3);
    // Append-only: the store refuses to rewrite history.
    assert!(
        sqlx::query("UPDATE events SET payload = '{}' WHERE stream_id = $1")
            .bind(stream)
            .execute(&mut *conn)
            .await
            .is_err()
    );
    drop(conn);
    pool.close().await;
    testing::drop_database(&settings).await;
}

#[tokio::test]
async fn the_order_store_snapshots_and_a_snapshot_plus_tail_equals_the_full_replay() {
    let (pool, settings) = scratch_store().await;
    let store = OrderStore { snapshot_every: 4 };
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await.expect("tx");
    let mut order = Order::new(id);
    store
        .append(
            &mut tx,
            &mut order,
            &[OrderEvent::Placed(placed("c1"))],
            &meta(),
        )
        .await
        .expect("placed");
    // A long saga: many operator retries, then the steps.
    for attempt in 2..=12 {
        let fact = SagaEvent::Retried {
            attempt,
            cause: "retried by an operator".into(),
        };
        let events = order.events_for(vec![fact]);
        store
            .append(&mut tx, &mut order, &events, &meta())
            .await
            .expect("retry");
    }
    for step in [Step::Reserve, Step::Charge] {
        let fact = SagaEvent::StepDone { step };
        let events = order.events_for(vec![fact]);
        store
            .append(&mut tx, &mut order, &events, &meta())
            .await
            .expect("step");
    }
    tx.commit().await.expect("commit");
    assert_eq!(order.version, 14);
    let mut conn = pool.acquire().await.expect("conn");
    let (snap_version, _, _) = eventstore::snapshot(&mut conn, id)
        .await
        .expect("read")
        .expect("a snapshot was taken");
    assert_eq!(snap_version, 12, "the last multiple of 4 crossed");
    let loaded = store
        .load(&mut conn, id)
        .await
        .expect("load")
        .expect("order");
    let replayed = store
        .load_replayed(&mut conn, id, Until::End)
        .await
        .expect("replay")
        .expect("order");
    assert_eq!(loaded, replayed, "snapshot + tail == full replay");
    assert_eq!(loaded, order, "and == what the writer holds in memory");
    // A stale writer (holding version 13) conflicts through the store too.
    let mut stale = store
        .load_replayed(&mut conn, id, Until::Version(13))
        .await
        .expect("as of")
        .expect("order");
    assert_eq!(stale.version, 13);
    let fact = SagaEvent::StepDone { step: Step::Ship };
    let events = stale.events_for(vec![fact]);
    assert!(matches!(
        store.append(&mut conn, &mut stale, &events, &meta()).await,
        Err(StoreError::Conflict(_))
    ));
    // A snapshot of an older shape is ignored, not trusted: the load replays instead.
    sqlx::query("UPDATE snapshots SET schema_version = 0, state = '{\"garbage\": true}' WHERE stream_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .expect("spoil the snapshot");
    assert_eq!(
        store
            .load(&mut conn, id)
            .await
            .expect("load")
            .expect("order"),
        replayed
    );
    drop(conn);
    pool.close().await;
    testing::drop_database(&settings).await;
}

#[tokio::test]
async fn a_stored_v1_event_is_upcast_on_load_and_in_the_read_model() {
    let (pool, settings) = scratch_store().await;
    let id = Uuid::now_v7();
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/order_placed_v1.json")).expect("fixture");
    sqlx::query(
        "INSERT INTO events (stream_id, version, event_type, schema_version, payload) VALUES ($1, 1, 'order_placed', 1, $2)",
    )
    .bind(id)
    .bind(&v1)
    .execute(&pool)
    .await
    .expect("a v1 event, as an old release wrote it");
    let mut conn = pool.acquire().await.expect("conn");
    let order = OrderStore { snapshot_every: 0 }
        .load(&mut conn, id)
        .await
        .expect("load")
        .expect("order");
    let p = order.placed.expect("placed");
    assert_eq!(p.tenant_id, "default");
    assert_eq!(p.total_minor, 2 * 1250 + 3 * 499);
    assert_eq!(p.items[1].quantity, 3);
    // The projection reads an event once no older transaction is running anywhere on the server
    // (other tests' included), so it may take a moment.
    let row = loop {
        projection::catch_up(&pool).await.expect("project");
        if let Some(row) = projection::summary(&mut conn, id).await.expect("read") {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.total_minor, 3997);
    assert_eq!(row.tenant_id, "default");
    assert_eq!(row.customer_id, "cust-7");
    drop(conn);
    pool.close().await;
    testing::drop_database(&settings).await;
}

/// Every row of both read models, in a stable order.
async fn read_models(pool: &PgPool) -> (Vec<projection::SummaryRow>, Vec<projection::SummaryRow>) {
    const COLUMNS: &str = "order_id, tenant_id, customer_id, status, saga_state, cancel_reason, items, \
         total_minor, currency, version, placed_at, updated_at";
    let summary = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM order_summary ORDER BY order_id"
    ))
    .fetch_all(pool)
    .await
    .expect("summary");
    let history = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM customer_orders ORDER BY order_id"
    ))
    .fetch_all(pool)
    .await
    .expect("history");
    (summary, history)
}

#[tokio::test]
async fn read_models_follow_the_sagas_rebuild_to_the_same_rows_and_ignore_redelivery() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("pen", 3).await;
    p.open_account("acc", 1_000_000).await;
    // Five orders for three pens: three complete, two are cancelled (out of stock).
    let mut ids = Vec::new();
    for i in 0..5 {
        let placed = p
            .place(request(&format!("rm-{i}"), "pen", 1, 300, "acc", "DE"))
            .await;
        // Read-your-writes: the placing caller sees its order at once via its stream version.
        let seen = p
            .order
            .clone()
            .get_order(GetOrderRequest {
                order_id: placed.order.clone().expect("order").order_id,
                min_stream_version: placed.stream_version,
            })
            .await
            .expect("read your write")
            .into_inner();
        assert!(seen.stream_version >= placed.stream_version);
        ids.push(placed.order.expect("order").order_id);
    }
    let mut completed = 0;
    for id in &ids {
        if p.settled(id).await.status() == OrderStatus::Completed {
            completed += 1;
        }
    }
    assert_eq!(completed, 3);
    // The projection has caught up once GetOrder showed every order settled.
    projection::catch_up(&p.order_db).await.expect("catch up");
    let live = read_models(&p.order_db).await;
    assert_eq!(live.0.len(), 5);
    assert_eq!(live.1.len(), 5);
    assert_eq!(live.0.iter().filter(|r| r.status == "COMPLETED").count(), 3);
    assert!(
        live.0
            .iter()
            .filter(|r| r.status == "CANCELLED")
            .all(|r| r.saga_state == "CANCELLED" && r.cancel_reason.is_some())
    );
    let history = p
        .order
        .clone()
        .list_orders(ListOrdersRequest {
            tenant_id: TENANT.into(),
            customer_id: "cust-1".into(),
            page: None,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(history.orders.len(), 5, "the customer's history");

    // Redelivery: apply every event again (as a replay from an old checkpoint would): nothing
    // changes.
    let generation: i32 =
        sqlx::query_scalar("SELECT generation FROM projection_checkpoint WHERE name = 'orders'")
            .fetch_one(&p.order_db)
            .await
            .expect("generation");
    let mut conn = p.order_db.acquire().await.expect("conn");
    let all: Vec<shop_order::eventstore::Recorded> = sqlx::query_as(&format!(
        "SELECT {} FROM events ORDER BY tx, position",
        shop_order::eventstore::RECORDED_COLUMNS
    ))
    .fetch_all(&mut *conn)
    .await
    .expect("events");
    assert!(all.len() > 20);
    for e in all.iter().chain(all.iter().rev()) {
        projection::refresh(&mut conn, generation, e.stream_id)
            .await
            .expect("apply again");
    }
    drop(conn);
    assert_eq!(
        read_models(&p.order_db).await,
        live,
        "redelivered events change nothing"
    );

    // Rebuild while queries run: same rows, next generation, no failed query.
    let reader = {
        let mut client = p.order.clone();
        let id = ids[0].clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..200 {
                client
                    .get_order(GetOrderRequest {
                        order_id: id.clone(),
                        min_stream_version: 0,
                    })
                    .await
                    .expect("GetOrder during the rebuild");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ok
        })
    };
    let rebuilt = p
        .order
        .clone()
        .rebuild_read_models(RebuildReadModelsRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.generation as i32, generation + 1);
    assert!(rebuilt.events_replayed > 0 && rebuilt.events_replayed as usize <= all.len());
    assert_eq!(reader.await.expect("reader"), 200);
    // The swap took what was settled; a transaction running elsewhere on the server may have
    // held a few events back for the live projection to apply right after.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while read_models(&p.order_db).await != live && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        read_models(&p.order_db).await,
        live,
        "the rebuilt read models equal the live ones"
    );

    // The projection goes on in the new generation.
    p.restock("pen", 1).await;
    let placed = p
        .place(request("rm-after", "pen", 1, 300, "acc", "DE"))
        .await;
    let id = placed.order.expect("order").order_id;
    assert_eq!(p.settled(&id).await.status(), OrderStatus::Completed);
    let after = read_models(&p.order_db).await;
    assert_eq!(after.0.len(), 6);

    // Lag is exported in /healthz's report (the service runs in this process).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let health = shop_core::telemetry::health_report();
    assert!(
        health["projection_orders"]["lag_events"].is_i64(),
        "{health}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_stalled_projection_still_gives_the_writer_its_write_and_audits_read_the_past() {
    let p = spawn_platform(quick_saga(), Run::default()).await;
    p.restock("cup", 5).await;
    p.open_account("acc", 1_000_000).await;
    let first = p.place(request("as-of", "cup", 1, 250, "acc", "DE")).await;
    let id = first.order.clone().expect("order").order_id;
    assert_eq!(p.settled(&id).await.status(), OrderStatus::Completed);

    // Stall the projection: hold its checkpoint row.
    let mut stall = p.order_db.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM projection_checkpoint WHERE name = 'orders' FOR UPDATE")
        .execute(&mut *stall)
        .await
        .expect("lock");
    let placed = p
        .place(request("stalled", "cup", 1, 250, "acc", "DE"))
        .await;
    let new_id = placed.order.clone().expect("order").order_id;
    let seen = p
        .order
        .clone()
        .get_order(GetOrderRequest {
            order_id: new_id.clone(),
            min_stream_version: placed.stream_version,
        })
        .await
        .expect("answered from the stream while the read model is stalled")
        .into_inner();
    assert_eq!(seen.order_id, new_id);
    assert!(seen.stream_version >= placed.stream_version);
    let in_model: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_summary WHERE order_id = $1")
            .bind(Uuid::parse_str(&new_id).expect("uuid"))
            .fetch_one(&p.order_db)
            .await
            .expect("count");
    assert_eq!(in_model, 0, "the read model really was behind");
    stall.rollback().await.expect("release");

    // Audit: the first order as of version 1 was pending, as of its last version completed.
    let as_of = |as_of| {
        let mut client = p.order.clone();
        let id = id.clone();
        async move {
            client
                .get_order_as_of(GetOrderAsOfRequest {
                    order_id: id,
                    as_of: Some(as_of),
                })
                .await
        }
    };
    let v1 = as_of(AsOf::Version(1)).await.expect("v1").into_inner();
    assert_eq!(v1.status(), OrderStatus::Pending);
    assert_eq!(v1.saga_state(), SagaState::Started);
    assert_eq!(v1.stream_version, 1);
    let v3 = as_of(AsOf::Version(3)).await.expect("v3").into_inner();
    assert_eq!(v3.saga_state(), SagaState::PaymentCharged);
    let now = as_of(AsOf::At(prost_types::Timestamp::from(
        std::time::SystemTime::now(),
    )))
    .await
    .expect("now")
    .into_inner();
    assert_eq!(now.status(), OrderStatus::Completed);
    let before = as_of(AsOf::At(prost_types::Timestamp {
        seconds: 0,
        nanos: 0,
    }))
    .await
    .expect_err("nothing in 1970");
    assert_eq!(before.code(), Code::NotFound);
    let bad = as_of(AsOf::Version(0)).await.expect_err("version 0");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("version"));
    p.stop().await;
}

/// The projection meets events in `(tx, position)` order, which is not always a stream's
/// version order (a transaction can take its id before another commits, then append the next
/// version). It used to apply events one by one behind a `version <` guard, so a version met
/// after a later one was skipped for good: here the order stayed PENDING though it completed.
#[tokio::test]
async fn an_event_met_after_a_later_version_of_its_stream_still_counts() {
    let (pool, settings) = scratch_store().await;
    let id = Uuid::now_v7();
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/order_placed_v1.json")).expect("fixture");
    // v2 (completed) committed with a larger transaction id than v3 (a saga fact).
    for (version, tx, event_type, payload) in [
        (1, 10, "order_placed", v1),
        (2, 30, "order_completed", json!({})),
        (
            3,
            20,
            "saga_retried",
            json!({ "attempt": 2, "cause": "test" }),
        ),
    ] {
        sqlx::query(
            "INSERT INTO events (stream_id, version, tx, event_type, schema_version, payload)
             VALUES ($1, $2, $3, $4, 1, $5)",
        )
        .bind(id)
        .bind(version)
        .bind(tx)
        .bind(event_type)
        .bind(&payload)
        .execute(&pool)
        .await
        .expect("event");
    }
    projection::catch_up(&pool).await.expect("project");
    let mut conn = pool.acquire().await.expect("conn");
    let row = projection::summary(&mut conn, id)
        .await
        .expect("read")
        .expect("projected");
    assert_eq!((row.status.as_str(), row.version), ("COMPLETED", 3));
    drop(conn);
    pool.close().await;
    testing::drop_database(&settings).await;
}

/// A rebuild whose caller goes away (its future dropped mid-way) used to return its pooled
/// connection with the session advisory lock still held: every later rebuild was refused as
/// busy for as long as that connection lived.
#[tokio::test]
async fn a_cancelled_rebuild_does_not_keep_the_rebuild_lock() {
    let (pool, settings) = scratch_store().await;
    // Hold the rebuild after it took its lock: it waits for this table lock on its first read.
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE projection_checkpoint IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    // Dropped while it runs: as when the gRPC client of RebuildReadModels disconnects.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(500), projection::rebuild(&pool)).await;
    assert!(
        cancelled.is_err(),
        "the rebuild should still have been waiting"
    );
    blocker.rollback().await.expect("unlock");
    // No session of this (private) database may still hold an advisory lock: the dropped
    // rebuild's connection is closed (in the background: give it a moment, not more). The old
    // code returned it to the pool, lock and all.
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND a.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .expect("locks")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held().await, 0, "the cancelled rebuild's lock is gone");
    let again = projection::rebuild(&pool).await;
    assert!(again.is_ok(), "a later rebuild runs: {:?}", again.err());
    pool.close().await;
    testing::drop_database(&settings).await;
}
