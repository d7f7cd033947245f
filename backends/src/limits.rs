//! File-system limits the agent must respect where it writes, asked of the kernel.
#![allow(unsafe_code)] // pathconf(3)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The longest file name, in bytes, that the file system holding the directory `dir` accepts
/// in it (`pathconf(dir, _PC_NAME_MAX)`): 255 on most, less on some (eCryptfs: 143). `None`
/// when the kernel cannot tell (no limit, or an error).
pub fn name_max(dir: &Path) -> Option<usize> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call; pathconf only reads
    // it and keeps no pointer to it. It touches no memory of ours otherwise.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    usize::try_from(n).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_temp_directory_has_a_name_limit() {
        let d = tempfile::tempdir().expect("tempdir");
        let n = super::name_max(d.path());
        assert!(n.is_some_and(|n| n >= 14), "{n:?}");
        assert_eq!(super::name_max(&d.path().join("missing")), None);
    }
}
