//! [`MemDisk`]: a sync root in memory, behind [`mirror_core::disk::Disk`], for a simulator to
//! run replicas on and to be cruel to.
//!
//! It keeps the two disciplines of the real disk (`agent/src/executor.rs`) the same way: every
//! mutation first runs [`Disk::check_parents`] (no path is reached through a symlink or a
//! non-directory: [`ExecError::Jail`]) and compares the path's current [`Stat`] with the one the
//! replica expects ([`ExecError::Changed`] otherwise), right before it acts. The simulator plays
//! the user with the methods that are not part of the trait ([`MemDisk::write`],
//! [`MemDisk::rename`], ...): those are never logged, never verified, and ignore the faults.
//!
//! Faults are switched at run time: names that fold ([`MemDisk::set_folding`]), a full disk
//! ([`MemDisk::set_storage_full`]), an unreadable path ([`MemDisk::deny`]) and the user's save
//! right before the engine's next mutation of a path ([`MemDisk::before_mutation`]), which is
//! the race verify-before-mutate exists for.
//!
//! Nothing here reads a clock: mtimes come from [`MemDisk::set_time`]. Two writes of the same
//! size at the same logical time leave the same stat, as two writes within a file system's
//! mtime granularity do; a simulator that wants them told apart moves the time.
//!
//! Where this differs from the real disk is listed on [`MemDisk`].
//!
//! One file of about 1,000 lines, over the usual 600: it is one type, a tree of nodes and the
//! twenty trait methods over it, each a few lines; split, every part would reach into the same
//! private node table. The tests are apart, in `disk/tests.rs`.

use mirror_core::disk::{Disk, ExecError, JailError, Listed, Observed, Seen, Unhashed};
use mirror_core::tree::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Stat};
use mirror_protocol::{Hash, Kind, RelPath, Timestamp};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The device number [`Disk::root_identity`] reports.
pub const DEVICE: u64 = 0x5131;

/// Permission bits of what the user makes.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const LINK_MODE: u32 = 0o777;

/// The folded spelling of a name (or a path) when names fold: ASCII case only.
pub fn fold(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

#[derive(Debug, Clone)]
struct Node {
    /// Permission bits (`0o777` at most).
    perm: u32,
    mtime: Timestamp,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Dir(BTreeMap<Vec<u8>, u64>),
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

impl Node {
    fn stat(&self, ino: u64) -> Stat {
        let (kind, size) = match &self.body {
            Body::Dir(_) => (S_IFDIR, 0),
            Body::File(b) => (S_IFREG, b.len() as u64),
            Body::Symlink(t) => (S_IFLNK, t.len() as u64),
        };
        Stat::new(kind | self.perm, size, self.mtime, ino)
    }
}

/// What a path holds, as [`MemDisk::snapshot`] shows it: what two replicas that agree must
/// agree on (no inode; a directory's mode is not synced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Dir,
    File { content: Vec<u8>, mode: u32, mtime: Timestamp },
    Symlink { target: Vec<u8> },
}

/// One change the engine made through the trait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub path: RelPath,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetMeta,
    Remove,
    /// A directory made by `make_dir`, or a missing parent made for another mutation.
    MakeDir,
    MakeSymlink,
    MoveAside {
        to: RelPath,
    },
    /// The path's node left the tree for the stash `id`.
    Stash {
        id: u64,
    },
    Unstash {
        id: u64,
    },
    DropStashed {
        id: u64,
    },
    /// Temp file `id` was made for the path (held outside the tree).
    CreateTemp {
        id: u64,
    },
    Install {
        id: u64,
    },
}

/// A file being received, held outside the tree; gone with its value unless installed.
#[derive(Debug)]
pub struct Temp {
    id: u64,
    ino: u64,
    bytes: Vec<u8>,
    _live: Live,
}

impl Temp {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Counts the temp files alive, for [`MemDisk::live_temps`].
#[derive(Debug)]
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A node taken out of the tree by [`Disk::stash`]; its id is its inode, which it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stashed {
    pub id: u64,
}

/// A user operation run right before the engine's next mutation of a path.
pub type Hook = Box<dyn FnOnce(&mut MemDisk) + Send>;

/// Where a path leads.
enum At {
    /// Its node: the directory holding it, its name there as spelled on disk, its inode.
    Found { parent: u64, name: Vec<u8>, ino: u64 },
    /// Nothing there; `parent` is the directory that would hold it, when that exists.
    Missing { parent: Option<u64> },
    /// An ancestor is a symlink or not a directory.
    Blocked(JailError),
}

/// The ancestors of `rel`, from the top down.
fn ancestors(rel: &RelPath) -> Vec<RelPath> {
    let mut out = Vec::new();
    let mut cur = rel.parent();
    while let Some(p) = cur {
        cur = p.parent();
        out.push(p);
    }
    out.reverse();
    out
}

fn io_err(kind: io::ErrorKind, what: &str, rel: &RelPath) -> ExecError {
    ExecError::Io(io::Error::new(kind, format!("{what}: {rel}")))
}

/// A file system in memory. Where it differs from the real disk (`agent/src/disk.rs`):
/// - Temp and stash files are held outside the tree: there is no agent directory
///   (`.mirror-agent.tmp`) in the root, so `list`, `root_is_empty` and the watcher never see
///   one, and [`Disk::leave`] does nothing.
/// - `lstat`, `observe` and `list` never follow a symlink in a parent either (the real ones
///   do, as `lstat(2)` does): through a symlink they see nothing (`None`, `NotFound`).
///   Mutations refuse such a path on both.
/// - Folding is ASCII case only (no Unicode normalization); a file installed, moved or
///   unstashed over another spelling of a name takes the new spelling.
/// - `deny` makes a path and everything below it unreadable to `observe` (even when the known
///   hash could be reused), `list`, `open_upload` and `copy_to_temp`; `lstat` and mutations
///   still work.
/// - A full disk fails writes of bytes to a temp file (`write_temp`, `copy_to_temp`) and every
///   `install`; directories, symlinks and renames are still made.
/// - `open_upload` of a directory fails with `IsADirectory` (the real one opens it), of a
///   symlink with an error of kind `Other` (the real one: `ELOOP`); `set_meta` of a symlink too.
/// - `unstash` through a symlinked parent fails with [`ExecError::Jail`] (the real one: an
///   [`ExecError::Io`] wrapping the same [`JailError`]).
/// - Nothing changes in the middle of a call but through [`MemDisk::before_mutation`]: the
///   real disk can change between the verify and the rename; here the window is closed.
pub struct MemDisk {
    nodes: BTreeMap<u64, Node>,
    root: u64,
    next_ino: u64,
    next_temp: u64,
    now: Timestamp,
    folding: bool,
    storage_full: bool,
    free_space: Option<u64>,
    denied: Vec<RelPath>,
    hooks: Vec<(RelPath, Hook)>,
    /// Nodes out of the tree, by inode, with the path they left.
    stashed: BTreeMap<u64, RelPath>,
    live_temps: Arc<AtomicUsize>,
    log: Vec<Mutation>,
}

impl fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemDisk")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now)
            .field("folding", &self.folding)
            .field("storage_full", &self.storage_full)
            .field("denied", &self.denied)
            .field("hooks", &self.hooks.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("stashed", &self.stashed)
            .field("live_temps", &self.live_temps())
            .field("log", &self.log.len())
            .finish()
    }
}

impl Default for MemDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl MemDisk {
    /// An empty root at time zero, no fault switched on.
    pub fn new() -> Self {
        let root = Node { perm: DIR_MODE, mtime: Timestamp::default(), body: Body::Dir(BTreeMap::new()) };
        MemDisk {
            nodes: BTreeMap::from([(1, root)]),
            root: 1,
            next_ino: 2,
            next_temp: 1,
            now: Timestamp::default(),
            folding: false,
            storage_full: false,
            free_space: None,
            denied: Vec::new(),
            hooks: Vec::new(),
            stashed: BTreeMap::new(),
            live_temps: Arc::new(AtomicUsize::new(0)),
            log: Vec::new(),
        }
    }

    // ----- time, faults, what a checker reads ----------------------------------------------

    /// The mtime given to what changes from now on.
    pub fn set_time(&mut self, now: Timestamp) {
        self.now = now;
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Names that differ only in ASCII case are one name from now on (a lookup finds the
    /// exact spelling first, then any that folds the same).
    pub fn set_folding(&mut self, on: bool) {
        self.folding = on;
    }

    pub fn folding(&self) -> bool {
        self.folding
    }

    /// While on, writes to temp files and installs fail with `StorageFull`, and
    /// [`Disk::free_space`] says 0.
    pub fn set_storage_full(&mut self, on: bool) {
        self.storage_full = on;
    }

    /// What [`Disk::free_space`] says while the disk is not full (`None`: not known).
    pub fn set_free_space(&mut self, free: Option<u64>) {
        self.free_space = free;
    }

    /// Reads of `rel` and of everything below it fail with `PermissionDenied` until
    /// [`MemDisk::allow`].
    pub fn deny(&mut self, rel: &RelPath) {
        self.denied.push(rel.clone());
    }

    pub fn allow(&mut self, rel: &RelPath) {
        let folding = self.folding;
        self.denied.retain(|d| !same(folding, d, rel));
    }

    /// Runs `hook` right before the engine's next mutation of `rel` (before its verify), once.
    pub fn before_mutation(&mut self, rel: &RelPath, hook: Hook) {
        self.hooks.push((rel.clone(), hook));
    }

    /// Every change the engine made, in order.
    pub fn log(&self) -> &[Mutation] {
        &self.log
    }

    pub fn take_log(&mut self) -> Vec<Mutation> {
        std::mem::take(&mut self.log)
    }

    /// Temp files made and neither installed nor dropped yet.
    pub fn live_temps(&self) -> usize {
        self.live_temps.load(Ordering::SeqCst)
    }

    /// Stashed nodes neither unstashed nor dropped yet, by id, with the path each left.
    pub fn stashed(&self) -> &BTreeMap<u64, RelPath> {
        &self.stashed
    }

    /// Every path of the tree with what it holds, in byte order.
    pub fn snapshot(&self) -> BTreeMap<RelPath, Shape> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(None::<RelPath>, self.root)];
        while let Some((at, ino)) = todo.pop() {
            let Some(Body::Dir(entries)) = self.nodes.get(&ino).map(|n| &n.body) else { continue };
            for (name, child) in entries {
                let path = match &at {
                    None => RelPath::new(name.clone()),
                    Some(p) => p.join(name),
                };
                let (Ok(path), Some(node)) = (path, self.nodes.get(child)) else { continue };
                let shape = match &node.body {
                    Body::Dir(_) => {
                        todo.push((Some(path.clone()), *child));
                        Shape::Dir
                    }
                    Body::File(b) => Shape::File { content: b.clone(), mode: node.perm, mtime: node.mtime },
                    Body::Symlink(t) => Shape::Symlink { target: t.clone() },
                };
                out.insert(path, shape);
            }
        }
        out
    }

    // ----- the user ------------------------------------------------------------------------

    /// Writes `bytes` to the file at `rel` in place (its inode and mode kept), or makes it
    /// (`0o644`) with its missing parents.
    pub fn write(&mut self, rel: &RelPath, bytes: &[u8]) -> io::Result<()> {
        let now = self.now;
        match self.user_parents(rel)? {
            At::Found { ino, .. } => match self.nodes.get_mut(&ino) {
                Some(Node { body: Body::File(b), mtime, .. }) => {
                    *b = bytes.to_vec();
                    *mtime = now;
                    Ok(())
                }
                _ => Err(io::Error::new(io::ErrorKind::IsADirectory, format!("not a file: {rel}"))),
            },
            _ => {
                let ino = self.alloc(Node { perm: FILE_MODE, mtime: now, body: Body::File(bytes.to_vec()) });
                self.attach(rel, ino)
            }
        }
    }

    /// Saves `bytes` at `rel` as an editor does: a new file (a new inode) renamed over the old
    /// one, whose mode it keeps.
    pub fn save(&mut self, rel: &RelPath, bytes: &[u8]) -> io::Result<()> {
        let perm = match self.user_parents(rel)? {
            At::Found { ino, .. } => match self.nodes.get(&ino) {
                Some(Node { body: Body::File(_), perm, .. }) => *perm,
                _ => return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("not a file: {rel}"))),
            },
            _ => FILE_MODE,
        };
        let ino = self.alloc(Node { perm, mtime: self.now, body: Body::File(bytes.to_vec()) });
        self.attach(rel, ino)
    }

    /// `mkdir -p`.
    pub fn mkdir_p(&mut self, rel: &RelPath) -> io::Result<()> {
        match self.user_parents(rel)? {
            At::Found { ino, .. } if matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir(_))) => Ok(()),
            At::Found { .. } => Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("not a directory: {rel}"))),
            _ => {
                let ino = self.alloc(Node { perm: DIR_MODE, mtime: self.now, body: Body::Dir(BTreeMap::new()) });
                self.attach(rel, ino)
            }
        }
    }

    /// Makes a symlink at `rel` to `target` (with missing parents); `AlreadyExists` if
    /// something is there.
    pub fn symlink(&mut self, rel: &RelPath, target: &[u8]) -> io::Result<()> {
        if let At::Found { .. } = self.user_parents(rel)? {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("exists: {rel}")));
        }
        let ino = self.alloc(Node { perm: LINK_MODE, mtime: self.now, body: Body::Symlink(target.to_vec()) });
        self.attach(rel, ino)
    }

    /// `rm -r`: `NotFound` if nothing is there.
    pub fn remove_all(&mut self, rel: &RelPath) -> io::Result<()> {
        match self.locate(rel) {
            At::Found { .. } => {
                if let Some(ino) = self.detach(rel) {
                    self.drop_subtree(ino);
                }
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::NotFound, format!("no such path: {rel}"))),
        }
    }

    /// `rename(2)`, making missing parents of `to`: a file or symlink replaces a non-directory,
    /// a directory replaces an empty directory, and a directory never moves beneath itself.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        let At::Found { ino, .. } = self.locate(from) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such path: {from}")));
        };
        let from_dir = matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir(_)));
        if from_dir && to.starts_with(from) && !same(self.folding, from, to) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{from} beneath itself")));
        }
        if let At::Found { ino: there, .. } = self.user_parents(to)?
            && there != ino
        {
            match (from_dir, self.nodes.get(&there).map(|n| &n.body)) {
                (true, Some(Body::Dir(e))) if e.is_empty() => {}
                (true, Some(Body::Dir(_))) => {
                    return Err(io::Error::new(io::ErrorKind::DirectoryNotEmpty, format!("{to}")));
                }
                (false, Some(Body::Dir(_))) => {
                    return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{to}")));
                }
                (true, _) => return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{to}"))),
                (false, _) => {}
            }
        }
        self.detach(from);
        self.attach(to, ino)
    }

    /// Sets the permission bits of the file or directory at `rel`.
    pub fn chmod(&mut self, rel: &RelPath, mode: u32) -> io::Result<()> {
        let node = self.user_node(rel)?;
        if let Body::Symlink(_) = node.body {
            return Err(io::Error::other(format!("chmod of a symlink: {rel}")));
        }
        node.perm = mode & 0o777;
        Ok(())
    }

    /// Sets the mtime of what is at `rel` (`touch -d`).
    pub fn set_mtime(&mut self, rel: &RelPath, mtime: Timestamp) -> io::Result<()> {
        self.user_node(rel)?.mtime = mtime;
        Ok(())
    }

    /// What `rel` holds, as [`MemDisk::snapshot`] would show it (without copying the tree).
    pub fn shape(&self, rel: &RelPath) -> Option<Shape> {
        let At::Found { ino, .. } = self.locate(rel) else { return None };
        let node = self.nodes.get(&ino)?;
        Some(match &node.body {
            Body::Dir(_) => Shape::Dir,
            Body::File(b) => Shape::File { content: b.clone(), mode: node.perm, mtime: node.mtime },
            Body::Symlink(t) => Shape::Symlink { target: t.clone() },
        })
    }

    /// The bytes of the file at `rel`.
    pub fn read(&self, rel: &RelPath) -> Option<Vec<u8>> {
        match self.locate(rel) {
            At::Found { ino, .. } => match self.nodes.get(&ino).map(|n| &n.body) {
                Some(Body::File(b)) => Some(b.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The root is replaced by a new, empty directory (another inode: a re-created root, or
    /// another file system mounted over it).
    pub fn replace_root(&mut self) {
        self.drop_subtree(self.root);
        self.root = self.alloc(Node { perm: DIR_MODE, mtime: self.now, body: Body::Dir(BTreeMap::new()) });
    }

    // ----- the tree ------------------------------------------------------------------------

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    fn body(&self, ino: u64) -> Option<&Body> {
        self.nodes.get(&ino).map(|n| &n.body)
    }

    /// The entry of `dir` named `name`: the exact spelling, or one that folds the same.
    fn lookup(&self, dir: u64, name: &[u8]) -> Option<(Vec<u8>, u64)> {
        let Some(Body::Dir(entries)) = self.body(dir) else { return None };
        if let Some(ino) = entries.get(name) {
            return Some((name.to_vec(), *ino));
        }
        if !self.folding {
            return None;
        }
        let key = fold(name);
        entries.iter().find(|(n, _)| fold(n) == key).map(|(n, ino)| (n.clone(), *ino))
    }

    fn locate(&self, rel: &RelPath) -> At {
        let mut dir = self.root;
        for a in ancestors(rel) {
            let Some((_, ino)) = self.lookup(dir, a.file_name()) else { return At::Missing { parent: None } };
            match self.body(ino) {
                Some(Body::Dir(_)) => dir = ino,
                Some(Body::Symlink(_)) => return At::Blocked(JailError::ThroughSymlink { path: rel.clone(), link: a }),
                _ => return At::Blocked(JailError::NotADirectory { path: rel.clone(), at: a }),
            }
        }
        match self.lookup(dir, rel.file_name()) {
            Some((name, ino)) => At::Found { parent: dir, name, ino },
            None => At::Missing { parent: Some(dir) },
        }
    }

    /// Makes the missing ancestors of `rel` as directories, never through a symlink or a
    /// non-directory. The ones it made, from the top down.
    fn make_parents(&mut self, rel: &RelPath) -> Result<Vec<RelPath>, JailError> {
        let mut made = Vec::new();
        let mut dir = self.root;
        for a in ancestors(rel) {
            match self.lookup(dir, a.file_name()) {
                Some((_, ino)) => match self.body(ino) {
                    Some(Body::Dir(_)) => dir = ino,
                    Some(Body::Symlink(_)) => return Err(JailError::ThroughSymlink { path: rel.clone(), link: a }),
                    _ => return Err(JailError::NotADirectory { path: rel.clone(), at: a }),
                },
                None => {
                    let ino = self.alloc(Node { perm: DIR_MODE, mtime: self.now, body: Body::Dir(BTreeMap::new()) });
                    self.link(dir, a.file_name(), ino);
                    dir = ino;
                    made.push(a);
                }
            }
        }
        Ok(made)
    }

    /// The missing parents of `rel` made for the user; where `rel` then leads.
    fn user_parents(&mut self, rel: &RelPath) -> io::Result<At> {
        self.make_parents(rel).map_err(|e| io::Error::new(io::ErrorKind::NotADirectory, e))?;
        Ok(self.locate(rel))
    }

    fn user_node(&mut self, rel: &RelPath) -> io::Result<&mut Node> {
        let At::Found { ino, .. } = self.locate(rel) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such path: {rel}")));
        };
        self.nodes.get_mut(&ino).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{rel}")))
    }

    /// Enters `ino` in `dir` as `name`, in place of any entry of the same (folded) name,
    /// whose node goes.
    fn link(&mut self, dir: u64, name: &[u8], ino: u64) {
        let folding = self.folding;
        let now = self.now;
        let Some(Node { body: Body::Dir(entries), mtime, .. }) = self.nodes.get_mut(&dir) else { return };
        let old: Vec<Vec<u8>> =
            entries.keys().filter(|n| n.as_slice() == name || (folding && fold(n) == fold(name))).cloned().collect();
        let mut gone = Vec::new();
        for n in old {
            gone.extend(entries.remove(&n).filter(|i| *i != ino));
        }
        entries.insert(name.to_vec(), ino);
        *mtime = now;
        for i in gone {
            self.drop_subtree(i);
        }
    }

    /// Puts node `ino` at `rel`, replacing what is there; `NotFound` if its parent is missing.
    fn attach(&mut self, rel: &RelPath, ino: u64) -> io::Result<()> {
        match self.locate(rel) {
            At::Found { parent, .. } | At::Missing { parent: Some(parent) } => {
                self.link(parent, rel.file_name(), ino);
                Ok(())
            }
            At::Missing { parent: None } => {
                Err(io::Error::new(io::ErrorKind::NotFound, format!("no parent directory: {rel}")))
            }
            At::Blocked(e) => Err(io::Error::new(io::ErrorKind::NotADirectory, e)),
        }
    }

    /// Takes what is at `rel` out of the tree, its node kept.
    fn detach(&mut self, rel: &RelPath) -> Option<u64> {
        let At::Found { parent, name, ino } = self.locate(rel) else { return None };
        let now = self.now;
        if let Some(Node { body: Body::Dir(entries), mtime, .. }) = self.nodes.get_mut(&parent) {
            entries.remove(&name);
            *mtime = now;
        }
        Some(ino)
    }

    fn drop_subtree(&mut self, ino: u64) {
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            if let Some(Node { body: Body::Dir(entries), .. }) = self.nodes.remove(&i) {
                todo.extend(entries.into_values());
            }
        }
    }

    // ----- the engine's side ---------------------------------------------------------------

    fn record(&mut self, path: &RelPath, op: Op) {
        self.log.push(Mutation { path: path.clone(), op });
    }

    fn is_denied(&self, rel: &RelPath) -> bool {
        let key = |p: &RelPath| if self.folding { RelPath::new(fold(p.as_bytes())).ok() } else { Some(p.clone()) };
        let Some(rel) = key(rel) else { return false };
        self.denied.iter().filter_map(key).any(|d| rel.starts_with(&d))
    }

    fn denied_err(rel: &RelPath) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("permission denied: {rel}"))
    }

    /// Runs the hooks waiting for a mutation of `rel` (those set by a hook wait for the next).
    fn run_hooks(&mut self, rel: &RelPath) {
        let folding = self.folding;
        let (due, keep) = std::mem::take(&mut self.hooks).into_iter().partition(|(p, _)| same(folding, p, rel));
        self.hooks = keep;
        for (_, hook) in due {
            hook(self);
        }
    }

    /// Right before a mutation of `rel`: the user may act, then the path must hold `expected`
    /// and be reached through real directories only.
    fn verify(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<(), ExecError> {
        self.run_hooks(rel);
        self.check_parents(rel)?;
        if self.stat_of(rel) == expected { Ok(()) } else { Err(ExecError::Changed) }
    }

    /// [`MemDisk::make_parents`], logged.
    fn engine_parents(&mut self, rel: &RelPath) -> Result<(), ExecError> {
        for made in self.make_parents(rel)? {
            self.record(&made, Op::MakeDir);
        }
        Ok(())
    }

    fn stat_of(&self, rel: &RelPath) -> Option<Stat> {
        match self.locate(rel) {
            At::Found { ino, .. } => self.nodes.get(&ino).map(|n| n.stat(ino)),
            _ => None,
        }
    }

    /// Puts node `ino` at `rel`, which was verified to hold `expected`: an expected directory
    /// must be empty.
    fn put_over(&mut self, rel: &RelPath, expected: Option<Stat>, ino: u64) -> Result<Stat, ExecError> {
        if expected.is_some_and(|s| s.mode & S_IFMT == S_IFDIR)
            && let At::Found { ino: there, .. } = self.locate(rel)
            && matches!(self.body(there), Some(Body::Dir(e)) if !e.is_empty())
        {
            return Err(ExecError::NotEmpty);
        }
        self.attach(rel, ino)?;
        self.stat_of(rel).ok_or_else(|| io_err(io::ErrorKind::NotFound, "gone", rel))
    }

    /// The bytes of the file at `rel`, for reading it to a peer or into a temp file.
    fn read_file(&self, rel: &RelPath) -> Result<Vec<u8>, ExecError> {
        self.check_parents(rel)?;
        if self.is_denied(rel) {
            return Err(ExecError::Io(Self::denied_err(rel)));
        }
        let At::Found { ino, .. } = self.locate(rel) else {
            return Err(io_err(io::ErrorKind::NotFound, "no such file", rel));
        };
        match self.body(ino) {
            Some(Body::File(b)) => Ok(b.clone()),
            Some(Body::Dir(_)) => Err(io_err(io::ErrorKind::IsADirectory, "a directory", rel)),
            _ => Err(ExecError::Io(io::Error::other(format!("a symlink, not followed: {rel}")))),
        }
    }

    fn full(rel: &RelPath) -> ExecError {
        io_err(io::ErrorKind::StorageFull, "no space left on device", rel)
    }
}

/// Whether `a` and `b` name the same path.
fn same(folding: bool, a: &RelPath, b: &RelPath) -> bool {
    a == b || (folding && fold(a.as_bytes()) == fold(b.as_bytes()))
}

impl Disk for MemDisk {
    type Temp = Temp;
    type Stashed = Stashed;
    type Upload = Vec<u8>;

    fn lstat(&self, rel: &RelPath) -> io::Result<Option<Stat>> {
        Ok(self.stat_of(rel))
    }

    fn observe(&self, rel: &RelPath, known: &dyn Fn(u64) -> Option<(Stat, Hash)>) -> io::Result<Option<Seen>> {
        let At::Found { ino, .. } = self.locate(rel) else { return Ok(None) };
        if self.is_denied(rel) {
            return Err(Self::denied_err(rel));
        }
        let Some(node) = self.nodes.get(&ino) else { return Ok(None) };
        let stat = node.stat(ino);
        let kind = match &node.body {
            Body::Dir(_) => Kind::Directory,
            Body::Symlink(t) => Kind::Symlink { target: t.clone() },
            Body::File(bytes) => {
                let reuse = known(ino).filter(|(s, _)| stat.same_bytes_as(s)).map(|(_, h)| h);
                let hash = reuse.unwrap_or_else(|| *blake3::hash(bytes).as_bytes());
                Kind::File { size: stat.size, hash, mode: node.perm & 0o777 }
            }
        };
        Ok(Some(Seen { kind, stat, mtime: node.mtime }))
    }

    fn observe_light(
        &self,
        rel: &RelPath,
        known: &dyn Fn(u64) -> Option<(Stat, Hash)>,
        from: u64,
    ) -> io::Result<Option<Observed>> {
        if let At::Found { ino, .. } = self.locate(rel)
            && !self.is_denied(rel)
            && let Some(node) = self.nodes.get(&ino)
            && let Body::File(_) = node.body
        {
            let stat = node.stat(ino);
            if !known(ino).is_some_and(|(s, _)| stat.same_bytes_as(&s)) && stat.size >= from {
                return Ok(Some(Observed::Unhashed(Unhashed { stat, mtime: node.mtime, mode: node.perm & 0o777 })));
            }
        }
        Ok(self.observe(rel, known)?.map(Observed::Seen))
    }

    fn list(&self, dir: Option<&RelPath>) -> io::Result<Vec<Listed>> {
        let ino = match dir {
            None => self.root,
            Some(d) => {
                let At::Found { ino, .. } = self.locate(d) else {
                    return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such directory: {d}")));
                };
                if self.is_denied(d) {
                    return Err(Self::denied_err(d));
                }
                ino
            }
        };
        let Some(Body::Dir(entries)) = self.body(ino) else {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
        };
        Ok(entries
            .iter()
            .map(|(name, i)| Listed { name: name.clone(), is_dir: matches!(self.body(*i), Some(Body::Dir(_))) })
            .collect())
    }

    fn check_parents(&self, rel: &RelPath) -> Result<(), JailError> {
        match self.locate(rel) {
            At::Blocked(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn set_meta(
        &mut self,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        self.verify(rel, expected)?;
        let At::Found { ino, .. } = self.locate(rel) else {
            return Err(io_err(io::ErrorKind::NotFound, "no such file", rel));
        };
        let Some(node) = self.nodes.get_mut(&ino) else {
            return Err(io_err(io::ErrorKind::NotFound, "no such file", rel));
        };
        if let Body::Symlink(_) = node.body {
            return Err(ExecError::Io(io::Error::other(format!("a symlink, not followed: {rel}"))));
        }
        node.perm = mode & 0o777;
        node.mtime = mtime;
        let stat = node.stat(ino);
        self.record(rel, Op::SetMeta);
        Ok(stat)
    }

    fn remove(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<(), ExecError> {
        self.verify(rel, expected)?;
        if expected.is_none() {
            return Ok(());
        }
        let At::Found { ino, .. } = self.locate(rel) else {
            return Err(io_err(io::ErrorKind::NotFound, "no such file", rel));
        };
        if matches!(self.body(ino), Some(Body::Dir(e)) if !e.is_empty()) {
            return Err(ExecError::NotEmpty);
        }
        if let Some(ino) = self.detach(rel) {
            self.drop_subtree(ino);
        }
        self.record(rel, Op::Remove);
        Ok(())
    }

    fn make_dir(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<Stat, ExecError> {
        if let Some(s) = expected
            && s.mode & S_IFMT == S_IFDIR
        {
            self.verify(rel, expected)?;
            return Ok(s);
        }
        self.remove(rel, expected)?;
        self.engine_parents(rel)?;
        if self.stat_of(rel).is_some() {
            return Err(io_err(io::ErrorKind::AlreadyExists, "exists", rel));
        }
        let ino = self.alloc(Node { perm: DIR_MODE, mtime: self.now, body: Body::Dir(BTreeMap::new()) });
        self.attach(rel, ino)?;
        self.record(rel, Op::MakeDir);
        self.stat_of(rel).ok_or_else(|| io_err(io::ErrorKind::NotFound, "gone", rel))
    }

    fn make_symlink(&mut self, rel: &RelPath, expected: Option<Stat>, target: &[u8]) -> Result<Stat, ExecError> {
        self.engine_parents(rel)?;
        self.verify(rel, expected)?;
        let ino = self.alloc(Node { perm: LINK_MODE, mtime: self.now, body: Body::Symlink(target.to_vec()) });
        match self.put_over(rel, expected, ino) {
            Ok(stat) => {
                self.record(rel, Op::MakeSymlink);
                Ok(stat)
            }
            Err(e) => {
                self.nodes.remove(&ino);
                Err(e)
            }
        }
    }

    fn move_aside(&mut self, from: &RelPath, expected: Option<Stat>, to: &RelPath) -> Result<(), ExecError> {
        self.verify(from, expected)?;
        self.run_hooks(to);
        self.check_parents(to)?;
        let At::Found { ino, .. } = self.locate(from) else {
            return Err(io_err(io::ErrorKind::NotFound, "no such file", from));
        };
        match self.locate(to) {
            At::Found { .. } => return Err(io_err(io::ErrorKind::AlreadyExists, "conflict name taken", to)),
            At::Missing { parent: None } => return Err(io_err(io::ErrorKind::NotFound, "no parent directory", to)),
            At::Missing { parent: Some(_) } | At::Blocked(_) => {}
        }
        if to.starts_with(from) {
            return Err(io_err(io::ErrorKind::InvalidInput, "a directory cannot move beneath itself", to));
        }
        self.detach(from);
        self.attach(to, ino)?;
        self.record(from, Op::MoveAside { to: to.clone() });
        Ok(())
    }

    fn stash(&mut self, rel: &RelPath, expected: Option<Stat>) -> Result<Stashed, ExecError> {
        self.verify(rel, expected)?;
        let ino = self.detach(rel).ok_or_else(|| io_err(io::ErrorKind::NotFound, "no such file", rel))?;
        self.stashed.insert(ino, rel.clone());
        self.record(rel, Op::Stash { id: ino });
        Ok(Stashed { id: ino })
    }

    fn unstash(
        &mut self,
        from: &Stashed,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        self.engine_parents(rel)?;
        if !self.stashed.contains_key(&from.id) {
            return Err(io_err(io::ErrorKind::NotFound, "no such stash", rel));
        }
        if let Some(node) = self.nodes.get_mut(&from.id) {
            node.perm = mode & 0o777;
            node.mtime = mtime;
        }
        self.verify(rel, expected)?;
        let stat = self.put_over(rel, expected, from.id)?;
        self.stashed.remove(&from.id);
        self.record(rel, Op::Unstash { id: from.id });
        Ok(stat)
    }

    fn drop_stashed(&mut self, s: &Stashed) {
        if let Some(path) = self.stashed.remove(&s.id) {
            self.drop_subtree(s.id);
            self.record(&path, Op::DropStashed { id: s.id });
        }
    }

    fn copy_to_temp(
        &mut self,
        from: &RelPath,
        expected: Option<Stat>,
        to: &RelPath,
        hash: &Hash,
    ) -> Result<Option<Temp>, ExecError> {
        self.verify(from, expected)?;
        let bytes = self.read_file(from)?;
        let mut t = self.create_temp(to)?;
        let same = blake3::hash(&bytes).as_bytes() == hash;
        self.write_temp(&mut t, bytes)?;
        Ok(same.then_some(t))
    }

    fn create_temp(&mut self, rel: &RelPath) -> Result<Temp, ExecError> {
        self.engine_parents(rel)?;
        let id = self.next_temp;
        self.next_temp += 1;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.record(rel, Op::CreateTemp { id });
        Ok(Temp { id, ino, bytes: Vec::new(), _live: Live::new(&self.live_temps) })
    }

    fn write_temp(&mut self, t: &mut Temp, bytes: Vec<u8>) -> io::Result<()> {
        if self.storage_full && !bytes.is_empty() {
            return Err(io::Error::new(io::ErrorKind::StorageFull, format!("no space left on device: temp {}", t.id)));
        }
        t.bytes.extend_from_slice(&bytes);
        Ok(())
    }

    /// A write behind failing late, as the agent's writer may: the disk filled up after the
    /// last chunk was taken in.
    fn settle_temp(&mut self, t: &mut Temp) -> io::Result<()> {
        if self.storage_full && !t.bytes.is_empty() {
            return Err(io::Error::new(io::ErrorKind::StorageFull, format!("no space left on device: temp {}", t.id)));
        }
        Ok(())
    }

    fn install(
        &mut self,
        t: Temp,
        rel: &RelPath,
        expected: Option<Stat>,
        mtime: Timestamp,
        mode: u32,
    ) -> Result<Stat, ExecError> {
        if self.storage_full {
            return Err(Self::full(rel));
        }
        self.verify(rel, expected)?;
        let node = Node { perm: mode & 0o777, mtime, body: Body::File(t.bytes.clone()) };
        self.nodes.insert(t.ino, node);
        match self.put_over(rel, expected, t.ino) {
            Ok(stat) => {
                self.record(rel, Op::Install { id: t.id });
                Ok(stat)
            }
            Err(e) => {
                self.nodes.remove(&t.ino);
                Err(e)
            }
        }
    }

    fn open_upload(&mut self, rel: &RelPath) -> Result<Vec<u8>, ExecError> {
        self.read_file(rel)
    }

    fn read_small(&mut self, rel: &RelPath, size: u64) -> io::Result<Option<Vec<u8>>> {
        match self.read_file(rel) {
            Ok(b) => Ok((b.len() as u64 == size).then_some(b)),
            Err(ExecError::Io(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(None),
        }
    }

    fn read_base(&mut self, rel: &RelPath, expected: Stat, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let changed = || io::Error::new(io::ErrorKind::Interrupted, "changed since it was described");
        if self.stat_of(rel) != Some(expected) {
            return Err(changed());
        }
        let bytes = match self.read_file(rel) {
            Ok(b) => b,
            Err(ExecError::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let end = offset.checked_add(len).filter(|&e| e <= bytes.len() as u64).ok_or_else(changed)?;
        Ok(bytes[offset as usize..end as usize].to_vec())
    }

    fn free_space(&self) -> Option<u64> {
        if self.storage_full { Some(0) } else { self.free_space }
    }

    fn root_identity(&self) -> io::Result<(u64, u64)> {
        Ok((DEVICE, self.root))
    }

    fn root_is_empty(&self) -> bool {
        matches!(self.body(self.root), Some(Body::Dir(e)) if e.is_empty())
    }

    fn leave(&mut self) {}
}

#[cfg(test)]
mod tests;
