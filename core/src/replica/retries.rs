//! Peer entries waiting to be looked at again (a transfer that failed, a conflict to decide
//! once a transfer is in, a rename's other half): at most one per session and path, due in
//! time order.
//!
//! A peer's entries for a path only move forward: what it says later about a path replaces
//! what it said before. So a waiting entry is replaced by the same session's newer one, and
//! dropped when a newer one arrives and is decided at once. Kept as a list, an old entry came
//! due after a newer one had been decided, was refused in its place, and the newer one was
//! never looked at again (simulator seed 448180).

use super::ConnId;
use mirror_protocol::{Entry, RelPath, VersionOrdering};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Default)]
pub(super) struct Retries {
    by_key: BTreeMap<(ConnId, RelPath), (Instant, Entry)>,
    by_time: BTreeSet<(Instant, ConnId, RelPath)>,
}

impl Retries {
    /// `conn`'s entry `e`, looked at again at `at`; unless the session's entry waiting for
    /// the path is newer, which then stands.
    pub(super) fn push(&mut self, at: Instant, conn: ConnId, e: Entry) {
        let key = (conn, e.path.clone());
        if let Some((t, old)) = self.by_key.get(&key) {
            if old.version.compare(&e.version) == VersionOrdering::After {
                return;
            }
            self.by_time.remove(&(*t, conn, e.path.clone()));
        }
        self.by_time.insert((at, conn, e.path.clone()));
        self.by_key.insert(key, (at, e));
    }

    /// `conn`'s entry `e` is being decided now: what waits from the same session for the path
    /// and is not newer is moot.
    pub(super) fn supersede(&mut self, conn: ConnId, e: &Entry) {
        let key = (conn, e.path.clone());
        if let Some((t, old)) = self.by_key.get(&key)
            && matches!(old.version.compare(&e.version), VersionOrdering::Before | VersionOrdering::Equal)
        {
            self.by_time.remove(&(*t, conn, e.path.clone()));
            self.by_key.remove(&key);
        }
    }

    /// Takes out the entries due at `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<(ConnId, Entry)> {
        let mut due = Vec::new();
        while let Some(first) = self.by_time.first()
            && first.0 <= now
        {
            let Some((_, conn, path)) = self.by_time.pop_first() else { break };
            if let Some((_, e)) = self.by_key.remove(&(conn, path)) {
                due.push((conn, e));
            }
        }
        due
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.by_time.first().map(|t| t.0)
    }

    pub(super) fn forget_conn(&mut self, conn: ConnId) {
        self.by_key.retain(|k, _| k.0 != conn);
        self.by_time.retain(|k| k.1 != conn);
    }

    /// The sessions with something waiting.
    pub(super) fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_key.keys().map(|k| k.0)
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_protocol::{Kind, Timestamp, VersionVector};
    use std::time::Duration;

    fn entry(path: &str, counter: u64) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::Deleted,
            mtime: Timestamp::default(),
            version: VersionVector::new().with(7, counter),
            origin: "peer".into(),
        }
    }

    #[test]
    fn an_older_entry_never_replaces_a_newer_one_of_the_same_session() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        r.push(t0 + Duration::from_millis(20), 1, entry("a", 5));
        r.push(t0, 1, entry("a", 3)); // older: the newer one stands, with its time
        assert_eq!(r.len(), 1);
        assert!(r.take_due(t0).is_empty());
        let due = r.take_due(t0 + Duration::from_millis(20));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.version.get(7), 5);
        // Another session's entry for the same path is its own.
        r.push(t0, 1, entry("a", 3));
        r.push(t0, 2, entry("a", 1));
        assert_eq!(r.len(), 2);
        assert_eq!(r.conns().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_newer_entry_replaces_the_waiting_one_and_one_decided_now_drops_it() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        r.push(t0 + Duration::from_secs(300), 1, entry("a", 3));
        r.push(t0 + Duration::from_millis(10), 1, entry("a", 4));
        assert_eq!(r.next_due(), Some(t0 + Duration::from_millis(10)));
        r.supersede(1, &entry("a", 2)); // older than what waits: no effect
        assert_eq!(r.len(), 1);
        r.supersede(2, &entry("a", 9)); // another session: no effect
        assert_eq!(r.len(), 1);
        r.supersede(1, &entry("a", 4));
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn due_entries_come_out_in_time_order_and_a_session_is_forgotten_whole() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        r.push(t0 + Duration::from_millis(30), 1, entry("c", 1));
        r.push(t0 + Duration::from_millis(10), 2, entry("b", 1));
        r.push(t0 + Duration::from_millis(20), 1, entry("a", 1));
        let order: Vec<String> =
            r.take_due(t0 + Duration::from_millis(30)).iter().map(|(_, e)| e.path.to_string()).collect();
        assert_eq!(order, ["b", "a", "c"]);
        r.push(t0, 1, entry("a", 1));
        r.push(t0, 2, entry("b", 1));
        r.forget_conn(1);
        assert_eq!(r.conns().collect::<Vec<_>>(), vec![2]);
        assert_eq!(r.take_due(t0).len(), 1);
    }
}
