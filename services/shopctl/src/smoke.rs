//! The smoke flow of `make run`: events go outbox -> broker -> inbox, and the result is checked.
//!
//! Two scratch databases stand for two services (they never share one): the *producer* advances
//! per-aggregate counters and enqueues a tick per increment in the same transaction; two outbox
//! relays publish; the *consumer* applies the ticks through its inbox, checking order per
//! aggregate. The summary says how many were written, published, applied, duplicated,
//! dead-lettered and lost, and how long it took.

use std::{
    str::FromStr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use shop_messaging::{
    inbox::{Inbox, InboxConfig},
    kafka::KafkaSettings,
    outbox::{Relay, RelayConfig},
    smoke,
};
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug, Clone)]
pub struct SmokeArgs {
    /// Events to write.
    #[arg(long, default_value_t = 5000)]
    pub events: u64,
    /// Aggregates (Kafka keys) the events are spread over.
    #[arg(long, default_value_t = 100)]
    pub aggregates: u64,
    /// Concurrent writer transactions.
    #[arg(long, default_value_t = 8)]
    pub writers: u64,
    /// Outbox relays running at once.
    #[arg(long, default_value_t = 2)]
    pub relays: u64,
    /// Give up waiting for the consumer after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct SmokeSummary {
    pub events_written: u64,
    pub events_published: u64,
    pub events_applied: i64,
    pub duplicates_skipped: u64,
    pub dead_lettered: u64,
    pub applied_twice: i64,
    pub lost: i64,
    pub write_seconds: f64,
    pub total_seconds: f64,
    pub writes_per_sec: f64,
    pub applied_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl SmokeSummary {
    pub fn is_consistent(&self) -> bool {
        self.lost == 0 && self.applied_twice == 0 && self.dead_lettered == 0
    }
}

/// A fresh database `name` on the server of `pg_url`, with the outbox/inbox and smoke tables.
pub async fn scratch_database(pg_url: &str, name: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(pg_url)?.database(name);
    let url = format!(
        "{}/{name}",
        pg_url
            .rsplit_once('/')
            .context("pg url has no database part")?
            .0
    );
    shop_core::db::drop_database(&url).await?;
    shop_core::db::create_database_if_missing(&options).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect_with(options)
        .await?;
    shop_messaging::migrate(&pool).await?;
    smoke::migrate(&pool).await?;
    Ok(pool)
}

pub async fn run(
    pg_url: &str,
    kafka: &KafkaSettings,
    args: &SmokeArgs,
) -> anyhow::Result<SmokeSummary> {
    let producer_db = scratch_database(pg_url, "shop_smoke_producer").await?;
    let consumer_db = scratch_database(pg_url, "shop_smoke_consumer").await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("shop.smoke.{}", &run_id[..12]);
    kafka
        .ensure_topics(&[
            topic.as_str(),
            shop_messaging::kafka::dead_letter_topic(&topic).as_str(),
        ])
        .await?;

    let stop = CancellationToken::new();
    let relays: Vec<Relay> = (0..args.relays)
        .map(|_| {
            Relay::postgres(
                producer_db.clone(),
                kafka,
                RelayConfig {
                    max_buckets: 32,
                    ..RelayConfig::default()
                },
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let relay_tasks: Vec<_> = relays
        .iter()
        .map(|r| tokio::spawn(r.clone().run(stop.clone())))
        .collect();
    let inbox = Inbox::new(
        consumer_db.clone(),
        kafka,
        InboxConfig::new(format!("smoke-{run_id}"), &[topic.as_str()]),
        smoke::OrderedTicks,
    )?;
    let inbox_stats = inbox.stats();
    let inbox_task = tokio::spawn(inbox.run(stop.clone()));

    // Write: each writer owns a slice of the aggregates and round-robins over it.
    let started = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let pool = producer_db.clone();
            let topic = topic.clone();
            let (events, aggregates, writers) = (args.events, args.aggregates.max(1), args.writers);
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..aggregates).filter(|a| a % writers == w).collect();
                let count = events / writers + u64::from(w < events % writers);
                for i in 0..count {
                    let Some(agg) = mine.get((i as usize) % mine.len().max(1)) else {
                        break;
                    };
                    smoke::write_tick(&pool, &topic, &format!("agg-{agg}")).await?;
                }
                anyhow::Ok(count)
            })
        })
        .collect();
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    let write_seconds = started.elapsed().as_secs_f64();

    // Wait until the consumer has applied everything (or the deadline).
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let applied = smoke::effects(&consumer_db).await?.applied;
        if applied as u64 >= written || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for t in relay_tasks {
        t.await??;
    }
    inbox_task.await??;

    let dlq = shop_messaging::kafka::dead_letter_topic(&topic);
    if let Err(e) = kafka.delete_topics(&[topic.as_str(), dlq.as_str()]).await {
        tracing::warn!(error = %e, "cannot delete the smoke topics");
    }
    let effects = smoke::effects(&consumer_db).await?;
    let (p50, p99) = smoke::latency_percentiles(&consumer_db).await?;
    let published = relays
        .iter()
        .map(|r| r.stats().published.load(Ordering::Relaxed))
        .sum();
    producer_db.close().await;
    consumer_db.close().await;
    Ok(SmokeSummary {
        events_written: written,
        events_published: published,
        events_applied: effects.applied,
        duplicates_skipped: inbox_stats.duplicates.load(Ordering::Relaxed),
        dead_lettered: inbox_stats.dead_lettered.load(Ordering::Relaxed),
        applied_twice: effects.applied_twice,
        lost: written as i64 - effects.applied,
        write_seconds,
        total_seconds,
        writes_per_sec: written as f64 / write_seconds.max(1e-9),
        applied_per_sec: effects.applied as f64 / total_seconds.max(1e-9),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
    })
}

pub fn print(s: &SmokeSummary) {
    println!();
    println!("smoke flow: producer db -> outbox -> relay -> kafka -> inbox -> consumer db");
    println!(
        "  written      {:>8} events in {:.2}s ({:.0}/s, each in the same transaction as its state change)",
        s.events_written, s.write_seconds, s.writes_per_sec
    );
    println!("  published    {:>8}", s.events_published);
    println!(
        "  applied      {:>8} ({:.0}/s end to end)",
        s.events_applied, s.applied_per_sec
    );
    println!(
        "  latency      p50 {:.1} ms, p99 {:.1} ms (commit -> applied by the consumer)",
        s.latency_p50_ms, s.latency_p99_ms
    );
    println!(
        "  duplicates   {:>8} skipped by the inbox",
        s.duplicates_skipped
    );
    println!("invariants (all must be 0)");
    println!("  lost               {}", s.lost);
    println!("  applied twice      {}", s.applied_twice);
    println!("  out of order/dead  {}", s.dead_lettered);
    let verdict = if s.is_consistent() { "OK" } else { "FAILED" };
    println!("result: {verdict}");
    let mut json = serde_json::to_value(s).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        obj.insert("ok".into(), (verdict == "OK").into());
    }
    println!("{json}");
}
