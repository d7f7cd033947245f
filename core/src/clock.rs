//! The replica clock: one counter per replica, the only order a replica gives its own changes.
//!
//! Each value is handed out once, ever, across crashes: values are reserved in blocks, and a
//! block must be on disk before any value in it is used ([`Tick::reserve`]). After a crash the
//! clock starts above the last reservation, so a value handed out before the crash (but perhaps
//! never journaled) is never handed out again for another change. Wall clocks play no part.

use mirror_protocol::{ReplicaId, VersionVector};

/// Counters reserved per clock write.
pub const BLOCK: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct Clock {
    me: ReplicaId,
    next: u64,
    reserved: u64,
}

/// A value of the clock, and the reservation the caller must make durable before using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Tick {
    pub value: u64,
    pub reserve: Option<u64>,
}

impl Clock {
    /// The clock of replica `me` at start: above the reservation persisted last time and above
    /// every value its journal holds. The returned reservation is to be made durable first.
    pub fn start(me: ReplicaId, persisted: u64, highest_used: u64) -> (Clock, u64) {
        let next = persisted.max(highest_used) + 1;
        let reserved = next + BLOCK;
        (Clock { me, next, reserved }, reserved)
    }

    /// The next value.
    pub fn tick(&mut self) -> Tick {
        let value = self.next;
        self.next += 1;
        let reserve = (self.next >= self.reserved).then(|| {
            self.reserved = self.next + BLOCK;
            self.reserved
        });
        Tick { value, reserve }
    }

    /// `v` with a new change by this replica: the new value, and the reservation to persist.
    pub fn next_version(&mut self, v: &VersionVector) -> (VersionVector, Option<u64>) {
        let t = self.tick();
        (v.with(self.me, t.value), t.reserve)
    }

    /// The last value handed out (every change so far has a counter at most this).
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    pub fn replica(&self) -> ReplicaId {
        self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_is_used_before_its_block_is_reserved_nor_ever_twice_across_crashes() {
        let (mut c, mut durable) = Clock::start(7, 0, 0);
        let mut used = std::collections::BTreeSet::new();
        for crash in 0..5u64 {
            for _ in 0..(BLOCK * 2 + crash * 37) {
                let t = c.tick();
                if let Some(r) = t.reserve {
                    assert!(r > durable, "a reservation goes forward");
                    durable = r;
                }
                assert!(t.value < durable, "{} used before {durable} was reserved", t.value);
                assert!(used.insert(t.value), "{} handed out twice", t.value);
            }
            // A crash: memory lost; what was durable and the journal's highest value remain
            // (here the journal lags: some values used were never journaled).
            let journaled = c.last().saturating_sub(5);
            let (c2, r) = Clock::start(7, durable, journaled);
            assert!(r > durable);
            durable = r;
            c = c2;
        }
    }

    #[test]
    fn a_new_version_is_ours_and_newer() {
        let (mut c, _) = Clock::start(3, 100, 250);
        let (v, _) = c.next_version(&VersionVector::new().with(9, 4));
        assert_eq!(v.get(3), 251);
        assert_eq!(v.get(9), 4);
        assert_eq!(c.last(), 251);
    }
}
