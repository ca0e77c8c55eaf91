//! # shop-crdt
//!
//! State-based counters that replicas ("regions") change without coordination and merge in any
//! order, any number of times, to the same value (seed 003, "CRDT counters").
//!
//! - [`GCounter`]: grow-only. Each replica increments only its own entry; merge takes the
//!   entry-wise maximum; the value is the sum of the entries.
//! - [`PnCounter`]: two G-Counters, increments and decrements; the value is their difference
//!   (it may go below zero: a PN-Counter counts, it does not enforce a floor).
//!
//! Merge is commutative, associative and idempotent (property-tested below), which is what
//! makes at-least-once, out-of-order delivery (Kafka redeliveries, a region that was cut off)
//! harmless: a replica can apply whatever state it receives, however late or often.
//!
//! Causal consistency for an object every region writes ([`causal`]) rests on vector clocks
//! ([`vclock`]): an update is applied only after everything it depends on, and concurrent
//! writes of one field resolve by a total order that respects causality.
//!
//! Replica ids are strings (a region name); the maps are ordered so that a serialized state is
//! deterministic (equal states, equal bytes).

pub mod causal;
pub mod vclock;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A grow-only counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounter {
    entries: BTreeMap<String, u64>,
}

impl GCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` to `replica`'s own entry (saturating: a counter never wraps).
    pub fn increment(&mut self, replica: &str, n: u64) {
        let e = self.entries.entry(replica.to_owned()).or_insert(0);
        *e = e.saturating_add(n);
    }

    /// Takes in `other`'s state: the entry-wise maximum.
    pub fn merge(&mut self, other: &GCounter) {
        for (replica, &n) in &other.entries {
            let e = self.entries.entry(replica.clone()).or_insert(0);
            *e = (*e).max(n);
        }
    }

    /// The sum of every replica's entry (saturating).
    pub fn value(&self) -> u64 {
        self.entries.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// What `replica` itself has added.
    pub fn of(&self, replica: &str) -> u64 {
        self.entries.get(replica).copied().unwrap_or(0)
    }

    /// Every replica's entry (to send the state over the wire).
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(r, n)| (r.as_str(), *n))
    }

    /// The state with these entries (a received one).
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, u64)>,
        S: Into<String>,
    {
        Self {
            entries: entries.into_iter().map(|(r, n)| (r.into(), n)).collect(),
        }
    }
}

/// A counter that goes up and down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    up: GCounter,
    down: GCounter,
}

impl PnCounter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn increment(&mut self, replica: &str, n: u64) {
        self.up.increment(replica, n);
    }

    pub fn decrement(&mut self, replica: &str, n: u64) {
        self.down.increment(replica, n);
    }

    /// Adds a signed `delta` (an adjustment: +3 restocked, -1 sold).
    pub fn add(&mut self, replica: &str, delta: i64) {
        if delta >= 0 {
            self.increment(replica, delta.unsigned_abs());
        } else {
            self.decrement(replica, delta.unsigned_abs());
        }
    }

    /// The state from its two halves (a received one).
    pub fn from_parts(up: GCounter, down: GCounter) -> Self {
        Self { up, down }
    }

    /// The increments and the decrements.
    pub fn parts(&self) -> (&GCounter, &GCounter) {
        (&self.up, &self.down)
    }

    pub fn merge(&mut self, other: &PnCounter) {
        self.up.merge(&other.up);
        self.down.merge(&other.down);
    }

    /// Increments minus decrements, clamped to the range of `i64`.
    pub fn value(&self) -> i64 {
        let (up, down) = (i128::from(self.up.value()), i128::from(self.down.value()));
        i64::try_from(up - down).unwrap_or(if up > down { i64::MAX } else { i64::MIN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REGIONS: [&str; 3] = ["eu", "us", "ap"];

    #[test]
    fn each_region_counts_its_own_and_merge_sums_them() {
        let (mut eu, mut us) = (GCounter::new(), GCounter::new());
        eu.increment("eu", 3);
        us.increment("us", 4);
        eu.merge(&us);
        assert_eq!(eu.value(), 7);
        assert_eq!((eu.of("eu"), eu.of("us")), (3, 4));
        // An old copy merged again changes nothing.
        eu.merge(&GCounter::new());
        eu.merge(&us);
        assert_eq!(eu.value(), 7);
    }

    #[test]
    fn a_pn_counter_goes_both_ways_and_may_go_below_zero() {
        let mut c = PnCounter::new();
        c.add("eu", 5);
        c.add("us", -7);
        assert_eq!(c.value(), -2);
    }

    #[test]
    fn equal_states_serialize_to_equal_bytes() {
        let (mut a, mut b) = (GCounter::new(), GCounter::new());
        a.increment("us", 1);
        a.increment("eu", 2);
        b.increment("eu", 2);
        b.increment("us", 1);
        assert_eq!(
            serde_json::to_string(&a).expect("json"),
            serde_json::to_string(&b).expect("json")
        );
    }

    /// Operations: (region, signed delta).
    fn ops() -> impl Strategy<Value = Vec<(usize, i64)>> {
        prop::collection::vec((0..REGIONS.len(), -50i64..50), 0..40)
    }

    /// Each region applies its own operations; returns every region's state after each one
    /// (the states it would publish).
    fn published(ops: &[(usize, i64)]) -> Vec<PnCounter> {
        let mut local: Vec<PnCounter> = vec![PnCounter::new(); REGIONS.len()];
        let mut out = Vec::new();
        for &(r, delta) in ops {
            local[r].add(REGIONS[r], delta);
            out.push(local[r].clone());
        }
        out
    }

    fn pn() -> impl Strategy<Value = PnCounter> {
        ops().prop_map(|o| {
            let mut c = PnCounter::new();
            for s in published(&o) {
                c.merge(&s);
            }
            c
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in pn(), b in pn()) {
            let (mut ab, mut ba) = (a.clone(), b.clone());
            ab.merge(&b);
            ba.merge(&a);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn merge_is_associative(a in pn(), b in pn(), c in pn()) {
            let mut left = a.clone();
            left.merge(&b);
            left.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut right = a.clone();
            right.merge(&bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(a in pn(), b in pn()) {
            let mut once = a.clone();
            once.merge(&b);
            let mut twice = once.clone();
            twice.merge(&b);
            twice.merge(&once);
            prop_assert_eq!(once, twice);
        }

        /// Every published state delivered to a replica in any order, any of them any number
        /// of times (at least once): it converges to the exact sum of every delta.
        #[test]
        fn any_delivery_order_with_duplicates_converges_to_the_exact_sum(
            o in ops(),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
        ) {
            let states = published(&o);
            let exact: i64 = o.iter().map(|(_, d)| d).sum();
            let mut replica = PnCounter::new();
            // Random picks (duplicates and any order), then each state once more so every one
            // arrives at least once.
            if !states.is_empty() {
                for i in &order {
                    replica.merge(&states[i.index(states.len())]);
                }
            }
            for s in states.iter().rev() {
                replica.merge(s);
            }
            prop_assert_eq!(replica.value(), exact);
        }
    }
}
