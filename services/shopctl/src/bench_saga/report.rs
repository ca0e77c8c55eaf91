//! What one rate gave and how the run compares with the box's limits; the readable report and
//! the JSON line's shape.

use std::{collections::BTreeMap, time::Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    cpu::{self, CpuReport},
    kafka_limits::KafkaLimits,
    limits::{ChainRun, Pgbench},
    load::{Placed, Terminals},
    stats::{self, Latency, per_sec, ratio, round2},
    steps::{self, Clock, StepRow},
};

#[derive(Debug, Serialize)]
pub struct RateReport {
    pub offered_per_sec: u32,
    pub seconds: u64,
    pub sent: usize,
    /// Accepted: the answer named an order.
    pub placed: usize,
    /// Answered RESOURCE_EXHAUSTED (admission control).
    pub shed: usize,
    pub errors: usize,
    pub errors_by_code: BTreeMap<String, usize>,
    pub completed: usize,
    pub cancelled: usize,
    pub pending_after_drain: usize,
    /// From the last order's due instant until every saga ended (or the drain gave up).
    pub drain_s: f64,
    /// Completions received inside [first send, first send + seconds], per second.
    pub achieved_completed_per_sec: f64,
    /// Completions over the span from the first send to the last completion.
    pub completed_per_sec_whole_span: f64,
    pub span_s: f64,
    /// Due instant -> terminal event received, completed sagas.
    pub latency: Latency,
    /// Due instant -> PlaceOrder answered, every answer.
    pub place_answer: Latency,
    /// Due instant -> sent: the bench's own lateness.
    pub send_lag: Latency,
    pub steps: Vec<StepRow>,
    pub cpu: Option<CpuReport>,
    /// Commits and rows per completed saga, per service database.
    pub postgres: Vec<super::pgstats::DbPerSaga>,
}

/// A completed order: (id, due, received), wall clock.
pub type Completed = (Uuid, DateTime<Utc>, DateTime<Utc>);

impl RateReport {
    /// The counts and latencies of one rate; `steps`, `cpu` and `drain_s` are the caller's.
    pub fn build(
        rate: u32,
        seconds: u64,
        placed: &Placed,
        terminals: &Terminals,
        clock: &Clock,
    ) -> anyhow::Result<(Self, Vec<Completed>)> {
        let ended = terminals.lookup(placed.accepted.iter().map(|(id, _)| id));
        let window_end = placed.first_due + std::time::Duration::from_secs(seconds);
        let mut latency = stats::micros_histogram()?;
        let (mut cancelled, mut in_window) = (0, 0);
        let mut last: Option<Instant> = None;
        let mut completed = Vec::new();
        for ((id, due), t) in placed.accepted.iter().zip(&ended) {
            let Some(t) = t else { continue };
            if !t.completed {
                cancelled += 1;
                continue;
            }
            stats::record(&mut latency, t.at.saturating_duration_since(*due));
            in_window += usize::from(t.at <= window_end);
            last = Some(last.map_or(t.at, |l| l.max(t.at)));
            completed.push((*id, clock.wall(*due), clock.wall(t.at)));
        }
        let n_completed = latency.len() as usize;
        let span = last.map_or(0.0, |l| {
            l.saturating_duration_since(placed.first_due).as_secs_f64()
        });
        let report = Self {
            offered_per_sec: rate,
            seconds,
            sent: placed.sent,
            placed: placed.accepted.len(),
            shed: placed.shed,
            errors: placed.errors.values().sum(),
            errors_by_code: placed.errors.clone(),
            completed: n_completed,
            cancelled,
            pending_after_drain: placed.accepted.len() - n_completed - cancelled,
            drain_s: 0.0,
            achieved_completed_per_sec: per_sec(in_window, seconds as f64),
            completed_per_sec_whole_span: per_sec(n_completed, span),
            span_s: round2(span),
            latency: Latency::from_micros(&latency),
            place_answer: Latency::from_micros(&placed.answer),
            send_lag: Latency::from_micros(&placed.send_lag),
            steps: vec![],
            cpu: None,
            postgres: Vec::new(),
        };
        Ok((report, completed))
    }
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub pgbench: Vec<Pgbench>,
    pub chains: Vec<ChainRun>,
    pub kafka: KafkaLimits,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    pub best_achieved_per_sec: f64,
    /// Chains/s of the most concurrent PostgreSQL chain run.
    pub pg_chain_ceiling_per_sec: f64,
    /// pgbench's tps at 8 clients over the saga's 20 commits.
    pub pgbench_tps_over_20: f64,
    pub kafka_ping_pong_rounds_per_sec: f64,
    pub best_vs_pg_chain: f64,
    pub best_vs_pgbench_over_20: f64,
    pub best_vs_ping_pong: f64,
}

#[derive(Debug, Serialize)]
pub struct SagaBench {
    pub run: String,
    pub seed: u64,
    pub rate_order: Vec<u32>,
    pub hot_key: bool,
    /// Terminal events received more than once for one order (at-least-once delivery).
    pub duplicate_terminal_events: u64,
    pub points: Vec<RateReport>,
    pub best_achieved_per_sec: f64,
    pub best_at_offered_per_sec: u32,
    pub limits: Option<Limits>,
    pub limits_error: Option<String>,
    pub ratios: Option<Ratios>,
}

impl SagaBench {
    pub fn new(
        run: String,
        seed: u64,
        rate_order: Vec<u32>,
        hot_key: bool,
        duplicate_terminal_events: u64,
        points: Vec<RateReport>,
        limits: Option<Limits>,
    ) -> Self {
        let best = points
            .iter()
            .max_by(|a, b| {
                a.achieved_completed_per_sec
                    .total_cmp(&b.achieved_completed_per_sec)
            })
            .map_or((0.0, 0), |p| {
                (p.achieved_completed_per_sec, p.offered_per_sec)
            });
        let ratios = limits.as_ref().map(|l| {
            let chain = l
                .chains
                .iter()
                .max_by_key(|c| c.concurrency)
                .map_or(0.0, |c| c.chains_per_sec);
            let pgbench = l
                .pgbench
                .iter()
                .max_by_key(|p| p.clients)
                .map_or(0.0, |p| p.tps / 20.0);
            let pp = l.kafka.ping_pong.rounds_per_sec;
            Ratios {
                best_achieved_per_sec: best.0,
                pg_chain_ceiling_per_sec: chain,
                pgbench_tps_over_20: stats::round1(pgbench),
                kafka_ping_pong_rounds_per_sec: pp,
                best_vs_pg_chain: ratio(best.0, chain),
                best_vs_pgbench_over_20: ratio(best.0, pgbench),
                best_vs_ping_pong: ratio(best.0, pp),
            }
        });
        Self {
            run,
            seed,
            rate_order,
            hot_key,
            duplicate_terminal_events,
            points,
            best_achieved_per_sec: best.0,
            best_at_offered_per_sec: best.1,
            limits,
            limits_error: None,
            ratios,
        }
    }
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
    )
}

pub fn print_rate(p: &RateReport) {
    println!();
    println!(
        "== offered {}/s for {} s: sent {}, placed {}, shed {}, errors {}{}",
        p.offered_per_sec,
        p.seconds,
        p.sent,
        p.placed,
        p.shed,
        p.errors,
        if p.errors_by_code.is_empty() {
            String::new()
        } else {
            format!(" {:?}", p.errors_by_code)
        }
    );
    println!(
        "  completed {}, cancelled {}, still pending {} (drain {:.1} s)",
        p.completed, p.cancelled, p.pending_after_drain, p.drain_s
    );
    println!(
        "  achieved {:.1} completed/s inside the load window; {:.1}/s over {:.1} s to the last completion",
        p.achieved_completed_per_sec, p.completed_per_sec_whole_span, p.span_s
    );
    println!("  send -> terminal event (completed)  {}", lat(&p.latency));
    println!(
        "  send -> PlaceOrder answered         {}",
        lat(&p.place_answer)
    );
    println!("  bench send lag                      {}", lat(&p.send_lag));
    steps::print(&p.steps);
    if !p.postgres.is_empty() {
        super::pgstats::print(&p.postgres);
    }
    if let Some(c) = &p.cpu {
        cpu::print(c);
    }
}

pub fn print_summary(r: &SagaBench) {
    println!();
    if let Some(l) = &r.limits {
        println!("== physical limits (same box, same run)");
        for p in &l.pgbench {
            println!(
                "  pgbench TPC-B, {} client(s), {} s: {:.0} tps, latency avg {:.2} ms{}",
                p.clients,
                p.seconds,
                p.tps,
                p.latency_avg_ms,
                if p.clients == 1 {
                    " (one client: the fsync floor)"
                } else {
                    ""
                }
            );
        }
        for c in &l.chains {
            println!(
                "  PostgreSQL alone, chains of {} commits x{}: {:.1} chains/s ({:.0} commits/s); one chain {}",
                c.transactions_per_chain,
                c.concurrency,
                c.chains_per_sec,
                c.commits_per_sec,
                lat(&c.chain)
            );
        }
        let k = &l.kafka;
        println!(
            "  Kafka, {} x {} B: produce {:.0}/s, produce -> consume {:.0}/s, latency under that load {}",
            k.messages,
            k.payload_bytes,
            k.produce_per_sec,
            k.produce_to_consume_per_sec,
            lat(&k.latency_under_throughput)
        );
        println!(
            "  Kafka, single messages at {}/s: {}",
            k.single_rate_per_sec,
            lat(&k.single)
        );
        let pp = &k.ping_pong;
        println!(
            "  Kafka {}-hop ping-pong at {}/s for {} s: {}/{} rounds, {:.1} rounds/s, round trip {}; at idle {}{}",
            pp.hops,
            pp.offered_per_sec,
            pp.seconds,
            pp.rounds_completed,
            pp.rounds_sent,
            pp.rounds_per_sec,
            lat(&pp.round_trip),
            lat(&pp.idle_round_trip),
            if pp.delivery_errors > 0 {
                format!(" ({} delivery errors)", pp.delivery_errors)
            } else {
                String::new()
            }
        );
    }
    println!(
        "== best: {:.1} completed sagas/s inside the load window (offered {}/s); {} duplicate terminal events",
        r.best_achieved_per_sec, r.best_at_offered_per_sec, r.duplicate_terminal_events
    );
    if let Some(x) = &r.ratios {
        println!(
            "   = {:.3} x the PostgreSQL chain ceiling ({:.1}/s), {:.3} x pgbench tps / 20 ({:.1}/s), {:.3} x the Kafka 8-hop rounds/s ({:.1}/s)",
            x.best_vs_pg_chain,
            x.pg_chain_ceiling_per_sec,
            x.best_vs_pgbench_over_20,
            x.pgbench_tps_over_20,
            x.best_vs_ping_pong,
            x.kafka_ping_pong_rounds_per_sec
        );
    }
}
