//! `shopctl backup` and `shopctl restore`: the four PostgreSQL databases (`<prefix>order`,
//! `<prefix>inventory`, `<prefix>payment`, `<prefix>shipping`) with `pg_dump -Fc`, one after
//! another, the order database first, and back with `pg_restore --no-owner` into freshly created
//! databases under any prefix.
//!
//! The four dumps are four snapshots taken at four instants, not one. What is consistent and how
//! the sagas reconcile the rest: docs/BACKUP.md. In short: a saga that had ended in the order
//! dump had every participant's effect committed before its end was recorded, so before the
//! order dump began, so in the participants' later dumps. Participants may be ahead for sagas
//! in flight: the saga re-sends its step on timeout and each participant answers by order id.
//! While the databases are dumped, the order service's outbox relay is held ([`RelayPause`]), so
//! no command leaves it: every participant effect in the dumps then comes from a command the
//! order dump knows of. Without that (`--no-pause`) the participants can hold effects of orders
//! placed after the order dump began, which no saga in the copy knows (`restore` lists them:
//! [`Orphans`]), and of steps a saga in the copy had not asked for yet, which nothing undoes if
//! the saga decides otherwise after the restore.
//!
//! The order projection orders events by the id of the transaction that wrote them (`events.tx`),
//! so a copy must go to a server whose transaction ids are already past every restored one;
//! `restore` refuses a server that is behind (a new cluster: `pg_resetwal -e`, see BACKUP.md).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    time::Instant,
};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::process::Command;

use crate::outbox::{Databases, service_pool};

/// The dump order: the order database first (the saga's record must be the oldest snapshot),
/// then the participants.
pub const DUMP_ORDER: [&str; 4] = ["order", "inventory", "payment", "shipping"];
const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;
/// Participant rows created this long before the order dump started are looked at too when
/// looking for orphans (clock differences between servers).
const ORPHAN_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[derive(Args)]
pub struct BackupArgs {
    /// Directory for the four dumps and manifest.json (created; must not hold a backup yet).
    #[arg(long)]
    pub dir: PathBuf,
    /// Where pg_dump is (default: the newest /usr/lib/postgresql/*/bin, then PATH).
    #[arg(long, env = "SHOP_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Print the manifest as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Do not hold the order service's outbox relay while the databases are dumped. Sagas are
    /// not delayed then, but the participants' dumps may hold effects of commands the order
    /// dump does not know (docs/BACKUP.md); `restore` reports the orphans among them.
    #[arg(long)]
    pub no_pause: bool,
    /// Give up when the order relay does not let go of its buckets within this many seconds
    /// (a round waiting on a broker that is down holds them).
    #[arg(long, default_value_t = 30)]
    pub pause_timeout: u64,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A directory `shopctl backup` wrote.
    #[arg(long)]
    pub dir: PathBuf,
    /// Drop and re-create a target database that exists (default: refuse to touch it).
    #[arg(long)]
    pub replace: bool,
    /// Parallel jobs per database (`pg_restore --jobs`).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Where pg_restore is (default: the newest /usr/lib/postgresql/*/bin, then PATH).
    #[arg(long, env = "SHOP_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What `backup` wrote, in `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The prefix the databases had (`shop_`).
    pub source_prefix: String,
    /// host:port of the server (no credentials).
    pub server: String,
    pub server_version: String,
    /// `pg_dump --version`.
    pub pg_dump: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub seconds: f64,
    pub bytes: u64,
    /// The server's next transaction id when the order dump had ended: every `events.tx` in it
    /// is below this, and a server that restores the copy must be past it.
    pub order_next_xid: i64,
    /// Whether the order relay was held from before the order dump until the last dump ended
    /// (no command left the order service meanwhile), and for how long.
    pub order_relay_paused: bool,
    pub paused_seconds: f64,
    /// In the order they were dumped.
    pub databases: Vec<Dump>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dump {
    pub service: String,
    pub database: String,
    /// File name inside the backup directory.
    pub file: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub seconds: f64,
    pub bytes: u64,
}

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

/// `--pg-url` as a libpq URI for one database, without the password (which goes to the child
/// in `PGPASSWORD`, not on its command line).
fn libpq_uri(url: &str, database: &str) -> anyhow::Result<(String, Option<String>)> {
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
        .context("--pg-url must be a postgres:// URL")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    let (host, user, password) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((u, p)) => (host, Some(u), Some(percent_decode(p)?)),
            None => (host, Some(userinfo), None),
        },
        None => (authority, None, None),
    };
    let user = user.map_or(String::new(), |u| format!("{u}@"));
    Ok((
        format!("{scheme}://{user}{host}/{database}{query}"),
        password,
    ))
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("bad percent-encoding in --pg-url")?;
            out.push(u8::from_str_radix(hex, 16).context("bad percent-encoding in --pg-url")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("--pg-url password is not UTF-8")
}

/// host:port of `--pg-url`, for the manifest.
fn server_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// Database names are built from the prefix: keep them plain identifiers.
fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    ensure!(
        !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "--db-prefix {prefix:?}: use lower-case letters, digits and _"
    );
    Ok(())
}

/// `tool` (pg_dump, pg_restore) from `--pg-bin`, else the newest /usr/lib/postgresql/N/bin that
/// has it, else PATH.
fn pg_tool(tool: &str, pg_bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = pg_bin {
        let p = dir.join(tool);
        ensure!(p.is_file(), "{} not found", p.display());
        return Ok(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(tool);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{tool} not found in /usr/lib/postgresql/*/bin or PATH (--pg-bin DIR)")
        })
}

async fn tool_version(tool: &Path) -> anyhow::Result<String> {
    let out = Command::new(tool).arg("--version").output().await?;
    ensure!(out.status.success(), "{} --version failed", tool.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a pg_dump / pg_restore with the password in its environment; its stderr on failure.
async fn run_tool(
    tool: &Path,
    args: &[String],
    password: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(tool);
    cmd.args(args).kill_on_drop(true);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("run {}", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

async fn server_pool(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("--pg-url is not a PostgreSQL URL")?;
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot connect to --pg-url")
}

/// The next transaction id the server will hand out (takes none).
async fn next_xid(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?,
    )
}

/// The order service's outbox relay, held: a session on the order database holds the advisory
/// lock of every outbox bucket, the lock a relay round must take (`pg_try_advisory_xact_lock(
/// hashtext('shop.outbox_bucket'), bucket)`, `shop_messaging::outbox`) before it publishes a
/// bucket's rows. Taking them waits for a round in progress to commit its marks. While they are
/// held, the order service works on (orders are placed, replies applied, sagas decide) but no
/// command leaves it: they wait in its outbox. So every participant effect in the participants'
/// dumps comes from a command the order dump has (docs/BACKUP.md). The locks are the session's:
/// they go with it if shopctl dies.
struct RelayPause {
    conn: sqlx::PgConnection,
}

/// The relay's bucket lock namespace (`shop_messaging::outbox`, the claim query).
const BUCKET_LOCK_SPACE: &str = "shop.outbox_bucket";

impl RelayPause {
    async fn hold(dbs: &Databases, timeout_secs: u64) -> anyhow::Result<Self> {
        use sqlx::Connection as _;
        let options = PgConnectOptions::from_str(&dbs.url)
            .context("--pg-url is not a PostgreSQL URL")?
            .database(&format!("{}order", dbs.prefix));
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .context("cannot connect to the order database")?;
        sqlx::query(&format!("SET lock_timeout = '{timeout_secs}s'"))
            .execute(&mut conn)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(pg_advisory_lock(hashtext($1), bucket)) FROM outbox_bucket",
        )
        .bind(BUCKET_LOCK_SPACE)
        .fetch_one(&mut conn)
        .await
        .with_context(|| {
            format!(
                "the order relay did not let go of its outbox buckets within {timeout_secs} s \
                 (a round waiting on the broker?); --no-pause backs up without holding it"
            )
        })?;
        ensure!(held > 0, "the order database has no outbox buckets");
        Ok(Self { conn })
    }

    async fn release(mut self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }
}

/// `shopctl backup`: dump the four databases, order first, and write the manifest.
pub async fn backup(dbs: &Databases, args: &BackupArgs) -> anyhow::Result<Manifest> {
    check_prefix(&dbs.prefix)?;
    let manifest_path = args.dir.join(MANIFEST);
    ensure!(
        !manifest_path.exists(),
        "{} holds a backup already",
        args.dir.display()
    );
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let pg_dump = pg_tool("pg_dump", args.pg_bin.as_deref())?;
    let pg_dump_version = tool_version(&pg_dump).await?;
    let server = server_pool(&dbs.url).await?;
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&server)
        .await?;
    let (started_at, clock) = (Utc::now(), Instant::now());
    let pause = if args.no_pause {
        None
    } else {
        Some(RelayPause::hold(dbs, args.pause_timeout).await?)
    };
    let paused = Instant::now();
    let mut databases = Vec::new();
    let mut order_next_xid = 0;
    for service in DUMP_ORDER {
        let database = format!("{}{service}", dbs.prefix);
        let (uri, password) = libpq_uri(&dbs.url, &database)?;
        let file = format!("{service}.dump");
        let path = args.dir.join(&file);
        let (at, t) = (Utc::now(), Instant::now());
        run_tool(
            &pg_dump,
            &[
                "--format=custom".into(),
                "--no-password".into(),
                // Wait at most this long for a table lock (a DDL in progress), then fail.
                "--lock-wait-timeout=60s".into(),
                format!("--file={}", path.display()),
                format!("--dbname={uri}"),
            ],
            password.as_deref(),
        )
        .await
        .with_context(|| format!("dump {database}"))?;
        if service == "order" {
            order_next_xid = next_xid(&server).await?;
        }
        let bytes = std::fs::metadata(&path)?.len();
        databases.push(Dump {
            service: service.to_owned(),
            database,
            file,
            started_at: at,
            ended_at: Utc::now(),
            seconds: t.elapsed().as_secs_f64(),
            bytes,
        });
    }
    let order_relay_paused = pause.is_some();
    if let Some(p) = pause {
        p.release().await?;
    }
    let paused_seconds = if order_relay_paused {
        paused.elapsed().as_secs_f64()
    } else {
        0.0
    };
    server.close().await;
    let manifest = Manifest {
        format: FORMAT,
        source_prefix: dbs.prefix.clone(),
        server: server_of(&dbs.url),
        server_version,
        pg_dump: pg_dump_version,
        started_at,
        ended_at: Utc::now(),
        seconds: clock.elapsed().as_secs_f64(),
        bytes: databases.iter().map(|d| d.bytes).sum(),
        order_next_xid,
        order_relay_paused,
        paused_seconds,
        databases,
    };
    let tmp = args.dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp, &manifest_path)?;
    Ok(manifest)
}

pub fn print_backup(m: &Manifest, dir: &Path) {
    println!(
        "backup of {}* on {} (PostgreSQL {}) to {} with {}",
        m.source_prefix,
        m.server,
        m.server_version,
        dir.display(),
        m.pg_dump
    );
    println!(
        "  {:<10} {:<24} {:>15} {:>8} {:>12}",
        "service", "database", "started (UTC)", "seconds", "bytes"
    );
    for d in &m.databases {
        println!(
            "  {:<10} {:<24} {:>15} {:>8.3} {:>12}",
            d.service,
            d.database,
            d.started_at.format("%H:%M:%S%.3f"),
            d.seconds,
            d.bytes
        );
    }
    println!(
        "  total {:.3} s, {} bytes; dumped one after another, order first (docs/BACKUP.md)",
        m.seconds, m.bytes
    );
    if m.order_relay_paused {
        println!(
            "  the order relay was held for {:.3} s: no command left the order service while \
             the databases were dumped",
            m.paused_seconds
        );
    } else {
        println!(
            "  --no-pause: commands went on; `shopctl restore` lists the participants' records \
             of orders the order dump does not have"
        );
    }
}

async fn database_exists(server: &PgPool, name: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
    )
    .bind(name)
    .fetch_one(server)
    .await?)
}

async fn drop_database(server: &PgPool, name: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(server)
        .await?;
    Ok(())
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

pub async fn run_backup(dbs: &Databases, args: &BackupArgs) -> anyhow::Result<()> {
    let m = backup(dbs, args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        print_backup(&m, &args.dir);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_names_the_database_and_keeps_the_password_off_the_command_line() {
        let (uri, pw) =
            libpq_uri("postgres://shop:s%40p@127.0.0.1:5432/postgres", "x_order").expect("uri");
        assert_eq!(uri, "postgres://shop@127.0.0.1:5432/x_order");
        assert_eq!(pw.as_deref(), Some("s@p"));
        let (uri, pw) =
            libpq_uri("postgresql://db.example:6432?sslmode=require", "y").expect("uri");
        assert_eq!(uri, "postgresql://db.example:6432/y?sslmode=require");
        assert_eq!(pw, None);
        assert!(libpq_uri("host=127.0.0.1 dbname=postgres", "y").is_err());
        assert_eq!(
            server_of("postgres://shop:shop@127.0.0.1:5432/postgres"),
            "127.0.0.1:5432"
        );
    }

    #[test]
    fn prefixes_are_plain_identifiers() {
        assert!(check_prefix("shop_").is_ok());
        assert!(check_prefix("r01234_").is_ok());
        for bad in ["", "Shop_", "a\"; DROP", "x-y_"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
