//! The physical limits of the same box, measured in the same run: what PostgreSQL alone does
//! with commits like a saga's, beside what the saga does. (Kafka's: [`super::kafka_limits`].)
//!
//! - pgbench TPC-B at 8 clients, and at 1 client (one client's commits/s: the fsync floor).
//! - A chain of 20 sequential transactions over four scratch databases, alternating like a
//!   saga's ([`CHAIN`]), run by K concurrent chains (the ceiling of the same commits through
//!   PostgreSQL alone) and by one (the serial latency of one saga's commits).

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::{PgPool, postgres::PgConnectOptions};

use super::stats::{self, Latency, Rng, per_sec};

#[derive(Debug, Clone, Serialize)]
pub struct Pgbench {
    pub clients: u32,
    pub seconds: u32,
    pub tps: f64,
    pub latency_avg_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainRun {
    pub concurrency: usize,
    pub seconds: f64,
    pub transactions_per_chain: usize,
    pub chains: usize,
    pub chains_per_sec: f64,
    pub commits_per_sec: f64,
    pub chain: Latency,
}

const PGBENCH_DB: &str = "shop_bench_pgbench";
const PGBENCH_SCALE: u32 = 8;

fn server_url(pg_url: &str, db: &str) -> anyhow::Result<String> {
    Ok(format!(
        "{}/{db}",
        pg_url
            .rsplit_once('/')
            .context("--pg-url has no database part")?
            .0
    ))
}

/// pgbench's TPC-B-like runs (8 clients, then 1) on a scratch database of the same server.
pub async fn pgbench(pg_url: &str) -> anyhow::Result<Vec<Pgbench>> {
    let options: PgConnectOptions = pg_url.parse()?;
    let url = server_url(pg_url, PGBENCH_DB)?;
    shop_core::db::drop_database(&url).await?;
    shop_core::db::create_database_if_missing(&options.clone().database(PGBENCH_DB)).await?;
    let bin = [
        "/usr/lib/postgresql/17/bin/pgbench",
        "/usr/lib/postgresql/16/bin/pgbench",
        "/usr/lib/postgresql/15/bin/pgbench",
        "pgbench",
    ]
    .into_iter()
    .find(|b| std::path::Path::new(b).exists() || which(b))
    .context("pgbench not found (Debian: postgresql-client or postgresql-15)")?;
    let password = std::env::var("PGPASSWORD").unwrap_or_else(|_| "shop".into());
    let command = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.env("PGPASSWORD", &password)
            .args([
                "-h",
                options.get_host(),
                "-p",
                &options.get_port().to_string(),
                "-U",
                options.get_username(),
            ])
            .args(args)
            .arg(PGBENCH_DB);
        cmd
    };
    let scale = PGBENCH_SCALE.to_string();
    let init = command(&["-i", "-q", "-s", &scale]).output().await?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut runs = Vec::new();
    for (clients, threads) in [(8_u32, 2_u32), (1, 1)] {
        let (c, j) = (clients.to_string(), threads.to_string());
        let out = command(&["-c", &c, "-j", &j, "-T", "10"]).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        runs.push(Pgbench {
            clients,
            seconds: 10,
            tps: pgbench_value(&text, "tps =").context("no tps line in pgbench's output")?,
            latency_avg_ms: pgbench_value(&text, "latency average =").unwrap_or(0.0),
        });
    }
    shop_core::db::drop_database(&url).await?;
    Ok(runs)
}

/// The number after `prefix` on the line of pgbench's summary that starts with it.
pub fn pgbench_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).exists()))
}

/// The four scratch databases, in saga order of appearance.
const CHAIN_DBS: [&str; 4] = [
    "shop_bench_chain_order",
    "shop_bench_chain_inventory",
    "shop_bench_chain_payment",
    "shop_bench_chain_shipping",
];
const ORDER: usize = 0;
const INVENTORY: usize = 1;
const PAYMENT: usize = 2;
const SHIPPING: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Tx {
    /// A handler's transaction: the incoming fact (event or inbox row), optionally a hot row's
    /// update (stock level, balance, read model), the outgoing outbox row.
    Effect { hot_row: bool },
    /// The relay marking the outbox row it published.
    Relay,
}

/// One saga's commits: placed, then for each of the four steps the participant's handler and
/// the order's handling of the reply, every one of them followed by its relay's commit; then
/// the read model's projection and its relay.
const CHAIN: [(usize, Tx); 20] = [
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
    (INVENTORY, Tx::Effect { hot_row: true }),
    (INVENTORY, Tx::Relay),
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
    (PAYMENT, Tx::Effect { hot_row: true }),
    (PAYMENT, Tx::Relay),
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
    (SHIPPING, Tx::Effect { hot_row: false }),
    (SHIPPING, Tx::Relay),
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
    (INVENTORY, Tx::Effect { hot_row: true }),
    (INVENTORY, Tx::Relay),
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
    (ORDER, Tx::Effect { hot_row: true }),
    (ORDER, Tx::Relay),
];
const HOT_ROWS: usize = 1000;

/// Runs the chain with each of `concurrency` (after a short unmeasured warm-up) on fresh
/// scratch databases, dropped afterwards.
pub async fn chains(
    pg_url: &str,
    concurrency: &[usize],
    seconds: u64,
    seed: u64,
) -> anyhow::Result<Vec<ChainRun>> {
    let options: PgConnectOptions = pg_url.parse()?;
    let most = concurrency.iter().copied().max().unwrap_or(1);
    let mut pools = Vec::new();
    for db in CHAIN_DBS {
        shop_core::db::drop_database(&server_url(pg_url, db)?).await?;
        shop_core::db::create_database_if_missing(&options.clone().database(db)).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(u32::try_from(most.clamp(1, 32)).unwrap_or(32))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().database(db))
            .await?;
        for ddl in [
            "CREATE TABLE t (id bigserial PRIMARY KEY, k text NOT NULL, payload bytea NOT NULL)",
            "CREATE TABLE acct (id int PRIMARY KEY, n bigint NOT NULL)",
        ] {
            sqlx::query(ddl).execute(&pool).await?;
        }
        sqlx::query("INSERT INTO acct SELECT g, 0 FROM generate_series(1, $1) g")
            .bind(HOT_ROWS as i32)
            .execute(&pool)
            .await?;
        pools.push(pool);
    }
    let mut runs = Vec::new();
    for &k in concurrency {
        run_chains(&pools, k, Duration::from_secs(2), seed).await?;
        let (chains, elapsed, h) =
            run_chains(&pools, k, Duration::from_secs(seconds), seed).await?;
        let secs = elapsed.as_secs_f64();
        runs.push(ChainRun {
            concurrency: k,
            seconds: stats::round2(secs),
            transactions_per_chain: CHAIN.len(),
            chains,
            chains_per_sec: per_sec(chains, secs),
            commits_per_sec: per_sec(chains * CHAIN.len(), secs),
            chain: Latency::from_micros(&h),
        });
    }
    for (pool, db) in pools.into_iter().zip(CHAIN_DBS) {
        pool.close().await;
        shop_core::db::drop_database(&server_url(pg_url, db)?).await?;
    }
    Ok(runs)
}

/// `k` tasks, each running chains back to back until `for_` has passed; (chains, elapsed until
/// the last one ended, chain durations in µs).
async fn run_chains(
    pools: &[PgPool],
    k: usize,
    for_: Duration,
    seed: u64,
) -> anyhow::Result<(usize, Duration, Histogram<u64>)> {
    let started = Instant::now();
    let deadline = started + for_;
    let tasks: Vec<_> = (0..k.max(1))
        .map(|i| {
            let pools = pools.to_vec();
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
            tokio::spawn(async move {
                let mut h = stats::micros_histogram()?;
                let mut n = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    chain(&pools, &mut rng).await?;
                    stats::record(&mut h, t.elapsed());
                    n += 1;
                }
                anyhow::Ok((n, h))
            })
        })
        .collect();
    let mut total = 0;
    let mut all = stats::micros_histogram()?;
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        all.add(&h)?;
    }
    Ok((total, started.elapsed(), all))
}

/// One saga's worth of commits, one after the other.
async fn chain(pools: &[PgPool], rng: &mut Rng) -> anyhow::Result<()> {
    let payload = vec![b'x'; 300];
    let key = format!("k-{}", rng.next_u64());
    let mut outbox = [0_i64; 4];
    for (db, tx) in CHAIN {
        let pool = pools.get(db).context("chain database")?;
        let mut t = pool.begin().await?;
        match tx {
            Tx::Effect { hot_row } => {
                sqlx::query("INSERT INTO t (k, payload) VALUES ($1, $2)")
                    .bind(&key)
                    .bind(&payload)
                    .execute(&mut *t)
                    .await?;
                if hot_row {
                    sqlx::query("UPDATE acct SET n = n + 1 WHERE id = $1")
                        .bind((rng.below(HOT_ROWS) + 1) as i32)
                        .execute(&mut *t)
                        .await?;
                }
                outbox[db] =
                    sqlx::query_scalar("INSERT INTO t (k, payload) VALUES ($1, $2) RETURNING id")
                        .bind(&key)
                        .bind(&payload)
                        .fetch_one(&mut *t)
                        .await?;
            }
            Tx::Relay => {
                sqlx::query("SELECT payload FROM t WHERE id = $1 FOR UPDATE")
                    .bind(outbox[db])
                    .fetch_optional(&mut *t)
                    .await?;
                sqlx::query("UPDATE t SET k = 'sent' WHERE id = $1")
                    .bind(outbox[db])
                    .execute(&mut *t)
                    .await?;
            }
        }
        t.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_summary_lines_are_read() {
        let out = "pgbench (15.5)\ntransaction type: <builtin: TPC-B (sort of)>\n\
                   number of clients: 8\nlatency average = 3.412 ms\n\
                   initial connection time = 12.3 ms\n\
                   tps = 2344.567891 (without initial connection time)\n";
        assert_eq!(pgbench_value(out, "tps ="), Some(2344.567891));
        assert_eq!(pgbench_value(out, "latency average ="), Some(3.412));
        assert_eq!(pgbench_value(out, "nothing ="), None);
    }

    #[test]
    fn the_chain_is_twenty_commits_over_the_four_databases() {
        assert_eq!(CHAIN.len(), 20);
        for db in [ORDER, INVENTORY, PAYMENT, SHIPPING] {
            assert!(CHAIN.iter().any(|(d, _)| *d == db));
        }
        // Every relay marks a row its database's handler wrote just before.
        for pair in CHAIN.chunks(2) {
            assert!(matches!(pair, [(a, Tx::Effect { .. }), (b, Tx::Relay)] if a == b));
        }
    }
}
