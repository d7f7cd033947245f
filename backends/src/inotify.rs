//! Linux inotify backend.
//!
//! inotify watches single directories, so recursion is ours to do, and it has three classic traps
//! that this module handles explicitly:
//! - **The creation race**: files written into a new directory before its watch lands produce no
//!   events. A new directory is therefore watched *first* and listed *second*, at every level of
//!   its subtree (`add_tree`: a subdirectory found while listing is watched, then listed, and so
//!   on down), then reported whole ([`WatchEvent::RescanSubtree`]), so every entry is seen by the
//!   listing or by a watch. Listing the whole subtree before adding any watch lost the files of
//!   directories made in between (issue 11 item 6).
//! - **Renames come in halves**: `IN_MOVED_FROM` and `IN_MOVED_TO` share a cookie. Paired halves
//!   rename our watch bookkeeping; a lone `FROM` is a deletion (its watches are dropped), a lone
//!   `TO` is a creation to scan.
//! - **The queue is finite**: `IN_Q_OVERFLOW` becomes [`WatchEvent::Overflow`], after which the
//!   watches are re-walked so that directories created during the flood are watched too.
//!
//! Watches are finite too (`max_user_watches`): the root unwatchable is an error; any other
//! directory is logged once (with how to raise the limit) and polled instead
//! ([`crate::poll::Coverage`]), so a tree that outgrows the limit keeps syncing, more slowly.

use crate::poll::Coverage;
use crate::{DirFilter, WatchConfig, WatchError, WatchEvent, Watcher, walk};
use crossbeam_channel::{Receiver, Sender};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const INOTIFY: Token = Token(0);
const WAKE: Token = Token(1);

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
        | WatchMask::ONLYDIR
}

#[derive(Debug)]
pub(crate) struct InotifyWatcher {
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    refresh_tx: Sender<PathBuf>,
}

struct State {
    inotify: Inotify,
    root: PathBuf,
    descend: DirFilter,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Directories left unwatched by the watch limit, polled instead.
    coverage: Coverage,
}

/// Hints gathered from one drain of the inotify queue, deduplicated, in order.
#[derive(Default)]
struct Batch {
    overflow: bool,
    root_gone: bool,
    events: Vec<WatchEvent>,
    seen: HashSet<WatchEvent>,
}

impl Batch {
    fn push(&mut self, ev: WatchEvent) {
        if self.seen.insert(ev.clone()) {
            self.events.push(ev);
        }
    }
}

impl std::hash::Hash for WatchEvent {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let WatchEvent::Dirty(p)
        | WatchEvent::Settled(p)
        | WatchEvent::Writing(p)
        | WatchEvent::Unlinked(p)
        | WatchEvent::RescanSubtree(p) = self
        {
            p.hash(state);
        }
    }
}

impl InotifyWatcher {
    pub(crate) fn start(config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Self, WatchError> {
        let io = |source| WatchError::Io { path: config.root.clone(), source };
        let inotify = Inotify::init().map_err(io)?;
        let poll = Poll::new().map_err(io)?;
        poll.registry().register(&mut SourceFd(&inotify.as_raw_fd()), INOTIFY, Interest::READABLE).map_err(io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io)?);
        let mut state = State {
            inotify,
            root: config.root.clone(),
            descend: config.descend.clone(),
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            coverage: Coverage::new(&config.root, config.descend.clone(), config.poll_interval),
        };
        // Watches are in place before start() returns: a change made after it is never missed.
        state.add_tree(Path::new(""))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (refresh_tx, refresh_rx) = crossbeam_channel::bounded(64);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("watch-inotify".into())
                .spawn(move || run(state, poll, sink, refresh_rx, stop))
                .map_err(io)?
        };
        Ok(Self { thread: Some(thread), waker, stop, refresh_tx })
    }
}

impl Watcher for InotifyWatcher {
    fn backend(&self) -> crate::Backend {
        crate::Backend::Inotify
    }

    fn refresh(&self, path: &Path) {
        if self.refresh_tx.try_send(path.to_path_buf()).is_err() {
            // The queue of refresh requests is full: the thread is far behind, and each pending
            // request already re-walks; a later one covers this path too only if it is the root.
            let _ = self.refresh_tx.try_send(PathBuf::new());
        }
        let _ = self.waker.wake();
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InotifyWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut state: State, mut poll: Poll, sink: Sender<WatchEvent>, refresh: Receiver<PathBuf>, stop: Arc<AtomicBool>) {
    let mut events = Events::with_capacity(16);
    let mut buf = vec![0u8; 64 * 1024];
    // The kernel queues the two halves of a rename back to back, so at most one FROM half waits
    // for its TO: the very next event either is that TO, or proves it will never come.
    let mut pending_from: Option<(u32, PathBuf, bool)> = None;
    while !stop.load(Ordering::SeqCst) {
        // Unwatched directories (the watch limit) are polled: wake up for them.
        let timeout = state.coverage.wait().map(|w| w.max(Duration::from_millis(1)));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            log::error!("inotify watcher: poll failed: {e}; reporting overflow and stopping");
            let _ = sink.send(WatchEvent::Overflow);
            return;
        }
        let mut batch = Batch::default();
        while let Ok(path) = refresh.try_recv() {
            state.descend.reload(&path);
            state.add_tree_and_report(&mut batch, &path);
        }
        loop {
            match state.inotify.read_events(&mut buf) {
                Ok(evs) => {
                    let evs: Vec<_> = evs.map(|e| (e.wd, e.mask, e.cookie, e.name.map(|n| n.to_os_string()))).collect();
                    for (wd, mask, cookie, name) in evs {
                        state.handle(&mut batch, &mut pending_from, wd, mask, cookie, name);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("inotify watcher: read failed: {e}; reporting overflow");
                    batch.overflow = true;
                    break;
                }
            }
        }
        // The queue is empty and no TO followed: the entry left the tree.
        if let Some(from) = pending_from.take() {
            state.moved_away(&mut batch, from);
        }
        for p in state.coverage.scan_if_due() {
            batch.push(WatchEvent::Dirty(p));
        }
        let out = if batch.root_gone {
            vec![WatchEvent::RootGone]
        } else if batch.overflow {
            // The overflow makes the engine rescan everything: no need to say what was found.
            if let Err(e) = state.add_tree(Path::new("")) {
                log::error!("{e}");
            }
            vec![WatchEvent::Overflow]
        } else {
            batch.events
        };
        for ev in out {
            if sink.send(ev).is_err() {
                return; // the consumer is gone
            }
        }
    }
}

impl State {
    fn handle(
        &mut self,
        batch: &mut Batch,
        pending_from: &mut Option<(u32, PathBuf, bool)>,
        wd: WatchDescriptor,
        mask: EventMask,
        cookie: u32,
        name: Option<std::ffi::OsString>,
    ) {
        // A FROM half not followed by its TO: the entry left the tree (or went into a directory
        // we do not watch yet, whose own scan will find it). Settle it now, while its name still
        // means the directory that moved, before a later event reuses the name.
        if let Some(p) = pending_from.take_if(|(c, _, _)| !(mask.contains(EventMask::MOVED_TO) && *c == cookie)) {
            self.moved_away(batch, p);
        }
        if mask.contains(EventMask::Q_OVERFLOW) {
            batch.overflow = true;
            return;
        }
        let Some(dir) = self.by_wd.get(&wd).cloned() else { return };
        if mask.contains(EventMask::IGNORED) {
            if self.by_path.get(&dir) == Some(&wd) {
                self.by_path.remove(&dir);
            }
            self.by_wd.remove(&wd);
            if dir.as_os_str().is_empty() {
                batch.root_gone = true;
            }
            return;
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT) {
            // For a subdirectory, the parent's DELETE/MOVED_FROM event says what to rescan.
            if dir.as_os_str().is_empty() {
                batch.root_gone = true;
            }
            return;
        }
        let path = match &name {
            Some(n) => dir.join(n),
            None => dir,
        };
        let is_dir = mask.contains(EventMask::ISDIR);
        if mask.contains(EventMask::MOVED_FROM) {
            *pending_from = Some((cookie, path, is_dir));
            return;
        }
        if mask.contains(EventMask::MOVED_TO) {
            let from = pending_from.take().map(|(_, from, from_dir)| (from, from_dir));
            self.moved_in(batch, from, path, is_dir);
            return;
        }
        if is_dir && mask.contains(EventMask::CREATE) {
            self.new_dir(batch, path);
            return;
        }
        // A write is followed by more writes until the writer closes the file; a close after
        // writing or a chmod is complete in itself; a delete is often one of many. A creation
        // may be a link or a symlink, which no close follows.
        if mask.contains(EventMask::DELETE) {
            batch.push(WatchEvent::Unlinked(path));
        } else if mask.intersects(EventMask::CLOSE_WRITE | EventMask::ATTRIB) {
            batch.push(WatchEvent::Settled(path));
        } else if mask.contains(EventMask::MODIFY) && !is_dir {
            batch.push(WatchEvent::Writing(path));
        } else {
            batch.push(WatchEvent::Dirty(path));
        }
    }

    /// The TO half of a rename to `path`: of `from` (and whether it was a directory) when its
    /// FROM half came just before, else from outside the tree.
    fn moved_in(&mut self, batch: &mut Batch, from: Option<(PathBuf, bool)>, path: PathBuf, is_dir: bool) {
        match from {
            Some((from, true)) => {
                if self.descend.descend(&path) {
                    self.rename_tree(&from, &path);
                    // Our map may not have known the whole subtree under its old name (it
                    // moved in and out before we looked): make sure all of it is watched.
                    // (The rescan of `path` below reads whatever this finds.)
                    if let Err(e) = self.add_tree(&path) {
                        log::error!("{e}");
                    }
                } else {
                    self.remove_tree(&from);
                }
                batch.push(WatchEvent::RescanSubtree(from));
                batch.push(WatchEvent::RescanSubtree(path));
            }
            Some((from, false)) => {
                batch.push(WatchEvent::Settled(from));
                batch.push(WatchEvent::Settled(path));
            }
            None if is_dir => self.new_dir(batch, path),
            None => batch.push(WatchEvent::Settled(path)),
        }
    }

    /// The FROM half of a rename whose TO will not come.
    fn moved_away(&mut self, batch: &mut Batch, (_, from, is_dir): (u32, PathBuf, bool)) {
        if is_dir {
            self.remove_tree(&from);
            batch.push(WatchEvent::RescanSubtree(from));
        } else {
            batch.push(WatchEvent::Settled(from));
        }
    }

    /// A directory appeared: watch it and everything beneath it (each watched, then listed), then
    /// have it read whole by the engine: the rescan comes after every watch is in place.
    fn new_dir(&mut self, batch: &mut Batch, path: PathBuf) {
        if self.descend.descend(&path)
            && let Err(e) = self.add_tree(&path)
        {
            log::error!("{e}");
        }
        batch.push(WatchEvent::RescanSubtree(path));
    }

    fn add_one(&mut self, rel: &Path) -> Result<(), WatchError> {
        let abs = crate::join(&self.root, rel);
        match self.inotify.watches().add(&abs, mask()) {
            Ok(wd) => {
                if let Some(old) = self.by_path.insert(rel.to_path_buf(), wd.clone())
                    && old != wd
                {
                    self.by_wd.remove(&old);
                }
                // The kernel hands back the existing descriptor for a directory it already
                // watches: one that moved here before we saw the move. Its old name is stale, and
                // must not keep a claim on the descriptor (a late "moved away" for the old name
                // would otherwise remove the watch from under the directory's new name).
                if let Some(stale) = self.by_wd.insert(wd.clone(), rel.to_path_buf())
                    && stale != rel
                    && self.by_path.get(&stale) == Some(&wd)
                {
                    self.by_path.remove(&stale);
                }
                Ok(())
            }
            Err(e) => crate::watch_failure(
                rel,
                abs,
                e,
                &mut self.coverage,
                |e| e.raw_os_error() == Some(libc_enospc()),
                |path| WatchError::WatchLimit { path },
            ),
        }
    }

    /// Watches `rel` and every directory beneath it, each one watched *before* it is listed: an
    /// entry made in a directory before its watch is in the listing, one made after is reported
    /// by the watch. Returns the directories that were not watched before (parents before
    /// children), whose content nobody has reported yet.
    fn add_tree(&mut self, rel: &Path) -> Result<Vec<PathBuf>, WatchError> {
        let mut fresh = Vec::new();
        let mut first_err = None;
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let known = self.by_path.contains_key(&dir);
            match self.add_one(&dir) {
                Ok(()) => {}
                Err(e) if dir == rel => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
            if !known {
                fresh.push(dir.clone());
            }
            stack.extend(walk::child_dirs(&self.root, &dir, &self.descend));
        }
        first_err.map_or(Ok(fresh), Err)
    }

    /// [`Self::add_tree`], and every directory it found unwatched reported for the engine to
    /// read (only the topmost of a fresh subtree: a rescan covers what is beneath).
    fn add_tree_and_report(&mut self, batch: &mut Batch, rel: &Path) {
        match self.add_tree(rel) {
            Ok(fresh) => {
                let all: HashSet<&Path> = fresh.iter().map(PathBuf::as_path).collect();
                for d in &fresh {
                    if d == rel || !d.parent().is_some_and(|p| all.contains(p)) {
                        batch.push(WatchEvent::RescanSubtree(d.clone()));
                    }
                }
            }
            Err(e) => log::error!("{e}"),
        }
    }

    fn remove_tree(&mut self, rel: &Path) {
        self.coverage.uncover_tree(rel);
        let gone: Vec<PathBuf> = self.by_path.keys().filter(|p| p.starts_with(rel)).cloned().collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p)
                && self.by_wd.get(&wd) == Some(&p)
            {
                self.by_wd.remove(&wd);
                let _ = self.inotify.watches().remove(wd);
            }
        }
    }

    fn rename_tree(&mut self, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = self.by_path.keys().filter(|p| p.starts_with(from)).cloned().collect();
        for old in moved {
            let Ok(suffix) = old.strip_prefix(from) else { continue };
            let new = if suffix.as_os_str().is_empty() { to.to_path_buf() } else { to.join(suffix) };
            if let Some(wd) = self.by_path.remove(&old) {
                self.by_wd.insert(wd.clone(), new.clone());
                self.by_path.insert(new, wd);
            }
        }
    }
}

/// `ENOSPC`, which `inotify_add_watch` returns when `max_user_watches` is reached.
const fn libc_enospc() -> i32 {
    28
}
