//! Version vectors: how replicas order changes without trusting any clock.
//!
//! Each replica counts its own changes to a path. A version `a` happened before `b` when every
//! counter of `a` is at most the matching counter of `b`; when each has a counter the other lacks,
//! the two changes were made without knowledge of each other, which is exactly a conflict.

use serde::{Deserialize, Serialize};

/// A replica's identity in version vectors: random, chosen once per replica.
pub type ReplicaId = u64;

/// Longest vector accepted from the wire.
pub const MAX_VECTOR_LEN: usize = 1024;

/// `(replica, counter)` pairs, sorted by replica, counters non-zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<(ReplicaId, u64)>", into = "Vec<(ReplicaId, u64)>")]
pub struct VersionVector(Vec<(ReplicaId, u64)>);

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Equal,
    /// `self` happened before `other`: `other` supersedes it.
    Before,
    /// `self` supersedes `other`.
    After,
    /// Neither knew of the other: a conflict if the contents differ.
    Concurrent,
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `replica`, 0 if absent.
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.0.binary_search_by_key(&replica, |(r, _)| *r) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Counts one more change by `replica`.
    pub fn increment(&mut self, replica: ReplicaId) {
        match self.0.binary_search_by_key(&replica, |(r, _)| *r) {
            Ok(i) => self.0[i].1 = self.0[i].1.saturating_add(1),
            Err(i) => self.0.insert(i, (replica, 1)),
        }
    }

    /// `self` with one more change by `replica`.
    pub fn incremented(&self, replica: ReplicaId) -> Self {
        let mut v = self.clone();
        v.increment(replica);
        v
    }

    /// `self` with `replica`'s counter raised to `counter` (a replica clock's next value, which
    /// is always above anything it used before). Keeps the counter if it is already higher.
    pub fn with(&self, replica: ReplicaId, counter: u64) -> Self {
        match self.0.binary_search_by_key(&replica, |(r, _)| *r) {
            Ok(i) => {
                let mut v = self.clone();
                v.0[i].1 = v.0[i].1.max(counter);
                v
            }
            Err(i) if counter > 0 => {
                // Exactly the room it needs: an index holds one of these per path, and a
                // `Vec` grown by one insert would hold four.
                let mut v = Vec::with_capacity(self.0.len() + 1);
                v.extend_from_slice(&self.0[..i]);
                v.push((replica, counter));
                v.extend_from_slice(&self.0[i..]);
                Self(v)
            }
            Err(_) => self.clone(),
        }
    }

    /// The least version that supersedes or equals both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            match (self.0.get(i), other.0.get(j)) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    out.push((a.0, a.1.max(b.1)));
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.0 < b.0 => {
                    out.push(*a);
                    i += 1;
                }
                (Some(_), Some(b)) => {
                    out.push(*b);
                    j += 1;
                }
                (Some(a), None) => {
                    out.push(*a);
                    i += 1;
                }
                (None, Some(b)) => {
                    out.push(*b);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        out.shrink_to_fit(); // kept per path: no spare room
        Self(out)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Ordering {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            let (a, b) = match (self.0.get(i), other.0.get(j)) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    i += 1;
                    j += 1;
                    (a.1, b.1)
                }
                (Some(a), Some(b)) if a.0 < b.0 => {
                    i += 1;
                    (a.1, 0)
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    j += 1;
                    (0, b.1)
                }
                (Some(a), None) => {
                    i += 1;
                    (a.1, 0)
                }
                (None, None) => break,
            };
            less |= a < b;
            greater |= a > b;
        }
        match (less, greater) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Before,
            (false, true) => Ordering::After,
            (true, true) => Ordering::Concurrent,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// Why a vector from the wire was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadVector;

impl std::fmt::Display for BadVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("version vector not sorted, with a zero counter, or too long")
    }
}

impl TryFrom<Vec<(ReplicaId, u64)>> for VersionVector {
    type Error = BadVector;
    fn try_from(v: Vec<(ReplicaId, u64)>) -> Result<Self, BadVector> {
        let sorted = v.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted || v.len() > MAX_VECTOR_LEN || v.iter().any(|(_, c)| *c == 0) {
            return Err(BadVector);
        }
        Ok(Self(v))
    }
}

impl From<VersionVector> for Vec<(ReplicaId, u64)> {
    fn from(v: VersionVector) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::try_from(pairs.to_vec()).unwrap()
    }

    #[test]
    fn compare_table() {
        type Pairs = &'static [(u64, u64)];
        let rows: &[(Pairs, Pairs, Ordering)] = &[
            (&[], &[], Ordering::Equal),
            (&[(1, 1)], &[(1, 1)], Ordering::Equal),
            (&[], &[(1, 1)], Ordering::Before),
            (&[(1, 1)], &[(1, 2)], Ordering::Before),
            (&[(1, 2)], &[(1, 1)], Ordering::After),
            (&[(1, 1)], &[(1, 1), (2, 1)], Ordering::Before),
            (&[(1, 1), (2, 1)], &[(2, 1)], Ordering::After),
            (&[(1, 1)], &[(2, 1)], Ordering::Concurrent),
            (&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Ordering::Concurrent),
            (&[(1, 1), (3, 1)], &[(2, 1), (3, 1)], Ordering::Concurrent),
        ];
        for (a, b, want) in rows {
            assert_eq!(vv(a).compare(&vv(b)), *want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn merge_supersedes_both_and_increment_orders() {
        let a = vv(&[(1, 3), (2, 1)]);
        let b = vv(&[(2, 4), (5, 1)]);
        let m = a.merged(&b);
        assert_eq!(m, vv(&[(1, 3), (2, 4), (5, 1)]));
        assert!(matches!(a.compare(&m), Ordering::Before));
        assert!(matches!(b.compare(&m), Ordering::Before));
        assert_eq!(m.incremented(9).compare(&m), Ordering::After);
        assert_eq!(a.incremented(2).get(2), 2);
        assert_eq!(a.incremented(7).get(7), 1);
    }

    #[test]
    fn unsorted_or_zero_vectors_are_refused() {
        assert!(VersionVector::try_from(vec![(2, 1), (1, 1)]).is_err());
        assert!(VersionVector::try_from(vec![(1, 1), (1, 2)]).is_err());
        assert!(VersionVector::try_from(vec![(1, 0)]).is_err());
    }
}
