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
    path::{Path, PathBuf},
    str::FromStr,
    time::Instant,
};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use crate::outbox::Databases;

mod pg;
mod restore;

use pg::*;
pub use restore::*;

/// The dump order: the order database first (the saga's record must be the oldest snapshot),
/// then the participants.
pub const DUMP_ORDER: [&str; 4] = ["order", "inventory", "payment", "shipping"];

const MANIFEST: &str = "manifest.json";

const FORMAT: u32 = 1;

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

pub async fn run_backup(dbs: &Databases, args: &BackupArgs) -> anyhow::Result<()> {
    let m = backup(dbs, args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        print_backup(&m, &args.dir);
    }
    Ok(())
}
