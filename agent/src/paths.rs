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

pub use mirror_core::disk::JailError;

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

/// Resolves a client's remote directory inside the server root, creating what is missing.
///
/// `remote` may be relative to the root, start with `~/` (the root), or be absolute under the
/// root. `..` is resolved lexically as long as it never climbs above the root. Then the path is
/// walked one component at a time from the root, without following symlinks: each existing
/// component must be a real directory (a symlink is refused, wherever it points), and a missing
/// one is created only once its parent was seen to be a real directory. So a refused path
/// creates nothing, inside the root or out.
pub fn resolve_remote(root: &Path, remote: &[u8]) -> Result<PathBuf, String> {
    let shown = String::from_utf8_lossy(remote).into_owned();
    if remote.iter().all(u8::is_ascii_whitespace) {
        return Err("the remote path is empty: name a directory inside the server root".into());
    }
    if remote.contains(&0) {
        return Err(format!("remote path {shown:?} contains NUL"));
    }
    let mut p = Path::new(OsStr::from_bytes(remote));
    if let Ok(rest) = p.strip_prefix("~") {
        p = rest;
    }
    let rel = if p.is_absolute() {
        p.strip_prefix(root)
            .map_err(|_| format!("remote path {shown:?} is outside the server root {}", root.display()))?
    } else {
        p
    };
    let mut parts: Vec<&OsStr> = Vec::new();
    for comp in rel.components() {
        match comp {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            Component::ParentDir if parts.pop().is_some() => {}
            _ => return Err(format!("remote path {shown:?} escapes the server root")),
        }
    }
    let mut target = root.to_path_buf();
    let mut walked = PathBuf::new();
    for n in parts {
        target.push(n);
        walked.push(n);
        let mut created = false;
        loop {
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "remote path {shown:?} passes through the symlink {}; refusing to follow it",
                        crate::logsafe::shown(&walked.to_string_lossy())
                    ));
                }
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    let at = crate::logsafe::shown(&walked.to_string_lossy()).to_string();
                    return Err(format!("remote path {shown:?}: {at} is not a directory"));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created => {
                    // The parent was a real directory a moment ago; `mkdir` never follows a
                    // symlink in the last component. Someone else creating it meanwhile is
                    // fine: the loop looks again.
                    created = true;
                    match std::fs::create_dir(&target) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(format!(
                                "cannot create {}: {e}",
                                crate::logsafe::shown(&target.to_string_lossy())
                            ));
                        }
                    }
                }
                Err(e) => {
                    return Err(format!("cannot inspect {}: {e}", crate::logsafe::shown(&target.to_string_lossy())));
                }
            }
        }
    }
    Ok(target)
}

/// The longest conflict-copy name to make under `root`: its file system's `NAME_MAX`, but
/// never more than [`MAX_COMPONENT_LEN`](mirror_protocol::path::MAX_COMPONENT_LEN) (what every
/// replica takes, so that the name is the same everywhere) nor less than
/// [`MIN_NAME_MAX`](mirror_core::conflict::MIN_NAME_MAX).
pub fn name_limit(root: &Path) -> usize {
    use mirror_core::conflict::MIN_NAME_MAX;
    use mirror_protocol::path::MAX_COMPONENT_LEN;
    mirror_backends::name_max(root).map_or(MAX_COMPONENT_LEN, |n| n.clamp(MIN_NAME_MAX, MAX_COMPONENT_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_may_be_as_long_as_the_root_takes() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(name_limit(d.path()), 255, "the usual file systems of a test host");
        assert_eq!(name_limit(&d.path().join("missing")), 255);
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

    #[test]
    fn remote_paths_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        assert_eq!(resolve_remote(&root, b"proj").unwrap(), root.join("proj"));
        assert_eq!(resolve_remote(&root, b"~/a/b").unwrap(), root.join("a/b"));
        assert_eq!(resolve_remote(&root, root.join("c").as_os_str().as_encoded_bytes()).unwrap(), root.join("c"));
        for bad in [&b"../x"[..], b"a/../../x", b"/etc", b"escape/tmp", b"a\0b", b"", b"  "] {
            assert!(resolve_remote(&root, bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn dot_dot_that_stays_inside_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(resolve_remote(&root, b"src/app/../app2").unwrap(), root.join("src/app2"));
        assert!(!root.join("src/app").exists(), "a component `..` cancels is not created");
        assert!(resolve_remote(&root, b"src/../../x").is_err());
    }

    #[test]
    fn refused_remote_creates_nothing_outside() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("planted")).unwrap();
        let e = resolve_remote(&root, b"planted/deep/dirs").unwrap_err();
        assert!(e.contains("symlink planted"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "created through the symlink");
        // A symlink to a directory inside the root is refused too: never followed.
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("inner")).unwrap();
        assert!(resolve_remote(&root, b"inner/x").is_err());
        assert!(!root.join("real/x").exists());
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(root.join("f"), "").unwrap();
        let e = resolve_remote(&root, b"f/sub").unwrap_err();
        assert!(e.contains("f is not a directory"), "{e}");
    }
}
