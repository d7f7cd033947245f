//! Directory listing shared by the backends that must find directories themselves.

use crate::DirFilter;
use std::path::{Path, PathBuf};

/// Every directory strictly beneath `rel` (relative to `root`) that `descend` accepts, parents
/// before children. Unreadable directories are skipped: the engine's own scan reports them.
pub(crate) fn subdirs(root: &Path, rel: &Path, descend: &DirFilter) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(crate::join(root, &dir)) else { continue };
        for ent in rd.flatten() {
            let Ok(ft) = ent.file_type() else { continue };
            if ft.is_dir() {
                let child = dir.join(ent.file_name());
                if descend(&child) {
                    out.push(child.clone());
                    stack.push(child);
                }
            }
        }
    }
    out
}
