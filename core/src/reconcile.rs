//! The pure heart of sync: given what this replica has for a path and what a peer says it has,
//! decide what to do. No I/O; every scenario is a row in the table test below.
//!
//! Ordering is by version vectors only. Wall-clock mtimes enter in exactly one place: choosing
//! the winner between two *concurrent* versions, where any deterministic rule is correct as long
//! as every replica applies the same one, and where the loser's content is always kept as a
//! conflict copy. So a skewed clock can change which version gets the plain name, never whether a
//! write survives.

use mirror_protocol::{Entry, Kind, VersionOrdering, VersionVector};

/// What to do with a peer's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// We already have this or something newer.
    Nothing,
    /// Same content, different history: take the merged version, touch nothing on disk.
    Adopt(VersionVector),
    /// The peer's entry supersedes ours: make the disk match it.
    Apply,
    /// A true conflict the peer wins: keep our content as a conflict copy, then apply theirs.
    ConflictKeepLocalCopy,
    /// A true conflict we win: keep the peer's content as a conflict copy (when it has content),
    /// then adopt the merged version so that our content supersedes theirs everywhere.
    ConflictKeepRemoteCopy,
}

/// Decides what to do with `remote` given our `local` entry for the same path.
pub fn reconcile(local: Option<&Entry>, remote: &Entry) -> Action {
    let Some(local) = local else {
        return if remote.kind.is_deleted() { Action::Adopt(remote.version.clone()) } else { Action::Apply };
    };
    match local.version.compare(&remote.version) {
        VersionOrdering::Equal | VersionOrdering::After => Action::Nothing,
        VersionOrdering::Before if local.same_content(remote) && !touched(local, remote) => {
            Action::Adopt(remote.version.clone())
        }
        VersionOrdering::Before => Action::Apply,
        VersionOrdering::Concurrent => {
            let merged = local.version.merged(&remote.version);
            if local.same_content(remote) {
                return Action::Adopt(merged);
            }
            match (local.kind.is_deleted(), remote.kind.is_deleted()) {
                // A deletion never beats a modification, and loses nothing by losing.
                (true, false) => Action::Apply,
                (false, true) => Action::Adopt(merged),
                _ if remote_wins(local, remote) => Action::ConflictKeepLocalCopy,
                _ => Action::ConflictKeepRemoteCopy,
            }
        }
    }
}

/// Whether only a file's mtime differs (a `touch`): applied without moving any data.
fn touched(local: &Entry, remote: &Entry) -> bool {
    matches!(remote.kind, Kind::File { .. }) && local.mtime != remote.mtime
}

/// The deterministic winner between two concurrent live versions: a directory beats anything
/// else (moving a whole subtree aside would be worse than renaming one file), then the later
/// mtime, then a total order on the content and origin so that ties are broken the same way on
/// every replica.
pub fn remote_wins(local: &Entry, remote: &Entry) -> bool {
    let rank = |e: &Entry| (matches!(e.kind, Kind::Directory), e.mtime, content_key(&e.kind), e.origin.clone());
    rank(remote) > rank(local)
}

fn content_key(k: &Kind) -> Vec<u8> {
    match k {
        Kind::File { size, hash, mode } => {
            let mut v = vec![2];
            v.extend_from_slice(hash);
            v.extend_from_slice(&size.to_be_bytes());
            v.extend_from_slice(&mode.to_be_bytes());
            v
        }
        Kind::Symlink { target } => {
            let mut v = vec![1];
            v.extend_from_slice(target);
            v
        }
        Kind::Directory => vec![3],
        Kind::Deleted => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_protocol::{RelPath, Timestamp};

    const A: u64 = 1;
    const B: u64 = 2;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (r, n) in pairs {
            for _ in 0..*n {
                v.increment(*r);
            }
        }
        v
    }

    fn file(content: u8, mtime: i64, version: &[(u64, u64)]) -> Entry {
        Entry {
            path: RelPath::new("p").unwrap(),
            kind: Kind::File { size: 1, hash: [content; 32], mode: 0o644 },
            mtime: Timestamp { secs: mtime, nanos: 0 },
            version: vv(version),
            origin: "h".into(),
        }
    }

    fn with_kind(mut e: Entry, kind: Kind) -> Entry {
        e.kind = kind;
        e
    }

    fn deleted(version: &[(u64, u64)]) -> Entry {
        with_kind(file(0, 0, version), Kind::Deleted)
    }

    #[test]
    fn table() {
        let hour = 3600;
        let rows: Vec<(&str, Option<Entry>, Entry, Action)> = vec![
            ("new path", None, file(1, 0, &[(B, 1)]), Action::Apply),
            ("unknown tombstone is recorded", None, deleted(&[(B, 1)]), Action::Adopt(vv(&[(B, 1)]))),
            ("same version", Some(file(1, 0, &[(A, 1)])), file(1, 0, &[(A, 1)]), Action::Nothing),
            ("peer is behind", Some(file(2, 0, &[(A, 2)])), file(1, 0, &[(A, 1)]), Action::Nothing),
            ("peer modified", Some(file(1, 0, &[(A, 1)])), file(2, 0, &[(A, 1), (B, 1)]), Action::Apply),
            // Causality beats clocks: the peer's change wins though its mtime is an hour older.
            (
                "peer modified with an old clock",
                Some(file(1, 5 * hour, &[(A, 1)])),
                file(2, 4 * hour, &[(A, 1), (B, 1)]),
                Action::Apply,
            ),
            (
                "our unchanged file with a future mtime does not win",
                Some(file(1, 100 * hour, &[(A, 1)])),
                file(2, 0, &[(A, 1), (B, 1)]),
                Action::Apply,
            ),
            ("peer deleted", Some(file(1, 0, &[(A, 1)])), deleted(&[(A, 1), (B, 1)]), Action::Apply),
            ("peer touched the file", Some(file(1, 0, &[(A, 1)])), file(1, 9, &[(A, 1), (B, 1)]), Action::Apply),
            (
                "metadata-only history change",
                Some(file(1, 0, &[(A, 1)])),
                file(1, 0, &[(A, 1), (B, 1)]),
                Action::Adopt(vv(&[(A, 1), (B, 1)])),
            ),
            (
                "identical concurrent edits are no conflict",
                Some(file(3, 0, &[(A, 1)])),
                file(3, 9, &[(B, 1)]),
                Action::Adopt(vv(&[(A, 1), (B, 1)])),
            ),
            (
                "concurrent edits: newer peer wins, ours is kept",
                Some(file(1, 10, &[(A, 1)])),
                file(2, 20, &[(B, 1)]),
                Action::ConflictKeepLocalCopy,
            ),
            (
                "concurrent edits: newer local wins, theirs is kept",
                Some(file(1, 20, &[(A, 1)])),
                file(2, 10, &[(B, 1)]),
                Action::ConflictKeepRemoteCopy,
            ),
            (
                "modify beats concurrent delete (local modified)",
                Some(file(1, 0, &[(A, 2)])),
                deleted(&[(A, 1), (B, 1)]),
                Action::Adopt(vv(&[(A, 2), (B, 1)])),
            ),
            (
                "modify beats concurrent delete (peer modified)",
                Some(deleted(&[(A, 2)])),
                file(1, 0, &[(A, 1), (B, 1)]),
                Action::Apply,
            ),
            (
                "directory beats a concurrent file",
                Some(file(1, 50, &[(A, 1)])),
                with_kind(file(0, 0, &[(B, 1)]), Kind::Directory),
                Action::ConflictKeepLocalCopy,
            ),
            (
                "our directory beats their file",
                Some(with_kind(file(0, 0, &[(A, 1)]), Kind::Directory)),
                file(1, 50, &[(B, 1)]),
                Action::ConflictKeepRemoteCopy,
            ),
            (
                "symlink against file",
                Some(with_kind(file(0, 5, &[(A, 1)]), Kind::Symlink { target: b"t".to_vec() })),
                file(1, 6, &[(B, 1)]),
                Action::ConflictKeepLocalCopy,
            ),
            (
                "both deleted",
                Some(deleted(&[(A, 2)])),
                deleted(&[(A, 1), (B, 1)]),
                Action::Adopt(vv(&[(A, 2), (B, 1)])),
            ),
        ];
        for (name, local, remote, want) in rows {
            assert_eq!(reconcile(local.as_ref(), &remote), want, "{name}");
        }
    }

    #[test]
    fn both_sides_pick_the_same_winner() {
        let cases = [
            (file(1, 10, &[(A, 1)]), file(2, 20, &[(B, 1)])),
            (file(1, 10, &[(A, 1)]), file(2, 10, &[(B, 1)])), // same mtime: content breaks the tie
            (file(1, 10, &[(A, 1)]), with_kind(file(0, 0, &[(B, 1)]), Kind::Directory)),
        ];
        for (a, b) in cases {
            let at_a = reconcile(Some(&a), &b);
            let at_b = reconcile(Some(&b), &a);
            let a_thinks_b_wins = at_a == Action::ConflictKeepLocalCopy;
            let b_thinks_b_wins = at_b == Action::ConflictKeepRemoteCopy;
            assert_eq!(a_thinks_b_wins, b_thinks_b_wins, "{a:?} / {b:?}: {at_a:?} vs {at_b:?}");
        }
    }
}
