//! What PostgreSQL did per saga, from `pg_stat_database` deltas over a rate's window: commits,
//! and rows inserted / updated / deleted, per service database. This is the measured side of
//! the desk count ("about 20-24 commits per saga over four databases"). The counters include
//! everything else the databases did meanwhile (the checker, the relays' idle polls), which is
//! part of the price.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

/// `datname -> [commits, inserted, updated, deleted]`.
pub type Snapshot = BTreeMap<String, [i64; 4]>;

/// The counters of the service databases (`<prefix>order`, `..payment`, ...).
pub async fn sample(pool: &PgPool, db_prefix: &str) -> anyhow::Result<Snapshot> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT datname::text, xact_commit, tup_inserted, tup_updated, tup_deleted
         FROM pg_stat_database WHERE datname = ANY($1)",
    )
    .bind(
        ["order", "payment", "inventory", "shipping"]
            .map(|s| format!("{db_prefix}{s}"))
            .to_vec(),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(db, c, i, u, d)| (db, [c, i, u, d]))
        .collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct DbPerSaga {
    pub database: String,
    pub commits: f64,
    pub inserted: f64,
    pub updated: f64,
    pub deleted: f64,
}

/// Per completed saga, per database, and the total as a last row named `all`.
pub fn per_saga(before: &Snapshot, after: &Snapshot, sagas: usize) -> Vec<DbPerSaga> {
    let n = sagas.max(1) as f64;
    let per = |v: i64| (v as f64 / n * 100.0).round() / 100.0;
    let mut total = [0_i64; 4];
    let mut out: Vec<DbPerSaga> = after
        .iter()
        .map(|(db, a)| {
            let b = before.get(db).copied().unwrap_or_default();
            let d: Vec<i64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
            for (t, x) in total.iter_mut().zip(&d) {
                *t += x;
            }
            DbPerSaga {
                database: db.clone(),
                commits: per(d[0]),
                inserted: per(d[1]),
                updated: per(d[2]),
                deleted: per(d[3]),
            }
        })
        .collect();
    out.push(DbPerSaga {
        database: "all".into(),
        commits: per(total[0]),
        inserted: per(total[1]),
        updated: per(total[2]),
        deleted: per(total[3]),
    });
    out
}

pub fn print(rows: &[DbPerSaga]) {
    println!(
        "  postgres per completed saga         {:>8} {:>9} {:>8} {:>8}",
        "commits", "inserted", "updated", "deleted"
    );
    for r in rows {
        println!(
            "    {:<32} {:>8.2} {:>9.2} {:>8.2} {:>8.2}",
            r.database, r.commits, r.inserted, r.updated, r.deleted
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_divided_by_the_sagas_and_summed() {
        let before = Snapshot::from([("shop_order".into(), [100, 10, 5, 0])]);
        let after = Snapshot::from([
            ("shop_order".into(), [140, 30, 25, 2]),
            ("shop_payment".into(), [20, 4, 4, 0]),
        ]);
        let rows = per_saga(&before, &after, 4);
        assert_eq!(rows[0].commits, 10.0);
        assert_eq!(
            rows[1].commits, 5.0,
            "a database first seen after: all of it"
        );
        let all = rows.last().expect("total");
        assert_eq!(
            (all.database.as_str(), all.commits, all.inserted),
            ("all", 15.0, 6.0)
        );
    }
}
