//! The kqueue backend (FreeBSD, OpenBSD, NetBSD, DragonFly; macOS with `--watcher kqueue`).
//!
//! kqueue watches open descriptors, not paths: every directory and every file gets an event-only
//! descriptor (`O_EVTONLY` on macOS, so a watched volume can still be unmounted; read-only
//! elsewhere). Symlinks are listed but never opened (that would watch their target). A
//! directory's `NOTE_WRITE` says only "an entry came, went or was renamed": the directory is
//! listed again and diffed by name and inode against its last listing ([`crate::dirdiff`]), so
//! new entries get watched, gone ones unwatched, and an atomic save (a rename over the old name)
//! re-registers the new inode. A file's `NOTE_WRITE`/`NOTE_EXTEND` marks it dirty; `NOTE_ATTRIB`
//! settles it. The root being deleted, renamed or revoked (an unmount) is `RootGone`.
//!
//! Descriptors are the limit: `RLIMIT_NOFILE` is raised to its hard limit at start. Running out
//! for the root is a clear error that names `--watcher poll` (which needs no descriptors); for
//! anything else it is logged once, as clearly, and what could not be watched (a file, or a
//! directory with its subtree) is polled every `poll_interval` instead ([`crate::poll::Coverage`]).
//!
//! The `kqueue` crate makes the queue; registration and reading are done here with `kevent`
//! itself (through `kqueue-sys`), because the crate's `Watcher` re-registers every descriptor it
//! holds on each `watch()` and looks each event's descriptor up by a linear search: both O(files
//! watched), per new file and per event. Here a new descriptor is one `kevent` call, events are
//! read in batches, and a descriptor maps to its path through a hash map. Closing a descriptor
//! removes its registration.
#![allow(unsafe_code)] // kevent(2)

use crate::dirdiff::{self, Listing, Step};
use crate::kqueue_flags::{self, Act};
use crate::poll::Coverage;
use crate::{DirFilter, WatchConfig, WatchError, WatchEvent, Watcher};
use crossbeam_channel::{Receiver, Sender};
use kqueue::{EventFilter, EventFlag, FilterFlag};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the thread looks at its stop flag and refresh requests.
const TICK: Duration = Duration::from_millis(100);

/// Events read per `kevent` call.
const BATCH: usize = 256;

// The flag values the decoder was written against are this platform's.
const _: () = {
    assert!(FilterFlag::NOTE_DELETE.bits() == kqueue_flags::NOTE_DELETE);
    assert!(FilterFlag::NOTE_WRITE.bits() == kqueue_flags::NOTE_WRITE);
    assert!(FilterFlag::NOTE_EXTEND.bits() == kqueue_flags::NOTE_EXTEND);
    assert!(FilterFlag::NOTE_ATTRIB.bits() == kqueue_flags::NOTE_ATTRIB);
    assert!(FilterFlag::NOTE_LINK.bits() == kqueue_flags::NOTE_LINK);
    assert!(FilterFlag::NOTE_RENAME.bits() == kqueue_flags::NOTE_RENAME);
    assert!(FilterFlag::NOTE_REVOKE.bits() == kqueue_flags::NOTE_REVOKE);
};

/// EMFILE, ENFILE: out of descriptors (for this process, or the whole system).
fn is_limit(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Registers descriptor `fd` with the queue `kq` for the vnode events the backend decodes.
fn register(kq: RawFd, fd: RawFd) -> std::io::Result<()> {
    let ident = usize::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    let change = kqueue_sys::kevent::new(
        ident,
        EventFilter::EVFILT_VNODE,
        EventFlag::EV_ADD | EventFlag::EV_CLEAR,
        FilterFlag::from_bits_truncate(kqueue_flags::WATCHED),
    );
    // SAFETY: one initialized change record and no event list; kevent only reads `change`.
    let r = unsafe { kqueue_sys::kevent(kq, &change, 1, std::ptr::null_mut(), 0, std::ptr::null()) };
    if r == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Waits up to `timeout` for events on `kq`; returns those read (at most [`BATCH`]).
fn wait(kq: RawFd, timeout: Duration, buf: &mut [kqueue_sys::kevent; BATCH]) -> std::io::Result<&[kqueue_sys::kevent]> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9, so it fits `c_long` on every target (32 bits on some).
        tv_nsec: libc::c_long::from(i32::try_from(timeout.subsec_nanos()).unwrap_or(0)),
    };
    let cap = kqueue_sys::EventListSize::try_from(BATCH).map_err(std::io::Error::other)?;
    // SAFETY: `buf` has room for `cap` records, which the kernel fills; `ts` outlives the call.
    let n = unsafe { kqueue_sys::kevent(kq, std::ptr::null(), 0, buf.as_mut_ptr(), cap, &ts) };
    match usize::try_from(n) {
        Ok(n) => Ok(&buf[..n.min(BATCH)]),
        Err(_) => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted { Ok(&buf[..0]) } else { Err(e) }
        }
    }
}

#[derive(Debug)]
pub(crate) struct KqueueWatcher {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    refresh_tx: Sender<PathBuf>,
}

struct State {
    kq: kqueue::Watcher,
    root: PathBuf,
    descend: DirFilter,
    /// The last listing of every watched directory.
    dirs: HashMap<PathBuf, Listing>,
    /// Every watched path (files and directories, relative to the root) and its descriptor.
    watched: BTreeMap<PathBuf, File>,
    by_fd: HashMap<RawFd, PathBuf>,
    /// What could not be watched for want of descriptors, polled instead.
    coverage: Coverage,
}

/// `O_EVTONLY`: a descriptor for event notifications only (macOS).
#[cfg(target_os = "macos")]
const EVENT_ONLY: i32 = 0x0000_8000;
#[cfg(not(target_os = "macos"))]
const EVENT_ONLY: i32 = 0;

impl KqueueWatcher {
    pub(crate) fn start(config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Self, WatchError> {
        let io = |source| WatchError::Io { path: config.root.clone(), source };
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            log::warn!("cannot raise the open-file limit: {e}; large trees may need --watcher poll");
        }
        let mut state = State {
            kq: kqueue::Watcher::new().map_err(io)?,
            root: config.root.clone(),
            descend: config.descend.clone(),
            dirs: HashMap::new(),
            watched: BTreeMap::new(),
            by_fd: HashMap::new(),
            coverage: Coverage::new(&config.root, config.descend.clone(), config.poll_interval),
        };
        // Watches are in place before start() returns: a change made after it is never missed.
        state.watch_tree(Path::new(""))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (refresh_tx, refresh_rx) = crossbeam_channel::bounded(64);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("watch-kqueue".into())
                .spawn(move || run(state, sink, refresh_rx, stop))
                .map_err(io)?
        };
        Ok(Self { thread: Some(thread), stop, refresh_tx })
    }
}

impl Watcher for KqueueWatcher {
    fn backend(&self) -> crate::Backend {
        crate::Backend::Kqueue
    }

    fn refresh(&self, path: &Path) {
        let _ = self.refresh_tx.try_send(path.to_path_buf());
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KqueueWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut state: State, sink: Sender<WatchEvent>, refresh: Receiver<PathBuf>, stop: Arc<AtomicBool>) {
    let mut buf =
        [kqueue_sys::kevent::new(0, EventFilter::EVFILT_VNODE, EventFlag::empty(), FilterFlag::empty()); BATCH];
    while !stop.load(Ordering::SeqCst) {
        let mut out = Vec::new();
        while let Ok(path) = refresh.try_recv() {
            state.descend.reload(&path);
            if let Err(e) = state.watch_tree(&path) {
                log::error!("{e}");
            }
            out.push(WatchEvent::RescanSubtree(path));
        }
        // Wake up for the next poll of what could not be watched, if it comes before a tick.
        let mut timeout = state.coverage.wait().map_or(TICK, |w| w.min(TICK));
        // Take whatever else is queued (without waiting) before acting on it.
        for _ in 0..64 {
            let evs: Vec<(RawFd, u32, bool)> = match wait(state.kq.as_raw_fd(), timeout, &mut buf) {
                Ok(evs) => evs
                    .iter()
                    .map(|e| {
                        let fd = RawFd::try_from(e.ident).unwrap_or(-1);
                        (fd, e.fflags.bits(), e.flags.contains(EventFlag::EV_ERROR))
                    })
                    .collect(),
                Err(e) => {
                    // The queue itself failed (not one watch): watching is over. The consumer
                    // rescans once and learns, from the closed channel, that nothing is watched.
                    log::error!("kqueue watcher: reading the queue failed: {e}; watching stops");
                    let _ = sink.send(WatchEvent::Overflow);
                    return;
                }
            };
            let full = evs.len() == BATCH;
            for (fd, fflags, error) in evs {
                state.handle(fd, fflags, error, &mut out);
            }
            if !full {
                break;
            }
            timeout = Duration::ZERO;
        }
        out.extend(state.coverage.scan_if_due().into_iter().map(WatchEvent::Dirty));
        let gone = out.contains(&WatchEvent::RootGone);
        for ev in out {
            if sink.send(ev).is_err() {
                return;
            }
        }
        if gone {
            return;
        }
    }
}

impl State {
    /// One event: `fflags` raised on descriptor `fd`, or (`error`) a failed registration.
    fn handle(&mut self, fd: RawFd, fflags: u32, error: bool, out: &mut Vec<WatchEvent>) {
        // A descriptor closed since the event was queued (its path unwatched): nothing to do.
        let Some(rel) = self.by_fd.get(&fd).cloned() else { return };
        if error {
            log::warn!("kqueue watcher: an event failed at {}; rescanning it", rel.display());
            out.push(WatchEvent::RescanSubtree(rel));
            return;
        }
        let is_dir = self.dirs.contains_key(&rel);
        match kqueue_flags::decode(fflags, is_dir, rel.as_os_str().is_empty()) {
            Act::RootGone => out.push(WatchEvent::RootGone),
            // Gone: the parent's NOTE_WRITE lists it as gone (or moved) and unwatches it.
            Act::Settled => out.push(WatchEvent::Settled(rel)),
            Act::Unlinked => out.push(WatchEvent::Unlinked(rel)),
            Act::Relist => self.relist(&rel, out),
            Act::Dirty => out.push(WatchEvent::Dirty(rel)),
            Act::Nothing => {}
        }
    }

    /// A directory changed: list it, diff with its last listing, act on the differences.
    fn relist(&mut self, dir: &Path, out: &mut Vec<WatchEvent>) {
        let new = match dirdiff::list(&crate::join(&self.root, dir)) {
            Ok(l) => l,
            Err(_) => {
                out.push(WatchEvent::RescanSubtree(dir.to_path_buf()));
                return;
            }
        };
        let old = self.dirs.insert(dir.to_path_buf(), new.clone()).unwrap_or_default();
        for step in dirdiff::plan(dir, &dirdiff::diff(&old, &new)) {
            match step {
                Step::Unwatch(p) => self.unwatch_tree(&p),
                Step::Watch { path, is_dir: true } => {
                    if let Err(e) = self.watch_tree(&path) {
                        log::error!("{e}");
                    }
                }
                Step::Watch { path, is_dir: false } => {
                    if let Err(e) = self.watch_one(&path, false) {
                        log::error!("{e}");
                    }
                }
                Step::Report(ev) => out.push(ev),
            }
        }
    }

    /// Watches `rel` (a directory the filter accepts) and everything beneath it.
    fn watch_tree(&mut self, rel: &Path) -> Result<(), WatchError> {
        if !rel.as_os_str().is_empty() && !self.descend.descend(rel) {
            return Ok(());
        }
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            self.watch_one(&dir, true)?;
            let Some(listing) = self.dirs.get(&dir).cloned() else { continue };
            for (name, l) in listing {
                let child = if dir.as_os_str().is_empty() { PathBuf::from(&name) } else { dir.join(&name) };
                if l.is_link {
                    continue;
                }
                if l.is_dir {
                    if self.descend.descend(&child) {
                        stack.push(child);
                    }
                } else {
                    self.watch_one(&child, false)?;
                }
            }
        }
        Ok(())
    }

    fn open(abs: &Path) -> std::io::Result<Option<File>> {
        if std::fs::symlink_metadata(abs)?.file_type().is_symlink() {
            return Ok(None);
        }
        std::fs::OpenOptions::new().read(true).custom_flags(EVENT_ONLY).open(abs).map(Some)
    }

    fn watch_one(&mut self, rel: &Path, is_dir: bool) -> Result<(), WatchError> {
        let abs = crate::join(&self.root, rel);
        self.unwatch_one(rel);
        let kq = self.kq.as_raw_fd();
        let added = Self::open(&abs).and_then(|f| match f {
            Some(f) => register(kq, f.as_raw_fd()).map(|()| Some(f)),
            None => Ok(None),
        });
        match added {
            Ok(None) => Ok(()),
            Ok(Some(file)) => {
                self.by_fd.insert(file.as_raw_fd(), rel.to_path_buf());
                self.watched.insert(rel.to_path_buf(), file);
                if is_dir {
                    match dirdiff::list(&abs) {
                        Ok(l) => {
                            self.dirs.insert(rel.to_path_buf(), l);
                        }
                        Err(e) if rel.as_os_str().is_empty() => return Err(WatchError::Io { path: abs, source: e }),
                        Err(_) => {}
                    }
                }
                Ok(())
            }
            // A file we may not open is polled (its `lstat` still works); running out of
            // descriptors below the root, too (see `watch_failure`).
            Err(e) if crate::is_denied(&e) && !is_dir && !rel.as_os_str().is_empty() => {
                log::debug!("cannot watch {}: {e}; polling it instead", abs.display());
                self.coverage.cover(rel);
                Ok(())
            }
            Err(e) => crate::watch_failure(rel, abs, e, &mut self.coverage, is_limit, |path| {
                WatchError::DescriptorLimit { path }
            }),
        }
    }

    fn unwatch_one(&mut self, rel: &Path) {
        if let Some(file) = self.watched.remove(rel) {
            self.by_fd.remove(&file.as_raw_fd());
            // Dropping the file closes the descriptor, which removes its registration.
        }
        self.dirs.remove(rel);
    }

    fn unwatch_tree(&mut self, rel: &Path) {
        self.coverage.uncover_tree(rel);
        let gone: Vec<PathBuf> = self
            .watched
            .range(rel.to_path_buf()..)
            .map(|(p, _)| p.clone())
            .take_while(|p| p.starts_with(rel))
            .collect();
        for p in gone {
            self.unwatch_one(&p);
        }
    }
}
