//! Relative paths as they travel between peers.
//!
//! A [`RelPath`] can only be built through validation, and it deserializes through the same check,
//! so a hostile path (`..`, absolute, NUL, empty components) fails at decode time and can never reach
//! code that touches the disk. Paths are raw bytes joined by `/`, because Unix file names need not
//! be UTF-8.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest path accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single component accepted, in bytes (`NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// A validated path relative to a sync root: non-empty components joined by `/`, none of them `.`
/// or `..`, no NUL, not absolute.
///
/// Its bytes are shared, never copied by a clone: the index's key, its entry, the lookups by
/// inode and by content, the transfers and retries of one path all hold one allocation (issue
/// 12, item 9: one representation per path).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "serde_bytes::ByteBuf")]
pub struct RelPath(Arc<[u8]>);

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Absolute,
    EmptyComponent,
    DotComponent,
    DotDotComponent,
    Nul,
    TooLong,
    ComponentTooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty path",
            Self::Absolute => "absolute path",
            Self::EmptyComponent => "path with an empty component",
            Self::DotComponent => "path with a '.' component",
            Self::DotDotComponent => "path with a '..' component",
            Self::Nul => "path containing NUL",
            Self::TooLong => "path longer than 4096 bytes",
            Self::ComponentTooLong => "path component longer than 255 bytes",
        })
    }
}

impl std::error::Error for PathError {}

/// A path's bytes are its order: a `BTreeMap<RelPath, _>` can be ranged by byte strings that
/// are not paths themselves (`dir/`, the first thing beneath `dir`).
impl std::borrow::Borrow<[u8]> for RelPath {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl RelPath {
    /// Validates `bytes` as a relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        validate(&bytes)?;
        Ok(Self(Arc::from(bytes)))
    }

    /// The raw bytes, `/`-separated.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/')
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.iter().rposition(|b| *b == b'/').map(|i| RelPath(Arc::from(&self.0[..i])))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        RelPath::new(v)
    }

    /// Whether `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }

    /// How many components deep the path is (a top-level entry is 1).
    pub fn depth(&self) -> usize {
        self.components().count()
    }
}

fn validate(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if bytes[0] == b'/' {
        return Err(PathError::Absolute);
    }
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    for c in bytes.split(|b| *b == b'/') {
        match c {
            b"" => return Err(PathError::EmptyComponent),
            b"." => return Err(PathError::DotComponent),
            b".." => return Err(PathError::DotDotComponent),
            c if c.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

impl TryFrom<serde_bytes::ByteBuf> for RelPath {
    type Error = PathError;
    fn try_from(b: serde_bytes::ByteBuf) -> Result<Self, PathError> {
        let r = RelPath::new(b.into_vec());
        if let Err(e) = r {
            // postcard drops a custom error's text; the decoder picks it up here.
            LAST_REFUSAL.with(|l| l.set(Some(e)));
        }
        r
    }
}

thread_local! {
    static LAST_REFUSAL: std::cell::Cell<Option<PathError>> = const { std::cell::Cell::new(None) };
}

/// Why the last path this thread refused while decoding was refused (and forgets it).
pub(crate) fn take_refusal() -> Option<PathError> {
    LAST_REFUSAL.with(std::cell::Cell::take)
}

/// As a byte string (what `serde_bytes` writes), straight from the shared bytes.
impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escape control characters (a name may hold a newline) so a log line stays one line.
        for ch in String::from_utf8_lossy(&self.0).chars() {
            if ch.is_control() {
                write!(f, "{}", ch.escape_default())?;
            } else {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [&b"a"[..], b"a/b/c.txt", b"with space/and\nnewline", b"\xff\xfe/latin1", b".hidden/..x/x.."] {
            assert!(RelPath::new(p).is_ok(), "{p:?}");
        }
    }

    #[test]
    fn refuses_hostile_paths() {
        let cases: &[(&[u8], PathError)] = &[
            (b"", PathError::Empty),
            (b"/etc/passwd", PathError::Absolute),
            (b"a//b", PathError::EmptyComponent),
            (b"a/", PathError::EmptyComponent),
            (b"./a", PathError::DotComponent),
            (b"..", PathError::DotDotComponent),
            (b"a/../../etc", PathError::DotDotComponent),
            (b"a\0b", PathError::Nul),
        ];
        for (p, want) in cases {
            assert_eq!(RelPath::new(*p), Err(*want), "{p:?}");
        }
        assert_eq!(RelPath::new(vec![b'a'; 256]), Err(PathError::ComponentTooLong));
        assert_eq!(RelPath::new(b"a/".repeat(2049)), Err(PathError::TooLong));
    }

    #[test]
    fn hostile_path_fails_to_deserialize() {
        let bytes = postcard::to_stdvec(&serde_bytes::ByteBuf::from(b"../x".to_vec())).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
        let good = postcard::to_stdvec(&RelPath::new("a/b").unwrap()).unwrap();
        assert_eq!(postcard::from_bytes::<RelPath>(&good).unwrap(), RelPath::new("a/b").unwrap());
    }

    #[test]
    fn encodes_as_the_byte_string_it_always_was_and_clones_share_its_bytes() {
        // Journals and peers of earlier versions wrote a path as `serde_bytes` does.
        let p = RelPath::new("dir/file.txt").unwrap();
        let old = postcard::to_stdvec(&serde_bytes::ByteBuf::from(b"dir/file.txt".to_vec())).unwrap();
        assert_eq!(postcard::to_stdvec(&p).unwrap(), old);
        let q = p.clone();
        assert!(std::ptr::eq(p.as_bytes(), q.as_bytes()), "a clone copied the path's bytes");
    }

    #[test]
    fn parent_join_and_prefix() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent(), Some(RelPath::new("a/b").unwrap()));
        assert_eq!(p.file_name(), b"c");
        assert_eq!(RelPath::new("a").unwrap().parent(), None);
        assert_eq!(RelPath::new("a").unwrap().join(b"b").unwrap(), RelPath::new("a/b").unwrap());
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&RelPath::new("a/b").unwrap()));
        assert_eq!(p.depth(), 3);
    }
}
