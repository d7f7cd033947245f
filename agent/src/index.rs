//! The disk side of [`mirror_core::tree`]: a [`Stat`] from `lstat`'s metadata.

pub use mirror_core::tree::*;
use mirror_protocol::Timestamp;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// The parts of `m` that say whether a path changed.
pub fn stat_of(m: &Metadata) -> Stat {
    Stat::new(m.mode(), m.size(), mtime_of(m), m.ino())
}

pub fn mtime_of(m: &Metadata) -> Timestamp {
    Timestamp { secs: m.mtime(), nanos: u32::try_from(m.mtime_nsec()).unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::useless_conversion)] // `mode_t` is `u32` here, `u16` on macOS
    fn file_type_bits_are_this_platforms() {
        let lib = |v: libc::mode_t| u32::from(v);
        assert_eq!(super::S_IFMT, lib(libc::S_IFMT));
        assert_eq!(super::S_IFDIR, lib(libc::S_IFDIR));
        assert_eq!(super::S_IFREG, lib(libc::S_IFREG));
        assert_eq!(super::S_IFLNK, lib(libc::S_IFLNK));
    }
}
