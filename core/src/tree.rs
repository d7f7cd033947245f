//! What a replica knows of each path: the synced entry plus the disk stat it was seen with.
//!
//! The stat is how the engine avoids work and echoes: a path whose stat is unchanged is not
//! re-hashed, and a change we applied ourselves is recorded with its stat before the watcher
//! reports it, so the report stops at "unchanged".

use mirror_protocol::{Entry, RelPath, Timestamp};
use std::collections::BTreeMap;
use std::ops::Bound;

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
                origin: String::new(),
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
