//! What a kqueue vnode event means for the kqueue backend: its `fflags` decoded into one action.
//! Plain functions, tested on every platform. The `NOTE_*` values are the same on macOS and every
//! BSD (`sys/event.h`); the kqueue backend checks them against the `kqueue` crate's at compile
//! time.
//!
//! With `EV_CLEAR`, one event carries every flag raised since the last read, in no stated order,
//! so the decoding never trusts a sequence: "gone" wins (the parent directory's listing tells
//! where it went), then a directory's entries changing, then content, then metadata.

pub(crate) const NOTE_DELETE: u32 = 0x0001;
pub(crate) const NOTE_WRITE: u32 = 0x0002;
pub(crate) const NOTE_EXTEND: u32 = 0x0004;
pub(crate) const NOTE_ATTRIB: u32 = 0x0008;
pub(crate) const NOTE_LINK: u32 = 0x0010;
pub(crate) const NOTE_RENAME: u32 = 0x0020;
pub(crate) const NOTE_REVOKE: u32 = 0x0040;

/// What the backend watches for on every descriptor.
pub(crate) const WATCHED: u32 =
    NOTE_DELETE | NOTE_WRITE | NOTE_EXTEND | NOTE_ATTRIB | NOTE_LINK | NOTE_RENAME | NOTE_REVOKE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// The watched root was deleted, renamed away or revoked (unmounted).
    RootGone,
    /// The path changed and the change looks complete (renamed, chmod'ed).
    Settled,
    /// The file was deleted (read once deletions stop: it may be one of an `rm -rf`).
    Unlinked,
    /// A directory's entries changed: list it again and diff.
    Relist,
    /// A file's content changed and may still be changing.
    Dirty,
    /// Nothing this backend acts on.
    Nothing,
}

/// The action for an event with `fflags` on a descriptor of a directory (`is_dir`) or file,
/// which is the root when `is_root`.
pub(crate) fn decode(fflags: u32, is_dir: bool, is_root: bool) -> Act {
    if fflags & (NOTE_DELETE | NOTE_RENAME | NOTE_REVOKE) != 0 {
        return if is_root {
            Act::RootGone
        } else if fflags & NOTE_DELETE != 0 {
            Act::Unlinked
        } else {
            Act::Settled
        };
    }
    if is_dir && fflags & (NOTE_WRITE | NOTE_LINK) != 0 {
        return Act::Relist;
    }
    if !is_dir && fflags & (NOTE_WRITE | NOTE_EXTEND) != 0 {
        return Act::Dirty;
    }
    if fflags & (NOTE_ATTRIB | NOTE_LINK) != 0 {
        return Act::Settled;
    }
    Act::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_content_is_dirty_and_its_metadata_settled() {
        assert_eq!(decode(NOTE_WRITE, false, false), Act::Dirty);
        assert_eq!(decode(NOTE_EXTEND, false, false), Act::Dirty);
        assert_eq!(decode(NOTE_WRITE | NOTE_ATTRIB, false, false), Act::Dirty, "more may come");
        assert_eq!(decode(NOTE_ATTRIB, false, false), Act::Settled);
        assert_eq!(decode(NOTE_LINK, false, false), Act::Settled, "a hard link count changed");
    }

    #[test]
    fn a_directory_whose_entries_changed_is_listed_again() {
        assert_eq!(decode(NOTE_WRITE, true, false), Act::Relist);
        assert_eq!(decode(NOTE_LINK, true, false), Act::Relist, "a subdirectory came or went");
        assert_eq!(decode(NOTE_WRITE | NOTE_ATTRIB, true, true), Act::Relist);
        assert_eq!(decode(NOTE_ATTRIB, true, false), Act::Settled, "chmod of the directory");
    }

    #[test]
    fn gone_wins_over_everything_coalesced_with_it() {
        for gone in [NOTE_DELETE, NOTE_RENAME, NOTE_REVOKE] {
            for other in [0, NOTE_WRITE, NOTE_EXTEND | NOTE_ATTRIB, NOTE_LINK] {
                let want = if gone == NOTE_DELETE { Act::Unlinked } else { Act::Settled };
                assert_eq!(decode(gone | other, false, false), want, "{:#x}", gone | other);
                assert_eq!(decode(gone | other, true, false), want, "{:#x}", gone | other);
                assert_eq!(decode(gone | other, true, true), Act::RootGone, "{:#x}", gone | other);
            }
        }
    }

    #[test]
    fn nothing_watched_means_nothing() {
        assert_eq!(decode(0, false, false), Act::Nothing);
        assert_eq!(decode(0x1000_0000, true, false), Act::Nothing, "a flag we do not ask for");
        assert_eq!(WATCHED & 0x1000_0000, 0);
    }
}
