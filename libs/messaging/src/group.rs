//! A guard against a consumer left without partitions by its group coordinator.
//!
//! In a healthy group every subscribed partition is assigned to some member. tansu 0.6 (the
//! broker of the native stack) can break that: when a member dies without leaving and a new one
//! joins before the dead one's session expires, the coordinator may complete the rebalance with
//! the new member's empty follower assignment, and the group then stays "stable" with nothing
//! assigned, forever (docs/STORES.md has the sequence). The symptom is silent: the consumer
//! heartbeats, fetches nothing, and messages pile up unread.
//!
//! [`AssignmentGuard::check`], called from a consume loop whenever [`AssignmentGuard::due`]
//! says so (every 5 s), notices a member that has had no partitions for longer than a session
//! timeout. It then looks for partitions
//! that nobody consumes: behind their high watermark, with the group's committed offset not
//! moving for 10 s (a live owner commits every 5 s). If it finds one, the member
//! leaves and rejoins the group (unsubscribe + subscribe). Nothing is lost: an empty member has no
//! offsets to store, and the rejoin starts from the group's committed offsets. (Counting the
//! group's members would be simpler, but tansu's DescribeGroups fails on its SQLite storage.)
//!
//! An idle member of a group with more members than partitions sees no stalled partition and
//! stays idle. If an owner is alive but stuck on one message for longer than the window, idle
//! members rejoin every window; the range assignment gives the stuck partition back to its owner.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, ConsumerContext, StreamConsumer},
};
use tokio::time::Interval;

use crate::kafka::SESSION_TIMEOUT;

/// How often [`AssignmentGuard::due`] fires.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long a lagging partition's committed offset must stand still to count as unconsumed:
/// twice the consumers' auto-commit interval.
const STALL_WINDOW: Duration = Duration::from_secs(10);

/// (topic, partition) -> the group's position in it (committed offset, else the low watermark).
type Positions = HashMap<(String, i32), i64>;

pub struct AssignmentGuard {
    group: String,
    topics: Vec<String>,
    every: Interval,
    empty_since: Option<Instant>,
    /// Lagging partitions seen at a time, to compare with a later look.
    lagging: Option<(Instant, Positions)>,
}

/// The partitions lagging at both looks whose position did not move in between.
fn stalled(before: &Positions, now: &Positions) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = now
        .iter()
        .filter(|(tp, position)| before.get(*tp) == Some(*position))
        .map(|(tp, _)| tp.clone())
        .collect();
    out.sort();
    out
}

impl AssignmentGuard {
    /// Guards a consumer of `group` subscribed to `topics`.
    pub fn new(group: &str, topics: &[&str]) -> Self {
        Self {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            every: tokio::time::interval(CHECK_EVERY),
            empty_since: None,
            lagging: None,
        }
    }

    /// Resolves when the next [`AssignmentGuard::check`] is due: a `select!` arm beside the
    /// consumer's `recv()`.
    pub async fn due(&mut self) {
        self.every.tick().await;
    }

    /// Makes `consumer` rejoin its group if it has had no partitions for a session timeout
    /// while some partition goes unconsumed. Call it between messages: it reads offsets through
    /// `consumer` on a blocking thread.
    pub async fn check<C: ConsumerContext + 'static>(&mut self, consumer: &Arc<StreamConsumer<C>>) {
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            self.empty_since = None;
            self.lagging = None;
            return;
        }
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        if since.elapsed() < SESSION_TIMEOUT
            || self
                .lagging
                .as_ref()
                // Checks come every 5 s: half a period of slack makes the next look the one a
                // window after this one, whatever the read times.
                .is_some_and(|(at, _)| at.elapsed() + CHECK_EVERY / 2 < STALL_WINDOW)
        {
            return;
        }
        let looked_at = Instant::now();
        let now = match self.lagging_positions(consumer.clone()).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(group = %self.group, error = ?e, "cannot read the group's offsets");
                return;
            }
        };
        let stalled = self
            .lagging
            .take()
            .map(|(_, before)| stalled(&before, &now))
            .unwrap_or_default();
        if stalled.is_empty() {
            if !now.is_empty() {
                self.lagging = Some((looked_at, now));
            }
            return;
        }
        tracing::warn!(
            group = %self.group,
            ?stalled,
            empty_for = ?since.elapsed(),
            "consumer has no partitions while some are not consumed; rejoining the group"
        );
        metrics::counter!("consumer_group_rejoins_total", "group" => self.group.clone())
            .increment(1);
        consumer.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::error!(group = %self.group, error = %e, "cannot subscribe again");
        }
        self.empty_since = None;
    }

    /// The subscribed partitions whose group position is behind the high watermark.
    async fn lagging_positions<C: ConsumerContext + 'static>(
        &self,
        consumer: Arc<StreamConsumer<C>>,
    ) -> anyhow::Result<Positions> {
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            let mut partitions = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), timeout)
                    .context("cannot fetch topic metadata")?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        partitions.add_partition(topic, p.id());
                    }
                }
            }
            let committed = consumer
                .committed_offsets(partitions, timeout)
                .context("cannot fetch committed offsets")?;
            let mut lagging = Positions::new();
            for e in committed.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                    .context("cannot fetch watermarks")?;
                let position = match e.offset() {
                    Offset::Offset(n) => n,
                    _ => low,
                };
                if position < high {
                    lagging.insert((e.topic().to_owned(), e.partition()), position);
                }
            }
            Ok(lagging)
        })
        .await
        .context("offset task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::{Positions, stalled};

    fn positions(entries: &[(&str, i32, i64)]) -> Positions {
        entries
            .iter()
            .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
            .collect()
    }

    #[test]
    fn a_partition_is_stalled_only_when_it_lags_at_both_looks_at_the_same_position() {
        let before = positions(&[("a", 0, 5), ("a", 1, 7), ("b", 0, 0)]);
        let now = positions(&[("a", 0, 5), ("a", 1, 9), ("b", 2, 3)]);
        // a/1 moved (someone consumes it), b/0 caught up, b/2 only lags now.
        assert_eq!(stalled(&before, &now), vec![("a".to_owned(), 0)]);
        assert!(stalled(&before, &Positions::new()).is_empty());
        assert!(stalled(&Positions::new(), &now).is_empty());
    }
}
