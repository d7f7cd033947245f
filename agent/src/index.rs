//! What a replica knows of each path: the synced entry plus the disk stat it was seen with.
//!
//! The stat is how the engine avoids work and echoes: a path whose stat is unchanged is not
//! re-hashed, and a change we applied ourselves is recorded with its stat before the watcher
//! reports it, so the report stops at "unchanged".

use mirror_protocol::{Entry, RelPath, Timestamp};
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// File-type bits of `Stat::mode`. POSIX fixes these values on every Unix; `libc` has them as
/// `mode_t`, which is `u16` on macOS and `u32` on Linux, so they are spelled out once here.
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
    pub fn of(m: &Metadata) -> Self {
        if m.is_dir() {
            // A directory's size and mtime move with its children; they say nothing of it.
            return Self { mode: m.mode(), size: 0, mtime: Timestamp::default(), ino: m.ino() };
        }
        Self { mode: m.mode(), size: m.size(), mtime: mtime_of(m), ino: m.ino() }
    }
}

pub fn mtime_of(m: &Metadata) -> Timestamp {
    Timestamp { secs: m.mtime(), nanos: u32::try_from(m.mtime_nsec()).unwrap_or(0) }
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

/// The paths at or beneath `dir`, in order.
pub fn subtree<'a>(index: &'a Index, dir: &'a RelPath) -> impl Iterator<Item = (&'a RelPath, &'a LocalEntry)> + 'a {
    index.range(dir.clone()..).take_while(move |(p, _)| p.starts_with(dir))
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::useless_conversion)] // `mode_t` is `u32` here, `u16` on macOS
    fn file_type_bits_are_this_platforms() {
        let lib = |v: libc::mode_t| u32::from(v);
        assert_eq!(super::S_IFMT, lib(libc::S_IFMT));
        assert_eq!(super::S_IFDIR, lib(libc::S_IFDIR));
        assert_eq!(super::S_IFREG, lib(libc::S_IFREG));
        assert_eq!(super::S_IFLNK, lib(libc::S_IFLNK));
    }
}
