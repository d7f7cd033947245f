//! What a replica knows of each path: the synced entry plus the disk stat it was seen with.
//!
//! The stat is how the engine avoids work and echoes: a path whose stat is unchanged is not
//! re-hashed, and a change we applied ourselves is recorded with its stat before the watcher
//! reports it, so the report stops at "unchanged".

use mirror_protocol::{Entry, Hash, Kind, RelPath, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Deref};
use std::time::{Duration, Instant};

/// File-type bits of `Stat::mode`. POSIX fixes these values on every Unix; `libc` has them as
/// `mode_t`, which is `u16` on macOS and `u32` on Linux, so they are spelled out once here (the
/// agent's tests check them against `libc`).
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;

/// The parts of `lstat` that say whether a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    /// File type and permission bits.
    pub mode: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub ino: u64,
}

impl Stat {
    /// What `lstat` says, as a [`Stat`]: a directory's size and mtime move with its children
    /// and say nothing of it, so they are left out.
    pub fn new(mode: u32, size: u64, mtime: Timestamp, ino: u64) -> Self {
        if mode & S_IFMT == S_IFDIR {
            return Self { mode, size: 0, mtime: Timestamp::default(), ino };
        }
        Self { mode, size, mtime, ino }
    }

    /// Whether a file seen with this stat still holds the bytes it held when seen with `known`
    /// (same inode, size and mtime): then its hash need not be computed again. A mode change
    /// alone leaves the bytes as they were.
    pub fn same_bytes_as(&self, known: &Stat) -> bool {
        self.size == known.size && self.mtime == known.mtime && self.ino == known.ino
    }
}

/// One path as this replica knows it.
#[derive(Clone, Debug)]
pub struct LocalEntry {
    pub entry: Entry,
    /// The stat of the disk object matching `entry`; `None` when nothing is on disk.
    pub stat: Option<Stat>,
    /// This replica's change counter when the entry last changed here (see `store`).
    pub seq: u64,
}

pub type Index = BTreeMap<RelPath, LocalEntry>;

/// `dir`, then the paths beneath it, in order.
///
/// In byte order the siblings `dir.txt` and `dir-old` sort between `dir` and `dir/a` ('.' and '-'
/// come before '/'), so what lies beneath `dir` is the range from `dir/` up to `dir0` ('0'
/// follows '/'), not whatever follows `dir`.
pub fn subtree<'a>(index: &'a Index, dir: &RelPath) -> impl Iterator<Item = (&'a RelPath, &'a LocalEntry)> + 'a {
    let below = |last: u8| {
        let mut v = dir.as_bytes().to_vec();
        v.push(last);
        v
    };
    let (from, to) = (below(b'/'), below(b'/' + 1));
    let inside = index.range::<[u8], _>((Bound::Included(from.as_slice()), Bound::Excluded(to.as_slice())));
    index.get_key_value(dir).into_iter().chain(inside)
}

/// Files at least this large are found by content ([`Tree::elsewhere`]): a peer's new file
/// whose bytes are already here under another name is moved or copied, not sent again. Smaller
/// ones cost less to send than to look for.
pub const BY_CONTENT_MIN: u64 = 256 * 1024;

/// What a replica knows of each path, with the lookups kept in step with it in one place (its
/// only mutators are [`Tree::insert`], [`Tree::set_stat`] and [`Tree::forget_gone`]): which path holds each inode (a
/// file renamed here is recognised without hashing it), which path holds each large content, the
/// live path of each folded name (on file systems that fold names), and the inodes of files
/// deleted a moment ago (the other half of a rename may come next).
///
/// It reads as the [`Index`] it wraps (`Deref`), so lookups and iteration stay plain map calls;
/// only changes go through the methods.
#[derive(Debug, Default)]
pub struct Tree {
    paths: Index,
    // Lookups only, never iterated in an order that decides anything: hash maps (random keys,
    // so no peer can choose colliding names), and a replica stays deterministic.
    by_ino: HashMap<u64, RelPath>,
    by_content: HashMap<Hash, RelPath>,
    by_fold: HashMap<Vec<u8>, RelPath>,
    gone: HashMap<u64, (Stat, Hash, Instant)>,
    /// `paths` is rebuilt ([`Tree::compact`]) when it reaches this many entries.
    compact_at: usize,
}

/// Below this many paths the index is never rebuilt: the room it could win is small.
const COMPACT_FROM: usize = 1024;

/// The folded name of a path, on a file system that folds names.
pub type FoldKey<'a> = dyn Fn(&RelPath) -> Vec<u8> + 'a;

/// What [`Tree::insert`] replaced.
#[derive(Debug)]
pub struct Replaced {
    pub old: Option<LocalEntry>,
    /// The folded name the path gave up (it was deleted): the name is free again.
    pub freed_fold: Option<Vec<u8>>,
}

impl Deref for Tree {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.paths
    }
}

impl Tree {
    /// A tree of `paths` (as the journal had them); `fold` gives the folded name of a path when
    /// the file system folds names.
    pub fn new(mut paths: Index, fold: Option<&FoldKey<'_>>) -> Self {
        let mut t = Tree { paths: Index::new(), ..Tree::default() };
        for (p, l) in paths.iter_mut() {
            l.entry.path = p.clone(); // one allocation per path (a journal may hold several)
            if let Some(s) = l.stat.filter(|_| matches!(l.entry.kind, Kind::File { .. })) {
                t.by_ino.insert(s.ino, p.clone());
            }
            if let (Some(fold), false) = (fold, l.entry.kind.is_deleted()) {
                t.by_fold.insert(fold(p), p.clone());
            }
            t.note_content(p, l);
        }
        t.paths = paths;
        t.compact();
        t
    }

    /// Rebuilds the map of paths with its nodes full. Paths come in order (a scan, a peer's
    /// index), and a B-tree filled in order splits each node in two halves and never fills the
    /// left one again: half its room stays empty, about 200 bytes a path. `append` into a
    /// non-empty map builds the merged tree bottom-up from the two sorted sequences, each node
    /// full, freeing the old nodes as it goes. Done each time the map grows by half: amortised, a
    /// constant cost per path.
    fn compact(&mut self) {
        let mut old = std::mem::take(&mut self.paths);
        if let Some((path, l)) = old.pop_first() {
            self.paths.insert(path, l);
            self.paths.append(&mut old);
        }
        self.compact_at = COMPACT_FROM.max(self.paths.len() + self.paths.len() / 2);
    }

    /// Records `l` at its path (`fold_key`: its folded name, when names fold here), keeping
    /// every lookup in step. A file that left the disk is remembered by inode until
    /// [`Tree::forget_gone`] says it is old.
    pub fn insert(&mut self, mut l: LocalEntry, fold_key: Option<Vec<u8>>, now: Instant) -> Replaced {
        // A path already known keeps its one allocation: the key's (the map keeps its old key).
        if let Some((known, _)) = self.paths.get_key_value(&l.entry.path) {
            l.entry.path = known.clone();
        }
        let path = l.entry.path.clone();
        let mut freed_fold = None;
        if let Some(key) = fold_key {
            if !l.entry.kind.is_deleted() {
                self.by_fold.insert(key, path.clone());
            } else if self.by_fold.get(&key) == Some(&path) {
                self.by_fold.remove(&key);
                freed_fold = Some(key);
            }
        }
        let stat = l.stat;
        let is_file = matches!(l.entry.kind, Kind::File { .. });
        let old = self.paths.insert(path.clone(), l);
        if self.paths.len() >= self.compact_at {
            self.compact();
        }
        if let Some((s, hash)) = old.as_ref().and_then(known_hash)
            && self.by_ino.get(&s.ino) == Some(&path)
        {
            self.by_ino.remove(&s.ino);
            if stat.is_none() {
                self.gone.insert(s.ino, (s, hash, now));
            }
        }
        if let (true, Some(s)) = (is_file, stat) {
            self.by_ino.insert(s.ino, path.clone());
        }
        if let Some(Kind::File { hash, size, .. }) = self.paths.get(&path).map(|l| &l.entry.kind)
            && stat.is_some()
            && *size >= BY_CONTENT_MIN
        {
            self.by_content.insert(*hash, path.clone());
        }
        Replaced { old, freed_fold }
    }

    /// The disk object of `path` has this stat now, its entry unchanged (a `chmod` of nothing
    /// synced, a copy with the same content and mtime).
    pub fn set_stat(&mut self, path: &RelPath, stat: Stat) {
        let Some(l) = self.paths.get_mut(path) else { return };
        let old = l.stat.replace(stat);
        if matches!(l.entry.kind, Kind::File { .. }) {
            if let Some(o) = old.filter(|o| o.ino != stat.ino)
                && self.by_ino.get(&o.ino) == Some(path)
            {
                self.by_ino.remove(&o.ino);
            }
            self.by_ino.insert(stat.ino, path.clone());
        }
    }

    /// The stat and hash last recorded for the file with inode `ino`, under any path, or deleted
    /// a moment ago: a file moved here keeps its inode, and its hash need not be read again.
    pub fn known_inode(&self, ino: u64) -> Option<(Stat, Hash)> {
        self.by_ino
            .get(&ino)
            .and_then(|p| self.paths.get(p))
            .and_then(known_hash)
            .filter(|(s, _)| s.ino == ino)
            .or_else(|| self.gone.get(&ino).map(|(s, h, _)| (*s, *h)))
    }

    /// A live file of ours, at a path other than `not`, with content `hash` (large files only,
    /// [`BY_CONTENT_MIN`]).
    pub fn elsewhere(&self, hash: &Hash, not: &RelPath) -> Option<&RelPath> {
        let p = self.by_content.get(hash)?;
        let l = self.paths.get(p)?;
        let same = matches!(&l.entry.kind, Kind::File { hash: h, .. } if h == hash);
        (p != not && same && l.stat.is_some()).then_some(p)
    }

    /// The live path holding folded name `key`.
    pub fn folded(&self, key: &[u8]) -> Option<&RelPath> {
        self.by_fold.get(key)
    }

    /// Forgets the inodes of files deleted `age` or longer before `now`.
    pub fn forget_gone(&mut self, now: Instant, age: Duration) {
        self.gone.retain(|_, (_, _, t)| now.duration_since(*t) < age);
    }

    fn note_content(&mut self, path: &RelPath, l: &LocalEntry) {
        if let (Kind::File { hash, size, .. }, Some(_)) = (&l.entry.kind, l.stat)
            && *size >= BY_CONTENT_MIN
        {
            self.by_content.insert(*hash, path.clone());
        }
    }
}

/// The stat and hash of a file whose entry matches the disk.
pub fn known_hash(l: &LocalEntry) -> Option<(Stat, Hash)> {
    match (&l.entry.kind, l.stat) {
        (Kind::File { hash, .. }, Some(s)) => Some((s, *hash)),
        _ => None,
    }
}

/// Orders entries so that applying them in turn works: deletions deepest first (children before
/// their directory), then everything else parents first.
pub fn order_for_apply(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| match (a.kind.is_deleted(), b.kind.is_deleted()) {
        (true, true) => b.path.cmp(&a.path),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.path.cmp(&b.path),
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_protocol::{Kind, VersionVector};

    fn file(path: &str, content: u8, size: u64, ino: Option<u64>) -> LocalEntry {
        let entry = Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::File { size, hash: [content; 32], mode: 0o644 },
            mtime: Timestamp::default(),
            version: VersionVector::new(),
            origin: Default::default(),
        };
        let stat = ino.map(|ino| Stat::new(S_IFREG | 0o644, size, Timestamp::default(), ino));
        LocalEntry { entry, stat, seq: 0 }
    }

    fn gone(path: &str) -> LocalEntry {
        let mut l = file(path, 0, 0, None);
        l.entry.kind = Kind::Deleted;
        l
    }

    #[test]
    fn a_file_holds_the_same_bytes_while_its_inode_size_and_mtime_stay() {
        let t = |s: i64| Timestamp { secs: s, nanos: 0 };
        let known = Stat::new(S_IFREG | 0o644, 10, t(5), 7);
        assert!(Stat::new(S_IFREG | 0o600, 10, t(5), 7).same_bytes_as(&known), "a chmod changes no byte");
        for other in [
            Stat::new(S_IFREG | 0o644, 11, t(5), 7),
            Stat::new(S_IFREG | 0o644, 10, t(6), 7),
            Stat::new(S_IFREG | 0o644, 10, t(5), 8),
        ] {
            assert!(!other.same_bytes_as(&known), "{other:?}");
        }
    }

    #[test]
    fn a_path_is_held_once_however_often_its_entry_is_replaced() {
        let t0 = Instant::now();
        let shares = |t: &Tree, p: &str| {
            let (k, l) = t.get_key_value(&RelPath::new(p).unwrap()).unwrap();
            std::ptr::eq(k.as_bytes(), l.entry.path.as_bytes())
        };
        // Loaded from a journal whose records each decoded a path of their own.
        let mut loaded = Index::new();
        loaded.insert(RelPath::new("a").unwrap(), file("a", 1, 5, Some(10)));
        let mut t = Tree::new(loaded, None);
        assert!(shares(&t, "a"), "the loaded entry holds a second copy of its path");
        // A fresh change, its path built anew (a scan, a peer's message).
        t.insert(file("a", 2, 6, Some(10)), None, t0);
        assert!(shares(&t, "a"), "the new entry holds a second copy of its path");
        let ino = t.by_ino.get(&10).unwrap();
        assert!(std::ptr::eq(ino.as_bytes(), t.get(&RelPath::new("a").unwrap()).unwrap().entry.path.as_bytes()));
    }

    #[test]
    fn the_lookups_follow_every_change_of_the_tree() {
        let t0 = Instant::now();
        let big = BY_CONTENT_MIN;
        let mut t = Tree::new(Index::new(), None);
        t.insert(file("a", 1, big, Some(10)), None, t0);
        t.insert(file("small", 2, 5, Some(11)), None, t0);
        assert_eq!(t.known_inode(10), Some((Stat::new(S_IFREG | 0o644, big, Timestamp::default(), 10), [1; 32])));
        let here = RelPath::new("b").unwrap();
        assert_eq!(t.elsewhere(&[1; 32], &here).map(|p| p.to_string()), Some("a".into()));
        assert_eq!(t.elsewhere(&[2; 32], &here), None, "small files are not looked up by content");
        assert_eq!(t.elsewhere(&[1; 32], &RelPath::new("a").unwrap()), None, "not the path itself");

        // Renamed here: the old path is deleted (no stat), and its inode is remembered a while.
        t.insert(gone("a"), None, t0);
        assert_eq!(t.elsewhere(&[1; 32], &here), None, "a deleted file holds no content");
        assert!(t.known_inode(10).is_some(), "the other half of a rename may come next");
        t.forget_gone(t0 + Duration::from_secs(5), Duration::from_secs(10));
        assert!(t.known_inode(10).is_some());
        t.forget_gone(t0 + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(t.known_inode(10), None);

        // The same entry seen with another inode (copied over with the same content and mtime).
        t.set_stat(&RelPath::new("small").unwrap(), Stat::new(S_IFREG | 0o644, 5, Timestamp::default(), 12));
        assert_eq!(t.known_inode(11), None);
        assert_eq!(t.known_inode(12).map(|(_, h)| h), Some([2; 32]));
    }

    #[test]
    fn rebuilding_the_map_as_it_grows_keeps_every_path_and_its_lookups() {
        let t0 = Instant::now();
        let mut t = Tree::new(Index::new(), None);
        // In order (a scan), then between the others (later creations), past several rebuilds.
        let n = 5 * COMPACT_FROM as u64;
        for i in (0..n).map(|i| 2 * i).chain((0..n).map(|i| 2 * i + 1)) {
            t.insert(file(&format!("d/f{i:06}"), (i % 251) as u8, 1, Some(1000 + i)), None, t0);
        }
        assert_eq!(t.len() as u64, 2 * n);
        assert!(t.compact_at > t.len() && t.compact_at <= 2 * t.len(), "rebuilt as it grew: {}", t.compact_at);
        for i in 0..2 * n {
            let p = RelPath::new(format!("d/f{i:06}")).unwrap();
            let l = t.get(&p).unwrap_or_else(|| panic!("{p} lost"));
            assert_eq!(l.entry.path, p);
            assert_eq!(t.known_inode(1000 + i).map(|(_, h)| h), Some([(i % 251) as u8; 32]), "{p}");
        }
        let order: Vec<&RelPath> = t.keys().collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    }

    #[test]
    fn a_folded_name_is_held_by_its_live_path_and_freed_when_it_goes() {
        let fold = |p: &RelPath| p.as_bytes().to_ascii_lowercase();
        let mut index = Index::new();
        let l = file("README", 1, 1, Some(1));
        index.insert(l.entry.path.clone(), l);
        let mut t = Tree::new(index, Some(&fold));
        assert_eq!(t.folded(b"readme").map(|p| p.to_string()), Some("README".into()));
        // Another spelling's deletion frees nothing; ours does.
        let r = t.insert(gone("readme"), Some(b"readme".to_vec()), Instant::now());
        assert_eq!(r.freed_fold, None);
        assert!(t.folded(b"readme").is_some());
        let r = t.insert(gone("README"), Some(b"readme".to_vec()), Instant::now());
        assert_eq!(r.freed_fold, Some(b"readme".to_vec()));
        assert!(r.old.is_some_and(|o| matches!(o.entry.kind, Kind::File { .. })));
        assert_eq!(t.folded(b"readme"), None);
    }

    #[test]
    fn a_subtree_holds_everything_beneath_its_directory_whatever_sorts_beside_it() {
        let mut index = Index::new();
        let names = ["a", "a b", "a-old", "a.txt", "a/b", "a/b.c/d", "a/z", "a/~", "a0", "a0/x", "b", "Z"];
        for n in names {
            let p = RelPath::new(n).unwrap();
            let entry = Entry {
                path: p.clone(),
                kind: Kind::Directory,
                mtime: Timestamp::default(),
                version: VersionVector::new(),
                origin: Default::default(),
            };
            index.insert(p, LocalEntry { entry, stat: None, seq: 0 });
        }
        let got = |d: &str| -> Vec<String> {
            subtree(&index, &RelPath::new(d).unwrap()).map(|(p, _)| p.to_string()).collect()
        };
        assert_eq!(got("a"), ["a", "a/b", "a/b.c/d", "a/z", "a/~"]);
        assert_eq!(got("a/b"), ["a/b"]);
        assert_eq!(got("a0"), ["a0", "a0/x"]);
        assert_eq!(got("c"), Vec::<String>::new());
        assert_eq!(got("a/b.c"), ["a/b.c/d"], "a directory the index lacks still has its descendants");
    }
}
