//! Turning wire paths into disk paths without leaving the root.
//!
//! A [`RelPath`] is already free of `..`, absolute parts and NUL (the protocol refuses anything
//! else at decode time). What remains is symlinks: a path must never be resolved *through* one,
//! or a peer could make us write outside the root by syncing `link -> /etc` and then `link/x`.
//! [`check_parents`] verifies every ancestor is a real directory right before a mutation.

use mirror_protocol::RelPath;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The disk path of `rel` under `root`.
pub fn abs(root: &Path, rel: &RelPath) -> PathBuf {
    root.join(OsStr::from_bytes(rel.as_bytes()))
}

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

/// Why a path may not be touched.
#[derive(Debug)]
pub enum JailError {
    /// An ancestor is a symlink: following it could leave the root.
    ThroughSymlink { path: RelPath, link: RelPath },
    /// An ancestor exists but is not a directory.
    NotADirectory { path: RelPath, at: RelPath },
}

impl std::fmt::Display for JailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ThroughSymlink { path, link } => {
                write!(f, "path {path} passes through the symlink {link}; refusing to follow it")
            }
            Self::NotADirectory { path, at } => write!(f, "path {path}: {at} is not a directory"),
        }
    }
}

impl std::error::Error for JailError {}

/// Checks that every existing ancestor of `rel` is a real directory (not a symlink).
/// Missing ancestors are fine: they will be created as directories.
pub fn check_parents(root: &Path, rel: &RelPath) -> Result<(), JailError> {
    let mut cur = rel.parent();
    let mut ancestors = Vec::new();
    while let Some(p) = cur {
        cur = p.parent();
        ancestors.push(p);
    }
    for a in ancestors.into_iter().rev() {
        match std::fs::symlink_metadata(abs(root, &a)) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(JailError::ThroughSymlink { path: rel.clone(), link: a });
            }
            Ok(m) if !m.is_dir() => return Err(JailError::NotADirectory { path: rel.clone(), at: a }),
            Ok(_) => {}
            Err(_) => return Ok(()), // missing from here down
        }
    }
    Ok(())
}

/// Creates the missing ancestors of `rel` as directories, refusing to pass through symlinks.
pub fn create_parents(root: &Path, rel: &RelPath) -> io::Result<()> {
    check_parents(root, rel).map_err(io::Error::other)?;
    if let Some(parent) = rel.parent() {
        std::fs::create_dir_all(abs(root, &parent))?;
    }
    Ok(())
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

    #[test]
    fn symlinked_parent_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        assert!(check_parents(d.path(), &RelPath::new("real/x").unwrap()).is_ok());
        assert!(check_parents(d.path(), &RelPath::new("new/dir/x").unwrap()).is_ok());
        assert!(matches!(
            check_parents(d.path(), &RelPath::new("link/x").unwrap()),
            Err(JailError::ThroughSymlink { .. })
        ));
        assert!(matches!(
            check_parents(d.path(), &RelPath::new("file/x").unwrap()),
            Err(JailError::NotADirectory { .. })
        ));
        assert!(create_parents(d.path(), &RelPath::new("link/y/z").unwrap()).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "created through the symlink");
    }
}
