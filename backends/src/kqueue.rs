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
//! Descriptors are the limit: `RLIMIT_NOFILE` is raised to its hard limit at start, and running
//! out is a clear error that names `--watcher poll` (which needs no descriptors).

use crate::dirdiff::{self, Listing, Step};
use crate::{DirFilter, WatchConfig, WatchError, WatchEvent, Watcher};
use crossbeam_channel::{Receiver, Sender};
use kqueue::{EventData, EventFilter, FilterFlag, Ident, Vnode};
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

fn flags() -> FilterFlag {
    FilterFlag::NOTE_DELETE
        | FilterFlag::NOTE_WRITE
        | FilterFlag::NOTE_EXTEND
        | FilterFlag::NOTE_ATTRIB
        | FilterFlag::NOTE_RENAME
        | FilterFlag::NOTE_REVOKE
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
    limit_reported: bool,
    /// Descriptors were added since the last `kevent` registration.
    unregistered: bool,
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
            limit_reported: false,
            unregistered: false,
        };
        // Watches are in place before start() returns: a change made after it is never missed.
        state.watch_tree(Path::new(""))?;
        state.kq.watch().map_err(io)?;
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
    while !stop.load(Ordering::SeqCst) {
        let mut out = Vec::new();
        while let Ok(path) = refresh.try_recv() {
            if let Err(e) = state.watch_tree(&path) {
                log::error!("{e}");
            }
            out.push(WatchEvent::RescanSubtree(path));
        }
        if let Some(ev) = state.kq.poll(Some(TICK)) {
            state.handle(ev, &mut out);
            // Take whatever else is queued before acting on it.
            while let Some(ev) = state.kq.poll(Some(Duration::ZERO)) {
                state.handle(ev, &mut out);
            }
        }
        // The crate registers every descriptor it holds at once: only when some were added.
        if std::mem::take(&mut state.unregistered)
            && let Err(e) = state.kq.watch()
        {
            log::error!("kqueue watcher: cannot register new watches: {e}; reporting overflow");
            out.push(WatchEvent::Overflow);
        }
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
    fn handle(&mut self, ev: kqueue::Event, out: &mut Vec<WatchEvent>) {
        let Ident::Fd(fd) = &ev.ident else { return };
        let Some(rel) = self.by_fd.get(fd).cloned() else { return };
        let EventData::Vnode(what) = ev.data else {
            if let EventData::Error(e) = ev.data {
                log::warn!("kqueue watcher: {e} at {}; rescanning it", rel.display());
                out.push(WatchEvent::RescanSubtree(rel));
            }
            return;
        };
        let is_dir = self.dirs.contains_key(&rel);
        let root = rel.as_os_str().is_empty();
        match what {
            Vnode::Delete | Vnode::Rename | Vnode::Revoke if root => out.push(WatchEvent::RootGone),
            // The parent's NOTE_WRITE lists it as gone (or moved) and unwatches it.
            Vnode::Delete | Vnode::Rename | Vnode::Revoke => out.push(WatchEvent::Settled(rel)),
            Vnode::Write | Vnode::Link if is_dir => self.relist(&rel, out),
            Vnode::Write | Vnode::Extend | Vnode::Truncate => out.push(WatchEvent::Dirty(rel)),
            Vnode::Attrib | Vnode::CloseWrite => out.push(WatchEvent::Settled(rel)),
            _ => {}
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
        if !rel.as_os_str().is_empty() && !(self.descend)(rel) {
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
                    if (self.descend)(&child) {
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
        let added = Self::open(&abs).and_then(|f| match f {
            Some(f) => self.kq.add_file(&f, EventFilter::EVFILT_VNODE, flags()).map(|()| Some(f)),
            None => Ok(None),
        });
        match added {
            Ok(None) => Ok(()),
            Ok(Some(file)) => {
                self.by_fd.insert(file.as_raw_fd(), rel.to_path_buf());
                self.unregistered = true;
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
            Err(e) => crate::watch_failure(
                rel,
                abs,
                e,
                &mut self.limit_reported,
                // EMFILE, ENFILE: out of descriptors.
                |e| matches!(e.raw_os_error(), Some(24 | 23)),
                |path| WatchError::DescriptorLimit { path },
            ),
        }
    }

    fn unwatch_one(&mut self, rel: &Path) {
        if let Some(file) = self.watched.remove(rel) {
            let _ = self.kq.remove_file(&file, EventFilter::EVFILT_VNODE);
            self.by_fd.remove(&file.as_raw_fd());
            // Dropping the file closes the descriptor.
        }
        self.dirs.remove(rel);
    }

    fn unwatch_tree(&mut self, rel: &Path) {
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
