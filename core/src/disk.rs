//! What a replica asks of its file system, as one trait: the agent implements it over the real
//! disk (`agent/src/disk.rs`), a simulator in memory, with whatever faults it likes.
//!
//! Every path is relative to the sync root. Two disciplines are the implementation's to keep:
//! - **The root is a jail**: no path is ever reached through a symlink below the root
//!   ([`Disk::check_parents`] says whether one would be).
//! - **Verify before mutate**: every mutation takes the [`Stat`] the replica believes is on disk
//!   and fails with [`ExecError::Changed`] if the disk says otherwise, right before it acts: the
//!   user changed the path since the scan, and that change is news, not something to overwrite.
//!
//! The calls are synchronous: a replica's decisions wait for their outcome. What a simulator
//! wants to interleave (a user's save between a scan and an apply) it does inside a call, right
//! before the mutation, which is exactly the race verify-before-mutate exists for.

use crate::tree::Stat;
use mirror_protocol::{Hash, Kind, RelPath, Timestamp};
use std::fmt;
use std::io;

/// What a scan saw at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    pub stat: Stat,
    pub mtime: Timestamp,
}

/// A regular file seen by its `lstat` alone, its bytes not read: the driver hashes it apart
/// ([`Command::Hash`](crate::replica::Command::Hash)), so that a large file being hashed does not
/// hold up everything else the replica does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhashed {
    pub stat: Stat,
    pub mtime: Timestamp,
    /// Its permission bits.
    pub mode: u32,
}

impl Unhashed {
    /// What was seen, with the hash of its bytes.
    pub fn seen(&self, hash: Hash) -> Seen {
        Seen { kind: Kind::File { size: self.stat.size, hash, mode: self.mode }, stat: self.stat, mtime: self.mtime }
    }
}

/// What is at a path: seen whole, or a file whose hash is still to be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Seen(Seen),
    Unhashed(Unhashed),
}

/// Why a path cannot be written without leaving the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailError {
    /// An ancestor is a symlink: following it could leave the root.
    ThroughSymlink { path: RelPath, link: RelPath },
    /// An ancestor exists but is not a directory.
    NotADirectory { path: RelPath, at: RelPath },
}

impl fmt::Display for JailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ThroughSymlink { path, link } => {
                write!(f, "path {path} passes through the symlink {link}; refusing to follow it")
            }
            Self::NotADirectory { path, at } => write!(f, "path {path}: {at} is not a directory"),
        }
    }
}

impl std::error::Error for JailError {}

/// Why a change to the disk was not made.
#[derive(Debug)]
pub enum ExecError {
    /// The disk no longer matches what we last saw: a fresh local change.
    Changed,
    /// The path would be reached through a symlink or a non-directory.
    Jail(JailError),
    /// A directory to remove still holds entries.
    NotEmpty,
    Io(io::Error),
}

impl ExecError {
    /// The file to stash is on another file system than the agent's directory: delete it instead.
    pub fn crosses_devices(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == io::ErrorKind::CrossesDevices)
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Changed => f.write_str("changed on disk since it was scanned"),
            Self::Jail(e) => e.fmt(f),
            Self::NotEmpty => f.write_str("directory is not empty"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for ExecError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::DirectoryNotEmpty { ExecError::NotEmpty } else { ExecError::Io(e) }
    }
}

impl From<JailError> for ExecError {
    fn from(e: JailError) -> Self {
        ExecError::Jail(e)
    }
}

/// An entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub is_dir: bool,
}

/// The file system of one sync root.
pub trait Disk {
    /// A file being received: removed when dropped, unless installed.
    type Temp: fmt::Debug;
    /// A file deleted for a peer, kept a moment for a rename that may want its content.
    type Stashed: fmt::Debug;
    /// A file opened to be sent to a peer.
    type Upload;

    /// The stat of `rel`, `None` when nothing is there.
    fn lstat(&self, rel: &RelPath) -> io::Result<Option<Stat>>;
    /// What is at `rel` (reading a file's bytes only if `known`, the stat and hash recorded for
    /// an inode, does not match), `None` when nothing is there.
    fn observe(&self, rel: &RelPath, known: &dyn Fn(u64) -> Option<(Stat, Hash)>) -> io::Result<Option<Seen>>;
    /// As [`observe`](Self::observe), but a regular file of `from` bytes or more whose hash
    /// `known` does not give is not read: it comes back [`Observed::Unhashed`].
    fn observe_light(
        &self,
        rel: &RelPath,
        known: &dyn Fn(u64) -> Option<(Stat, Hash)>,
        from: u64,
    ) -> io::Result<Option<Observed>> {
        let _ = from;
        Ok(self.observe(rel, known)?.map(Observed::Seen))
    }
    /// The entries of directory `dir` (the root when `None`), sorted by name; `NotFound` when it
    /// is gone.
    fn list(&self, dir: Option<&RelPath>) -> io::Result<Vec<Listed>>;
    /// Whether every existing ancestor of `rel` is a real directory (not a symlink).
    fn check_parents(&self, rel: &RelPath) -> Result<(), JailError>;

    /// Sets the mode and mtime of the file at `rel` (still `expected`), its content unchanged.
    fn set_meta(
        &mut self,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError>;
    /// Removes the non-directory or empty directory at `rel`, if it is still `expected`.
    fn remove(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<(), ExecError>;
    /// Makes a directory at `rel`, replacing a non-directory that is still `expected`.
    fn make_dir(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<Stat, ExecError>;
    /// Makes a symlink at `rel` to `target` (never followed), replacing what is still `expected`.
    fn make_symlink(&mut self, rel: &RelPath, expected: Option<Stat>, target: &[u8]) -> Result<Stat, ExecError>;
    /// Moves `from` (still `expected`) to `to`, which must not exist.
    fn move_aside(&mut self, from: &RelPath, expected: Option<Stat>, to: &RelPath) -> Result<(), ExecError>;
    /// Instead of deleting the file at `rel` (still `expected`), keeps it out of sight for a
    /// moment. Fails with an error that [`ExecError::crosses_devices`] when it cannot be kept
    /// (another file system): the caller deletes it instead.
    fn stash(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<Self::Stashed, ExecError>;
    /// Puts a stashed file at `rel` (still `expected`), with this mode and mtime.
    fn unstash(
        &mut self,
        from: &Self::Stashed,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError>;
    /// Deletes a stashed file no rename wanted.
    fn drop_stashed(&mut self, s: &Self::Stashed);
    /// A temp file for `to` holding a copy of our file `from` (still `expected`), if its bytes
    /// hash to `hash`; `None` if they do not (it changed).
    fn copy_to_temp(
        &mut self,
        from: &RelPath,
        expected: Option<Stat>,
        to: &RelPath,
        hash: &Hash,
    ) -> Result<Option<Self::Temp>, ExecError>;
    /// A new, empty temp file for `rel` (its missing parents made).
    fn create_temp(&mut self, rel: &RelPath) -> Result<Self::Temp, ExecError>;
    /// Appends `bytes` to the temp file (handed over: a writer may keep them, no copy). The
    /// bytes may be written later, behind the replica
    /// (the agent's writer): a write that fails then fails this call for a later chunk, or
    /// [`install`](Self::install).
    fn write_temp(&mut self, t: &mut Self::Temp, bytes: Vec<u8>) -> io::Result<()>;
    /// Waits until every byte given to [`write_temp`](Self::write_temp) is written: called once
    /// the last has arrived, before anything is moved for the file, so that a write failing
    /// late (a full disk) fails the transfer, never an install half done.
    fn settle_temp(&mut self, t: &mut Self::Temp) -> io::Result<()> {
        let _ = t;
        Ok(())
    }
    /// Once every byte given to [`write_temp`](Self::write_temp) is written, sets the temp
    /// file's mode and mtime, then puts it at `rel` if `rel` still holds `expected`. The stat of
    /// the installed file.
    fn install(
        &mut self,
        t: Self::Temp,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError>;
    /// The file at `rel`, opened for a peer (never through a symlink).
    fn open_upload(&mut self, rel: &RelPath) -> Result<Self::Upload, ExecError>;
    /// The bytes of the regular file at `rel` (never through a symlink) if it holds exactly
    /// `size` bytes, `None` otherwise (changed, gone, not a file): a small file pushed to peers
    /// with its entry. The caller checks the bytes against the entry's hash.
    fn read_small(&mut self, rel: &RelPath, size: u64) -> io::Result<Option<Vec<u8>>>;
    /// Bytes `offset..offset + len` of the regular file at `rel` (never through a symlink), if
    /// it still has the stat `expected`: a piece of the base of a delta. An error if it changed
    /// (or is shorter): the caller fetches the file whole instead.
    fn read_base(&mut self, rel: &RelPath, expected: Stat, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// Bytes free for new files, when known.
    fn free_space(&self) -> Option<u64>;
    /// Device and inode of the root: another means the root was replaced.
    fn root_identity(&self) -> io::Result<(u64, u64)>;
    /// Whether the root holds nothing (but the agent's own directory).
    fn root_is_empty(&self) -> bool;
    /// Removes what the agent keeps in the root for itself, if nothing of it is in use (at stop).
    fn leave(&mut self);
}
