//! Reading the disk: stat, hash, list. Nothing here decides anything.

use crate::index::{Stat, mtime_of};
use mirror_protocol::{Hash, Kind};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

pub use mirror_core::disk::Seen;

/// Opens a regular file for reading without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// blake3 of a whole file, streamed.
pub fn hash_file(path: &Path) -> io::Result<(Hash, u64)> {
    let mut f = open_nofollow(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((*h.finalize().as_bytes(), n))
}

/// The permission bits a file's entry carries (`rwx` for user, group and others).
pub fn permissions(m: &Metadata) -> u32 {
    m.mode() & 0o777
}

/// Whether a file with `stat` is the one `known` recorded (same size, mtime and inode): its
/// hash is not computed again.
pub fn still_as_known(stat: &Stat, known: Option<&(Stat, Hash)>) -> bool {
    known.is_some_and(|(s, _)| stat.same_bytes_as(s))
}

/// Observes what `m` (the `lstat` of `abs`) describes. `Ok(None)` for a type we do not sync
/// (socket, FIFO, device). `known` is a stat and the hash it was seen with: a file whose size,
/// mtime and inode still match is not hashed again.
pub fn observe_meta(abs: &Path, m: &Metadata, known: Option<(Stat, Hash)>) -> io::Result<Option<Seen>> {
    let stat = crate::index::stat_of(m);
    let ft = m.file_type();
    let kind = if ft.is_file() {
        let mode = permissions(m);
        let reuse = if still_as_known(&stat, known.as_ref()) { known.map(|(_, h)| h) } else { None };
        let hash = match reuse {
            Some(h) => h,
            None => {
                let (h, n) = hash_file(abs)?;
                if n != stat.size {
                    // Written while we read: the next event will bring it back.
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "file changed while hashing"));
                }
                h
            }
        };
        Kind::File { size: stat.size, hash, mode }
    } else if ft.is_dir() {
        Kind::Directory
    } else if ft.is_symlink() {
        Kind::Symlink { target: std::fs::read_link(abs)?.as_os_str().as_bytes().to_vec() }
    } else {
        return Ok(None);
    };
    Ok(Some(Seen { kind, stat, mtime: mtime_of(m) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{LocalEntry, known_hash};

    fn observe(abs: &Path, prev: Option<&LocalEntry>) -> io::Result<Option<Seen>> {
        match std::fs::symlink_metadata(abs) {
            Ok(m) => observe_meta(abs, &m, prev.and_then(known_hash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn observes_kinds_and_reuses_hash_when_stat_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "hello").unwrap();
        let seen = observe(&f, None).unwrap().unwrap();
        let Kind::File { size: 5, hash, .. } = seen.kind else { panic!("{:?}", seen.kind) };
        assert_eq!(hash, *blake3::hash(b"hello").as_bytes());
        std::os::unix::fs::symlink("target/x", d.path().join("l")).unwrap();
        let l = observe(&d.path().join("l"), None).unwrap().unwrap();
        assert_eq!(l.kind, Kind::Symlink { target: b"target/x".to_vec() });
        assert_eq!(observe(&d.path().join("missing"), None).unwrap().map(|s| s.kind), None);
        assert_eq!(observe(d.path(), None).unwrap().map(|s| s.kind), Some(Kind::Directory));
    }

    #[test]
    fn an_unchanged_stat_skips_hashing_and_a_changed_one_does_not() {
        use mirror_protocol::{Entry, RelPath, VersionVector};
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "aaaa").unwrap();
        let seen = observe(&f, None).unwrap().unwrap();
        // Pretend we had recorded another hash for the same stat: it must be reused as is.
        let recorded = LocalEntry {
            entry: Entry {
                path: RelPath::new("f").unwrap(),
                kind: Kind::File { size: 4, hash: [9; 32], mode: 0o644 },
                mtime: seen.mtime,
                version: VersionVector::new(),
                origin: "h".into(),
            },
            stat: Some(seen.stat),
            seq: 1,
        };
        let again = observe(&f, Some(&recorded)).unwrap().unwrap();
        assert!(matches!(again.kind, Kind::File { hash: [9, ..], .. }), "re-hashed an unchanged file");
        // Same size, different mtime: hashed again.
        std::fs::write(&f, "bbbb").unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
        let changed = observe(&f, Some(&recorded)).unwrap().unwrap();
        assert_eq!(changed.kind, Kind::File { size: 4, hash: *blake3::hash(b"bbbb").as_bytes(), mode: 0o644 });
    }
}
