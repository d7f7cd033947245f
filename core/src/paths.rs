//! Paths as the replica meets them: the watcher names OS paths relative to the root, the wire
//! uses [`RelPath`]; and the names that are the agent's own, never synced.

use mirror_protocol::RelPath;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// The agent's own directory at the top of every sync root. Every temp file (a file being
/// received, a symlink being made, a name-folding probe) and every stash file (a deleted file a
/// rename may still want) lives in it, out of the user's view, and nothing else does. It is never
/// synced, watched, scanned or counted; its whole content is removed at start-up and the
/// directory itself at stop when empty. Nothing a user makes is ever removed by the agent: a
/// user's `.mirror-tmp-notes.txt` is an ordinary file (issue 11 items 9 and 10).
pub const AGENT_DIR: &str = ".mirror-agent.tmp";

/// A file being received into a directory on another file system than the root (a mount inside
/// the root: a rename from [`AGENT_DIR`] cannot reach it) is written beside its destination under
/// this prefix plus 16 hex digits, and recorded in [`AGENT_DIR`] so that start-up removes only
/// the ones we provably made. Never synced.
pub const BESIDE_PREFIX: &str = ".mirror-agent.tmp-";

/// The wire path of a path relative to the root, if it is one we can sync.
pub fn to_rel(rel: &Path) -> Option<RelPath> {
    let mut bytes = Vec::with_capacity(rel.as_os_str().len());
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                if !bytes.is_empty() {
                    bytes.push(b'/');
                }
                bytes.extend_from_slice(n.as_bytes());
            }
            _ => return None,
        }
    }
    RelPath::new(bytes).ok()
}

/// The path relative to the root, as a `Path`.
pub fn rel_path(rel: &RelPath) -> &Path {
    Path::new(OsStr::from_bytes(rel.as_bytes()))
}

/// Whether `rel` is the agent's own: [`AGENT_DIR`] at the root or anything in it, or a temp file
/// beside its destination ([`is_beside_temp`]).
pub fn is_temp(rel: &Path) -> bool {
    // At any depth: a served root may hold another one (`-r a` and `-r a/sub`), whose agent
    // directory is no more the user's than ours is.
    rel.components().any(|c| c == std::path::Component::Normal(OsStr::new(AGENT_DIR)))
        || rel.file_name().is_some_and(|n| is_beside_temp(n.as_encoded_bytes()))
}

/// Whether `name` is exactly [`BESIDE_PREFIX`] and 16 lower-case hex digits.
pub fn is_beside_temp(name: &[u8]) -> bool {
    name.strip_prefix(BESIDE_PREFIX.as_bytes())
        .is_some_and(|hex| hex.len() == 16 && hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = to_rel(Path::new("a/b c/\u{e9}")).unwrap();
        assert_eq!(rel_path(&r), Path::new("a/b c/\u{e9}"));
        assert!(to_rel(Path::new("")).is_none());
        assert!(to_rel(Path::new("/abs")).is_none());
        assert!(to_rel(Path::new("a/../b")).is_none());
    }
}
