//! What an FSEvents event means for the engine: its flags decoded into the watcher hints. Plain
//! functions, tested on every platform (the constants are Apple's, from `FSEvents.h`).
//!
//! FSEvents coalesces: one event may carry "created", "modified" and "removed" for a path that
//! went through all three within the stream's latency, in no stated order. So the flags are
//! never trusted for what the path *is* now; they only say where to look, and the engine's
//! `lstat` settles it.

use crate::WatchEvent;
use std::path::Path;

pub(crate) const MUST_SCAN_SUB_DIRS: u32 = 0x0000_0001;
pub(crate) const USER_DROPPED: u32 = 0x0000_0002;
pub(crate) const KERNEL_DROPPED: u32 = 0x0000_0004;
pub(crate) const EVENT_IDS_WRAPPED: u32 = 0x0000_0008;
pub(crate) const HISTORY_DONE: u32 = 0x0000_0010;
pub(crate) const ROOT_CHANGED: u32 = 0x0000_0020;
pub(crate) const MOUNT: u32 = 0x0000_0040;
pub(crate) const UNMOUNT: u32 = 0x0000_0080;
pub(crate) const ITEM_CREATED: u32 = 0x0000_0100;
pub(crate) const ITEM_REMOVED: u32 = 0x0000_0200;
pub(crate) const ITEM_INODE_META_MOD: u32 = 0x0000_0400;
pub(crate) const ITEM_RENAMED: u32 = 0x0000_0800;
pub(crate) const ITEM_MODIFIED: u32 = 0x0000_1000;
pub(crate) const ITEM_FINDER_INFO_MOD: u32 = 0x0000_2000;
pub(crate) const ITEM_CHANGE_OWNER: u32 = 0x0000_4000;
pub(crate) const ITEM_XATTR_MOD: u32 = 0x0000_8000;
pub(crate) const ITEM_IS_DIR: u32 = 0x0002_0000;

/// The hints for one event at absolute path `abs` under the watched `root`.
pub(crate) fn decode(root: &Path, abs: &Path, flags: u32) -> Vec<WatchEvent> {
    if flags & HISTORY_DONE != 0 {
        // The sentinel after the replayed history (its path means nothing).
        return vec![WatchEvent::Replayed];
    }
    if flags & (USER_DROPPED | KERNEL_DROPPED | EVENT_IDS_WRAPPED) != 0 {
        // Events were lost (or ids can no longer be compared): everything must be looked at.
        return vec![WatchEvent::Overflow];
    }
    let Ok(rel) = abs.strip_prefix(root) else {
        // With WatchRoot, a change to the root's own path arrives as the root (or a parent).
        if flags & ROOT_CHANGED != 0 && root.starts_with(abs) {
            return vec![WatchEvent::RootGone];
        }
        return Vec::new();
    };
    let rel = rel.to_path_buf();
    let at_root = rel.as_os_str().is_empty();
    if flags & ROOT_CHANGED != 0 || (at_root && flags & UNMOUNT != 0) {
        return vec![WatchEvent::RootGone];
    }
    if flags & MUST_SCAN_SUB_DIRS != 0 || flags & (MOUNT | UNMOUNT) != 0 {
        return vec![WatchEvent::RescanSubtree(rel)];
    }
    let structural = ITEM_CREATED | ITEM_REMOVED | ITEM_RENAMED;
    let metadata = ITEM_INODE_META_MOD | ITEM_CHANGE_OWNER | ITEM_XATTR_MOD | ITEM_FINDER_INFO_MOD;
    if flags & ITEM_IS_DIR != 0 {
        // A directory that came, went or moved: its whole subtree is in question. So is the
        // root when the event says nothing more precise; its own metadata changing is not.
        return if flags & structural != 0 || (at_root && flags & metadata == 0) {
            vec![WatchEvent::RescanSubtree(rel)]
        } else {
            vec![WatchEvent::Settled(rel)]
        };
    }
    if flags & structural != 0 {
        return vec![WatchEvent::Settled(rel)];
    }
    if flags & ITEM_MODIFIED != 0 {
        // Content written: maybe more to come (there is no close event); let it settle.
        return vec![WatchEvent::Dirty(rel)];
    }
    if flags & metadata != 0 {
        return vec![WatchEvent::Settled(rel)];
    }
    // No item flags (directory-level events, or a flag we do not know): look at it.
    if at_root { vec![WatchEvent::RescanSubtree(rel)] } else { vec![WatchEvent::Settled(rel)] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const ITEM_IS_FILE: u32 = 0x0001_0000;

    fn d(abs: &str, flags: u32) -> Vec<WatchEvent> {
        decode(Path::new("/Users/me/work"), Path::new(abs), flags)
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn lost_events_mean_rescanning_everything() {
        for f in [USER_DROPPED, KERNEL_DROPPED, EVENT_IDS_WRAPPED, KERNEL_DROPPED | MUST_SCAN_SUB_DIRS] {
            assert_eq!(d("/Users/me/work/x", f), [WatchEvent::Overflow], "{f:#x}");
        }
    }

    #[test]
    fn a_coalesced_subtree_is_rescanned() {
        assert_eq!(d("/Users/me/work/src", MUST_SCAN_SUB_DIRS), [WatchEvent::RescanSubtree(p("src"))]);
    }

    #[test]
    fn the_root_changing_or_unmounting_is_root_gone() {
        assert_eq!(d("/Users/me/work", ROOT_CHANGED), [WatchEvent::RootGone]);
        assert_eq!(d("/Users/me", ROOT_CHANGED), [WatchEvent::RootGone]);
        assert_eq!(d("/Users/me/work", UNMOUNT | ITEM_IS_DIR), [WatchEvent::RootGone]);
        // A volume unmounted below the root is a subtree to look at, not the root gone.
        assert_eq!(d("/Users/me/work/usb", UNMOUNT), [WatchEvent::RescanSubtree(p("usb"))]);
        // Outside the root and not about it: nothing.
        assert!(d("/Users/other/file", ITEM_CREATED | ITEM_IS_FILE).is_empty());
    }

    #[test]
    fn coalesced_file_flags_are_a_path_to_look_at_not_a_verdict() {
        // Created, modified and removed within one latency window: the engine's lstat decides.
        let f = ITEM_CREATED | ITEM_MODIFIED | ITEM_REMOVED | ITEM_IS_FILE;
        assert_eq!(d("/Users/me/work/a.txt", f), [WatchEvent::Settled(p("a.txt"))]);
        assert_eq!(d("/Users/me/work/a.txt", ITEM_RENAMED | ITEM_IS_FILE), [WatchEvent::Settled(p("a.txt"))]);
        assert_eq!(d("/Users/me/work/a.txt", ITEM_MODIFIED | ITEM_IS_FILE), [WatchEvent::Dirty(p("a.txt"))]);
        assert_eq!(d("/Users/me/work/a.txt", ITEM_INODE_META_MOD | ITEM_IS_FILE), [WatchEvent::Settled(p("a.txt"))]);
    }

    #[test]
    fn directories_that_come_or_go_are_subtrees() {
        assert_eq!(d("/Users/me/work/new", ITEM_CREATED | ITEM_IS_DIR), [WatchEvent::RescanSubtree(p("new"))]);
        assert_eq!(d("/Users/me/work/old", ITEM_RENAMED | ITEM_IS_DIR), [WatchEvent::RescanSubtree(p("old"))]);
        assert_eq!(d("/Users/me/work/dir", ITEM_INODE_META_MOD | ITEM_IS_DIR), [WatchEvent::Settled(p("dir"))]);
        // The root's own metadata (a chmod, a Finder tag) is no reason to walk the tree; an
        // event on it that says nothing more is.
        assert_eq!(d("/Users/me/work", ITEM_INODE_META_MOD | ITEM_IS_DIR), [WatchEvent::Settled(p(""))]);
        assert_eq!(d("/Users/me/work", ITEM_XATTR_MOD | ITEM_IS_DIR), [WatchEvent::Settled(p(""))]);
        assert_eq!(d("/Users/me/work", ITEM_IS_DIR), [WatchEvent::RescanSubtree(p(""))]);
        assert_eq!(d("/Users/me/work", 0), [WatchEvent::RescanSubtree(p(""))]);
    }

    #[test]
    fn the_end_of_the_replayed_history_is_marked_wherever_its_path_points() {
        for path in ["/Users/me/work", "/", "", "/Users/other"] {
            assert_eq!(d(path, HISTORY_DONE), [WatchEvent::Replayed], "{path:?}");
        }
    }
}
