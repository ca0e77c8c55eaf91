//! The disaster-recovery drill (docs/BACKUP.md): platform A (the seven service binaries on a
//! private broker, databases of its own) takes a burst of orders, and `shopctl backup` runs in
//! the middle of it; A settles and stops; `shopctl restore` puts the four databases back under a
//! new prefix; platform B starts on the restored databases with A's topic prefix (the restored
//! outbox rows name A's topics) but a new, empty broker, and nothing of A's Redis, Mongo, search
//! index or ClickHouse. Every order the copy knows must end in B within a bounded time, `shopctl
//! check --core-only` must find nothing wrong in B's databases, and the copy must hold no order
//! A did not have.

#[path = "../faults/platform.rs"]
#[allow(
    dead_code,
    reason = "shared with the fault matrix, which uses the fault hooks"
)]
mod platform;

#[path = "../faults/load.rs"]
#[allow(dead_code, reason = "shared with the fault matrix")]
mod load;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use load::Clients;
use platform::{Options, PG_URL, Platform};
use shop_proto::{
    common::{Address, LineItem, Money},
    order::PlaceOrderRequest,
};
use tokio::process::Command;

/// Short saga step timeouts, in A and B alike: a step whose reply only A's broker saw is sent
/// again this long after it was first sent.
const SAGA: &[(&str, &str, &str)] = &[
    ("order", "SHOP__SAGA__RESERVE_TIMEOUT_MS", "6000"),
    ("order", "SHOP__SAGA__CHARGE_TIMEOUT_MS", "6000"),
    ("order", "SHOP__SAGA__SETTLE_TIMEOUT_MS", "6000"),
];
/// How long B may take to end every order of the copy: a few step timeouts.
const B_SETTLE_BOUND: Duration = Duration::from_secs(90);
const TERMINAL: [&str; 2] = ["COMPLETED", "CANCELLED"];

fn database_url(run: &str, service: &str) -> String {
    PG_URL.replace("/postgres", &format!("/{run}_{service}"))
}

/// Every order of `tenant` in the order database of `run`, with its saga's state.
async fn orders(run: &str, tenant: &str) -> BTreeMap<String, String> {
    let pool = sqlx::PgPool::connect(&database_url(run, "order"))
        .await
        .expect("order database");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.saga_id::text, s.state FROM saga s JOIN order_keys k ON k.order_id = s.saga_id
         WHERE k.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&pool)
    .await
    .expect("sagas");
    pool.close().await;
    rows.into_iter().collect()
}

/// `order_id -> status` of one participant's records of `tenant`, in the databases of `run`.
async fn statuses(run: &str, service: &str, tenant: &str) -> BTreeMap<String, String> {
    let sql = match service {
        "inventory" => "SELECT order_id, status FROM reservation WHERE tenant_id = $1",
        "payment" => {
            "SELECT c.order_id, c.status FROM charge c JOIN account a USING (account_id)
             WHERE a.tenant_id = $1"
        }
        _ => "SELECT order_id, status FROM shipment WHERE tenant_id = $1",
    };
    let pool = sqlx::PgPool::connect(&database_url(run, service))
        .await
        .expect("participant database");
    let rows: Vec<(String, String)> = sqlx::query_as(sql)
        .bind(tenant)
        .fetch_all(&pool)
        .await
        .expect("statuses");
    pool.close().await;
    rows.into_iter().collect()
}

/// What the participants' copies hold of the sagas in flight in the order copy.
#[derive(Default)]
struct Ahead {
    /// The step the saga waits for is done already (its reply was on A's broker, or still
    /// unpublished): reserved, charged, shipped, committed. The re-sent command gets that
    /// answer back.
    awaited: [usize; 4],
    /// A step the saga had not even asked for is done: its command left A's order service
    /// after the order dump. If the saga decides otherwise now (the re-sent reservation
    /// refused, say), nothing undoes it. None when the relay is held during the backup.
    beyond: Vec<String>,
}

async fn ahead(run: &str, tenant: &str, copy: &BTreeMap<String, String>) -> Ahead {
    let reservations = statuses(run, "inventory", tenant).await;
    let charges = statuses(run, "payment", tenant).await;
    let shipments = statuses(run, "shipping", tenant).await;
    let committed = |id: &String| reservations.get(id).is_some_and(|s| s == "committed");
    let mut a = Ahead::default();
    for (id, state) in copy {
        let (awaited, beyond) = match state.as_str() {
            "STARTED" => (
                reservations.contains_key(id).then_some(0),
                charges.contains_key(id) || shipments.contains_key(id),
            ),
            "INVENTORY_RESERVED" => (
                charges.contains_key(id).then_some(1),
                shipments.contains_key(id) || committed(id),
            ),
            "PAYMENT_CHARGED" => (shipments.contains_key(id).then_some(2), committed(id)),
            "SHIPMENT_CREATED" => (committed(id).then_some(3), false),
            _ => (None, false),
        };
        if let Some(i) = awaited {
            a.awaited[i] += 1;
        }
        if beyond {
            a.beyond.push(format!("{id} ({state})"));
        }
    }
    a
}

/// One order through the whole saga, so that every consumer of a new platform has joined its
/// group before the burst (a backup of sagas all waiting for their first reply would show
/// little).
async fn warm_up(c: &Clients, tenant: &str) {
    load::seed(c, tenant).await;
    let r = PlaceOrderRequest {
        idempotency_key: format!("{tenant}-warm-up"),
        tenant_id: tenant.into(),
        customer_id: "warm-up".into(),
        items: vec![LineItem {
            sku: format!("{tenant}-0"),
            quantity: 1,
            unit_price: Some(Money {
                amount_minor: 250,
                currency: "USD".into(),
            }),
        }],
        shipping_address: Some(Address {
            name: "Drill".into(),
            line1: "1 Restore Road".into(),
            line2: String::new(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        }),
        payment_account_id: format!("{tenant}-rich"),
        ..Default::default()
    };
    let placed = load::retrying("warm-up order", || {
        let (mut client, r) = (c.order.clone(), r.clone());
        async move { client.place_order(r).await }
    })
    .await
    .expect("warm-up order");
    let id = placed.into_inner().order.expect("order").order_id;
    let (completed, _, _) = load::settle(c, &[id], Duration::from_secs(90)).await;
    assert_eq!(completed, 1, "the warm-up order did not complete");
}

/// `shopctl <args>` on the shared PostgreSQL server with `SHOP_DB_PREFIX=<prefix>`; its stdout.
async fn shopctl(prefix: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shopctl"))
        .args(args)
        .env("SHOP_DB_PREFIX", prefix)
        .env("SHOP_PG_URL", PG_URL)
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .expect("run shopctl");
    assert!(
        out.status.success(),
        "shopctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn redis(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An empty Redis database for B's carts and recommendations (none of A's: they are not in
/// the backup), so that B's cart relay does not read A's outbox stream either.
async fn empty_redis_db() -> u32 {
    for n in (1..16).rev() {
        if redis(&["-n", &n.to_string(), "DBSIZE"]).await == "0" {
            return n;
        }
    }
    panic!("no empty Redis database (1-15) for platform B");
}

/// Drops what a platform made outside PostgreSQL: its Mongo database, search index and
/// ClickHouse database.
async fn drop_derived(run: &str) {
    if let Ok(mongo) = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await {
        let _ = mongo.database(&format!("{run}_catalog")).drop().await;
    }
    let _ = shop_catalog::search::elastic::delete_index(
        "http://127.0.0.1:9200",
        &format!("{run}-products"),
    )
    .await;
    let _ = clickhouse::Client::default()
        .with_url("http://127.0.0.1:8123")
        .query(&format!("DROP DATABASE IF EXISTS {run}_analytics"))
        .execute()
        .await;
}

/// What each of the four databases of `run` records about every order of `tenant`, one line
/// per fact, in time order: the order's events and outbox rows, the reservation, the charge
/// and its movements, the shipment. Printed for the orders a failed check names.
async fn history(run: &str, tenant: &str) -> BTreeMap<String, Vec<String>> {
    const QUERIES: &[(&str, &str)] = &[
        (
            "order",
            "SELECT e.stream_id::text, e.recorded_at,
                    format('order   v%s %s %s', e.version, e.event_type, left(e.payload::text, 160))
             FROM events e JOIN order_keys k ON k.order_id = e.stream_id WHERE k.tenant_id = $1",
        ),
        (
            "order",
            "SELECT o.partition_key, o.created_at,
                    format('order   outbox #%s %s published %s', o.id, o.event_type, o.published_at)
             FROM outbox o JOIN order_keys k ON k.order_id::text = o.partition_key
             WHERE k.tenant_id = $1",
        ),
        (
            "inventory",
            "SELECT order_id, created_at, format('stock   reservation %s (updated %s)', status, updated_at)
             FROM reservation WHERE tenant_id = $1",
        ),
        (
            "payment",
            "SELECT c.order_id, c.created_at, format('payment charge %s %s (updated %s)', c.status, c.amount_minor, c.updated_at)
             FROM charge c JOIN account a USING (account_id) WHERE a.tenant_id = $1
             UNION ALL
             SELECT m.order_id, m.created_at, format('payment movement %s %s', m.kind, m.amount_minor)
             FROM movement m JOIN account a USING (account_id) WHERE a.tenant_id = $1",
        ),
        (
            "payment",
            "SELECT o.partition_key, o.created_at,
                    format('payment outbox #%s %s published %s', o.id, o.event_type, o.published_at)
             FROM outbox o WHERE $1::text IS NOT NULL",
        ),
        (
            "shipping",
            "SELECT order_id, created_at, format('ship    shipment %s (updated %s)', status, updated_at)
             FROM shipment WHERE tenant_id = $1",
        ),
    ];
    let mut lines: BTreeMap<String, Vec<(chrono::DateTime<chrono::Utc>, String)>> = BTreeMap::new();
    for (service, sql) in QUERIES {
        let pool = sqlx::PgPool::connect(&database_url(run, service))
            .await
            .expect("database");
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(sql)
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
        pool.close().await;
        for (id, at, line) in rows {
            lines.entry(id).or_default().push((at, line));
        }
    }
    lines
        .into_iter()
        .map(|(id, mut l)| {
            l.sort();
            let l = l
                .into_iter()
                .map(|(at, line)| format!("{} {line}", at.format("%H:%M:%S%.3f")))
                .collect();
            (id, l)
        })
        .collect()
}

async fn drop_databases(run: &str) {
    let pool = sqlx::PgPool::connect(PG_URL).await.expect("postgres");
    for s in ["order", "payment", "inventory", "shipping"] {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {run}_{s} WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
    pool.close().await;
}

type Settings = Vec<(&'static str, String, String)>;

fn owned(settings: &[(&'static str, &str, &str)]) -> Settings {
    settings
        .iter()
        .map(|(s, k, v)| (*s, (*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A platform on the databases of `run` with the topics of `topics`. Tried up to three times:
/// a private broker sometimes fails to start for reasons of its own (the fault matrix shares
/// them), and the drill is not about that.
async fn start(run: &str, topics: &str, extra: Settings) -> Platform {
    for attempt in 1.. {
        let (run, topics, extra) = (run.to_owned(), topics.to_owned(), extra.clone());
        let started = tokio::spawn(async move {
            let extra: Vec<(&'static str, &str, &str)> = extra
                .iter()
                .map(|(s, k, v)| (*s, k.as_str(), v.as_str()))
                .collect();
            Platform::start_with(Options {
                run: Some(run),
                topics: Some(topics),
                extra: &extra,
            })
            .await
        })
        .await;
        match started {
            Ok(p) => return p,
            Err(e) if e.is_panic() && attempt < 3 => {
                println!("platform did not start (try {attempt}): {e}; once more");
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    unreachable!()
}

/// What the drill made: dropped when the drill ends, also when it fails half-way (in `Drop`,
/// on a thread with a runtime of its own): the databases and derived stores of each run, the
/// Redis database B used, the backup directory.
#[derive(Default)]
struct Leftovers {
    runs: Vec<String>,
    redis_db: Option<u32>,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (runs, redis_db, dir) = (
            std::mem::take(&mut self.runs),
            self.redis_db.take(),
            self.dir.take(),
        );
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                for run in &runs {
                    drop_databases(run).await;
                    drop_derived(run).await;
                }
                if let Some(n) = redis_db {
                    redis(&["-n", &n.to_string(), "FLUSHDB"]).await;
                }
            });
            if let Some(dir) = dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        });
        let _ = cleanup.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_mid_burst_restores_to_a_platform_that_ends_every_saga() {
    // `SHOP_DRILL_NO_PAUSE=1`: back up without holding the order relay (docs/BACKUP.md: the
    // copy then holds orphans, and may hold a stranded step).
    let no_pause = std::env::var("SHOP_DRILL_NO_PAUSE").is_ok_and(|v| v == "1");
    // --- A: a burst of orders, and the backup in the middle of it.
    let mut leftovers = Leftovers::default();
    let a_run = format!("f{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    leftovers.runs.push(a_run.clone());
    let a = start(&a_run, &a_run, owned(SAGA)).await;
    let ca = Clients::new(&a);
    let warm = Instant::now();
    warm_up(&ca, &format!("{a_run}-warm-up")).await;
    let warm_secs = warm.elapsed().as_secs_f64();
    let tenant = format!("{a_run}-drill");
    load::seed(&ca, &tenant).await;
    let dir = std::env::temp_dir().join(format!("shop-drill-{a_run}"));
    let dir_arg = dir.display().to_string();
    leftovers.dir = Some(dir.clone());
    let burst_clock = Instant::now();
    let (ids, (at_start, at_end, backup_secs, backup_at, manifest)) =
        futures::join!(load::burst(&ca, &tenant), async {
            // The burst places orders for ~3 s: back up from 1.2 s on, while it goes on.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let at = burst_clock.elapsed();
            let before = orders(&a_run, &tenant).await.len();
            let t = Instant::now();
            let mut args = vec!["backup", "--dir", &dir_arg, "--json"];
            if no_pause {
                args.push("--no-pause");
            }
            let out = shopctl(&format!("{a_run}_"), &args).await;
            let secs = t.elapsed().as_secs_f64();
            let after = orders(&a_run, &tenant).await.len();
            let manifest: serde_json::Value = serde_json::from_str(&out).expect("manifest");
            (before, after, secs, at, manifest)
        });
    let burst_secs = burst_clock.elapsed().as_secs_f64();
    let (a_completed, a_cancelled, a_pending) =
        load::settle(&ca, &ids, Duration::from_secs(150)).await;
    assert_eq!(a_pending, 0, "A did not end every order");
    let (a_passed, a_report) = a.check_with(&tenant, &["--core-only"]).await;
    let a_violations = a_report["violations"].as_u64().unwrap_or(u64::MAX);
    let in_a = orders(&a_run, &tenant).await;
    let history_a = history(&a_run, &tenant).await;
    drop(ca);
    a.stop().await;

    // --- The copy.
    let b_run = format!("r{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    leftovers.runs.push(b_run.clone());
    let t = Instant::now();
    let restored: serde_json::Value = serde_json::from_str(
        &shopctl(
            &format!("{b_run}_"),
            &["restore", "--dir", &dir_arg, "--json"],
        )
        .await,
    )
    .expect("restore report");
    let restore_secs = t.elapsed().as_secs_f64();
    let copy = orders(&b_run, &tenant).await;
    let in_flight_at_restore = copy
        .values()
        .filter(|s| !TERMINAL.contains(&s.as_str()))
        .count();
    let ahead = ahead(&b_run, &tenant, &copy).await;
    let [reserved, charged, shipped, committed] = ahead.awaited;
    let history_copy = history(&b_run, &tenant).await;
    let invented: Vec<&String> = copy.keys().filter(|id| !in_a.contains_key(*id)).collect();

    // --- B: the restored databases, A's topic names, a new broker, a Redis database of its own.
    let redis_db = empty_redis_db().await;
    leftovers.redis_db = Some(redis_db);
    let redis_url = format!("redis://127.0.0.1:6379/{redis_db}");
    let mut extra = owned(SAGA);
    extra.push(("cart", "SHOP__REDIS__URL".into(), redis_url.clone()));
    extra.push(("catalog", "SHOP__REDIS__URL".into(), redis_url));
    let t = Instant::now();
    let b = start(&b_run, &a_run, extra).await;
    let b_start_secs = t.elapsed().as_secs_f64();
    let cb = Clients::new(&b);
    let copy_ids: Vec<String> = copy.keys().cloned().collect();
    let t = Instant::now();
    let (completed, cancelled, pending) =
        load::settle(&cb, &copy_ids, B_SETTLE_BOUND + Duration::from_secs(30)).await;
    let b_settle = t.elapsed();
    let in_b = orders(&b_run, &tenant).await;
    let (passed, report) = b.check_with(&tenant, &["--core-only"]).await;
    let violations = report["violations"].as_u64().unwrap_or(u64::MAX);
    let same_outcome = in_b
        .iter()
        .filter(|(id, s)| in_a.get(*id) == Some(s))
        .count();
    let not_ended_in_b = in_b
        .values()
        .filter(|s| !TERMINAL.contains(&s.as_str()))
        .count();

    let o = &restored["orphans"];
    println!("\ndisaster-recovery drill (A {a_run}, copy {b_run})");
    println!(
        "  burst                {} orders over {burst_secs:.1} s (after a warm-up order, \
         {warm_secs:.1} s); backup started at {:.1} s",
        ids.len(),
        backup_at.as_secs_f64()
    );
    println!("  orders in A          {at_start} when the backup started, {at_end} when it ended");
    println!(
        "  orders in A          {} at the end ({a_completed} completed, {a_cancelled} cancelled)",
        in_a.len()
    );
    println!(
        "  backup               {backup_secs:.2} s (shopctl), {:.2} s dumping, {} bytes; order \
         relay held {:.2} s{}",
        manifest["seconds"].as_f64().unwrap_or_default(),
        manifest["bytes"],
        manifest["paused_seconds"].as_f64().unwrap_or_default(),
        if no_pause { " (--no-pause)" } else { "" }
    );
    for d in manifest["databases"].as_array().into_iter().flatten() {
        println!(
            "    {:<10} {:>6.3} s {:>9} bytes",
            d["service"].as_str().unwrap_or_default(),
            d["seconds"].as_f64().unwrap_or_default(),
            d["bytes"]
        );
    }
    println!(
        "  restore              {restore_secs:.2} s (shopctl), {:.2} s restoring",
        restored["seconds"].as_f64().unwrap_or_default()
    );
    println!(
        "  orders in the copy   {} ({} in flight when restored; outbox rows to send again {}; \
         not in A: {})",
        copy.len(),
        in_flight_at_restore,
        restored["outbox_pending"],
        invented.len()
    );
    println!(
        "  participants ahead   {} of the {in_flight_at_restore} sagas in flight: the step \
         they wait for is done (reserved {reserved}, charged {charged}, shipped {shipped}, \
         committed {committed}); a step not yet asked for done: {}",
        reserved + charged + shipped + committed,
        ahead.beyond.len()
    );
    println!(
        "  orphans in the copy  {} row(s), {} live: held {} ({} units), committed {}, charged {} \
         ({} minor), shipments {}",
        o["rows"],
        o["reservations_held"].as_u64().unwrap_or_default()
            + o["reservations_committed"].as_u64().unwrap_or_default()
            + o["charges_live"].as_u64().unwrap_or_default()
            + o["shipments_live"].as_u64().unwrap_or_default(),
        o["reservations_held"],
        o["units_held"],
        o["reservations_committed"],
        o["charges_live"],
        o["charged_minor"],
        o["shipments_live"]
    );
    println!(
        "  B                    started in {b_start_secs:.1} s, every order of the copy ended \
         after {:.1} s: {completed} completed, {cancelled} cancelled, {pending} pending; same \
         outcome as in A: {same_outcome} of {}",
        b_settle.as_secs_f64(),
        in_b.len()
    );
    println!("  check --core-only    {a_violations} violation(s) in A, {violations} in B");

    if !passed || violations > 0 {
        let history_b = history(&b_run, &tenant).await;
        println!("  the dumps: {}", manifest["databases"]);
        let named = report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["examples"].as_array().into_iter().flatten())
            .filter_map(|e| e.as_str()?.split(':').next().map(str::to_owned));
        for id in named {
            println!(
                "  {id}: in A {:?}, in the copy {:?}, in B {:?}",
                in_a.get(&id),
                copy.get(&id),
                in_b.get(&id)
            );
            for (name, h) in [
                ("A", &history_a),
                ("copy", &history_copy),
                ("B", &history_b),
            ] {
                println!("    {name}:");
                for line in h.get(&id).into_iter().flatten() {
                    println!("      {line}");
                }
            }
        }
    }

    drop(cb);
    b.stop().await;
    drop(leftovers);

    assert!(
        a_passed && a_violations == 0,
        "shopctl check on A (before the copy) found violations: {a_report}"
    );
    assert!(
        invented.is_empty(),
        "the copy has orders A never had: {invented:?}"
    );
    assert!(
        at_start <= copy.len() && copy.len() <= at_end,
        "the order dump holds {} orders; A had {at_start} when the backup started and {at_end} \
         when it ended",
        copy.len()
    );
    assert!(
        copy.len() < ids.len(),
        "the backup was not mid-burst: the copy has all {} orders",
        ids.len()
    );
    if !no_pause {
        assert_eq!(
            o["rows"].as_u64(),
            Some(0),
            "orphans in a copy taken with the order relay held: {o}"
        );
        assert!(
            ahead.beyond.is_empty(),
            "participants did steps the order copy had not asked for: {:?}",
            ahead.beyond
        );
    }
    assert_eq!(in_b.len(), copy.len(), "B has orders the copy did not");
    assert_eq!(pending, 0, "orders of the copy still pending in B");
    assert_eq!(not_ended_in_b, 0, "sagas of the copy not ended in B");
    assert!(
        b_settle <= B_SETTLE_BOUND,
        "B took {b_settle:?} to end every order"
    );
    assert!(
        passed && violations == 0,
        "shopctl check on B found violations: {report}"
    );
}
