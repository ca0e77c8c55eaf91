//! Admission control: `PlaceOrder` sheds new orders with RESOURCE_EXHAUSTED while the sagas in
//! flight are at their bound.
//!
//! Past saturation, every order accepted only makes every saga in flight slower (their commands
//! queue behind each other in the outbox, the broker and the participants' inboxes) until their
//! steps time out and their retries add to the queue. A bound on the sagas in flight keeps the
//! queue, and so each saga's latency, bounded: the platform does the work it can and tells the
//! rest to come back later.
//!
//! The count is the database's (`saga` rows not finished, on a partial index), refreshed every
//! `refresh` by one task per instance, plus the orders this instance admitted since: so the
//! bound holds across instances, overshooting by at most what the others admit in one refresh.
//! A request whose idempotency key is already taken is never shed (it starts nothing).

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::repository;

#[derive(Debug, Clone)]
pub struct Admission {
    /// Most sagas in flight; 0 = no bound.
    max: i64,
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Sagas in flight at the last count.
    counted: AtomicI64,
    /// Admitted here since the last count.
    admitted: AtomicI64,
}

impl Admission {
    pub fn new(max_in_flight: u64) -> Self {
        Self {
            max: i64::try_from(max_in_flight).unwrap_or(i64::MAX),
            inner: Arc::default(),
        }
    }

    /// The sagas in flight as far as this instance knows.
    pub fn in_flight(&self) -> i64 {
        self.inner.counted.load(Ordering::Relaxed) + self.inner.admitted.load(Ordering::Relaxed)
    }

    /// Whether a new saga may start now.
    pub fn open(&self) -> bool {
        self.max == 0 || self.in_flight() < self.max
    }

    pub fn max(&self) -> i64 {
        self.max
    }

    /// A saga was started (its transaction committed).
    pub fn admitted(&self) {
        self.inner.admitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the sagas in flight every `refresh`, until `shutdown`.
    pub async fn run(
        self,
        pool: PgPool,
        refresh: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut interval = tokio::time::interval(refresh);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            // Taken before the count: admissions committed while it runs are in both, so the
            // estimate errs high (sheds early), never low.
            let since = self.inner.admitted.load(Ordering::Relaxed);
            let counted = async { repository::open_sagas(&mut *pool.acquire().await?).await };
            match counted.await {
                Ok(n) => {
                    self.inner.counted.store(n, Ordering::Relaxed);
                    self.inner.admitted.fetch_sub(since, Ordering::Relaxed);
                    metrics::gauge!("sagas_in_flight").set(n as f64);
                }
                Err(e) => tracing::warn!(error = %e, "counting the sagas in flight failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_counts_the_last_count_and_what_was_admitted_since() {
        let a = Admission::new(3);
        a.inner.counted.store(2, Ordering::Relaxed);
        assert!(a.open());
        a.admitted();
        assert!(!a.open(), "2 counted + 1 admitted = the bound of 3");
        assert!(Admission::new(0).open(), "0 means no bound");
    }
}
