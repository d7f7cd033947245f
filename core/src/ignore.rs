//! Which paths a replica syncs, as one trait: the agent's layered `.gitignore` rules
//! (`agent/src/rules.rs`), or a simulator's.
//!
//! Paths are relative to the root. An include (`-i`) wins over every ignore rule; a path inside
//! an ignored directory is ignored unless an include names it.

use std::path::Path;

pub trait Ignore {
    /// Whether any include pattern exists (then ignored directories are still walked).
    fn has_includes(&self) -> bool;
    /// Whether an include pattern names `rel`.
    fn is_included(&self, rel: &Path, is_dir: bool) -> bool;
    /// Whether `rel` is not synced (by its own rules or an ignored ancestor).
    fn is_ignored(&mut self, rel: &Path, is_dir: bool) -> bool;
    /// Whether `rel` is ignored by the rules of its own directory, its ancestors not looked at
    /// (a walk checks each directory as it goes down).
    fn ignored_here(&mut self, rel: &Path, is_dir: bool) -> bool;
    /// The rules file of `dir` changed: read it again when next needed.
    fn invalidate(&mut self, dir: &Path);
    /// The bytes of the root's `.git/info/exclude`, for the rules fingerprint.
    fn info_exclude(&self) -> Option<Vec<u8>>;
}

/// Everything synced (but what is the agent's own): for tests and the simulator.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncAll;

impl Ignore for SyncAll {
    fn has_includes(&self) -> bool {
        false
    }
    fn is_included(&self, _: &Path, _: bool) -> bool {
        false
    }
    fn is_ignored(&mut self, rel: &Path, _: bool) -> bool {
        crate::paths::is_temp(rel)
    }
    fn ignored_here(&mut self, rel: &Path, _: bool) -> bool {
        crate::paths::is_temp(rel)
    }
    fn invalidate(&mut self, _: &Path) {}
    fn info_exclude(&self) -> Option<Vec<u8>> {
        None
    }
}
