//! Where a saga's time goes, step by step, from the order's own event stream.
//!
//! The order database's `events` table holds, per order, `order_placed`, one `saga_step_done`
//! per forward step (payload `{"step": "reserve" | "charge" | "ship" | "commit"}`) and
//! `order_completed`; the event types and payloads are taken from the order domain's own
//! encoding, not spelled here. `recorded_at` is the recording transaction's `now()` (its start),
//! on the same machine's clock as the bench's send and receive instants.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shop_order::domain::{
    saga::{SagaEvent, Step},
    stream::OrderEvent,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::stats::{percentile, round2};

/// The bench's monotonic instants as wall-clock times (one pair read at start).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    wall: DateTime<Utc>,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: Utc::now(),
        }
    }

    pub fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = chrono::Duration::from_std(at.saturating_duration_since(self.instant))
            .unwrap_or_default();
        let before = chrono::Duration::from_std(self.instant.saturating_duration_since(at))
            .unwrap_or_default();
        self.wall + since - before
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub step: &'static str,
    pub n: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The intervals reported, in saga order: (name, from, to) as indexes into [`Times`].
const ROWS: [(&str, usize, usize); 8] = [
    ("send -> placed recorded", SENT, PLACED),
    ("placed -> reserved", PLACED, PLACED + 1),
    ("reserved -> charged", PLACED + 1, PLACED + 2),
    ("charged -> shipped", PLACED + 2, PLACED + 3),
    ("shipped -> committed", PLACED + 3, PLACED + 4),
    ("committed -> completed recorded", PLACED + 4, COMPLETED),
    ("completed recorded -> bench received", COMPLETED, RECEIVED),
    ("placed -> completed (in the database)", PLACED, COMPLETED),
];
const SENT: usize = 0;
const PLACED: usize = 1;
const COMPLETED: usize = 6;
const RECEIVED: usize = 7;

/// One order's instants: sent, placed, reserved, charged, shipped, committed, completed,
/// received.
type Times = [Option<DateTime<Utc>>; 8];

/// The breakdown for completed orders: `(order id, sent, received)`.
pub async fn breakdown(
    order_db: &PgPool,
    orders: &[(Uuid, DateTime<Utc>, DateTime<Utc>)],
) -> anyhow::Result<Vec<StepRow>> {
    let step_done = |s: Step| OrderEvent::Saga(SagaEvent::StepDone { step: s }).encode();
    let done = step_done(Step::Reserve).event_type;
    let step = |s: Step| {
        step_done(s)
            .payload
            .get("step")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let ids: Vec<Uuid> = orders.iter().map(|(id, ..)| *id).collect();
    type Row = (
        Uuid,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT stream_id,
                min(recorded_at) FILTER (WHERE event_type = $2),
                min(recorded_at) FILTER (WHERE event_type = $3 AND payload->>'step' = $4),
                min(recorded_at) FILTER (WHERE event_type = $3 AND payload->>'step' = $5),
                min(recorded_at) FILTER (WHERE event_type = $3 AND payload->>'step' = $6),
                min(recorded_at) FILTER (WHERE event_type = $3 AND payload->>'step' = $7),
                min(recorded_at) FILTER (WHERE event_type = $8)
         FROM events WHERE stream_id = ANY($1) GROUP BY stream_id",
    )
    .bind(&ids)
    .bind(OrderEvent::PLACED)
    .bind(&done)
    .bind(step(Step::Reserve))
    .bind(step(Step::Charge))
    .bind(step(Step::Ship))
    .bind(step(Step::Commit))
    .bind(OrderEvent::COMPLETED)
    .fetch_all(order_db)
    .await?;
    let recorded: std::collections::HashMap<Uuid, Row> =
        rows.into_iter().map(|r| (r.0, r)).collect();
    let times: Vec<Times> = orders
        .iter()
        .filter_map(|(id, sent, received)| {
            let r = recorded.get(id)?;
            Some([Some(*sent), r.1, r.2, r.3, r.4, r.5, r.6, Some(*received)])
        })
        .collect();
    Ok(rows_of(&times))
}

/// The intervals of [`ROWS`] over `times` (an order missing either end is left out of a row).
pub fn rows_of(times: &[Times]) -> Vec<StepRow> {
    ROWS.iter()
        .map(|&(step, from, to)| {
            let mut ms: Vec<f64> = times
                .iter()
                .filter_map(|t| {
                    Some(
                        (t.get(to).copied()?? - t.get(from).copied()??).num_microseconds()? as f64
                            / 1000.0,
                    )
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            let mean = if ms.is_empty() {
                0.0
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            };
            StepRow {
                step,
                n: ms.len(),
                mean_ms: round2(mean),
                p50_ms: round2(percentile(&ms, 0.5).unwrap_or(0.0)),
                p99_ms: round2(percentile(&ms, 0.99).unwrap_or(0.0)),
            }
        })
        .collect()
}

pub fn print(rows: &[StepRow]) {
    println!(
        "  {:<40} {:>7} {:>10} {:>10} {:>10}",
        "step (completed sagas)", "n", "mean ms", "p50 ms", "p99 ms"
    );
    for r in rows {
        println!(
            "  {:<40} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            r.step, r.n, r.mean_ms, r.p50_ms, r.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_the_gap_between_two_recorded_instants() {
        let t0 = DateTime::UNIX_EPOCH;
        let at = |ms: i64| Some(t0 + chrono::Duration::milliseconds(ms));
        let full: Times = [at(0), at(5), at(15), at(35), at(45), at(60), at(60), at(70)];
        let mut partial = full;
        partial[4] = None;
        let rows = rows_of(&[full, partial]);
        let by = |name: &str| rows.iter().find(|r| r.step == name).unwrap().clone();
        assert_eq!(by("send -> placed recorded").p50_ms, 5.0);
        assert_eq!(by("reserved -> charged").mean_ms, 20.0);
        assert_eq!(by("charged -> shipped").n, 1);
        assert_eq!(by("committed -> completed recorded").p99_ms, 0.0);
        assert_eq!(by("completed recorded -> bench received").p50_ms, 10.0);
        assert_eq!(by("placed -> completed (in the database)").p50_ms, 55.0);
    }

    #[test]
    fn the_step_encoding_is_the_one_the_query_expects() {
        let e = OrderEvent::Saga(SagaEvent::StepDone { step: Step::Charge }).encode();
        assert_eq!(e.event_type, "saga_step_done");
        assert_eq!(e.payload, serde_json::json!({"step": "charge"}));
    }

    #[test]
    fn the_clock_maps_instants_to_wall_time() {
        let c = Clock::now();
        let later = c.instant + std::time::Duration::from_millis(1500);
        assert_eq!((c.wall(later) - c.wall).num_milliseconds(), 1500);
    }
}
