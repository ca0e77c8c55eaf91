//! When the command in flight has waited long enough: the step's clock and its backoff.
//!
//! - **The clock starts when the command is published**, not when it is enqueued. Under load a
//!   command can sit in the outbox for longer than its step's timeout; retrying it then only
//!   queues a second copy behind the first (and a third behind that), and the backlog feeds
//!   itself. So a deadline that passes while the command is still unsent is moved on by one
//!   wait, and once the command is out the deadline is its publication plus the wait.
//! - **Retries back off, with jitter.** Try `n` waits `timeout · 2^(n-1)` (at most
//!   [`MAX_WAIT`], never less than the timeout), plus up to a quarter more at random, so the
//!   retries of a burst of sagas that timed out together spread out instead of arriving
//!   together again.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest a retry waits (before its jitter), however many tries came before.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The share of a wait added at most as jitter.
const JITTER: f64 = 0.25;

/// How long try `attempt` (1 = the first send) of a command waits for its answer, given the
/// step's `timeout` and `jitter` in `[0, 1)` (a uniform random draw).
pub fn wait(timeout: Duration, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let base = timeout
        .saturating_mul(1 << doublings)
        .min(MAX_WAIT.max(timeout));
    base.mul_f64(1.0 + JITTER * jitter.clamp(0.0, 1.0))
}

/// Where the command in flight is, as the outbox tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Still in the outbox, not published yet.
    Unsent,
    /// Published at this time.
    Published(DateTime<Utc>),
    /// Parked (the broker refuses it for good), gone from the outbox (published longer ago
    /// than its retention), or not known (a saga saved before commands were tracked).
    Settled,
}

/// What the timeout sweep does with a saga whose deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The command has had its full wait since it was published: time the step out.
    TimedOut,
    /// Not yet: the deadline moves to this time, and nothing else changes.
    Later(DateTime<Utc>),
}

/// Decides a passed deadline: the command in flight is in state `command`, and may wait `wait`
/// from its publication.
///
/// An unsent command is looked at again one full wait from now: by then it is either still
/// unsent (looked at again), or was published at some time `p` before then, and the deadline
/// becomes `p + wait`, which is still ahead. So every command gets its full wait after it is
/// published, and a saga whose command is stuck costs one update per wait, not a retry.
pub fn due(now: DateTime<Utc>, command: Command, wait: Duration) -> Due {
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    match command {
        Command::Unsent => Due::Later(now + wait),
        Command::Published(at) if at + wait > now => Due::Later(at + wait),
        Command::Published(_) | Command::Settled => Due::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn each_try_waits_twice_as_long_as_the_one_before_up_to_the_cap() {
        assert_eq!(wait(T, 1, 0.0), T);
        assert_eq!(wait(T, 2, 0.0), T * 2);
        assert_eq!(wait(T, 3, 0.0), T * 4);
        assert_eq!(wait(T, 30, 0.0), MAX_WAIT);
        assert_eq!(wait(T, u32::MAX, 0.0), MAX_WAIT);
        // A timeout above the cap is never shortened.
        let long = Duration::from_secs(3600);
        assert_eq!(wait(long, 5, 0.0), long);
    }

    #[test]
    fn jitter_adds_up_to_a_quarter() {
        assert_eq!(wait(T, 1, 1.0), T.mul_f64(1.25));
        assert_eq!(wait(T, 2, 0.5), (T * 2).mul_f64(1.125));
    }

    #[test]
    fn an_unsent_command_moves_the_deadline_on_by_one_wait() {
        let now = Utc::now();
        assert_eq!(
            due(now, Command::Unsent, T),
            Due::Later(now + chrono::Duration::seconds(30))
        );
    }

    #[test]
    fn a_published_command_waits_from_its_publication() {
        let now = Utc::now();
        let at = now - chrono::Duration::seconds(10);
        assert_eq!(
            due(now, Command::Published(at), T),
            Due::Later(at + chrono::Duration::seconds(30))
        );
        let long_ago = now - chrono::Duration::seconds(31);
        assert_eq!(due(now, Command::Published(long_ago), T), Due::TimedOut);
        assert_eq!(due(now, Command::Settled, T), Due::TimedOut);
    }

    proptest! {
        /// Whenever the command is published, the saga times out no sooner than one full wait
        /// after that, and no later than one wait after the first check that finds it out.
        #[test]
        fn a_step_times_out_one_wait_after_its_command_is_published(
            publish_after_s in 0i64..600, wait_s in 1u64..120, first_check_s in 0i64..120,
        ) {
            let start = DateTime::<Utc>::UNIX_EPOCH;
            let wait = Duration::from_secs(wait_s);
            let published = start + chrono::Duration::seconds(publish_after_s);
            let mut now = start + chrono::Duration::seconds(first_check_s);
            let timed_out_at = loop {
                let command = if now < published { Command::Unsent } else { Command::Published(published) };
                match due(now, command, wait) {
                    Due::TimedOut => break now,
                    Due::Later(next) => { prop_assert!(next > now); now = next; }
                }
            };
            let full = published + chrono::Duration::seconds(i64::try_from(wait_s).unwrap_or(0));
            prop_assert!(timed_out_at >= full, "timed out at {timed_out_at}, before {full}");
        }
    }
}
