//! In-process wake-ups: "a transaction that may have written outbox rows or events committed".
//!
//! The relay and the order projection used to wake on `NOTIFY`, sent by statement triggers in
//! every data transaction. PostgreSQL serialises notifying commits across the whole cluster (a
//! global lock held through the commit's WAL flush), so every outbox write queued behind every
//! other and group commit could not help. The writers and their relay live in one process, so
//! the writer now says so after its commit ([`committed`]) and the waiters ([`Waiter`]) wake at
//! once. The triggers stay for writers outside the process (`shopctl`, `psql`, tests): they
//! notify unless the connection sets `shop.notify = off`, which the services' pools do
//! (`database.notify`, see `shop_core::db`). Every waiter also polls, so a wake-up lost in any
//! way costs one poll interval, never a message.

use std::sync::LazyLock;

use tokio::sync::watch;

static COMMITS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Wakes every [`Waiter`] of this process: call it after a commit that wrote outbox rows or
/// events.
pub fn committed() {
    COMMITS.send_modify(|n| *n = n.wrapping_add(1));
}

/// Waits for the next [`committed`] after the last one it saw (one missed while its owner was
/// busy counts: it returns at once).
#[derive(Debug)]
pub struct Waiter(watch::Receiver<u64>);

impl Waiter {
    pub fn new() -> Self {
        Self(COMMITS.subscribe())
    }

    /// Returns once a commit happened since the last call (or since [`Waiter::new`]).
    pub async fn changed(&mut self) {
        // The sender is a static: it is never dropped, so this never errs.
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Default for Waiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_made_while_the_waiter_was_busy_wakes_it_at_once() {
        let mut w = Waiter::new();
        committed();
        tokio::time::timeout(std::time::Duration::from_secs(1), w.changed())
            .await
            .expect("woken by the earlier commit");
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), w.changed()).await;
        assert!(idle.is_err(), "no commit since: it waits");
    }
}
