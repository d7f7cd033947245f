//! File-system watchers for mirror-agent, one module per mechanism, behind one [`Watcher`] trait.
//!
//! A watcher's events are **hints**: "look at this path", "rescan this subtree", "you missed
//! things, rescan everything". They never say what happened; the engine re-stats whatever it is
//! pointed at. This keeps every backend honest about its limits (coalescing, overflow, races with
//! directory creation) and keeps all judgement about the tree in one place.
//!
//! # Portability
//! - Events may be spurious, duplicated or coalesced on every backend.
//! - [`WatchEvent::Overflow`] is a value, never a log line: after it, the consumer must rescan.
//! - The `poll` backend builds and is tested everywhere; it notices changes within its interval.
#![deny(unsafe_code)]

use crossbeam_channel::Sender;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg_attr(not(kqueue), allow(dead_code))]
mod dirdiff;
#[cfg(target_os = "macos")]
mod fsevents;
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
mod fsevents_flags;
#[cfg(target_os = "linux")]
mod inotify;
#[cfg(kqueue)]
mod kqueue;
#[cfg_attr(not(kqueue), allow(dead_code))]
mod kqueue_flags;
mod limits;
mod poll;
mod resume;
#[cfg(target_os = "linux")]
mod walk;

pub use limits::name_max;

/// A hint from a watcher. Paths are relative to the watched root; the empty path is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something at this path may have changed, and may still be changing (a file being
    /// written). The consumer waits for a short quiet moment before reading it.
    Dirty(PathBuf),
    /// Something at this path changed and the change looks complete: a writer closed the file,
    /// or it was renamed or chmod'ed. The consumer may read it at once. Only backends that can
    /// tell (inotify) send it; it is an optimization, never required for correctness.
    Settled(PathBuf),
    /// A writer wrote into the file at this path and may still hold it open: the consumer waits
    /// for its close (a [`WatchEvent::Settled`]), and at most a second, so that it never reads a
    /// version cut mid-write. Only a backend that reports closes (inotify) sends it.
    Writing(PathBuf),
    /// The name at this path was unlinked. The consumer reads it once unlinks stop for a moment
    /// (`rm -rf` of the root unlinks every file before the root itself, which halts the pair).
    Unlinked(PathBuf),
    /// Anything at or beneath this path may have changed: scan it whole.
    RescanSubtree(PathBuf),
    /// Events were lost: rescan the whole root.
    Overflow,
    /// The root itself was deleted, moved or unmounted.
    RootGone,
    /// Every hint up to an event-history position was sent (backends with a history: FSEvents).
    /// A consumer that has acted on all hints before it, and saved the result, may save this and
    /// pass it as [`WatchConfig::resume`] to a later start, which then replays only what
    /// happened since.
    Checkpoint(Checkpoint),
    /// The history since [`WatchConfig::resume`] was replayed (when [`Watcher::replaying`]);
    /// what follows is live.
    Replayed,
}

/// A position in a backend's event history, saved by the consumer with its own state. Its text
/// belongs to the backend that sent it; any other backend, or a history that was reset since,
/// just starts fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint(pub String);

/// Decides whether a directory is watched and descended into. The watcher owns it (its own
/// copy of the consumer's ignore rules, not one shared with the consumer) and asks it from its
/// own thread only.
pub trait DirRules: Send + Sync {
    /// Whether directory `rel` (relative to the root) is watched and descended into.
    fn descend(&self, rel: &Path) -> bool;
    /// What decides about the directories under `dir` may have changed (its ignore file was
    /// edited): forget what was read of it before the next [`DirRules::descend`]. The empty path
    /// means anything may have changed. [`Watcher::refresh`] calls this before walking again.
    fn reload(&self, dir: &Path) {
        let _ = dir;
    }
}

/// Any `Fn(&Path) -> bool` is a set of rules that never changes.
impl<F: Fn(&Path) -> bool + Send + Sync> DirRules for F {
    fn descend(&self, rel: &Path) -> bool {
        self(rel)
    }
}

/// The rules a watcher and the parts of its thread share.
pub type DirFilter = Arc<dyn DirRules>;

/// What to watch and how.
#[derive(Clone)]
pub struct WatchConfig {
    pub root: PathBuf,
    /// Directories for which this returns `false` are not watched (ignored build output, `.git`).
    pub descend: DirFilter,
    /// Scan interval of the poll backend.
    pub poll_interval: Duration,
    /// Where the last run's hints were acted on up to (a [`WatchEvent::Checkpoint`]); a backend
    /// that can, replays the history since then. See [`Watcher::replaying`].
    pub resume: Option<Checkpoint>,
    /// Test hook, poll backend only (the others ignore it): a file that plays the event history
    /// of the volume, the way FSEvents keeps one, so that a consumer's resume path runs on Linux.
    /// See `poll.rs` for its format. Never set in use.
    pub history: Option<PathBuf>,
}

impl fmt::Debug for WatchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchConfig")
            .field("root", &self.root)
            .field("poll_interval", &self.poll_interval)
            .field("resume", &self.resume)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl WatchConfig {
    /// Watch every directory under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            descend: Arc::new(|_: &Path| true),
            poll_interval: Duration::from_millis(500),
            resume: None,
            history: None,
        }
    }
}

/// A running watcher. Dropping it stops it.
pub trait Watcher: Send + fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// The ignore rules of directory `path` changed: the watcher has its [`WatchConfig::descend`]
    /// rules read them again ([`DirRules::reload`]) and adds watches for directories under `path`
    /// that are wanted now and not watched yet.
    fn refresh(&self, path: &Path);
    /// Stops the watcher and joins its thread.
    fn stop(&mut self);
    /// Whether this watcher is replaying its history since [`WatchConfig::resume`]: hints for
    /// what changed while nobody watched come first, then [`WatchEvent::Replayed`]. When false,
    /// the consumer must scan the whole tree itself.
    fn replaying(&self) -> bool {
        false
    }
}

/// The watching mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Linux inotify.
    Inotify,
    /// kqueue (the BSDs; macOS on request).
    Kqueue,
    /// macOS FSEvents.
    FsEvents,
    /// Periodic scans: works on any file system, including network mounts.
    Poll,
}

impl Backend {
    /// The recommended backend on this platform.
    pub fn native() -> Self {
        #[cfg(target_os = "linux")]
        return Backend::Inotify;
        #[cfg(target_os = "macos")]
        return Backend::FsEvents;
        #[cfg(all(kqueue, not(target_os = "macos")))]
        return Backend::Kqueue;
        #[cfg(not(any(target_os = "linux", kqueue)))]
        return Backend::Poll;
    }

    /// Every backend that runs on this platform.
    pub fn available() -> Vec<Backend> {
        vec![
            #[cfg(target_os = "linux")]
            Backend::Inotify,
            #[cfg(target_os = "macos")]
            Backend::FsEvents,
            #[cfg(kqueue)]
            Backend::Kqueue,
            Backend::Poll,
        ]
    }

    /// Whether this backend reports kernel-queue overflows (inotify's queue; kqueue keeps one
    /// pending event per descriptor and cannot overflow; the poll backend has no queue).
    pub fn can_overflow(self) -> bool {
        matches!(self, Backend::Inotify)
    }

    /// Whether this backend keeps an event history it can replay from a [`Checkpoint`]
    /// (FSEvents keeps one per volume).
    pub fn keeps_history(self) -> bool {
        matches!(self, Backend::FsEvents)
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Inotify => "inotify",
            Backend::Kqueue => "kqueue",
            Backend::FsEvents => "fsevents",
            Backend::Poll => "poll",
        }
    }

    /// Parses a backend name as given on the command line.
    pub fn from_name(name: &str) -> Result<Self, WatchError> {
        Backend::available()
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| WatchError::Unsupported(name.to_string()))
    }
}

/// Why a watcher could not start or go on.
#[derive(Debug)]
pub enum WatchError {
    /// A backend this platform does not have.
    Unsupported(String),
    /// The kernel's per-user watch limit is reached.
    WatchLimit { path: PathBuf },
    /// No file descriptors left to watch with (kqueue needs one per file and directory).
    DescriptorLimit { path: PathBuf },
    /// An I/O error at a path.
    Io { path: PathBuf, source: std::io::Error },
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(name) => {
                let names: Vec<_> = Backend::available().iter().map(|b| b.name()).collect();
                write!(f, "watcher backend {name:?} is not available here (available: {})", names.join(", "))
            }
            Self::WatchLimit { path } => write!(
                f,
                "cannot watch {}: the inotify watch limit is reached; raise it with \
                 `sysctl fs.inotify.max_user_watches=524288` (and persist it in /etc/sysctl.d), \
                 ignore large generated directories, or use --watcher poll",
                path.display()
            ),
            Self::DescriptorLimit { path } => write!(
                f,
                "cannot watch {}: out of file descriptors (kqueue needs one per file and directory); \
                 raise the limit (`ulimit -n`, or kern.maxfiles / kern.maxfilesperproc), ignore large \
                 generated directories, or use --watcher poll",
                path.display()
            ),
            Self::Io { path, source } => write!(f, "cannot watch {}: {source}", path.display()),
        }
    }
}

/// The I/O error's text is part of the message already, so it is not also a `source` (which
/// error reporters print after the message a second time).
impl std::error::Error for WatchError {}

/// Starts a watcher of the given backend; hints go to `sink`.
///
/// The watcher blocks when `sink` is full (a bounded channel): the kernel queue then fills up
/// and overflows, which the watcher reports as [`WatchEvent::Overflow`]. Nothing is lost silently.
pub fn start(backend: Backend, config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Box<dyn Watcher>, WatchError> {
    match backend {
        #[cfg(target_os = "linux")]
        Backend::Inotify => Ok(Box::new(inotify::InotifyWatcher::start(config, sink)?)),
        #[cfg(kqueue)]
        Backend::Kqueue => Ok(Box::new(kqueue::KqueueWatcher::start(config, sink)?)),
        #[cfg(target_os = "macos")]
        Backend::FsEvents => Ok(Box::new(fsevents::FsEventsWatcher::start(config, sink)?)),
        Backend::Poll => Ok(Box::new(poll::PollWatcher::start(config, sink)?)),
        #[allow(unreachable_patterns)]
        other => Err(WatchError::Unsupported(other.name().to_string())),
    }
}

/// What a failed watch of `rel` (at `abs`) means. Running into the kernel's limit (`is_limit`)
/// is an error for the root; any other path is polled instead (`coverage`, which tells the user
/// once). A path gone (or replaced by a file) since it was listed is no error: its parent's
/// events cover it.
#[cfg_attr(not(any(target_os = "linux", kqueue)), allow(dead_code))]
pub(crate) fn watch_failure(
    rel: &Path,
    abs: PathBuf,
    err: std::io::Error,
    coverage: &mut poll::Coverage,
    is_limit: impl Fn(&std::io::Error) -> bool,
    limit: impl Fn(PathBuf) -> WatchError,
) -> Result<(), WatchError> {
    let is_root = rel.as_os_str().is_empty();
    if is_limit(&err) {
        if is_root {
            return Err(limit(abs));
        }
        coverage.cover_past_limit(rel, limit(abs));
        return Ok(());
    }
    // ENOENT, ENOTDIR.
    if !is_root && matches!(err.raw_os_error(), Some(2 | 20)) {
        return Ok(());
    }
    // EACCES, EPERM: a directory we may not read is no reason to stop watching the rest.
    if !is_root && is_denied(&err) {
        log::warn!("cannot watch {}: {err}; what changes in it is not seen while it stays unreadable", abs.display());
        return Ok(());
    }
    // ENAMETOOLONG: a path longer than the system takes (it cannot be synced either; the engine
    // reports it once). Neither is it a reason to stop watching the rest.
    if !is_root && err.raw_os_error() == Some(libc::ENAMETOOLONG) {
        log::debug!("cannot watch {}: {err}", abs.display());
        return Ok(());
    }
    Err(WatchError::Io { path: abs, source: err })
}

/// EACCES, EPERM: not allowed to open or watch it.
pub(crate) fn is_denied(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(13 | 1))
}

/// Joins a relative path onto a root; the empty relative path is the root itself.
pub(crate) fn join(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) }
}
