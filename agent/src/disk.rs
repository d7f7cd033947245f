//! The real file system of a sync root, behind [`mirror_core::disk::Disk`]: the engine's only
//! way to the disk. The work is in [`executor`] (verify before mutate, atomic replace, the
//! agent's own directory), [`scan`] (stat and hash) and [`paths`] (the jail).

use crate::executor::{self, TempFile};
use crate::paths::{self, abs};
use crate::scan;
use crate::writer::{Receiving, Writer};
use mirror_core::disk::{Disk, ExecError, JailError, Listed, Observed, Seen, Unhashed};
use mirror_core::tree::Stat;
use mirror_protocol::{Hash, RelPath, Timestamp};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Debug)]
pub struct RealDisk {
    root: PathBuf,
    /// Writes the large files being received, behind the engine.
    writer: Writer,
}

impl RealDisk {
    pub fn new(root: PathBuf) -> Self {
        Self { root, writer: Writer::default() }
    }
}

/// The `lstat` of `path`; `None` when nothing is there.
fn lstat_of(path: &std::path::Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Disk for RealDisk {
    type Temp = Receiving;
    type Stashed = PathBuf;
    type Upload = File;

    fn lstat(&self, rel: &RelPath) -> io::Result<Option<Stat>> {
        executor::current(&self.root, rel)
    }

    fn observe(&self, rel: &RelPath, known: &dyn Fn(u64) -> Option<(Stat, Hash)>) -> io::Result<Option<Seen>> {
        let path = abs(&self.root, rel);
        let Some(m) = lstat_of(&path)? else { return Ok(None) };
        let ino = crate::index::stat_of(&m).ino;
        scan::observe_meta(&path, &m, known(ino))
    }

    fn observe_light(
        &self,
        rel: &RelPath,
        known: &dyn Fn(u64) -> Option<(Stat, Hash)>,
        from: u64,
    ) -> io::Result<Option<Observed>> {
        let path = abs(&self.root, rel);
        let Some(m) = lstat_of(&path)? else { return Ok(None) };
        let stat = crate::index::stat_of(&m);
        let known = known(stat.ino);
        if m.file_type().is_file() && stat.size >= from && !scan::still_as_known(&stat, known.as_ref()) {
            let u = Unhashed { stat, mtime: crate::index::mtime_of(&m), mode: scan::permissions(&m) };
            return Ok(Some(Observed::Unhashed(u)));
        }
        Ok(scan::observe_meta(&path, &m, known)?.map(Observed::Seen))
    }

    fn list(&self, dir: Option<&RelPath>) -> io::Result<Vec<Listed>> {
        let dir_abs = dir.map_or_else(|| self.root.clone(), |d| abs(&self.root, d));
        let mut out: Vec<Listed> = std::fs::read_dir(dir_abs)?
            .flatten()
            .map(|e| Listed {
                name: e.file_name().as_bytes().to_vec(),
                is_dir: e.file_type().is_ok_and(|t| t.is_dir()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn check_parents(&self, rel: &RelPath) -> Result<(), JailError> {
        paths::check_parents(&self.root, rel)
    }

    fn set_meta(
        &mut self,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        executor::set_meta(&self.root, rel, expected, mtime, mode)
    }

    fn remove(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<(), ExecError> {
        executor::remove(&self.root, rel, expected)
    }

    fn make_dir(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<Stat, ExecError> {
        executor::make_dir(&self.root, rel, expected)
    }

    fn make_symlink(&mut self, rel: &RelPath, expected: Option<Stat>, target: &[u8]) -> Result<Stat, ExecError> {
        executor::make_symlink(&self.root, rel, expected, target)
    }

    fn move_aside(&mut self, from: &RelPath, expected: Option<Stat>, to: &RelPath) -> Result<(), ExecError> {
        executor::move_aside(&self.root, from, expected, to)
    }

    fn stash(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<PathBuf, ExecError> {
        executor::stash(&self.root, rel, expected)
    }

    fn unstash(
        &mut self,
        from: &PathBuf,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        executor::unstash(&self.root, from, rel, expected, mtime, mode)
    }

    fn drop_stashed(&mut self, s: &PathBuf) {
        let _ = std::fs::remove_file(s);
    }

    fn copy_to_temp(
        &mut self,
        from: &RelPath,
        expected: Option<Stat>,
        to: &RelPath,
        hash: &Hash,
    ) -> Result<Option<Receiving>, ExecError> {
        Ok(executor::copy_to_temp(&self.root, from, expected, to, hash)?.map(Receiving::new))
    }

    fn create_temp(&mut self, rel: &RelPath) -> Result<Receiving, ExecError> {
        Ok(Receiving::new(TempFile::create(&self.root, rel)?))
    }

    fn write_temp(&mut self, t: &mut Receiving, bytes: Vec<u8>) -> io::Result<()> {
        t.write(&mut self.writer, bytes)
    }

    fn settle_temp(&mut self, t: &mut Receiving) -> io::Result<()> {
        t.settle(&mut self.writer)
    }

    fn install(
        &mut self,
        t: Receiving,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        t.finish(&mut self.writer)?.install(&self.root, rel, expected, mtime, mode)
    }

    fn open_upload(&mut self, rel: &RelPath) -> Result<File, ExecError> {
        paths::check_parents(&self.root, rel)?;
        Ok(scan::open_nofollow(&abs(&self.root, rel))?)
    }

    fn read_small(&mut self, rel: &RelPath, size: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        if paths::check_parents(&self.root, rel).is_err() {
            return Ok(None);
        }
        // Never blocks on what replaced the file meanwhile (a FIFO opened for reading waits for
        // a writer); never follows a symlink.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(abs(&self.root, rel));
        let f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        if !m.is_file() || m.len() != size {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(size + 1).read_to_end(&mut bytes)?;
        Ok((bytes.len() as u64 == size).then_some(bytes))
    }

    fn read_base(&mut self, rel: &RelPath, expected: Stat, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        if let Err(e) = paths::check_parents(&self.root, rel) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(abs(&self.root, rel))?;
        let changed = || io::Error::new(io::ErrorKind::Interrupted, "changed since it was described");
        if crate::index::stat_of(&f.metadata()?) != expected {
            return Err(changed());
        }
        let end = offset.checked_add(len).filter(|&e| e <= expected.size).ok_or_else(changed)?;
        let mut bytes = vec![0; usize::try_from(end - offset).map_err(|_| changed())?];
        f.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    fn free_space(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.root).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn root_identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.root)?;
        if !m.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        }
        Ok((m.dev(), m.ino()))
    }

    fn root_is_empty(&self) -> bool {
        executor::root_is_empty(&self.root)
    }

    fn leave(&mut self) {
        executor::leave_agent_dir(&self.root);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_small_file_is_read_for_a_push_only_as_it_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = RealDisk::new(dir.path().to_path_buf());
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        assert_eq!(disk.read_small(&rel("a.txt"), 5).unwrap(), Some(b"hello".to_vec()));
        // Another size than the entry says: changed since, nothing pushed.
        assert_eq!(disk.read_small(&rel("a.txt"), 4).unwrap(), None);
        assert_eq!(disk.read_small(&rel("gone.txt"), 5).unwrap(), None);
        // Never through a symlink, at the path or on the way.
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).unwrap();
        assert_eq!(disk.read_small(&rel("link"), 5).unwrap(), None);
        std::os::unix::fs::symlink(".", dir.path().join("up")).unwrap();
        assert_eq!(disk.read_small(&rel("up/a.txt"), 5).unwrap(), None);
        // A FIFO put there meanwhile is not waited on (opening it to read would block).
        let made = std::process::Command::new("mkfifo").arg(dir.path().join("fifo")).status().unwrap();
        assert!(made.success());
        assert_eq!(disk.read_small(&rel("fifo"), 0).unwrap(), None);
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert_eq!(disk.read_small(&rel("d"), 0).unwrap_or(None), None);
    }
}
