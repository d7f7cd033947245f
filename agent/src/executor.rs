//! Every change this agent makes to the disk goes through here.
//!
//! Two disciplines hold throughout:
//! - **Verify before mutate**: the caller passes the stat it believes is on disk; if the disk
//!   says otherwise the user changed the path since the scan, and we report
//!   [`ExecError::Changed`] instead of overwriting a fresh write.
//! - **Atomic replace**: content lands in a temp file and is renamed over the target, so no
//!   reader ever sees a torn file. Temp files live in the agent's own directory at the top of
//!   the root ([`AGENT_DIR`](crate::rules::AGENT_DIR)), as do stash files: out of the user's
//!   view, never synced, removed on drop and, whatever a crash left, at start-up
//!   ([`clean_agent_dir`]). A destination on another file system (a mount inside the root),
//!   which a rename from there cannot reach, gets its temp file beside it instead, named
//!   [`BESIDE_PREFIX`](crate::rules::BESIDE_PREFIX) and recorded in the agent's directory
//!   first: start-up removes only the files so recorded, so nothing a user made is touched.

use crate::index::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Stat};
use crate::paths::{self, abs};
use crate::rules::{AGENT_DIR, BESIDE_PREFIX, is_beside_temp};
use mirror_protocol::{Hash, RelPath, Timestamp};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use mirror_core::disk::ExecError;

type Result<T> = std::result::Result<T, ExecError>;

/// The stat of what we just created at `path`. If the user removed or replaced it in the instant
/// since, a stat that matches nothing is returned: the entry is still recorded as applied, and
/// the next scan sees the user's change as a change, rather than our retry undoing it.
fn stat_after(path: &Path, kind: u32) -> io::Result<Stat> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(crate::index::stat_of(&m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Stat { mode: kind, size: u64::MAX, mtime: Timestamp { secs: i64::MIN, nanos: 0 }, ino: 0 })
        }
        Err(e) => Err(e),
    }
}

/// The current stat of `rel`, `None` when absent.
pub fn current(root: &Path, rel: &RelPath) -> io::Result<Option<Stat>> {
    match fs::symlink_metadata(abs(root, rel)) {
        Ok(m) => Ok(Some(crate::index::stat_of(&m))),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Fails with [`ExecError::Changed`] unless the disk holds exactly `expected` at `rel`.
pub fn verify(root: &Path, rel: &RelPath, expected: Option<Stat>) -> Result<()> {
    paths::check_parents(root, rel)?;
    if current(root, rel)? == expected { Ok(()) } else { Err(ExecError::Changed) }
}

/// What the agent's directory holds so that git (`git status`) ignores it and all it holds: the
/// directory ignores itself.
const SELF_IGNORE: &str = ".gitignore";
const SELF_IGNORE_TEXT: &str = "# mirror-agent's temp files, removed when it stops: ignore all of it\n*\n";

/// The agent's directory in `root`, made (private to the user) if missing. Refused if something
/// else has the name (a file, a symlink): we do not write through what we did not make.
pub fn agent_dir(root: &Path) -> io::Result<PathBuf> {
    let dir = root.join(AGENT_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // Best effort: without it, git lists one untracked directory while files are in it.
            let _ = fs::write(dir.join(SELF_IGNORE), SELF_IGNORE_TEXT);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if fs::symlink_metadata(&dir)?.is_dir() {
        Ok(dir)
    } else {
        Err(io::Error::other(format!("{} is not a directory", dir.display())))
    }
}

/// Removes the agent's directory of `root` with everything in it (what a crash or a kill left:
/// temp files, stash files), and the temp files beside their destinations that it records.
/// Returns how many files of ours went. A `.mirror-agent.tmp` that is not a directory is left
/// alone.
pub fn clean_agent_dir(root: &Path) -> io::Result<usize> {
    let dir = root.join(AGENT_DIR);
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::other(format!("{} is not a directory; leaving it alone", dir.display())));
        }
        Ok(_) => {}
    }
    let mut n = 0;
    for ent in fs::read_dir(&dir)? {
        let ent = ent?;
        let path = ent.path();
        if ent.file_name() == SELF_IGNORE {
            fs::remove_file(&path)?;
            continue;
        }
        if ent.file_name().as_bytes().starts_with(LEDGER_PREFIX.as_bytes())
            && let Ok(bytes) = fs::read(&path)
            && let Ok(rel) = RelPath::new(bytes)
            && is_beside_temp(rel.file_name())
            && paths::check_parents(root, &rel).is_ok()
            && fs::remove_file(abs(root, &rel)).is_ok()
        {
            n += 1;
        }
        // remove_dir_all does not follow symlinks.
        let gone = if ent.file_type()?.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        if gone.is_ok() {
            n += 1;
        }
    }
    fs::remove_dir(&dir)?;
    Ok(n)
}

/// Removes the agent's directory of `root` if nothing of ours is left in it (at stop).
pub fn leave_agent_dir(root: &Path) {
    let dir = root.join(AGENT_DIR);
    if fs::remove_file(dir.join(SELF_IGNORE)).is_ok() && fs::remove_dir(&dir).is_err() {
        let _ = fs::write(dir.join(SELF_IGNORE), SELF_IGNORE_TEXT); // still in use: keep ignoring
    }
}

/// Whether `root` holds nothing but (maybe) the agent's directory.
pub fn root_is_empty(root: &Path) -> bool {
    fs::read_dir(root).is_ok_and(|mut d| d.all(|e| e.is_ok_and(|e| e.file_name() == AGENT_DIR)))
}

/// Names in the agent's directory: a file being received, a stash file, the record of a temp
/// file beside its destination.
const RECV_PREFIX: &str = "recv-";
const STASH_PREFIX: &str = "stash-";
const LEDGER_PREFIX: &str = "beside-";

fn random_hex() -> io::Result<String> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!("{:016x}", u64::from_le_bytes(rnd)))
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o666).custom_flags(libc::O_CLOEXEC).open(path)
}

fn same_file_system(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// A file being received. Removed on drop unless installed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    /// Shared with the writer ([`crate::writer`]) while a large file's bytes are written behind.
    file: Option<Arc<File>>,
    /// For a temp file beside its destination: its record in the agent's directory.
    ledger: Option<PathBuf>,
}

impl TempFile {
    /// Creates a temp file for `rel`, creating missing parents: in the agent's directory, or
    /// beside `rel` when that is on another file system (recorded first, see the module doc).
    pub fn create(root: &Path, rel: &RelPath) -> Result<Self> {
        paths::check_parents(root, rel)?;
        paths::create_parents(root, rel)?;
        let dir = abs(root, rel).parent().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
        let ours = agent_dir(root);
        if let Ok(ours) = &ours
            && same_file_system(ours, &dir)
        {
            loop {
                let path = ours.join(format!("{RECV_PREFIX}{}", random_hex()?));
                match create_new(&path) {
                    Ok(file) => return Ok(Self { path, file: Some(Arc::new(file)), ledger: None }),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let ours = ours?;
        loop {
            let hex = random_hex()?;
            let name = format!("{BESIDE_PREFIX}{hex}");
            let rel_tmp = match rel.parent() {
                Some(p) => p.join(name.as_bytes()),
                None => RelPath::new(name.as_bytes().to_vec()),
            }
            .map_err(|e| io::Error::other(e.to_string()))?;
            let ledger = ours.join(format!("{LEDGER_PREFIX}{hex}"));
            create_new(&ledger)?.write_all(rel_tmp.as_bytes())?;
            let path = dir.join(&name);
            match create_new(&path) {
                Ok(file) => return Ok(Self { path, file: Some(Arc::new(file)), ledger: Some(ledger) }),
                Err(e) => {
                    let _ = fs::remove_file(&ledger);
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// The file is in place under its real name: nothing of ours is left to remove.
    fn installed(&mut self) {
        self.path = PathBuf::new();
        if let Some(l) = self.ledger.take() {
            let _ = fs::remove_file(l);
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &self.file {
            Some(f) => (&mut &**f).write_all(bytes),
            None => Err(io::Error::other("temp file already closed")),
        }
    }

    /// The open file, for a writer to write to (the temp file's name stays ours to remove).
    pub fn shared_file(&self) -> io::Result<Arc<File>> {
        self.file.clone().ok_or_else(|| io::Error::other("temp file already closed"))
    }

    /// A temp file over `file` at `path`, for tests of what writes to one.
    #[cfg(test)]
    pub fn over(path: PathBuf, file: File) -> Self {
        Self { path, file: Some(Arc::new(file)), ledger: None }
    }

    /// Sets mode and mtime, then renames over `rel` after checking that `rel` still holds
    /// `expected`. Returns the stat of the installed file.
    pub fn install(
        mut self,
        root: &Path,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat> {
        let file = self.file.take().ok_or_else(|| io::Error::other("temp file already closed"))?;
        set_mode_and_mtime(&file, mode, mtime)?;
        drop(file);
        verify(root, rel, expected)?;
        let target = abs(root, rel);
        if expected.is_some_and(|s| s.mode & S_IFMT == S_IFDIR) {
            fs::remove_dir(&target)?;
        }
        fs::rename(&self.path, &target)?;
        self.installed();
        Ok(stat_after(&target, S_IFREG)?)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
        if let Some(l) = self.ledger.take() {
            let _ = fs::remove_file(l);
        }
    }
}

/// Sets the permission bits of `f` to the entry's `mode` (never a set-id or sticky bit, whatever
/// a peer sends; never wider than where the file was written) and its mtime.
fn set_mode_and_mtime(f: &File, mode: u32, mtime: Timestamp) -> io::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(mode & 0o777))?;
    f.set_modified(to_system_time(mtime))
}

/// [`set_mode_and_mtime`] on the regular file at `path`, never following a symlink there. Its
/// descriptor is opened read-only (a read-only file's mode and mtime can be changed by its
/// owner); a file its owner may not even read (mode 0) is changed by path instead.
fn set_meta_at(path: &Path, mode: u32, mtime: Timestamp) -> io::Result<()> {
    match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path) {
        Ok(f) => set_mode_and_mtime(&f, mode, mtime),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))?;
            let t = to_system_time(mtime);
            let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path);
            match f {
                Ok(f) => f.set_modified(t),
                // Still unreadable (it is to stay mode 0): its mtime stays what it is.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

pub fn to_system_time(t: Timestamp) -> SystemTime {
    let secs = Duration::from_secs(t.secs.unsigned_abs());
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    if t.secs >= 0 { SystemTime::UNIX_EPOCH + secs + nanos } else { SystemTime::UNIX_EPOCH - secs + nanos }
}

/// Changes only the mode and mtime of a file whose content already matches.
pub fn set_meta(root: &Path, rel: &RelPath, expected: Option<Stat>, mtime: Timestamp, mode: u32) -> Result<Stat> {
    verify(root, rel, expected)?;
    let path = abs(root, rel);
    set_meta_at(&path, mode, mtime)?;
    Ok(crate::index::stat_of(&fs::symlink_metadata(&path)?))
}

/// Removes whatever non-directory or empty directory is at `rel`, if it is still `expected`.
pub fn remove(root: &Path, rel: &RelPath, expected: Option<Stat>) -> Result<()> {
    verify(root, rel, expected)?;
    let Some(s) = expected else { return Ok(()) };
    let path = abs(root, rel);
    if s.mode & S_IFMT == S_IFDIR {
        fs::remove_dir(path)?
    } else {
        fs::remove_file(path)?
    }
    Ok(())
}

/// Creates a directory at `rel` (replacing a non-directory that is still `expected`).
pub fn make_dir(root: &Path, rel: &RelPath, expected: Option<Stat>) -> Result<Stat> {
    if let Some(s) = expected
        && s.mode & S_IFMT == S_IFDIR
    {
        verify(root, rel, expected)?;
        return Ok(s);
    }
    remove(root, rel, expected)?;
    paths::create_parents(root, rel)?;
    let path = abs(root, rel);
    fs::create_dir(&path)?;
    Ok(stat_after(&path, S_IFDIR)?)
}

/// Creates a symlink at `rel` pointing at `target` (never followed), atomically replacing what
/// is there if it is still `expected`.
pub fn make_symlink(root: &Path, rel: &RelPath, expected: Option<Stat>, target: &[u8]) -> Result<Stat> {
    let mut tmp = TempFile::create(root, rel)?;
    tmp.file = None;
    fs::remove_file(&tmp.path)?; // frees the name; the symlink takes it (and the guard removes it)
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &tmp.path)?;
    verify(root, rel, expected)?;
    let path = abs(root, rel);
    if expected.is_some_and(|s| s.mode & S_IFMT == S_IFDIR) {
        fs::remove_dir(&path)?;
    }
    fs::rename(&tmp.path, &path)?;
    tmp.installed();
    Ok(stat_after(&path, S_IFLNK)?)
}

/// Moves `from` (still `expected`) to `to`, which must not exist.
pub fn move_aside(root: &Path, from: &RelPath, expected: Option<Stat>, to: &RelPath) -> Result<()> {
    verify(root, from, expected)?;
    paths::check_parents(root, to)?;
    if current(root, to)?.is_some() {
        return Err(ExecError::Io(io::Error::new(io::ErrorKind::AlreadyExists, "conflict name taken")));
    }
    fs::rename(abs(root, from), abs(root, to))?;
    Ok(())
}

/// A fresh stash name in the agent's directory, for a file being deleted that a rename may
/// still want. Without the agent's directory, `EXDEV`: the caller deletes the file instead.
fn stash_name(root: &Path) -> io::Result<PathBuf> {
    let dir = agent_dir(root).map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
    Ok(dir.join(format!("{STASH_PREFIX}{}", random_hex()?)))
}

/// Instead of deleting the file at `rel` (still `expected`), moves it into the agent's directory
/// and returns its path there: a create of the same content in the same batch (a rename on the peer) then
/// takes it from there instead of transferring it. Fails with `EXDEV` when `rel` is on another
/// file system than the root; the caller then deletes it.
pub fn stash(root: &Path, rel: &RelPath, expected: Option<Stat>) -> Result<PathBuf> {
    verify(root, rel, expected)?;
    let to = stash_name(root)?;
    fs::rename(abs(root, rel), &to)?;
    Ok(to)
}

/// A temp file for `to` holding a copy of our file `from` (which must still hold `expected`),
/// if its bytes hash to `hash`; `None` if they do not (it changed).
pub fn copy_to_temp(
    root: &Path,
    from: &RelPath,
    expected: Option<Stat>,
    to: &RelPath,
    hash: &Hash,
) -> Result<Option<TempFile>> {
    verify(root, from, expected)?;
    let mut src = crate::scan::open_nofollow(&abs(root, from))?;
    let mut tmp = TempFile::create(root, to)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match std::io::Read::read(&mut src, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        h.update(&buf[..n]);
        tmp.write_all(&buf[..n])?;
    }
    Ok((h.finalize().as_bytes() == hash).then_some(tmp))
}

/// Puts a stashed file in place at `rel` (which must still hold `expected`), with its mode and
/// mtime set first.
pub fn unstash(
    root: &Path,
    from: &Path,
    rel: &RelPath,
    expected: Option<Stat>,
    mtime: Timestamp,
    mode: u32,
) -> Result<Stat> {
    paths::create_parents(root, rel)?;
    set_meta_at(from, mode, mtime)?;
    verify(root, rel, expected)?;
    let target = abs(root, rel);
    if expected.is_some_and(|s| s.mode & S_IFMT == S_IFDIR) {
        fs::remove_dir(&target)?;
    }
    fs::rename(from, &target)?;
    Ok(stat_after(&target, S_IFREG)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn permission_bits_are_set_exactly_and_never_a_set_id_bit() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut t = TempFile::create(root, &rp("secret.env")).unwrap();
        t.write_all(b"TOKEN=1").unwrap();
        let st = t.install(root, &rp("secret.env"), None, Timestamp::default(), 0o600).unwrap();
        assert_eq!(st.mode & 0o7777, 0o600);
        // A peer asking for set-uid gets the permission bits only; mode 0 is kept as 0.
        let st = set_meta(root, &rp("secret.env"), Some(st), Timestamp::default(), 0o4755).unwrap();
        assert_eq!(st.mode & 0o7777, 0o755);
        let st = set_meta(root, &rp("secret.env"), Some(st), Timestamp { secs: 5, nanos: 0 }, 0).unwrap();
        assert_eq!(st.mode & 0o7777, 0);
        let st = set_meta(root, &rp("secret.env"), Some(st), Timestamp { secs: 6, nanos: 0 }, 0o640).unwrap();
        assert_eq!((st.mode & 0o7777, st.mtime.secs), (0o640, 6));
    }

    #[test]
    fn install_is_atomic_and_verified() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut t = TempFile::create(root, &rp("sub/f")).unwrap();
        t.write_all(b"new").unwrap();
        let st = t.install(root, &rp("sub/f"), None, Timestamp { secs: 1_000_000, nanos: 7 }, 0o750).unwrap();
        assert_eq!(fs::read(root.join("sub/f")).unwrap(), b"new");
        assert_eq!(st.mtime, Timestamp { secs: 1_000_000, nanos: 7 });
        assert_eq!(st.mode & 0o7777, 0o750, "the entry's permission bits exactly, whatever the umask");
        // The user writes meanwhile: the next install must refuse.
        let mut t = TempFile::create(root, &rp("sub/f")).unwrap();
        t.write_all(b"peer").unwrap();
        fs::write(root.join("sub/f"), "user's fresh write").unwrap();
        assert!(matches!(
            t.install(root, &rp("sub/f"), Some(st), Timestamp::default(), 0o644),
            Err(ExecError::Changed)
        ));
        assert_eq!(fs::read(root.join("sub/f")).unwrap(), b"user's fresh write");
        let left: Vec<_> = fs::read_dir(root.join("sub")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "temp file left behind: {left:?}");
        let left: Vec<_> = fs::read_dir(root.join(AGENT_DIR)).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [SELF_IGNORE], "temp file left behind");
    }

    /// Issue 11 items 9 and 10: temp and stash files live in the agent's directory only; start-up
    /// removes what a crash left there (and the temp files beside their destination that it
    /// records), and nothing a user made, whatever its name.
    #[test]
    fn temp_and_stash_files_stay_in_the_agent_directory_and_start_up_removes_only_ours() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("sub")).unwrap();
        let users = [".mirror-tmp-my-notes.txt", "sub/.mirror-tmp-config", "sub/.mirror-agent.tmp-0123456789abcdef"];
        for u in users {
            fs::write(root.join(u), "the user's").unwrap();
        }
        let mut t = TempFile::create(root, &rp("sub/f")).unwrap();
        t.write_all(b"half").unwrap();
        assert!(t.path.starts_with(root.join(AGENT_DIR)), "{:?}", t.path);
        fs::write(root.join("sub/g"), "g").unwrap();
        let st = current(root, &rp("sub/g")).unwrap();
        let stashed = stash(root, &rp("sub/g"), st).unwrap();
        assert!(stashed.starts_with(root.join(AGENT_DIR)), "{stashed:?}");
        // A crash: neither is cleaned up by its owner. And a temp file beside its destination,
        // recorded, as one on another file system would be.
        std::mem::forget(t);
        fs::write(root.join("sub/.mirror-agent.tmp-00000000000000ff"), "half").unwrap();
        fs::write(root.join(AGENT_DIR).join("beside-00000000000000ff"), "sub/.mirror-agent.tmp-00000000000000ff")
            .unwrap();
        // A record naming a user's file that does not have our name is not obeyed.
        fs::write(root.join(AGENT_DIR).join("beside-0000000000000001"), "sub/.mirror-tmp-config").unwrap();
        assert_eq!(fs::read_to_string(root.join(AGENT_DIR).join(SELF_IGNORE)).unwrap(), SELF_IGNORE_TEXT);
        assert_eq!(clean_agent_dir(root).unwrap(), 5);
        assert!(!root.join(AGENT_DIR).exists());
        assert!(!root.join("sub/.mirror-agent.tmp-00000000000000ff").exists());
        for u in users {
            assert_eq!(fs::read_to_string(root.join(u)).unwrap(), "the user's", "{u}");
        }
        agent_dir(root).unwrap();
        leave_agent_dir(root);
        assert!(!root.join(AGENT_DIR).exists());
        let empty = tempfile::tempdir().unwrap();
        agent_dir(empty.path()).unwrap();
        assert!(root_is_empty(empty.path()), "the agent's directory alone is an empty root");
        assert!(!root_is_empty(root));
        assert_eq!(clean_agent_dir(root).unwrap(), 0);
    }

    #[test]
    fn refuses_to_write_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        assert!(matches!(TempFile::create(d.path(), &rp("link/x")), Err(ExecError::Jail(_))));
        assert!(matches!(make_dir(d.path(), &rp("link/y"), None), Err(ExecError::Jail(_))));
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn symlink_dir_and_remove() {
        let d = tempfile::tempdir().unwrap();
        let st = make_symlink(d.path(), &rp("l"), None, b"../nowhere").unwrap();
        assert_eq!(fs::read_link(d.path().join("l")).unwrap(), Path::new("../nowhere"));
        let st = make_dir(d.path(), &rp("l"), Some(st)).unwrap();
        assert!(d.path().join("l").is_dir());
        fs::write(d.path().join("l/x"), "").unwrap();
        assert!(matches!(remove(d.path(), &rp("l"), Some(st)), Err(ExecError::NotEmpty)));
    }
}
