//! When to read a path the watcher named: at once if the change looks finished (a writer closed
//! the file, or it was renamed: final, however recently the path changed before), after a short
//! settle otherwise, and after a quiet period if the path is "hot" (changed again right after we
//! read it, with no close: being written). Where the watcher reports closes (inotify), a file
//! written into is read at its close, or a second after the first write if the writer keeps it
//! open (a log): never a version cut mid-write by our read. An unlinked name waits until no unlink has been
//! reported for [`UNLINK_QUIET`]: `rm -rf` of the whole root unlinks the files first and the root
//! last, and a deletion read before the root is gone would be sent to the peers, which must not
//! happen (a vanished root halts the pair and deletes nothing). Never later than [`MAX_DELAY`]
//! after its first hint, so a file written without pause still syncs. Time is an argument: every
//! rule is a row in a test.
//!
//! A hint is only "look here" (DESIGN.md: events are hints); a deep one means "look at all of
//! it" (a directory moved in). A hint for the whole root, or an overflow, is a full rescan.

use mirror_protocol::RelPath;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A path reported as possibly still being written is read after this much quiet...
pub const SETTLE: Duration = Duration::from_millis(4);
/// A path changed again within this window after we read it is "hot" (being written).
pub const HOT_WINDOW: Duration = Duration::from_millis(50);
/// A hot path waits for this much quiet before it is read again...
pub const QUIET: Duration = Duration::from_millis(20);
/// A name unlinked is read once no other unlink was reported for this long (a burst of them is
/// often one `rm -rf`, which may end with the root).
pub const UNLINK_QUIET: Duration = Duration::from_millis(20);
/// ...but never longer than this after its first hint.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// How many recently changed paths are kept before the cool ones are forgotten.
const PRUNE_FROM: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dirty {
    first: Instant,
    due: Instant,
    deep: bool,
    /// The last hint said the name was unlinked: due no earlier than `unlinks_quiet_at`.
    unlinked: bool,
}

impl Dirty {
    /// When it is due, with the unlinks reported until `quiet_at` (see [`UNLINK_QUIET`]).
    fn due(&self, quiet_at: Option<Instant>) -> Instant {
        match quiet_at {
            Some(q) if self.unlinked => self.due.max(q).min(self.first + MAX_DELAY),
            _ => self.due,
        }
    }
}

/// The paths waiting to be read, and when each may be.
#[derive(Debug, Default)]
pub struct Debounce {
    dirty: BTreeMap<RelPath, Dirty>,
    /// When each path was last found changed (to tell a hot path).
    changed: BTreeMap<RelPath, Instant>,
    /// `changed` is pruned of cool paths when it grows past this (then twice what is left).
    prune_at: usize,
    /// The latest entry of `changed`: once it is cool, they all are.
    last_change: Option<Instant>,
    full_rescan: bool,
    /// The last unlink reported plus [`UNLINK_QUIET`]: no unlinked name is read before.
    unlinks_quiet_at: Option<Instant>,
    /// Every hint waits this long instead (a test hook: a peer's message can then arrive while
    /// a rescan is pending).
    fixed_delay: Option<Duration>,
    /// A settled hint is read at once even for a hot path: the watcher reports a writer's close
    /// (inotify). Without close events (kqueue, whose "settled" is a new name in a directory or a
    /// chmod, not a close) a hot path waits for quiet, settled or not.
    close_is_final: bool,
}

impl Debounce {
    pub fn new(fixed_delay: Option<Duration>, close_is_final: bool) -> Self {
        Self { fixed_delay, close_is_final, prune_at: PRUNE_FROM, ..Self::default() }
    }

    /// A hint for `path` at `now`: `deep` to read its whole subtree, `settled` when the change
    /// looks finished (the writer closed the file, a directory appeared).
    pub fn hint(&mut self, path: RelPath, deep: bool, settled: bool, now: Instant) {
        self.forget_cool(now);
        let hot = self.changed.get(&path).is_some_and(|t| now.saturating_duration_since(*t) < HOT_WINDOW);
        let d = self.dirty.entry(path).or_insert(Dirty { first: now, due: now, deep, unlinked: false });
        d.deep |= deep;
        d.unlinked = false;
        d.due = if let Some(delay) = self.fixed_delay {
            now + delay
        } else if settled && (self.close_is_final || !hot) {
            // A close is final: the version is whole, and a file edited again as soon as its last
            // edit arrived must not wait for quiet (issue 13: 21 ms an edit, a new file 0.7 ms).
            now
        } else if hot {
            (now + QUIET).min(d.first + MAX_DELAY)
        } else {
            (now + SETTLE).min(d.first + MAX_DELAY)
        };
    }

    /// A hint that a writer wrote into `path` at `now` and may hold it open. With close events
    /// it is due at its close (a settled hint) or [`MAX_DELAY`] after its first hint: a file is
    /// not read while it is being written, and one written without end (a log) is read once a
    /// second. Without close events it is an unsettled hint like any other.
    pub fn writing(&mut self, path: RelPath, now: Instant) {
        if !self.close_is_final || self.fixed_delay.is_some() {
            self.hint(path, false, false, now);
            return;
        }
        self.forget_cool(now);
        let d = self.dirty.entry(path).or_insert(Dirty { first: now, due: now, deep: false, unlinked: false });
        d.unlinked = false;
        d.due = d.first + MAX_DELAY;
    }

    /// A hint that the name `path` was unlinked at `now` (see [`UNLINK_QUIET`]). A later hint of
    /// another kind for the path (it was made again) replaces it.
    pub fn unlinked(&mut self, path: RelPath, now: Instant) {
        self.forget_cool(now);
        let d = self.dirty.entry(path).or_insert(Dirty { first: now, due: now, deep: false, unlinked: true });
        d.unlinked = true;
        match self.fixed_delay {
            Some(delay) => {
                d.due = now + delay;
                d.unlinked = false;
            }
            None => {
                d.due = now;
                self.unlinks_quiet_at = Some(now + UNLINK_QUIET);
            }
        }
    }

    /// Everything is to be read again (an overflow, a hint for the whole root).
    pub fn rescan_all(&mut self) {
        self.full_rescan = true;
    }

    /// Whether a full rescan is owed; the hints it covers are dropped.
    pub fn take_full_rescan(&mut self) -> bool {
        if std::mem::take(&mut self.full_rescan) {
            self.dirty.clear();
            true
        } else {
            false
        }
    }

    pub fn full_rescan_owed(&self) -> bool {
        self.full_rescan
    }

    /// The paths due at `now` (each with whether to read it deep), in path order, taken out.
    pub fn due(&mut self, now: Instant) -> Vec<(RelPath, bool)> {
        self.forget_cool(now);
        let q = self.unlinks_quiet_at;
        let mut due: Vec<(RelPath, bool)> =
            self.dirty.iter().filter(|(_, d)| d.due(q) <= now).map(|(p, d)| (p.clone(), d.deep)).collect();
        due.sort();
        for (p, _) in &due {
            self.dirty.remove(p);
        }
        due
    }

    /// Takes the hint for `path` out now (it is about to be read anyway): whether it was deep.
    pub fn take(&mut self, path: &RelPath) -> Option<bool> {
        self.dirty.remove(path).map(|d| d.deep)
    }

    /// Makes every waiting hint due at `now` (nothing of ours is being written: read it all).
    pub fn hurry(&mut self, now: Instant) {
        self.dirty.values_mut().for_each(|d| d.due = now);
        self.unlinks_quiet_at = None;
    }

    /// `path` was found changed at `now`: another hint soon after means it is being written.
    pub fn found_changed(&mut self, path: &RelPath, now: Instant) {
        self.changed.insert(path.clone(), now);
        self.last_change = Some(self.last_change.map_or(now, |t| t.max(now)));
        if self.changed.len() > self.prune_at {
            self.changed.retain(|_, t| now.saturating_duration_since(*t) < HOT_WINDOW);
            // Not again before it doubles: a scan finding a million new paths in a second would
            // otherwise walk the whole map at each one.
            self.prune_at = PRUNE_FROM.max(2 * self.changed.len());
        }
    }

    /// When every path found changed is cool again and can be forgotten (a scan that found a
    /// whole tree new holds a name for each of its files until then). A driver wakes the
    /// replica at this time (it is in `Replica::next_deadline`).
    pub fn cools_at(&self) -> Option<Instant> {
        self.last_change.map(|t| t + HOT_WINDOW)
    }

    /// Forgets what was found changed, once all of it is cool, room and all.
    fn forget_cool(&mut self, now: Instant) {
        if self.cools_at().is_some_and(|t| t <= now) {
            self.changed = BTreeMap::new();
            self.last_change = None;
            self.prune_at = PRUNE_FROM;
        }
    }

    /// When the next hint is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.dirty.values().map(|d| d.due(self.unlinks_quiet_at)).min()
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    pub fn len(&self) -> usize {
        self.dirty.len()
    }

    /// Forgets every waiting hint (a replay gave up: a full scan follows).
    pub fn clear(&mut self) {
        self.dirty.clear();
        self.full_rescan = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn when_each_hint_is_due() {
        let t0 = Instant::now();
        // (what happened before, hint at, settled, due at; the watcher reports closes)
        type Row = (&'static str, Option<u64>, u64, bool, u64, bool);
        let rows: Vec<Row> = vec![
            ("a settled change is read at once", None, 0, true, 0, true),
            ("an unsettled one after the settle time", None, 0, false, 4, true),
            ("a hot path closed again is read at once: a close is final", Some(0), 10, true, 10, true),
            ("a hot path still being written waits for quiet", Some(0), 10, false, 30, true),
            ("past the hot window a path is cool again", Some(0), 60, true, 60, true),
            ("without close events a hot path waits for quiet, settled or not", Some(0), 10, true, 30, false),
            ("...and a cool one settled is read at once", None, 0, true, 0, false),
        ];
        for (what, changed_at, at, settled, want, closes) in rows {
            let mut d = Debounce::new(None, closes);
            if let Some(c) = changed_at {
                d.found_changed(&p("f"), t0 + ms(c));
            }
            d.hint(p("f"), false, settled, t0 + ms(at));
            assert_eq!(d.next_due(), Some(t0 + ms(want)), "{what}");
            if want > 0 {
                assert!(d.due(t0 + ms(want - 1)).is_empty(), "{what}: early");
            }
            assert_eq!(d.due(t0 + ms(want)), vec![(p("f"), false)], "{what}");
            assert!(d.is_empty());
        }
    }

    #[test]
    fn an_unlinked_name_waits_until_unlinks_stop() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        // `rm -rf`: an unlink every 5 ms; none is read while they go on.
        for i in 0..10 {
            d.unlinked(p(&format!("f{i}")), t0 + ms(5 * i));
            assert!(d.due(t0 + ms(5 * i)).is_empty(), "f{i} read while unlinks go on");
        }
        let last = t0 + ms(45);
        assert_eq!(d.next_due(), Some(last + UNLINK_QUIET));
        assert!(d.due(last + UNLINK_QUIET - ms(1)).is_empty());
        // A close meanwhile is not held back by them.
        d.hint(p("saved"), false, true, last);
        assert_eq!(d.due(last), vec![(p("saved"), false)]);
        assert_eq!(d.due(last + UNLINK_QUIET).len(), 10);
        // A name made again after its unlink is read as what it is now.
        d.unlinked(p("g"), last + ms(100));
        d.hint(p("g"), false, true, last + ms(101));
        assert_eq!(d.due(last + ms(101)), vec![(p("g"), false)]);
        // Unlinks without end are read within the max delay of the first.
        let start = last + ms(200);
        d.unlinked(p("first"), start);
        for i in 1..=100 {
            d.unlinked(p(&format!("h{i}")), start + ms(15 * i));
        }
        assert!(d.due(start + MAX_DELAY).contains(&(p("first"), false)), "held past the max delay");
    }

    #[test]
    fn a_file_being_written_is_read_at_its_close_or_once_a_second() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        // A new file (created, then written for 300 ms in 1 MiB writes, then closed): not read
        // while it is written, whatever the pauses between writes; read at once at its close.
        d.hint(p("big"), false, false, t0);
        for i in 1..=60 {
            d.writing(p("big"), t0 + ms(5 * i));
            assert!(d.due(t0 + ms(5 * i + 4)).is_empty(), "read mid-write after write {i}");
        }
        d.hint(p("big"), false, true, t0 + ms(301));
        assert_eq!(d.due(t0 + ms(301)), vec![(p("big"), false)]);
        // A log held open and written every 10 ms: read once its first write since the last
        // read is a second old.
        let start = t0 + ms(400);
        let mut reads = vec![];
        for i in 0..250 {
            let now = start + ms(10 * i);
            d.writing(p("log"), now);
            if !d.due(now).is_empty() {
                reads.push(i);
            }
        }
        assert_eq!(reads, [100, 201], "read once a second");
        // Without close events a write is an unsettled hint: read after the settle time.
        let mut d = Debounce::new(None, false);
        d.writing(p("f"), t0);
        assert_eq!(d.next_due(), Some(t0 + SETTLE));
    }

    #[test]
    fn a_path_written_without_pause_is_read_within_the_max_delay() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        d.found_changed(&p("log"), t0);
        let mut now = t0;
        let mut read = None;
        for _ in 0..200 {
            now += ms(10); // a hint every 10 ms, for ever: always hot, never quiet
            d.found_changed(&p("log"), now - ms(5));
            d.hint(p("log"), false, false, now);
            if !d.due(now).is_empty() {
                read = Some(now);
                break;
            }
        }
        let read = read.expect("never read");
        assert!(read - t0 <= MAX_DELAY + ms(10), "read after {:?}", read - t0);
    }

    #[test]
    fn many_changed_paths_are_pruned_now_and_then_not_at_each_one() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        // All within the hot window: nothing can be pruned, and the bound moves up.
        for i in 0..(PRUNE_FROM + 1) {
            d.found_changed(&p(&format!("f{i}")), t0);
        }
        assert_eq!(d.prune_at, 2 * (PRUNE_FROM + 1));
        // Long after, the next prune (at twice as many) forgets the cool ones.
        let later = t0 + Duration::from_secs(60);
        for i in 0..(PRUNE_FROM + 2) {
            d.found_changed(&p(&format!("g{i}")), later);
        }
        assert!(!d.changed.contains_key(&p("f0")), "a cool path kept");
        assert_eq!(d.changed.len(), PRUNE_FROM + 2);
    }

    #[test]
    fn what_was_found_changed_is_forgotten_once_all_of_it_is_cool() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        assert_eq!(d.cools_at(), None, "nothing to forget, no wake");
        for i in 0..1000 {
            d.found_changed(&p(&format!("f{i}")), t0);
        }
        d.found_changed(&p("late"), t0 + ms(30));
        assert_eq!(d.cools_at(), Some(t0 + ms(30) + HOT_WINDOW));
        // Just before the last one cools, the others are cool but kept (one pass, not a walk
        // at each wake); the last is still hot.
        d.due(t0 + ms(30) + HOT_WINDOW - ms(1));
        assert_eq!(d.changed.len(), 1001);
        d.hint(p("late"), false, false, t0 + ms(30) + HOT_WINDOW - ms(1));
        assert_eq!(d.next_due(), Some(t0 + ms(30) + HOT_WINDOW - ms(1) + QUIET), "late is hot");
        // At the wake: all forgotten, no further wake for them.
        d.due(t0 + ms(30) + HOT_WINDOW);
        assert!(d.changed.is_empty() && d.cools_at().is_none());
    }

    #[test]
    fn a_deep_hint_stays_deep_and_paths_come_in_order() {
        let t0 = Instant::now();
        let mut d = Debounce::new(None, true);
        d.hint(p("b"), true, true, t0);
        d.hint(p("b"), false, true, t0);
        d.hint(p("a"), false, true, t0);
        assert_eq!(d.due(t0), vec![(p("a"), false), (p("b"), true)]);
        d.hint(p("c"), true, false, t0);
        assert_eq!(d.take(&p("c")), Some(true));
        assert_eq!(d.take(&p("c")), None);
    }

    #[test]
    fn a_full_rescan_covers_the_hints_and_a_fixed_delay_holds_every_one() {
        let t0 = Instant::now();
        let mut d = Debounce::new(Some(ms(1500)), true);
        d.hint(p("x"), false, true, t0);
        assert_eq!(d.next_due(), Some(t0 + ms(1500)));
        d.hurry(t0);
        assert_eq!(d.next_due(), Some(t0));
        d.rescan_all();
        assert!(d.take_full_rescan());
        assert!(d.is_empty() && !d.take_full_rescan());
    }
}
