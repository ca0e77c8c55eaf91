//! `shopctl restore`: the dumps back into fresh databases under any prefix, and the orphans a
//! copy may hold (participant effects no saga of the copy knows).

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{pg::*, *};
use crate::outbox::{Databases, service_pool};

/// Participant rows created this long before the order dump started are looked at too when
/// looking for orphans (clock differences between servers).
const ORPHAN_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What `restore` did and what the copy holds.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub prefix: String,
    pub pg_restore: String,
    pub seconds: f64,
    pub databases: Vec<Restored>,
    /// Sagas in the copy: ended, and still running (they go on when the order service starts).
    pub sagas_ended: i64,
    pub sagas_in_flight: i64,
    /// Unpublished outbox rows per service: the relays send them again (to the same topics).
    pub outbox_pending: BTreeMap<String, i64>,
    /// Inbox rows per service: messages delivered again are recognised as duplicates.
    pub inbox_rows: BTreeMap<String, i64>,
    /// The target server's next transaction id, and the highest `events.tx` restored.
    pub server_next_xid: i64,
    pub max_event_tx: i64,
    pub orphans: Orphans,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub service: String,
    pub database: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// Participants' records of orders the order copy does not know: orders placed after the order
/// dump began, whose commands reached a participant before that participant's dump. No saga in
/// the copy will finish or undo them; `live_*` are the ones that hold something.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Orphans {
    /// Reservations still holding stock, and their units.
    pub reservations_held: u64,
    pub units_held: i64,
    /// Reservations committed (the units are gone).
    pub reservations_committed: u64,
    /// Charges not refunded, and their sum in minor units.
    pub charges_live: u64,
    pub charged_minor: i64,
    /// Shipments created, in transit or delivered.
    pub shipments_live: u64,
    /// Orphan rows of every status (refusals, releases, refunds included).
    pub rows: u64,
    /// A few of them: `service order_id status`.
    pub examples: Vec<String>,
}

impl Orphans {
    pub fn live(&self) -> u64 {
        self.reservations_held
            + self.reservations_committed
            + self.charges_live
            + self.shipments_live
    }
}

/// `shopctl restore`: every database of the backup into a new `<prefix><service>`.
pub async fn restore(dbs: &Databases, args: &RestoreArgs) -> anyhow::Result<RestoreReport> {
    check_prefix(&dbs.prefix)?;
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(args.dir.join(MANIFEST))
            .with_context(|| format!("{} has no {MANIFEST}", args.dir.display()))?,
    )
    .context("manifest.json does not parse")?;
    ensure!(
        manifest.format == FORMAT,
        "manifest format {}",
        manifest.format
    );
    for d in &manifest.databases {
        let len = std::fs::metadata(args.dir.join(&d.file))
            .with_context(|| format!("{} is missing", d.file))?
            .len();
        ensure!(
            len == d.bytes,
            "{} has {len} bytes, the manifest says {}",
            d.file,
            d.bytes
        );
    }
    let pg_restore = pg_tool("pg_restore", args.pg_bin.as_deref())?;
    let pg_restore_version = tool_version(&pg_restore).await?;
    let server = server_pool(&dbs.url).await?;
    for d in &manifest.databases {
        let target = format!("{}{}", dbs.prefix, d.service);
        ensure!(
            args.replace || !database_exists(&server, &target).await?,
            "{target} exists: restore under another --db-prefix, or --replace to drop it"
        );
    }
    let server_next_xid = next_xid(&server).await?;
    if server_next_xid < manifest.order_next_xid {
        bail!(
            "this server's next transaction id ({server_next_xid}) is below the backup's \
             ({}): the order projection reads events in transaction-id order and would skip \
             every new one. On a new cluster, before restoring: stop it, `pg_resetwal -e {} \
             DATADIR`, start it (docs/BACKUP.md)",
            manifest.order_next_xid,
            (manifest.order_next_xid >> 32) + 1
        );
    }
    let clock = Instant::now();
    let mut databases = Vec::new();
    for d in &manifest.databases {
        let target = format!("{}{}", dbs.prefix, d.service);
        let t = Instant::now();
        if args.replace {
            drop_database(&server, &target).await?;
        }
        sqlx::query(&format!("CREATE DATABASE \"{target}\" TEMPLATE template0"))
            .execute(&server)
            .await
            .with_context(|| format!("create {target}"))?;
        let (uri, password) = libpq_uri(&dbs.url, &target)?;
        let mut restore_args = vec![
            "--no-owner".into(),
            "--exit-on-error".into(),
            "--no-password".into(),
            format!("--dbname={uri}"),
        ];
        if args.jobs > 1 {
            restore_args.push(format!("--jobs={}", args.jobs));
        }
        restore_args.push(args.dir.join(&d.file).display().to_string());
        if let Err(e) = run_tool(&pg_restore, &restore_args, password.as_deref()).await {
            // Leave no half-restored database behind to block the next attempt.
            let _ = drop_database(&server, &target).await;
            return Err(e.context(format!("restore {} into {target}", d.file)));
        }
        databases.push(Restored {
            service: d.service.clone(),
            database: target,
            seconds: t.elapsed().as_secs_f64(),
            bytes: d.bytes,
        });
    }
    let seconds = clock.elapsed().as_secs_f64();
    server.close().await;

    let order = service_pool(dbs, "order").await?;
    let max_event_tx: i64 = sqlx::query_scalar("SELECT coalesce(max(tx), 0) FROM events")
        .fetch_one(&order)
        .await?;
    ensure!(
        max_event_tx < server_next_xid,
        "restored events have transaction ids up to {max_event_tx}, this server is at \
         {server_next_xid}: the order projection would skip new events (docs/BACKUP.md)"
    );
    let (sagas_ended, sagas_in_flight): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ('COMPLETED', 'CANCELLED')),
                count(*) FILTER (WHERE state NOT IN ('COMPLETED', 'CANCELLED'))
         FROM saga",
    )
    .fetch_one(&order)
    .await?;
    order.close().await;
    let (mut outbox_pending, mut inbox_rows) = (BTreeMap::new(), BTreeMap::new());
    for d in &manifest.databases {
        let pool = service_pool(dbs, &d.service).await?;
        let b = shop_messaging::outbox::backlog(&pool).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&pool)
            .await?;
        outbox_pending.insert(d.service.clone(), b.pending);
        inbox_rows.insert(d.service.clone(), n);
        pool.close().await;
    }
    let order_dump_start = manifest
        .databases
        .iter()
        .find(|d| d.service == "order")
        .map_or(manifest.started_at, |d| d.started_at);
    let orphans = orphans(dbs, order_dump_start - ORPHAN_MARGIN).await?;
    Ok(RestoreReport {
        prefix: dbs.prefix.clone(),
        pg_restore: pg_restore_version,
        seconds,
        databases,
        sagas_ended,
        sagas_in_flight,
        outbox_pending,
        inbox_rows,
        server_next_xid,
        max_event_tx,
        orphans,
    })
}

/// The participants' rows created since `since` whose order the order database does not have.
/// (An order placed before the order dump began is in it; its participants' rows are newer than
/// its placement, so older rows need no look.)
pub async fn orphans(dbs: &Databases, since: DateTime<Utc>) -> anyhow::Result<Orphans> {
    let inventory = service_pool(dbs, "inventory").await?;
    let reservations: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT r.order_id, r.status, coalesce(sum(l.quantity), 0)::bigint
         FROM reservation r LEFT JOIN reservation_line l USING (order_id)
         WHERE r.created_at >= $1 GROUP BY r.order_id, r.status",
    )
    .bind(since)
    .fetch_all(&inventory)
    .await?;
    inventory.close().await;
    let payment = service_pool(dbs, "payment").await?;
    let charges: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT order_id, status, amount_minor FROM charge WHERE created_at >= $1")
            .bind(since)
            .fetch_all(&payment)
            .await?;
    payment.close().await;
    let shipping = service_pool(dbs, "shipping").await?;
    let shipments: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, status FROM shipment WHERE created_at >= $1")
            .bind(since)
            .fetch_all(&shipping)
            .await?;
    shipping.close().await;

    let ids: Vec<uuid::Uuid> = reservations
        .iter()
        .map(|r| &r.0)
        .chain(charges.iter().map(|c| &c.0))
        .chain(shipments.iter().map(|s| &s.0))
        .filter_map(|id| uuid::Uuid::parse_str(id).ok())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let order = service_pool(dbs, "order").await?;
    let known: HashSet<uuid::Uuid> =
        sqlx::query_scalar("SELECT saga_id FROM saga WHERE saga_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&order)
            .await?
            .into_iter()
            .collect();
    order.close().await;
    // An id that is no UUID cannot be an order's.
    let unknown = |id: &str| uuid::Uuid::parse_str(id).map_or(true, |u| !known.contains(&u));
    let note = |o: &mut Orphans, what: String| {
        o.rows += 1;
        if o.examples.len() < 10 {
            o.examples.push(what);
        }
    };
    let mut o = Orphans::default();
    for (id, status, units) in reservations.iter().filter(|r| unknown(&r.0)) {
        match status.as_str() {
            "reserved" => {
                o.reservations_held += 1;
                o.units_held += units;
            }
            "committed" => o.reservations_committed += 1,
            _ => {}
        }
        note(&mut o, format!("inventory {id} {status} ({units} units)"));
    }
    for (id, status, minor) in charges.iter().filter(|c| unknown(&c.0)) {
        if status == "charged" {
            o.charges_live += 1;
            o.charged_minor += minor;
        }
        note(&mut o, format!("payment {id} {status} ({minor})"));
    }
    for (id, status) in shipments.iter().filter(|s| unknown(&s.0)) {
        if matches!(status.as_str(), "created" | "in_transit" | "delivered") {
            o.shipments_live += 1;
        }
        note(&mut o, format!("shipping {id} {status}"));
    }
    Ok(o)
}

pub fn print_restore(r: &RestoreReport, dir: &Path) {
    println!(
        "restore of {} into {}* with {}",
        dir.display(),
        r.prefix,
        r.pg_restore
    );
    println!(
        "  {:<10} {:<24} {:>8} {:>12}",
        "service", "database", "seconds", "bytes"
    );
    for d in &r.databases {
        println!(
            "  {:<10} {:<24} {:>8.3} {:>12}",
            d.service, d.database, d.seconds, d.bytes
        );
    }
    println!("  total {:.3} s", r.seconds);
    println!(
        "  sagas: {} ended, {} in flight (they go on when the order service starts)",
        r.sagas_ended, r.sagas_in_flight
    );
    let figures = |m: &BTreeMap<String, i64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  outbox rows to publish again: {}",
        figures(&r.outbox_pending)
    );
    println!("  inbox rows: {}", figures(&r.inbox_rows));
    println!(
        "  transaction ids: restored events up to {}, this server at {}",
        r.max_event_tx, r.server_next_xid
    );
    let o = &r.orphans;
    println!(
        "  orphans (participants' records of orders placed after the order dump began; no saga \
         will end them): {} row(s), {} live: {} held reservation(s) ({} units), {} committed, {} \
         charge(s) ({} minor units), {} shipment(s)",
        o.rows,
        o.live(),
        o.reservations_held,
        o.units_held,
        o.reservations_committed,
        o.charges_live,
        o.charged_minor,
        o.shipments_live
    );
    for e in &o.examples {
        println!("      {e}");
    }
}

pub async fn run_restore(dbs: &Databases, args: &RestoreArgs) -> anyhow::Result<()> {
    let r = restore(dbs, args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_restore(&r, &args.dir);
    }
    Ok(())
}
