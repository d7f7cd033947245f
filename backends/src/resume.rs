//! Resuming a watcher that keeps an event history (FSEvents): what a [`Checkpoint`] says, and
//! whether a restarted watcher may replay from it or must leave the consumer to scan everything.
//! Plain functions, tested on every platform.
//!
//! FSEvents numbers events with one counter for the whole machine and keeps each volume's history
//! on the volume, under a UUID that changes whenever that history is thrown away (the volume was
//! erased, its event store reset, or it was written by a system that keeps no history). So a
//! saved position is `(volume UUID, event id)`, and it is good only while the UUID is the same
//! and the machine's counter has not gone back past it.

use crate::Checkpoint;

/// A position in a backend's event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The history's identity (FSEvents: the volume's event-store UUID).
    pub uuid: String,
    /// The last event the consumer has acted on.
    pub id: u64,
}

/// How a watcher starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// Replay the history after this event id, then watch live.
    Replay(u64),
    /// Watch from now on; the consumer must scan everything (the reason is logged).
    Fresh(&'static str),
}

/// The checkpoint text: `<backend> <uuid> <id>`.
pub(crate) fn encode(backend: &str, p: &Position) -> Checkpoint {
    Checkpoint(format!("{backend} {} {}", p.uuid, p.id))
}

/// The position in a checkpoint that `backend` wrote, if it is one.
pub(crate) fn parse(backend: &str, c: &Checkpoint) -> Option<Position> {
    let mut parts = c.0.split(' ');
    let (Some(b), Some(uuid), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if b != backend || uuid.is_empty() {
        return None;
    }
    Some(Position { uuid: uuid.to_string(), id: id.parse().ok()? })
}

/// Whether `backend` may replay from `saved`, given the history's identity now (`None`: this
/// volume keeps no history) and the newest event id now.
pub(crate) fn decide(backend: &str, saved: Option<&Checkpoint>, uuid_now: Option<&str>, current: u64) -> Start {
    let Some(saved) = saved else { return Start::Fresh("no checkpoint was saved") };
    let Some(pos) = parse(backend, saved) else { return Start::Fresh("the checkpoint is another watcher's") };
    let Some(uuid_now) = uuid_now else { return Start::Fresh("this volume keeps no event history") };
    if pos.uuid != uuid_now {
        return Start::Fresh("the volume's event history was reset since");
    }
    if pos.id == 0 {
        return Start::Fresh("the checkpoint is before any event");
    }
    if pos.id > current {
        return Start::Fresh("event ids went back (they wrapped, or the history was rewritten)");
    }
    Start::Replay(pos.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(s: &str) -> Checkpoint {
        Checkpoint(s.to_string())
    }

    #[test]
    fn a_checkpoint_reads_back() {
        let p = Position { uuid: "2F1C5A0E-77B1-4D1B-9E55-0123456789AB".into(), id: 987_654_321 };
        let c = encode("fsevents", &p);
        assert_eq!(parse("fsevents", &c), Some(p));
        assert_eq!(parse("kqueue", &c), None, "another backend's");
        for bad in ["", "fsevents", "fsevents U", "fsevents U x", "fsevents U 1 2", "fsevents  5", "fsevents U -1"] {
            assert_eq!(parse("fsevents", &cp(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn replay_only_from_the_same_history_and_a_reachable_id() {
        let saved = cp("fsevents U1 500");
        let d = |saved: Option<&Checkpoint>, uuid: Option<&str>, current| decide("fsevents", saved, uuid, current);
        assert_eq!(d(Some(&saved), Some("U1"), 900), Start::Replay(500));
        assert_eq!(d(Some(&saved), Some("U1"), 500), Start::Replay(500), "nothing happened since");
        assert!(matches!(d(None, Some("U1"), 900), Start::Fresh(_)), "first run");
        assert!(matches!(d(Some(&saved), Some("U2"), 900), Start::Fresh(_)), "history reset");
        assert!(matches!(d(Some(&saved), None, 900), Start::Fresh(_)), "no history on this volume");
        assert!(matches!(d(Some(&saved), Some("U1"), 499), Start::Fresh(_)), "ids went back");
        assert!(matches!(d(Some(&cp("fsevents U1 0")), Some("U1"), 9), Start::Fresh(_)));
        assert!(matches!(d(Some(&cp("history U1 500")), Some("U1"), 900), Start::Fresh(_)), "other backend");
        assert!(matches!(d(Some(&cp("garbage")), Some("U1"), 900), Start::Fresh(_)));
    }
}
