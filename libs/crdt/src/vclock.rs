//! Vector clocks: one counter per replica ("region"). A replica ticks its own entry for each
//! update it makes; the clock an update carries says how many updates of every region its
//! origin had applied when it made it, i.e. everything it may depend on.

use std::{cmp::Ordering, collections::BTreeMap};

use serde::{Deserialize, Serialize};

/// How two clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Every entry equal.
    Equal,
    /// `self` happened before `other` (every entry `<=`, one `<`).
    Before,
    /// `other` happened before `self`.
    After,
    /// Neither saw the other: concurrent.
    Concurrent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorClock {
    entries: BTreeMap<String, u64>,
}

impl VectorClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock with these entries (zero entries are dropped: absent and 0 are the same).
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, u64)>,
        S: Into<String>,
    {
        Self {
            entries: entries
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.into(), n))
                .collect(),
        }
    }

    pub fn get(&self, replica: &str) -> u64 {
        self.entries.get(replica).copied().unwrap_or(0)
    }

    /// Counts one more update of `replica`'s own; returns its new entry.
    pub fn tick(&mut self, replica: &str) -> u64 {
        let e = self.entries.entry(replica.to_owned()).or_insert(0);
        *e = e.saturating_add(1);
        *e
    }

    /// The entry-wise maximum.
    pub fn merge(&mut self, other: &VectorClock) {
        for (r, &n) in &other.entries {
            let e = self.entries.entry(r.clone()).or_insert(0);
            *e = (*e).max(n);
        }
    }

    /// `self >= other` entry by entry: `self` has seen everything `other` has.
    pub fn dominates(&self, other: &VectorClock) -> bool {
        other.entries.iter().all(|(r, &n)| self.get(r) >= n)
    }

    pub fn compare(&self, other: &VectorClock) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The sum of the entries: strictly larger for a clock that happened after another, so
    /// (sum, origin) orders updates totally and consistently with causality.
    pub fn sum(&self) -> u64 {
        self.entries.values().fold(0, |a, b| a.saturating_add(*b))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(r, n)| (r.as_str(), *n))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialOrd for VectorClock {
    /// The causal order: `None` for concurrent clocks.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Equal => Some(Ordering::Equal),
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_compare_causally() {
        let a = VectorClock::from_entries([("eu", 1)]);
        let b = VectorClock::from_entries([("eu", 1), ("us", 1)]);
        let c = VectorClock::from_entries([("eu", 2)]);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert!(a < b && b.partial_cmp(&c).is_none());
        assert_eq!(
            a.compare(&VectorClock::from_entries([("eu", 1), ("us", 0)])),
            Causality::Equal
        );
        let mut m = b.clone();
        m.merge(&c);
        assert_eq!(m, VectorClock::from_entries([("eu", 2), ("us", 1)]));
        assert!(m.dominates(&b) && m.dominates(&c));
    }
}
