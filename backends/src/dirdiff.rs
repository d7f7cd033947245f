//! Directory listings and their differences: how a backend that is told only "this directory
//! changed" (kqueue's `NOTE_WRITE`) finds out what changed in it. Plain functions, tested on
//! every platform.

use crate::WatchEvent;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub ino: u64,
    pub is_dir: bool,
    /// A symlink: listed (its coming and going matters) but never watched or followed.
    pub is_link: bool,
}

/// A directory's entries by name.
pub(crate) type Listing = BTreeMap<OsString, Listed>;

/// What changed between two listings of one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Added {
        name: OsString,
        is_dir: bool,
    },
    Removed {
        name: OsString,
        was_dir: bool,
    },
    /// The same name now refers to another inode: an atomic save (rename over), or a file
    /// replaced by a directory or the other way round.
    Replaced {
        name: OsString,
        was_dir: bool,
        is_dir: bool,
    },
}

/// Lists `dir` (without following symlinks). Entries that vanish while listed are left out.
pub(crate) fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Listing::new();
    for ent in std::fs::read_dir(dir)? {
        let Ok(ent) = ent else { continue };
        let Ok(meta) = ent.metadata() else { continue };
        let is_link = meta.file_type().is_symlink();
        out.insert(ent.file_name(), Listed { ino: meta.ino(), is_dir: meta.is_dir(), is_link });
    }
    Ok(out)
}

/// The changes from `old` to `new`, in name order.
pub(crate) fn diff(old: &Listing, new: &Listing) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, o) in old {
        match new.get(name) {
            None => out.push(Change::Removed { name: name.clone(), was_dir: o.is_dir }),
            Some(n) if n != o => out.push(Change::Replaced { name: name.clone(), was_dir: o.is_dir, is_dir: n.is_dir }),
            Some(_) => {}
        }
    }
    for (name, n) in new {
        if !old.contains_key(name) {
            out.push(Change::Added { name: name.clone(), is_dir: n.is_dir });
        }
    }
    out.sort_by(|a, b| change_name(a).cmp(change_name(b)));
    out
}

fn change_name(c: &Change) -> &OsString {
    match c {
        Change::Added { name, .. } | Change::Removed { name, .. } | Change::Replaced { name, .. } => name,
    }
}

/// What a backend does about one change in directory `dir` (relative to the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Stop watching this path and everything beneath it.
    Unwatch(PathBuf),
    /// Watch this file, or this directory and everything beneath it.
    Watch { path: PathBuf, is_dir: bool },
    /// Tell the engine.
    Report(WatchEvent),
}

/// Turns the changes of `dir` into steps: unwatch what left, watch what came, and point the
/// engine at each (a directory as a subtree to rescan).
pub(crate) fn plan(dir: &Path, changes: &[Change]) -> Vec<Step> {
    let join = |name: &OsString| if dir.as_os_str().is_empty() { PathBuf::from(name) } else { dir.join(name) };
    let mut steps = Vec::new();
    let report = |p: PathBuf, is_dir: bool| {
        Step::Report(if is_dir { WatchEvent::RescanSubtree(p) } else { WatchEvent::Settled(p) })
    };
    for c in changes {
        match c {
            Change::Added { name, is_dir } => {
                let p = join(name);
                steps.push(Step::Watch { path: p.clone(), is_dir: *is_dir });
                steps.push(report(p, *is_dir));
            }
            Change::Removed { name, .. } => {
                let p = join(name);
                steps.push(Step::Unwatch(p.clone()));
                // Read once unlinks stop, as one of an `rm -rf` (a gone directory's entries
                // are found gone with it).
                steps.push(Step::Report(WatchEvent::Unlinked(p)));
            }
            Change::Replaced { name, was_dir, is_dir } => {
                let p = join(name);
                steps.push(Step::Unwatch(p.clone()));
                steps.push(Step::Watch { path: p.clone(), is_dir: *is_dir });
                steps.push(report(p, *was_dir || *is_dir));
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, u64, bool)]) -> Listing {
        entries
            .iter()
            .map(|(n, ino, d)| (OsString::from(n), Listed { ino: *ino, is_dir: *d, is_link: false }))
            .collect()
    }

    #[test]
    fn diff_finds_additions_removals_and_replacements() {
        let old = listing(&[("a", 1, false), ("b", 2, false), ("d", 3, true), ("same", 9, false)]);
        let new = listing(&[("a", 10, false), ("c", 4, false), ("d", 3, true), ("e", 2, false), ("same", 9, false)]);
        assert_eq!(
            diff(&old, &new),
            [
                Change::Replaced { name: "a".into(), was_dir: false, is_dir: false },
                Change::Removed { name: "b".into(), was_dir: false },
                Change::Added { name: "c".into(), is_dir: false },
                Change::Added { name: "e".into(), is_dir: false },
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn a_file_replaced_by_a_directory_is_a_replacement_of_kind() {
        let old = listing(&[("x", 1, false)]);
        let new = listing(&[("x", 2, true)]);
        assert_eq!(diff(&old, &new), [Change::Replaced { name: "x".into(), was_dir: false, is_dir: true }]);
    }

    #[test]
    fn plans_watch_what_came_unwatch_what_left_and_report_both() {
        let changes = [
            Change::Added { name: "new-dir".into(), is_dir: true },
            Change::Removed { name: "gone.txt".into(), was_dir: false },
            Change::Replaced { name: "saved.txt".into(), was_dir: false, is_dir: false },
        ];
        let steps = plan(Path::new("src"), &changes);
        assert_eq!(
            steps,
            [
                Step::Watch { path: "src/new-dir".into(), is_dir: true },
                Step::Report(WatchEvent::RescanSubtree("src/new-dir".into())),
                Step::Unwatch("src/gone.txt".into()),
                Step::Report(WatchEvent::Unlinked("src/gone.txt".into())),
                Step::Unwatch("src/saved.txt".into()),
                Step::Watch { path: "src/saved.txt".into(), is_dir: false },
                Step::Report(WatchEvent::Settled("src/saved.txt".into())),
            ]
        );
        // At the root, names are paths of their own.
        let steps = plan(Path::new(""), &[Change::Removed { name: "d".into(), was_dir: true }]);
        assert_eq!(steps, [Step::Unwatch("d".into()), Step::Report(WatchEvent::Unlinked("d".into()))]);
    }

    #[test]
    fn listing_a_real_directory_sees_kinds_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let before = list(d.path()).unwrap();
        assert_eq!(before.len(), 2);
        assert!(before[&OsString::from("sub")].is_dir && !before[&OsString::from("f")].is_dir);
        std::os::unix::fs::symlink("sub", d.path().join("link")).unwrap();
        let linked = list(d.path()).unwrap();
        let link = linked[&OsString::from("link")];
        assert!(link.is_link && !link.is_dir, "a symlink to a directory is a link, not a directory");
        std::fs::remove_file(d.path().join("link")).unwrap();
        // An atomic save: write beside, rename over.
        std::fs::write(d.path().join("f.tmp"), "y").unwrap();
        std::fs::rename(d.path().join("f.tmp"), d.path().join("f")).unwrap();
        let after = list(d.path()).unwrap();
        assert_eq!(diff(&before, &after), [Change::Replaced { name: "f".into(), was_dir: false, is_dir: false }]);
    }
}
