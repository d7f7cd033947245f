//! Directory listing shared by the backends that must find directories themselves.

use crate::DirFilter;
use std::path::{Path, PathBuf};

/// The directories directly in `rel` (relative to `root`) that `descend` accepts. An unreadable
/// directory has none: the engine's own scan reports it.
///
/// One level only, on purpose: a backend that watches directories one by one must watch each
/// directory *before* listing it, so that an entry made at any moment is seen by the listing or
/// by the watch. Listing a whole subtree first and watching it afterwards leaves a window, as
/// long as the listing, in which a new directory is neither listed nor watched (issue 11 item 6).
pub(crate) fn child_dirs(root: &Path, rel: &Path, descend: &DirFilter) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(crate::join(root, rel)) else { return Vec::new() };
    rd.flatten()
        .filter(|ent| ent.file_type().is_ok_and(|ft| ft.is_dir()))
        .map(|ent| rel.join(ent.file_name()))
        .filter(|child| descend.descend(child))
        .collect()
}
