//! How this file system folds names, found by experiment. The fold itself is
//! [`mirror_core::fold`].

pub use mirror_core::fold::Folding;
use std::path::Path;

/// Finds out by experiment in `root`: a temp file looked up under another spelling.
pub fn probe(root: &Path) -> Folding {
    // The probes go in the agent's own directory (same file system as the root, never
    // synced, never in the user's view), which is removed again if it was made for them.
    let Ok(dir) = crate::executor::agent_dir(root) else { return Folding::default() };
    let probe = |written: &str, looked_up: &str| {
        let w = dir.join(written);
        if std::fs::write(&w, b"").is_err() {
            return false;
        }
        let found = std::fs::symlink_metadata(dir.join(looked_up)).is_ok();
        let _ = std::fs::remove_file(&w);
        found
    };
    let tag = std::process::id();
    let folding = Folding {
        case: probe(&format!("fold-{tag}-aB"), &format!("fold-{tag}-Ab")),
        unicode: probe(&format!("fold-{tag}-\u{e9}"), &format!("fold-{tag}-e\u{301}")),
    };
    crate::executor::leave_agent_dir(root);
    folding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_finds_a_case_sensitive_linux_file_system() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(probe(d.path()), Folding::default());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the probe left files behind");
    }
}
