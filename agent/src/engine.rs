//! The engine: the single owner of one sync root.
//!
//! One thread per root owns the index (what we know of every path), the ignore rules, and the
//! state of every peer session attached to the root. The watcher and the network thread talk to
//! it through bounded channels; it alone reads the tree to find local changes, asks peers for
//! content, and changes the disk (through the [executor](crate::executor)).
//!
//! Flow of a local change: a watcher hint marks a path dirty; after a short debounce the path is
//! re-stat'ed (and hashed only if size/mtime/inode moved); a real change bumps our counter in the
//! path's version vector and is broadcast as an `Update`. Flow of a remote change: the peer's
//! entry is [reconciled](mirror_core::reconcile) against ours; content is requested, streamed into a
//! temp file, verified by hash, and renamed into place after checking that the user did not
//! change the path meanwhile. What we write is recorded with its stat before the watcher reports
//! it, so the report finds nothing new: no echo.

use crate::disk::RealDisk;
use crate::executor::{self, ExecError};
use crate::fold::Folding;
use crate::index::{
    BY_CONTENT_MIN, Index, LocalEntry, S_IFDIR, S_IFMT, Stat, Tree, known_hash, order_for_apply, subtree,
};
use crate::link::{ConnId, NetHandle, ToEngine, ToNet};
use crate::paths::{abs, rel_path, to_rel};
use crate::rules::{Rules, is_temp};
use crate::scan::Seen;
use crate::status::{Status, unix_now};
use crate::store::{Fingerprint, Store};
use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use mirror_backends::{Backend, Checkpoint, WatchConfig, WatchEvent, Watcher};
use mirror_core::clock::Clock;
use mirror_core::conflict::{conflict_path_of, numbered};
use mirror_core::debounce::Debounce;
use mirror_core::disk::Disk;
use mirror_core::reconcile::{Action, reconcile};
use mirror_protocol::{
    Entry, Hash, Kind, MAX_BATCH_ENTRIES, Message, RelPath, ReplicaId, Timestamp, VersionVector, Violation,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Requests in flight per session: enough to keep a fast link busy with small files.
const MAX_IN_FLIGHT: usize = 64;
/// How often the root's identity is checked on its own (and before any deletion of ours is sent).
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a watcher's replayed event history may take before a full scan is done instead.
const REPLAY_LIMIT: Duration = Duration::from_secs(60);
/// How often a watcher checkpoint is written when no entry changed with it.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How long a deleted file waits in the stash for a create of the same content. The other half
/// of a rename comes in the same batch, or a few messages later for a large directory.
const STASH_FOR: Duration = Duration::from_secs(2);
/// How long a peer's new file whose content is here under another name waits for the delete of
/// that name (the other half of a rename) before the content is copied (files of at least
/// [`BY_CONTENT_MIN`] bytes; smaller ones are simply sent).
const MOVE_WAIT: Duration = Duration::from_millis(500);
/// How long to wait before retrying a failed write (full disk, permission)...
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// ...doubling with each failure in a row, up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Files from this size on are requested only if they fit in the free space (one `statvfs` a
/// request would be a cost on every small file; a full disk is still handled as it fills).
const SPACE_CHECK_FROM: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub root: PathBuf,
    pub host: String,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    pub backend: Backend,
    pub poll_interval: Duration,
    pub debug_prefix: Option<Vec<u8>>,
    /// Where the pair's persistent base lives.
    pub state_dir: PathBuf,
    /// Resume a pair that halted for safety, accepting the root as it is now.
    pub resume: bool,
    /// Where to report progress for `status` (a client pair's engine).
    pub status: Option<Status>,
    /// The end-to-end tests' hidden flags (folding, scan delay, watcher history).
    pub hooks: crate::cli::TestHooks,
}

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    pub tx: Sender<ToEngine>,
    pub thread: JoinHandle<Result<(), String>>,
    /// The pair's replica id (persistent).
    pub replica: ReplicaId,
    /// How many peer sessions are attached now (a server may restart an engine nobody uses).
    pub attached: Arc<AtomicUsize>,
}

/// Starts the engine thread for `cfg.root`. Returns once the root is watched; the initial scan
/// runs on the engine thread before it serves any peer.
pub fn spawn(cfg: EngineConfig, net: NetHandle) -> anyhow::Result<EngineHandle> {
    let rules = Rules::new(&cfg.root, &cfg.includes, &cfg.excludes)?;
    let (mut store, loaded) = Store::open(&cfg.state_dir, &cfg.root)?;
    let resume_hint = format!(
        "the pair {} is halted for safety. Check the directory; to accept it as it is now (and let \
         its state propagate), restart with --resume",
        cfg.root.display()
    );
    if let Some(reason) = &loaded.halted {
        if !cfg.resume {
            return Err(crate::store::Halted { reason: reason.clone(), hint: resume_hint }.into());
        }
        log::warn!("resuming {} (halted earlier: {reason})", cfg.root.display());
        store.set_halted(None)?;
    }
    let disk = RealDisk::new(cfg.root.clone());
    let root_id = disk.root_identity()?;
    if loaded.existed && loaded.root_id.is_some_and(|id| id != root_id) && !cfg.resume {
        let reason = format!(
            "sync root {} is not the directory that was synced before (another file system or a \
             re-created directory)",
            cfg.root.display()
        );
        store.set_halted(Some(&reason))?;
        return Err(crate::store::Halted { reason, hint: resume_hint }.into());
    }
    store.set_root_id(root_id)?;
    let me = loaded.replica;
    let mine = loaded.index.values().map(|l| l.entry.version.get(me).max(l.seq)).max().unwrap_or(0);
    // Whatever a crash left in the agent's own directory (temp and stash files) goes first.
    match executor::clean_agent_dir(&cfg.root) {
        Ok(0) => {}
        Ok(n) => log::info!("{}: removed {n} leftover temp files of an earlier run", cfg.root.display()),
        Err(e) => log::warn!("{}: cannot clean up temp files: {e}", cfg.root.display()),
    }
    let folding = cfg.hooks.folding.unwrap_or_else(|| Folding::of(&cfg.root));
    if folding.active() {
        log::info!(
            "{}: this file system treats names differing only in {} as one; such names from peers \
             are reported as collisions, never synced twice",
            cfg.root.display(),
            match (folding.case, folding.unicode) {
                (true, true) => "case or Unicode normalization",
                (true, false) => "case",
                _ => "Unicode normalization",
            }
        );
    }
    let patterns_key = {
        let mut h = blake3::Hasher::new();
        for (tag, pats) in [(b"i", &cfg.includes), (b"e", &cfg.excludes)] {
            for pat in pats {
                h.update(tag).update(pat.as_bytes()).update(&[0]);
            }
        }
        *h.finalize().as_bytes()
    };
    // The watcher may replay what changed while we were stopped, instead of a full scan, only
    // from a base that is whole and trusted: not halted, not `--resume`d, the same rules (paths
    // ignored last time are nowhere in the history we would replay). A `.gitignore` edited
    // while stopped is in that history and is handled as it would be live.
    let resume = match &loaded.checkpoint {
        Some(c)
            if loaded.existed
                && !cfg.resume
                && loaded.rules
                    == Some(rules_fingerprint(&patterns_key, &HashSet::new(), &cfg.root, &loaded.index)) =>
        {
            Some(Checkpoint(c.clone()))
        }
        _ => None,
    };
    let (clock, reserve) = Clock::start(me, loaded.clock_start, mine);
    store.reserve_clock(reserve)?;
    let rules = Arc::new(Mutex::new(rules));
    let (watch_tx, watch_rx) = bounded(4096);
    let filter_rules = rules.clone();
    let wcfg = WatchConfig {
        root: cfg.root.clone(),
        descend: Arc::new(move |rel: &Path| {
            let mut r = filter_rules.lock().unwrap_or_else(PoisonError::into_inner);
            !is_temp(rel) && (r.has_includes() || !r.is_ignored(rel, true))
        }),
        poll_interval: cfg.poll_interval,
        resume,
        history: cfg.hooks.history.clone(),
    };
    let watcher = mirror_backends::start(cfg.backend, wcfg, watch_tx)?;
    // Small on purpose: a data chunk is up to 256 KiB, so this bounds what a fast sender can
    // queue in front of a slow disk to a few MiB.
    let (tx, rx) = bounded(16);
    let attached = Arc::new(AtomicUsize::new(0));
    let engine = Engine {
        attached: attached.clone(),
        root: cfg.root.clone(),
        host: cfg.host.clone(),
        debug_prefix: cfg.debug_prefix.clone(),
        intents: loaded.intents,
        index: {
            let key = |p: &RelPath| folding.key(p);
            Tree::new(loaded.index, folding.active().then_some(&key as &mirror_core::tree::FoldKey<'_>))
        },
        store,
        unsaved: BTreeSet::new(),
        clock,
        root_id,
        disk,
        root_checked: Instant::now(),
        rules,
        net,
        sessions: BTreeMap::new(),
        debounce: Debounce::new(cfg.hooks.scan_delay),
        journaled: false,
        retries: Vec::new(),
        deferred: Vec::new(),
        outbox: Vec::new(),
        next_id: 1,
        fetching: HashMap::new(),
        stash: HashMap::new(),
        waited_move: HashSet::new(),
        halted: None,
        initial: !loaded.existed,
        accept_empty: cfg.resume,
        conflicts: 0,
        rules_changed: false,
        refresh: Vec::new(),
        patterns_key,
        status: cfg.status,
        folding,
        name_max: crate::paths::name_limit(&cfg.root),
        fetch_fold: HashMap::new(),
        collided: HashSet::new(),
        checkpoint: None,
        checkpoint_due: Instant::now(),
        told: HashSet::new(),
        told_local: HashSet::new(),
        attempts: HashMap::new(),
        shape_changed: false,
    };
    let name = format!("engine {}", cfg.root.display());
    let thread = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || engine.run(rx, watcher, watch_rx))?;
    Ok(EngineHandle { tx, thread, replica: me, attached })
}

#[derive(Debug)]
enum Purpose {
    /// Put the content at its path; first move our own version aside if we lost a conflict.
    Apply { keep_local_copy: bool },
    /// Keep the peer's losing version as a conflict copy at this path.
    KeepRemoteCopy { at: RelPath },
}

/// A transfer under way or queued for a path.
#[derive(Debug)]
struct Pending {
    conn: ConnId,
    id: u64,
    version: VersionVector,
    /// Entries of this version (or older) other sessions offered while it was under way: not
    /// fetched twice, but not forgotten either. When the transfer ends, however it ends, they
    /// are looked at again (and come to nothing if it was installed).
    also: Vec<(ConnId, Entry)>,
}

#[derive(Debug)]
struct Fetch {
    entry: Entry,
    purpose: Purpose,
    /// Our version of the path when the transfer was decided. The install happens only if it is
    /// still the one: a local change scanned meanwhile means deciding again, never installing
    /// over it (issue 11, item 3).
    decided: Option<VersionVector>,
    tmp: Option<<RealDisk as Disk>::Temp>,
    hasher: blake3::Hasher,
    received: u64,
    failed: bool,
}

#[derive(Debug)]
struct Session {
    peer_host: String,
    peer_replica: ReplicaId,
    /// What we asked the peer for: its changes after this counter of its (0: everything).
    asked_since: u64,
    /// We answered the peer's `IndexFrom`: from now on it gets our updates.
    ready: bool,
    /// The peer's index (its answer to our `IndexFrom`) is complete, and how many entries it had.
    index_done: bool,
    index_entries: usize,
    /// The peer's change counter its messages so far cover (valid once `index_done`).
    have: u64,
    /// Our change counter the messages we sent it so far cover.
    told: u64,
    in_flight: HashMap<u64, Fetch>,
    queued: VecDeque<(u64, Fetch)>,
    /// The peer's entries that our rules ignored, offered again when the rules change (a
    /// `.gitignore` arriving after the files it un-ignores, for instance).
    skipped: BTreeMap<RelPath, Entry>,
    /// The peer's entries that cannot be applied here now (a symlink or a file where their
    /// path needs a directory): refused alone, tried again when our tree changes shape. They
    /// hold the peer's high-water mark back, so a later session offers them again.
    refused: BTreeMap<RelPath, Entry>,
}

struct Engine {
    /// Sessions attached, for [`EngineHandle::attached`].
    attached: Arc<AtomicUsize>,
    root: PathBuf,
    host: String,
    debug_prefix: Option<Vec<u8>>,
    /// What we know of each path, with its lookups (by inode, by content, by folded name).
    index: Tree,
    /// Changes begun for peers before the last stop whose outcome was never journaled (the
    /// process died in between): the start-up scan takes each whose path holds exactly it as
    /// that peer's version ([`Engine::attempt`]).
    intents: BTreeMap<RelPath, Entry>,
    store: Store,
    /// Paths whose index entry changed since the last journal write.
    unsaved: BTreeSet<RelPath>,
    /// Entries were journaled before a send since the last [`persist`](Self::persist).
    journaled: bool,
    /// This replica's clock (its changes' counters, reserved durably before use).
    clock: Clock,
    /// Device and inode of the root, checked now and then: a different one means the root was
    /// replaced (unmounted, re-created), and the pair halts.
    root_id: (u64, u64),
    /// The root's file system: every read and change of the disk goes through it.
    disk: RealDisk,
    root_checked: Instant,
    rules: Arc<Mutex<Rules>>,
    net: NetHandle,
    sessions: BTreeMap<ConnId, Session>,
    /// The paths the watcher named, waiting to be read, and whether all must be.
    debounce: Debounce,
    retries: Vec<(Instant, ConnId, Entry)>,
    /// Directory deletions that waited for their children.
    /// Directory deletions that waited for their children, until when: the children's own
    /// deletions may come in a later message than the directory's.
    deferred: Vec<(Instant, ConnId, Entry)>,
    /// Changed entries to broadcast, each with the session it came from (not sent back there).
    outbox: Vec<(Entry, Option<ConnId>)>,
    next_id: u64,
    /// Files deleted for a peer, kept for a while under temp names by content, so that a rename
    /// (a delete and a create of the same content) moves the file instead of transferring it.
    stash: HashMap<Hash, Vec<(<RealDisk as Disk>::Stashed, Instant)>>,
    /// Peer files whose content is here under another name, waiting once for the delete that
    /// would make them a rename.
    waited_move: HashSet<(RelPath, Hash)>,
    /// The transfer under way or queued for each path: which session, which request, and the
    /// other sessions that offered the same version meanwhile (owed again if this one fails).
    fetching: HashMap<RelPath, Pending>,
    halted: Option<String>,
    /// During the initial scan every path is "new": log them at debug level only.
    initial: bool,
    /// `--resume`: the start-up scan accepts an emptied root (the user said so).
    accept_empty: bool,
    /// True conflicts resolved since start (for the log now, for `status` later).
    conflicts: u64,
    /// Ignore rules changed: skipped peer entries are to be offered again.
    rules_changed: bool,
    /// Directories the watcher should (re)watch after ignore rules changed.
    refresh: Vec<PathBuf>,
    /// A hash of the command line's `-i`/`-e` patterns (part of the rules fingerprint).
    patterns_key: [u8; 32],
    status: Option<Status>,
    /// How this file system compares names (the tree keeps the live path of each folded name
    /// when the file system folds anything).
    folding: Folding,
    /// The longest conflict-copy name to make here ([`crate::paths::name_limit`]).
    name_max: usize,
    /// The same for files being fetched: the first spelling to arrive claims the name.
    fetch_fold: HashMap<Vec<u8>, RelPath>,
    /// Folded names a peer offered a second spelling of: when ours goes, theirs is offered again.
    collided: HashSet<Vec<u8>>,
    /// The watcher's last history position, saved once every hint before it was acted on.
    checkpoint: Option<Checkpoint>,
    /// When a checkpoint may next be written on its own.
    checkpoint_due: Instant,
    /// Paths that could not be synced, each reported once (log and `status`) until it syncs.
    told: HashSet<RelPath>,
    /// Local paths that cannot be synced at all (too long), each reported once.
    told_local: HashSet<PathBuf>,
    /// Failed attempts to apply a path in a row (full disk, name too long): the retry backs off.
    attempts: HashMap<RelPath, u32>,
    /// A directory or symlink changed here: refused peer entries may apply now.
    shape_changed: bool,
}

/// Why a session ends on something its peer sent.
#[derive(Debug)]
enum PeerError {
    /// The peer broke the protocol (PROTOCOL.md, "Session states").
    Violation(Violation),
    /// The peer said goodbye: the normal end of a session. Its reason, as it sent it.
    Left(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Violation(v) => v.fmt(f),
            Self::Left(reason) => write!(f, "peer said goodbye: {}", crate::logsafe::shown(reason)),
        }
    }
}

impl Engine {
    fn run(
        mut self,
        rx: Receiver<ToEngine>,
        mut watcher: Box<dyn Watcher>,
        watch_rx: Receiver<WatchEvent>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let replayed = watcher.replaying() && self.replay(&watch_rx);
        if !replayed {
            self.full_scan();
        }
        self.initial = false;
        self.intents.clear();
        self.outbox.clear(); // nobody is connected yet; each session gets the index
        // Rules other than last time (edited while we were stopped): ask peers for everything.
        let fp = self.rules_fingerprint();
        self.store.set_rules(fp);
        log::info!(
            "watching {} ({} entries, {} backend, {} in {:.0?})",
            self.root.display(),
            self.index.values().filter(|l| !l.entry.kind.is_deleted()).count(),
            watcher.backend().name(),
            if replayed { "caught up from its event history" } else { "scanned" },
            started.elapsed()
        );
        // After the line above: the daemon says "ready" at once.
        if let Some(s) = &self.status {
            s.set_scanned();
        }
        let mut watch_rx = watch_rx;
        loop {
            let timeout =
                self.next_deadline().map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
            let mut stop = false;
            select! {
                recv(rx) -> m => match m {
                    Ok(m) => stop |= self.on_net(m),
                    Err(_) => stop = true,
                },
                recv(watch_rx) -> ev => match ev {
                    Ok(ev) => self.on_watch(ev),
                    Err(_) => {
                        log::error!("{}: the watcher stopped; changes are no longer seen", self.root.display());
                        watch_rx = never();
                    }
                },
                default(timeout) => {}
            }
            // Take what else is waiting before acting, so bursts are handled as batches.
            for _ in 0..4096 {
                match watch_rx.try_recv() {
                    Ok(ev) => self.on_watch(ev),
                    Err(_) => break,
                }
            }
            for _ in 0..64 {
                match rx.try_recv() {
                    Ok(m) => stop |= self.on_net(m),
                    Err(_) => break,
                }
            }
            self.net.made_room();
            // A halted pair stops here: its sessions were told why, and the halt is on disk so
            // that a restart refuses too, until --resume.
            if stop || self.halted.is_some() {
                break;
            }
            if self.halted.is_none() {
                self.process_dirty();
                self.process_retries();
                self.reoffer_skipped();
                self.reoffer_refused();
            }
            for dir in std::mem::take(&mut self.refresh) {
                watcher.refresh(&dir);
            }
            self.flush_outbox();
            self.pump_all();
            // After the network send, so a save is on the wire before we wait for the disk.
            self.persist();
            self.check_root();
            self.purge_stash(STASH_FOR);
            self.report();
        }
        watcher.stop();
        self.checkpoint_due = Instant::now();
        self.persist();
        self.purge_stash(Duration::ZERO);
        self.sessions.clear(); // drops temp files of unfinished transfers
        self.disk.leave();
        match self.halted.take() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Start-up from the watcher's event history instead of a full scan: every path the history
    /// names is read again, exactly as if the events were live, then the pair goes on. Returns
    /// false, leaving a full scan to the caller, when the history loses events, points at the
    /// whole root, or does not end within [`REPLAY_LIMIT`].
    fn replay(&mut self, watch_rx: &Receiver<WatchEvent>) -> bool {
        let end = Instant::now() + REPLAY_LIMIT;
        let mut hints = 0usize;
        let fallback = |this: &mut Self, why: &str| {
            log::info!("{}: {why}; scanning everything instead", this.root.display());
            this.debounce.clear();
            false
        };
        loop {
            let ev = match watch_rx.recv_deadline(end) {
                Ok(ev) => ev,
                Err(_) => return fallback(self, "the event history did not end in time"),
            };
            match ev {
                WatchEvent::Replayed => break,
                WatchEvent::Overflow => return fallback(self, "the event history lost events"),
                WatchEvent::Checkpoint(c) => self.checkpoint = Some(c),
                // Ours (the agent's directory was emptied at start): nothing to sync.
                WatchEvent::Dirty(p) | WatchEvent::Settled(p) if is_temp(&p) => {}
                ev => {
                    hints += 1;
                    self.on_watch(ev);
                }
            }
            if self.halted.is_some() {
                return true;
            }
            if self.debounce.full_rescan_owed() {
                return fallback(self, "the event history names the whole root");
            }
        }
        // An emptied root halts, as a full scan would: an unmounted disk looks the same.
        let live = self.index.values().filter(|l| !l.entry.kind.is_deleted()).count();
        if live > 0 && self.disk.root_is_empty() {
            self.halt(format!(
                "sync root {} is empty, but {live} paths were synced from it; halting instead of \
                 deleting them everywhere",
                self.root.display()
            ));
            return true;
        }
        log::debug!("{}: {hints} hints from the event history", self.root.display());
        // Read everything named now (no settling: nothing is being written by us yet). A
        // `.gitignore` among them marks its directory again, and `.git/info/exclude` the root.
        for _ in 0..8 {
            if self.debounce.is_empty() && !self.debounce.full_rescan_owed() {
                break;
            }
            self.debounce.hurry(Instant::now());
            self.process_dirty();
        }
        true
    }

    /// Updates what `status` shows: pending work, conflicts, and when we were last in sync.
    fn report(&self) {
        let Some(s) = &self.status else { return };
        let pending = self.debounce.len() + self.fetching.len() + self.retries.len() + self.deferred.len();
        let in_sync = pending == 0 && self.sessions.values().any(|s| s.index_done && s.ready);
        s.update(|r| {
            r.pending = pending as u64;
            r.conflicts = self.conflicts;
            if in_sync {
                r.last_sync = Some(unix_now());
            }
        });
    }

    fn traced(&self, p: &RelPath) -> bool {
        self.debug_prefix.as_ref().is_some_and(|pre| p.as_bytes().starts_with(pre))
    }

    fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner).is_ignored(rel, is_dir)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let d = self.debounce.next_due();
        let r = self.retries.iter().map(|r| r.0).min();
        match (d, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- local changes -------------------------------------------------------------------

    fn on_watch(&mut self, ev: WatchEvent) {
        log::trace!("watch {ev:?}");
        match ev {
            WatchEvent::Dirty(p) => self.mark(&p, false, false),
            WatchEvent::Settled(p) => self.mark(&p, false, true),
            WatchEvent::RescanSubtree(p) => self.mark(&p, true, true),
            WatchEvent::Overflow => {
                log::warn!("{}: watcher queue overflowed; rescanning everything", self.root.display());
                self.debounce.rescan_all();
            }
            WatchEvent::RootGone => self.halt(format!(
                "sync root {} vanished or was unmounted; halting this pair instead of propagating deletions",
                self.root.display()
            )),
            WatchEvent::Checkpoint(c) => self.checkpoint = Some(c),
            WatchEvent::Replayed => {}
        }
    }

    fn halt(&mut self, reason: String) {
        if self.halted.is_none() {
            log::error!("{reason}");
            if let Err(e) = self.store.set_halted(Some(&reason)) {
                log::error!("cannot record the halt in {}: {e}", self.store.dir().display());
            }
            for conn in self.sessions.keys() {
                self.net.send(ToNet::Close { conn: *conn, reason: reason.clone() });
            }
            self.halted = Some(reason);
        }
    }

    /// Marks a path to be read again (soon if the change looks `settled`).
    fn mark_dirty(&mut self, p: &Path, deep: bool) {
        self.mark(p, deep, true);
    }

    fn mark(&mut self, p: &Path, deep: bool, settled: bool) {
        if p.as_os_str().is_empty() {
            if deep {
                self.debounce.rescan_all();
            }
            return;
        }
        let Some(rel) = to_rel(p) else {
            self.unsyncable(p);
            return;
        };
        if is_temp(p) {
            return;
        }
        self.debounce.hint(rel, deep, settled, Instant::now());
    }

    fn process_dirty(&mut self) {
        if self.debounce.take_full_rescan() {
            self.full_scan();
            return;
        }
        for (p, deep) in self.debounce.due(Instant::now()) {
            self.scan_path(&p, deep);
            if is_rules_file(&p) {
                self.rules_changed_at(&p);
            }
        }
    }

    /// A `.gitignore` (or `.git/info/exclude`) changed, here or by a peer: reload the rules of
    /// its directory, rescan that directory whole, watch what is no longer ignored, and offer
    /// the peers' skipped entries again.
    fn rules_changed_at(&mut self, file: &RelPath) {
        let dir = file.parent();
        let dir_path = dir.as_ref().map(|d| rel_path(d).to_path_buf()).unwrap_or_default();
        self.rules.lock().unwrap_or_else(PoisonError::into_inner).invalidate(&dir_path);
        match &dir {
            Some(d) if !matches!(d.as_bytes(), b".git/info") => self.mark_dirty(&dir_path, true),
            _ => self.debounce.rescan_all(),
        }
        self.refresh.push(dir_path);
        self.rules_changed = true;
    }

    fn reoffer_skipped(&mut self) {
        if !std::mem::take(&mut self.rules_changed) {
            return;
        }
        // What we skipped in earlier sessions may be wanted now: the next ones ask for all.
        let fp = self.rules_fingerprint();
        self.store.set_rules(fp);
        self.reoffer_held(|s| &mut s.skipped);
    }

    /// Takes the peer entries every session holds in `held` (skipped or refused ones) and
    /// looks at each again.
    fn reoffer_held(&mut self, held: fn(&mut Session) -> &mut BTreeMap<RelPath, Entry>) {
        let offers: Vec<(ConnId, Entry)> = self
            .sessions
            .iter_mut()
            .flat_map(|(c, s)| std::mem::take(held(s)).into_values().map(move |e| (*c, e)))
            .collect();
        for (conn, e) in offers {
            if let Err(err) = self.on_remote(conn, e) {
                self.drop_session(conn, err);
            }
        }
    }

    /// Writes what changed in the index to the journal (one fsync), and now and then a snapshot.
    /// A failure to persist halts the pair: syncing on without a base risks what the base is for.
    fn persist(&mut self) {
        self.advance_peers();
        // Every hint before the watcher's last checkpoint has been acted on once nothing is left
        // to read: the entries written now (before it) cover its history up to there. And no
        // temp file of ours may exist (no transfer under way, nothing stashed): one left by a
        // crash is then newer than the checkpoint, so the replay at the next start names it and
        // it is removed. The checkpoint rides along with entries; alone, it is written now and
        // then (an older one is just more history to replay).
        let now = Instant::now();
        let entries_written = !self.unsaved.is_empty() || std::mem::take(&mut self.journaled);
        if self.debounce.is_empty()
            && !self.debounce.full_rescan_owed()
            && self.fetching.is_empty()
            && self.stash.is_empty()
            && (entries_written || now >= self.checkpoint_due)
            && let Some(c) = self.checkpoint.take()
        {
            self.store.set_checkpoint(c.0);
            self.checkpoint_due = now + CHECKPOINT_EVERY;
        }
        let mut r = if self.unsaved.is_empty() && !self.store.has_pending() {
            self.store.sync()
        } else {
            let paths = std::mem::take(&mut self.unsaved);
            self.store.append(paths.iter().filter_map(|p| self.index.get(p)))
        };
        // Whichever wrote the entries (this, or the write before a send), the journal is
        // compacted once it has grown enough.
        if r.is_ok() && self.store.wants_snapshot() {
            r = self.store.snapshot(&self.index);
        }
        if let Err(e) = r {
            self.halt(format!("cannot write the sync state in {}: {e}", self.store.dir().display()));
        }
    }

    /// Hands every entry not yet journaled to the kernel (no fsync: that waits for
    /// [`persist`](Self::persist), after the send), so that no peer ever holds a version of ours
    /// that a `kill -9` makes us forget. A forgotten version came back: a directory made, sent,
    /// then deleted here was restored from the peer after a restart (model seed 10105).
    fn journal_before_sending(&mut self) {
        if self.unsaved.is_empty() {
            return;
        }
        let paths = std::mem::take(&mut self.unsaved);
        self.journaled = true;
        if let Err(e) = self.store.append_unsynced(paths.iter().filter_map(|p| self.index.get(p))) {
            self.halt(format!("cannot write the sync state in {}: {e}", self.store.dir().display()));
        }
    }

    /// This replica's next clock value, reserved durably before it is handed out.
    fn tick(&mut self) -> u64 {
        let t = self.clock.tick();
        self.reserve(t.reserve);
        t.value
    }

    /// `v` with a new change by this replica.
    fn next_version(&mut self, v: &VersionVector) -> VersionVector {
        let (v, reserve) = self.clock.next_version(v);
        self.reserve(reserve);
        v
    }

    fn reserve(&mut self, upto: Option<u64>) {
        if let Some(upto) = upto
            && let Err(e) = self.store.reserve_clock(upto)
        {
            self.halt(format!("cannot persist the replica clock: {e}"));
        }
    }

    /// Halts if the root vanished or was replaced since the last check (at most once a second).
    fn check_root(&mut self) {
        if self.root_checked.elapsed() >= ROOT_CHECK_EVERY {
            self.check_root_now();
        }
    }

    /// [`check_root`](Self::check_root), now.
    fn check_root_now(&mut self) {
        if self.halted.is_some() {
            return;
        }
        self.root_checked = Instant::now();
        match self.disk.root_identity() {
            Ok(id) if id == self.root_id => {}
            Ok(_) => self.halt(format!(
                "sync root {} was replaced (another file system mounted, or the directory re-created); \
                 halting instead of syncing it",
                self.root.display()
            )),
            Err(e) => self.halt(format!(
                "sync root {} is gone ({e}); halting this pair instead of propagating deletions",
                self.root.display()
            )),
        }
    }

    /// Walks the whole root.
    /// A root that is empty where the base knew files halts the pair instead (an unmounted disk
    /// looks exactly like a user who deleted everything).
    fn full_scan(&mut self) {
        let mut seen = BTreeSet::new();
        self.walk(None, &mut seen);
        let live = self.index.values().filter(|l| !l.entry.kind.is_deleted()).count();
        let accept = std::mem::take(&mut self.accept_empty);
        if seen.is_empty() && live > 0 && !accept {
            self.halt(format!(
                "sync root {} is empty, but {live} paths were synced from it; halting instead of \
                 deleting them everywhere",
                self.root.display()
            ));
            return;
        }
        let gone: Vec<RelPath> = self
            .index
            .iter()
            .filter(|(p, l)| !l.entry.kind.is_deleted() && !seen.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.scan_one(&p);
        }
    }

    /// Re-reads `rel`; for a directory that is new, or when `deep`, everything beneath it too.
    fn scan_path(&mut self, rel: &RelPath, deep: bool) {
        let was_dir = self.index.get(rel).is_some_and(|l| matches!(l.entry.kind, Kind::Directory));
        let is_dir = self.scan_one(rel);
        // An ignored directory may still hold files an include pattern wants.
        let ignored_dir = !is_dir
            && self.rules.lock().unwrap_or_else(PoisonError::into_inner).has_includes()
            && self.disk.lstat(rel).ok().flatten().is_some_and(|s| s.mode & S_IFMT == S_IFDIR);
        if (is_dir && (deep || !was_dir)) || ignored_dir {
            let mut seen = BTreeSet::new();
            self.walk_from(Some(rel.clone()), ignored_dir, &mut seen);
            let gone: Vec<RelPath> = subtree(&self.index, rel)
                .filter(|(p, l)| *p != rel && !l.entry.kind.is_deleted() && !seen.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                self.scan_one(&p);
            }
        }
    }

    /// Lists `dir` (the root when `None`) recursively, scanning every synced path.
    fn walk(&mut self, dir: Option<RelPath>, seen: &mut BTreeSet<RelPath>) {
        self.walk_from(dir, false, seen);
    }

    /// [`walk`](Self::walk), starting inside an ignored directory when `inside_ignored` (then
    /// only what include patterns name is scanned).
    fn walk_from(&mut self, dir: Option<RelPath>, inside_ignored: bool, seen: &mut BTreeSet<RelPath>) {
        let has_includes = self.rules.lock().unwrap_or_else(PoisonError::into_inner).has_includes();
        let mut stack: Vec<(Option<RelPath>, bool)> = vec![(dir, inside_ignored)];
        while let Some((dir, inside_ignored)) = stack.pop() {
            let children = match self.disk.list(dir.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        let dir_abs = dir.as_ref().map_or_else(|| self.root.clone(), |d| abs(&self.root, d));
                        log::warn!("cannot list {}: {e}; skipping it", dir_abs.display());
                    }
                    continue;
                }
            };
            for ent in children {
                let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&ent.name);
                let child_path = match &dir {
                    Some(d) => rel_path(d).join(name),
                    None => PathBuf::from(name),
                };
                if is_temp(&child_path) {
                    continue; // ours: never synced (a crash's leftovers went at start)
                }
                let Some(rel) = to_rel(&child_path) else {
                    self.unsyncable(&child_path);
                    continue;
                };
                let is_dir = ent.is_dir;
                let (ignored, included) = {
                    let mut r = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
                    let included = r.is_included(&child_path, is_dir);
                    (!included && (inside_ignored || r.ignored_here(&child_path, is_dir)), included)
                };
                if ignored {
                    if is_dir && has_includes {
                        stack.push((Some(rel), true));
                    }
                    continue;
                }
                seen.insert(rel.clone());
                self.scan_one(&rel);
                if is_dir {
                    stack.push((Some(rel), inside_ignored && !included));
                }
            }
        }
    }

    /// Compares one path on disk with the index and records a local change if there is one.
    /// Returns whether the path is now a directory.
    fn scan_one(&mut self, rel: &RelPath) -> bool {
        // A file moved here keeps its inode: reuse the hash recorded under its old name.
        let index = &self.index;
        let known = |ino: u64| {
            index.get(rel).and_then(known_hash).filter(|(s, _)| s.ino == ino).or_else(|| index.known_inode(ino))
        };
        let seen = match self.disk.observe(rel, &known) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.mark_dirty(rel_path(rel), false);
                return false;
            }
            Err(e) => {
                log::warn!("cannot read {rel}: {e}; skipping it until it changes");
                return false;
            }
        };
        let Some(seen) = seen else {
            self.local_delete(rel);
            return false;
        };
        let is_dir = matches!(seen.kind, Kind::Directory);
        if self.is_ignored(rel_path(rel), is_dir) {
            return false;
        }
        self.local_seen(rel, seen);
        is_dir
    }

    fn local_seen(&mut self, rel: &RelPath, seen: Seen) {
        // For files the mtime is part of what is synced (build tools compare them); directory
        // mtimes move with their children and are not.
        let is_file = matches!(seen.kind, Kind::File { .. });
        let (version, was_dir) = match self.index.get(rel) {
            Some(l) if !l.entry.kind.is_deleted() && l.stat == Some(seen.stat) => return,
            Some(l) if l.entry.kind == seen.kind && (!is_file || l.entry.mtime == seen.mtime) => {
                self.index.set_stat(rel, seen.stat);
                return;
            }
            Some(l) => (l.entry.version.clone(), matches!(l.entry.kind, Kind::Directory)),
            None => (VersionVector::new(), false),
        };
        if was_dir && !matches!(seen.kind, Kind::Directory) {
            self.delete_descendants(rel);
        }
        if let Some(applied) = self.intended(rel, &seen.kind, seen.mtime) {
            self.set(applied, Some(seen.stat), None);
            return;
        }
        let version = self.next_version(&version);
        if self.traced(rel) {
            log::info!("[trace] {rel}: local change {:?} v{:?}", seen.kind, version);
        }
        // Being written: the next event for it waits for a quiet moment.
        self.debounce.found_changed(rel, Instant::now());
        let entry = Entry { path: rel.clone(), kind: seen.kind, mtime: seen.mtime, version, origin: self.host.clone() };
        if !self.initial {
            log_change("changed", &entry, None);
        }
        self.set(entry, Some(seen.stat), None);
    }

    fn local_delete(&mut self, rel: &RelPath) {
        let Some(l) = self.index.get(rel) else { return };
        if l.entry.kind.is_deleted() {
            return;
        }
        let was_dir = matches!(l.entry.kind, Kind::Directory);
        let old = l.entry.version.clone();
        if was_dir {
            self.delete_descendants(rel);
        }
        if let Some(applied) = self.intended(rel, &Kind::Deleted, Timestamp::default()) {
            self.set(applied, None, None);
            return;
        }
        let version = self.next_version(&old);
        let entry = Entry { path: rel.clone(), kind: Kind::Deleted, mtime: now(), version, origin: self.host.clone() };
        log_change("deleted", &entry, None);
        self.set(entry, None, None);
    }

    /// The peer's entry we were applying at `rel` when the process died, if the disk holds
    /// exactly it (`kind`, and for a file its `mtime`): it was applied, and is that version.
    fn intended(&mut self, rel: &RelPath, kind: &Kind, mtime: Timestamp) -> Option<Entry> {
        let i = self.intents.remove(rel)?;
        let same = i.kind == *kind && (!matches!(kind, Kind::File { .. }) || i.mtime == mtime);
        if same {
            log::info!("{rel}: applied for a peer just before the last stop (its version, not a change here)");
        }
        same.then_some(i)
    }

    /// Changes the disk at `e`'s path to what `e` says, journaling the intent first and its
    /// failure after: if the process dies between the change and its entry's journal record
    /// (written by [`finish_local`](Self::finish_local)), the restart knows the change as the
    /// peer's `e`, not as a new one of ours. (As one of ours, a directory applied for a peer
    /// beat the peer's later deletion of it: model seed 20038.)
    fn attempt<T>(
        &mut self,
        e: &Entry,
        change: impl FnOnce(&mut RealDisk) -> Result<T, ExecError>,
    ) -> Result<T, ExecError> {
        if let Err(err) = self.store.append_intent(e) {
            log::warn!("cannot journal the change to {} yet: {err}", e.path);
        }
        let r = change(&mut self.disk);
        if r.is_err()
            && let Err(err) = self.store.append_void(&e.path)
        {
            log::warn!("cannot journal the failed change to {}: {err}", e.path);
        }
        r
    }

    fn delete_descendants(&mut self, dir: &RelPath) {
        let live: Vec<RelPath> = subtree(&self.index, dir)
            .filter(|(p, l)| *p != dir && !l.entry.kind.is_deleted())
            .map(|(p, _)| p.clone())
            .collect();
        for p in live.into_iter().rev() {
            if let Some(old) = self.index.get(&p).map(|l| l.entry.version.clone()) {
                let version = self.next_version(&old);
                let entry =
                    Entry { path: p.clone(), kind: Kind::Deleted, mtime: now(), version, origin: self.host.clone() };
                self.set(entry, None, None);
            }
        }
    }

    /// Records `entry` with its disk stat and queues it for every session but `from`.
    fn set(&mut self, entry: Entry, stat: Option<Stat>, from: Option<ConnId>) {
        let seq = self.tick();
        let was_file = self.index.get(&entry.path).is_none_or(|l| matches!(l.entry.kind, Kind::File { .. }));
        if !(was_file && matches!(entry.kind, Kind::File { .. })) {
            self.shape_changed = true;
        }
        self.unsaved.insert(entry.path.clone());
        self.outbox.push((entry.clone(), from));
        let key = self.folding.active().then(|| self.folding.key(&entry.path));
        let replaced = self.index.insert(LocalEntry { entry, stat, seq }, key, Instant::now());
        if let Some(key) = replaced.freed_fold
            && self.collided.remove(&key)
        {
            self.rules_changed = true; // offer the peers' other spelling again
        }
    }

    /// Deletes stashed files older than `age`, and forgets deleted inodes as old.
    fn purge_stash(&mut self, age: Duration) {
        let now = Instant::now();
        self.index.forget_gone(now, age);
        if self.stash.is_empty() {
            return;
        }
        let disk = &mut self.disk;
        for v in self.stash.values_mut() {
            v.retain(|(p, t)| {
                let keep = now.duration_since(*t) < age;
                if !keep {
                    disk.drop_stashed(p);
                }
                keep
            });
        }
        self.stash.retain(|_, v| !v.is_empty());
    }

    fn take_stash(&mut self, hash: &Hash) -> Option<<RealDisk as Disk>::Stashed> {
        let v = self.stash.get_mut(hash)?;
        let (p, _) = v.pop()?;
        if v.is_empty() {
            self.stash.remove(hash);
        }
        Some(p)
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        // Deletions of ours go out only from a root that is still there: `rm -rf` of the root
        // unlinks every file before the root itself, and the watcher's word that the root went
        // may come a batch after the files' (halts.rs saw all five deletions sent under load).
        if self.outbox.iter().any(|(e, from)| from.is_none() && e.kind.is_deleted()) {
            self.check_root_now();
        }
        self.journal_before_sending();
        if self.halted.is_some() {
            return; // what is not journaled is not sent
        }
        let outbox = std::mem::take(&mut self.outbox);
        let seq = self.seq_now();
        // A session not yet ready gets all of this with its index.
        for (conn, s) in self.sessions.iter_mut().filter(|(_, s)| s.ready) {
            let mine: Vec<Entry> =
                outbox.iter().filter(|(_, from)| *from != Some(*conn)).map(|(e, _)| e.clone()).collect();
            if mine.is_empty() {
                // Only its own changes, applied here: say how far our counter went, or the next
                // session would ask for them again.
                if seq > s.told {
                    self.net.send(ToNet::Send { conn: *conn, msg: Message::Update { entries: Vec::new(), seq } });
                }
            }
            for chunk in order_for_apply(mine).chunks(MAX_BATCH_ENTRIES) {
                self.net.send(ToNet::Send { conn: *conn, msg: Message::Update { entries: chunk.to_vec(), seq } });
            }
            s.told = seq;
        }
    }

    // ----- the network side ----------------------------------------------------------------

    /// Handles a message from the network thread; returns whether to stop.
    fn on_net(&mut self, m: ToEngine) -> bool {
        match m {
            ToEngine::Shutdown => return true,
            ToEngine::Connected { conn, peer_host, peer_replica } => {
                log::debug!("{peer_host} (replica {peer_replica:016x}) attached to {}", self.root.display());
                if let Some(reason) = &self.halted {
                    self.net.send(ToNet::Close { conn, reason: reason.clone() });
                    return false;
                }
                // The same replica again, while its old connection still looks alive (a one-way
                // dead link, a client restarted before its old socket timed out): the new one
                // replaces it, and what the old one owed is asked for again below.
                let old: Vec<ConnId> =
                    self.sessions.iter().filter(|(_, s)| s.peer_replica == peer_replica).map(|(c, _)| *c).collect();
                for c in old {
                    log::info!("{peer_host}: connection {c} replaced by a new connection from the same replica");
                    self.end_session(c);
                    self.net.send(ToNet::Close { conn: c, reason: "replaced by a newer connection".into() });
                }
                // Only what changed since the last session we took in whole, if we know the peer.
                let since = self.store.have(peer_replica);
                let s = Session {
                    peer_host,
                    peer_replica,
                    asked_since: since,
                    ready: false,
                    index_done: false,
                    index_entries: 0,
                    have: 0,
                    told: 0,
                    in_flight: HashMap::new(),
                    queued: VecDeque::new(),
                    skipped: BTreeMap::new(),
                    refused: BTreeMap::new(),
                };
                self.sessions.insert(conn, s);
                self.attached.store(self.sessions.len(), Ordering::SeqCst);
                self.net.send(ToNet::Send { conn, msg: Message::IndexFrom { since } });
            }
            ToEngine::Disconnected { conn, reason } => {
                if let Some(s) = self.sessions.get(&conn) {
                    log::info!("{} disconnected: {reason}", s.peer_host);
                }
                self.end_session(conn);
            }
            ToEngine::Message { conn, msg } => {
                if !self.sessions.contains_key(&conn) {
                    return false;
                }
                if let Err(err) = self.on_message(conn, msg) {
                    self.drop_session(conn, err);
                }
            }
        }
        false
    }

    fn drop_session(&mut self, conn: ConnId, why: PeerError) {
        let host = self.sessions.get(&conn).map(|s| s.peer_host.clone()).unwrap_or_default();
        let reason = why.to_string();
        match why {
            PeerError::Left(_) => log::info!("{host} ended the session: {reason}"), // a normal end
            PeerError::Violation(_) => log::error!("closing connection to {host}: {reason}"),
        }
        self.end_session(conn);
        self.net.send(ToNet::Close { conn, reason });
    }

    /// Forgets a session and everything it had pending (invariant 9). What it owed is not lost:
    /// its peer's high-water mark never moved over it (see [`advance_peers`](Self::advance_peers)),
    /// so the peer's next session is asked for it again; entries other sessions offered for the
    /// same transfers are looked at again now.
    fn end_session(&mut self, conn: ConnId) {
        // What the session took in completely counts before it goes: its last entry may have
        // been installed in the same turn as its end, before the turn's journal write.
        self.advance_peers();
        self.sessions.remove(&conn);
        self.attached.store(self.sessions.len(), Ordering::SeqCst);
        self.retries.retain(|r| r.1 != conn);
        self.deferred.retain(|d| d.1 != conn);
        for p in self.fetching.values_mut() {
            p.also.retain(|(c, _)| *c != conn);
        }
        self.forget_fetches_of(conn);
    }

    /// Our counter: every change of the index so far has a `seq` at most this.
    fn seq_now(&self) -> u64 {
        self.clock.last()
    }

    /// Answers a peer's `IndexFrom`: the entries that changed after `since` (all of them when
    /// `since` is 0, or beyond our counter: then our state is not the one the peer knew).
    fn send_index(&mut self, conn: ConnId, since: u64) {
        self.journal_before_sending();
        if self.halted.is_some() {
            return;
        }
        let seq = self.seq_now();
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.told = seq;
        }
        let full = since == 0 || since > seq;
        let entries: Vec<Entry> =
            self.index.values().filter(|l| full || l.seq > since).map(|l| l.entry.clone()).collect();
        log::debug!("index for {conn}: {} of {} entries (since {since})", entries.len(), self.index.len());
        let mut chunks = entries.chunks(MAX_BATCH_ENTRIES).peekable();
        if chunks.peek().is_none() {
            self.net.send(ToNet::Send { conn, msg: Message::IndexBatch { entries: Vec::new(), last: true, seq } });
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            self.net.send(ToNet::Send { conn, msg: Message::IndexBatch { entries: c.to_vec(), last, seq } });
        }
    }

    /// Records, for every peer whose messages were all taken in (nothing fetched, retried or
    /// deferred any more), that we have its changes up to what it last said: the next session
    /// asks only for what came after. Called before the journal write, so the record follows
    /// the entries it covers.
    fn advance_peers(&mut self) {
        if self.halted.is_some() {
            return;
        }
        let busy: BTreeSet<ConnId> = self
            .retries
            .iter()
            .map(|r| r.1)
            .chain(self.deferred.iter().map(|d| d.1))
            .chain(self.fetching.values().flat_map(|p| p.also.iter().map(|(c, _)| *c)))
            .chain(
                self.sessions
                    .iter()
                    .filter(|(_, s)| !s.in_flight.is_empty() || !s.queued.is_empty() || !s.refused.is_empty())
                    .map(|(c, _)| *c),
            )
            .collect();
        // A replica is only as far as the least advanced of its sessions (normally one).
        let busy_replicas: BTreeSet<ReplicaId> =
            self.sessions.iter().filter(|(c, _)| busy.contains(*c)).map(|(_, s)| s.peer_replica).collect();
        for s in self.sessions.values() {
            if s.index_done && s.have > self.store.have(s.peer_replica) && !busy_replicas.contains(&s.peer_replica) {
                self.store.set_have(s.peer_replica, s.have);
            }
        }
    }

    /// A fingerprint of what decides which peer entries we skip: the `-i`/`-e` patterns,
    /// `.git/info/exclude`, every `.gitignore` in the index, and the names skipped as collisions.
    fn rules_fingerprint(&self) -> Fingerprint {
        rules_fingerprint(&self.patterns_key, &self.collided, &self.root, &self.index)
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) -> Result<(), PeerError> {
        log::trace!("engine <- {} from {conn}", msg.name());
        match msg {
            Message::IndexFrom { since } => {
                let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
                if std::mem::replace(&mut s.ready, true) {
                    return Err(PeerError::Violation(Violation::IndexFromTwice));
                }
                self.send_index(conn, since);
            }
            Message::IndexBatch { entries, last, seq } => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.index_entries += entries.len();
                }
                self.take_entries(conn, entries)?;
                if last && let Some(s) = self.sessions.get_mut(&conn) {
                    if std::mem::replace(&mut s.index_done, true) {
                        return Err(PeerError::Violation(Violation::IndexTwice));
                    }
                    let what = if s.asked_since > 0 { "its changes since our last session" } else { "all of it" };
                    log::info!("{}: index received, {} entries ({what})", s.peer_host, s.index_entries);
                    s.have = seq;
                    if seq < s.asked_since {
                        // The peer's counter went back (its state was restored): forget what we
                        // thought we had of it.
                        self.store.set_have(s.peer_replica, 0);
                    }
                }
            }
            Message::Update { entries, seq } => {
                self.take_entries(conn, entries)?;
                if let Some(s) = self.sessions.get_mut(&conn)
                    && s.index_done
                {
                    s.have = s.have.max(seq);
                }
            }
            Message::Request { id, path, size, hash } => self.serve(conn, id, path, size, hash),
            Message::Data { id, bytes } => self.on_data(conn, id, &bytes)?,
            Message::DataEnd { id, size, hash } => self.on_data_end(conn, id, size, hash)?,
            Message::DataAbort { id, reason } => {
                if let Some(s) = self.sessions.get_mut(&conn)
                    && let Some(f) = s.in_flight.remove(&id)
                {
                    // Unreadable for a moment, changed while being read, or superseded: asked
                    // again later. Its update, if one is coming, supersedes it meanwhile; until
                    // then the peer's high-water mark stays below it.
                    let current = self.fetching.get(&f.entry.path).is_some_and(|p| p.conn == conn && p.id == id);
                    self.fetch_done(&f.entry.path, conn, id);
                    if current && !f.failed {
                        let why =
                            format!("the peer could not send {} ({})", f.entry.path, crate::logsafe::shown(&reason));
                        self.retry_later(conn, f.entry, why);
                    }
                }
            }
            Message::Ping | Message::Pong => {}
            Message::Goodbye { reason } => {
                return Err(PeerError::Left(reason));
            }
            Message::Hello(_) => return Err(PeerError::Violation(Violation::SecondHello)),
            Message::Welcome(_) => return Err(PeerError::Violation(Violation::SecondWelcome)),
        }
        Ok(())
    }

    fn take_entries(&mut self, conn: ConnId, entries: Vec<Entry>) -> Result<(), PeerError> {
        if self.halted.is_some() {
            return Ok(());
        }
        for e in order_for_apply(entries) {
            self.on_remote(conn, e)?;
        }
        self.retry_deferred();
        Ok(())
    }

    /// A peer's entry for one path.
    fn on_remote(&mut self, conn: ConnId, e: Entry) -> Result<(), PeerError> {
        let is_dir = matches!(e.kind, Kind::Directory);
        if self.is_ignored(rel_path(&e.path), is_dir) {
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.skipped.insert(e.path.clone(), e);
            }
            return Ok(());
        }
        if let Some(ours) = self.fold_collision(&e) {
            let key = self.folding.key(&e.path);
            if self.collided.insert(key) {
                self.conflicts_named(&e.path, &ours);
                // Skipped like an ignored entry: the next session must offer it again.
                let fp = self.rules_fingerprint();
                self.store.set_rules(fp);
            }
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.skipped.insert(e.path.clone(), e);
            }
            return Ok(());
        }
        // A transfer already under way for this path: keep it unless this entry supersedes it.
        if let Some(pending) = self.pending_version(&e.path) {
            match pending.compare(&e.version) {
                mirror_protocol::VersionOrdering::Before => self.cancel_fetches(&e.path),
                // Made without knowledge of the version being fetched: a conflict to decide
                // once that version is in place. Look at it again shortly.
                mirror_protocol::VersionOrdering::Concurrent => {
                    self.retries.push((Instant::now() + Duration::from_millis(20), conn, e));
                    return Ok(());
                }
                // The same version (or an older one) from another session: not fetched twice,
                // but owed by that session until the transfer under way is in.
                _ => {
                    if let Some(p) = self.fetching.get_mut(&e.path)
                        && p.conn != conn
                    {
                        p.also.retain(|(c, _)| *c != conn);
                        p.also.push((conn, e));
                    }
                    return Ok(());
                }
            }
        }
        // Executor discipline: what the user did since the last scan counts first. A pending
        // subtree rescan (a directory moved in) is done whole here, or what it holds is never read.
        if let Some(deep) = self.debounce.take(&e.path) {
            self.scan_path(&e.path, deep);
        } else if self.index.get(&e.path).is_some_and(|l| self.disk_moved(l)) {
            self.scan_one(&e.path);
        }
        let local = self.index.get(&e.path).map(|l| &l.entry);
        let action = reconcile(local, &e);
        if self.traced(&e.path) {
            log::info!(
                "[trace] {}: remote {:?} v{:?} vs local {:?} -> {action:?}",
                e.path,
                e.kind,
                e.version,
                local.map(|l| (&l.kind, &l.version))
            );
        }
        // Only now, about to write, does a symlink (or file) on the way matter: a stale entry
        // beneath a directory we replaced by a symlink is ignored above, not an attack.
        let writes = matches!(action, Action::Apply | Action::ConflictKeepLocalCopy | Action::ConflictKeepRemoteCopy);
        if writes
            && !e.kind.is_deleted()
            && let Err(err) = self.disk.check_parents(&e.path)
        {
            self.refuse(conn, e, err.to_string());
            return Ok(());
        }
        match action {
            Action::Nothing => {}
            Action::Adopt(version) => {
                let stat = self.index.get(&e.path).and_then(|l| l.stat);
                // The source already has its own version; a merge is news to it as well.
                let to_source = if version == e.version { Some(conn) } else { None };
                let entry = match self.index.get(&e.path) {
                    Some(l) => Entry { version, ..l.entry.clone() },
                    None => Entry { version, ..e },
                };
                self.set(entry, stat, to_source);
            }
            Action::Apply => self.apply(conn, e, false),
            Action::ConflictKeepLocalCopy => self.apply(conn, e, true),
            Action::ConflictKeepRemoteCopy => self.keep_remote_copy(conn, e),
        }
        Ok(())
    }

    /// On a file system that folds names: the live path of ours that is the same name as the
    /// peer's new `e` (or one of its directories) under another spelling.
    fn fold_collision(&self, e: &Entry) -> Option<RelPath> {
        if !self.folding.active() || e.kind.is_deleted() {
            return None;
        }
        if self.index.get(&e.path).is_some_and(|l| !l.entry.kind.is_deleted()) {
            return None; // the same spelling as ours
        }
        let mut p = Some(e.path.clone());
        while let Some(cur) = p {
            let key = self.folding.key(&cur);
            // Ours on disk, or on its way (a transfer of another spelling under way).
            for ours in [self.index.folded(&key), self.fetch_fold.get(&key)].into_iter().flatten() {
                if *ours != cur {
                    return Some(ours.clone());
                }
            }
            p = cur.parent();
        }
        None
    }

    /// Reports a name collision: the peer's `theirs` is `ours` on this file system.
    fn conflicts_named(&mut self, theirs: &RelPath, ours: &RelPath) {
        let msg = format!(
            "name collision: the peer's {theirs} is the same name as our {ours} on this file system \
             (case or Unicode normalization); {theirs} is not synced here until one of them is renamed"
        );
        log::warn!("{msg}");
        if let Some(s) = &self.status {
            s.update(|r| {
                r.collisions += 1;
                r.last_error = Some(msg);
            });
        }
    }

    fn disk_moved(&self, l: &LocalEntry) -> bool {
        self.disk.lstat(&l.entry.path).map_or(true, |s| s != l.stat)
    }

    fn pending_version(&self, path: &RelPath) -> Option<VersionVector> {
        self.fetching.get(path).map(|p| p.version.clone())
    }

    fn cancel_fetches(&mut self, path: &RelPath) {
        let Some(p) = self.fetching.remove(path) else { return };
        self.unclaim(path);
        self.reoffer(p.also);
        let Some(s) = self.sessions.get_mut(&p.conn) else { return };
        s.queued.retain(|(qid, _)| *qid != p.id);
        if let Some(f) = s.in_flight.get_mut(&p.id) {
            f.failed = true; // ignore the rest of its data
            f.tmp = None;
        }
    }

    /// Forgets the transfer `id` of `conn` for `path` (finished, aborted or failed).
    fn fetch_done(&mut self, path: &RelPath, conn: ConnId, id: u64) {
        if self.fetching.get(path).is_some_and(|p| p.conn == conn && p.id == id)
            && let Some(p) = self.fetching.remove(path)
        {
            self.unclaim(path);
            self.reoffer(p.also);
        }
    }

    fn forget_fetches_of(&mut self, conn: ConnId) {
        let gone: Vec<RelPath> = self.fetching.iter().filter(|(_, p)| p.conn == conn).map(|(p, _)| p.clone()).collect();
        for path in gone {
            if let Some(p) = self.fetching.remove(&path) {
                self.unclaim(&path);
                self.reoffer(p.also);
            }
        }
    }

    /// Entries other sessions offered while a transfer of the same version was under way: looked
    /// at again on the next turn (they come to nothing if that transfer was installed).
    fn reoffer(&mut self, also: Vec<(ConnId, Entry)>) {
        let now = Instant::now();
        self.retries.extend(also.into_iter().map(|(c, e)| (now, c, e)));
    }

    /// A transfer of `path` ended: its spelling no longer claims the folded name.
    fn unclaim(&mut self, path: &RelPath) {
        if self.folding.active() {
            let key = self.folding.key(path);
            if self.fetch_fold.get(&key) == Some(path) {
                self.fetch_fold.remove(&key);
            }
        }
    }

    /// Makes the disk match the peer's entry. With `keep_local_copy`, our version (which lost a
    /// conflict) is first moved aside to a conflict copy.
    fn apply(&mut self, conn: ConnId, e: Entry, keep_local_copy: bool) {
        let local = self.index.get(&e.path).cloned();
        let expected = local.as_ref().and_then(|l| l.stat);
        if let Kind::File { hash, mode, .. } = &e.kind {
            let same_bytes =
                matches!(local.as_ref().map(|l| &l.entry.kind), Some(Kind::File { hash: h, .. }) if h == hash);
            if same_bytes && !keep_local_copy {
                let (mtime, mode) = (e.mtime, *mode);
                let r = self.attempt(&e, |d| d.set_meta(&e.path, expected, mtime, mode));
                self.finish_local(conn, e, r);
            } else if let Some(from) = self.take_stash(hash) {
                self.waited_move.remove(&(e.path.clone(), *hash));
                self.apply_from_stash(conn, e, from, local.as_ref(), keep_local_copy);
            } else if let Some(src) = self.same_content_here(&e) {
                // The content is here under another name: most likely a rename whose delete
                // comes a moment later (the peer saw the new names first, as when a directory
                // moves into directories made for it). Wait for that delete once, then move
                // the file; without it, copy ours instead of fetching the bytes again.
                let key = (e.path.clone(), *hash);
                if self.waited_move.insert(key.clone()) {
                    self.retries.push((Instant::now() + MOVE_WAIT, conn, e));
                } else {
                    self.waited_move.remove(&key);
                    self.copy_local(conn, e, &src, keep_local_copy);
                }
            } else {
                self.enqueue(conn, e, Purpose::Apply { keep_local_copy });
            }
            return;
        }
        if let (
            Kind::Deleted,
            Some(LocalEntry { entry: Entry { kind: Kind::File { hash, .. }, .. }, stat: Some(_), .. }),
        ) = (&e.kind, &local)
        {
            match self.attempt(&e, |d| d.stash(&e.path, expected)) {
                Ok(p) => {
                    self.stash.entry(*hash).or_default().push((p, Instant::now()));
                    let gone = Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 };
                    self.finish_local(conn, e, Ok(gone));
                    return;
                }
                Err(err) if err.crosses_devices() => {} // delete it below
                Err(err) => {
                    self.exec_failed(conn, e, err);
                    return;
                }
            }
        }
        if keep_local_copy
            && let Some(l) = &local
            && let Err(err) = self.move_local_aside(l)
        {
            self.exec_failed(conn, e, err);
            return;
        }
        let expected = if keep_local_copy { None } else { expected };
        if matches!(e.kind, Kind::File { .. }) {
            return;
        }
        let r = self.attempt(&e, |d| match &e.kind {
            Kind::Deleted => d.remove(&e.path, expected).map(|()| None),
            Kind::Directory => d.make_dir(&e.path, expected).map(Some),
            Kind::Symlink { target } => d.make_symlink(&e.path, expected, target).map(Some),
            Kind::File { .. } => Ok(None),
        });
        match r {
            Err(ExecError::NotEmpty) if e.kind.is_deleted() => {
                self.deferred.push((Instant::now() + STASH_FOR, conn, e));
            }
            r => self.finish_local(
                conn,
                e,
                r.map(|s| s.unwrap_or(Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 })),
            ),
        }
    }

    /// A live file of ours, at another path, with the content `e` wants (large files only:
    /// small ones cost less to send than to wait for).
    fn same_content_here(&self, e: &Entry) -> Option<RelPath> {
        let Kind::File { size, hash, .. } = &e.kind else { return None };
        if *size < BY_CONTENT_MIN {
            return None;
        }
        self.index.elsewhere(hash, &e.path).cloned()
    }

    /// Makes `e`'s content from our copy at `src` (verified by hash as it is read) instead of
    /// fetching it; fetches it after all if `src` changed.
    fn copy_local(&mut self, conn: ConnId, e: Entry, src: &RelPath, keep_local_copy: bool) {
        let Kind::File { hash, .. } = e.kind else { return };
        let expected = self.index.get(src).and_then(|l| l.stat);
        let copied = self.disk.copy_to_temp(src, expected, &e.path, &hash);
        let tmp = match copied {
            Ok(Some(t)) => t,
            Ok(None) | Err(_) => return self.enqueue(conn, e, Purpose::Apply { keep_local_copy }),
        };
        log::debug!("{}: content copied from {src} here, nothing transferred", e.path);
        let decided = self.index.get(&e.path).map(|l| l.entry.version.clone());
        let f = Fetch {
            entry: e,
            purpose: Purpose::Apply { keep_local_copy },
            decided,
            tmp: None,
            hasher: blake3::Hasher::new(),
            received: 0,
            failed: false,
        };
        if let Err(err) = self.install_fetched(conn, f, tmp, hash) {
            self.drop_session(conn, err);
        }
    }

    /// Puts a stashed file (same content, deleted a moment ago) at the peer's new path: a
    /// rename, with no data sent.
    fn apply_from_stash(
        &mut self,
        conn: ConnId,
        e: Entry,
        from: <RealDisk as Disk>::Stashed,
        local: Option<&LocalEntry>,
        keep_local_copy: bool,
    ) {
        let Kind::File { hash, mode, .. } = e.kind else { return };
        let mut expected = local.and_then(|l| l.stat);
        if keep_local_copy && let Some(l) = local {
            if let Err(err) = self.move_local_aside(l) {
                self.stash.entry(hash).or_default().push((from, Instant::now()));
                self.exec_failed(conn, e, err);
                return;
            }
            expected = None;
        }
        match self.attempt(&e, |d| d.unstash(&from, &e.path, expected, e.mtime, mode)) {
            Ok(stat) => {
                log::debug!("{}: content found locally (a rename), nothing transferred", e.path);
                self.finish_local(conn, e, Ok(stat));
            }
            Err(err) => {
                self.stash.entry(hash).or_default().push((from, Instant::now()));
                self.exec_failed(conn, e, err);
            }
        }
    }

    /// Records the outcome of a disk change made for the peer's entry `e`.
    fn finish_local(&mut self, conn: ConnId, e: Entry, r: Result<Stat, ExecError>) {
        match r {
            Ok(stat) => {
                let version =
                    self.index.get(&e.path).map_or_else(|| e.version.clone(), |l| l.entry.version.merged(&e.version));
                let host = self.sessions.get(&conn).map(|s| s.peer_host.clone());
                log_change("applied", &e, host.as_deref());
                let stat = if e.kind.is_deleted() { None } else { Some(stat) };
                let rules_file = is_rules_file(&e.path);
                let path = e.path.clone();
                self.attempts.remove(&path);
                self.told.remove(&path);
                let to_source = if version == e.version { Some(conn) } else { None };
                self.set(Entry { version, ..e }, stat, to_source);
                // Journal it right away (fsync comes with the batch): if this process is killed
                // now, the restart must not mistake the peer's change for a local edit.
                if let Some(l) = self.index.get(&path) {
                    match self.store.append_now(l) {
                        Ok(()) => {
                            self.unsaved.remove(&path);
                        }
                        Err(e) => log::warn!("cannot journal {path} yet: {e}; it will be with the batch"),
                    }
                }
                if rules_file {
                    self.rules_changed_at(&path);
                }
            }
            Err(err) => self.exec_failed(conn, e, err),
        }
    }

    fn exec_failed(&mut self, conn: ConnId, e: Entry, err: ExecError) {
        match err {
            ExecError::Changed => {
                // The user changed the path while we worked: that change is news; scan it and
                // decide again with the peer's entry.
                log::debug!("{}: changed locally meanwhile; reconciling again", e.path);
                self.scan_one(&e.path);
                let local = self.index.get(&e.path).map(|l| &l.entry);
                if reconcile(local, &e) != Action::Nothing {
                    self.retries.push((Instant::now() + Duration::from_millis(10), conn, e));
                }
            }
            ExecError::Jail(err) => self.refuse(conn, e, err.to_string()),
            // The peer replaced a directory (by a file or symlink) that still holds what it does
            // not have: written here meanwhile. As a modification beats a deletion, the
            // directory wins; the peer's entry is kept as a conflict copy, and our directory's
            // merged version makes the peer take the directory back (issue 11, item 5).
            ExecError::NotEmpty if !e.kind.is_deleted() => {
                log::info!("{}: the peer replaced this directory, which still holds files it does not have", e.path);
                self.keep_remote_copy(conn, e);
            }
            err => {
                let why = format!("cannot apply {} ({}): {err}", e.path, describe(&e.kind));
                self.retry_later(conn, e, why);
            }
        }
    }

    /// Reported once; retried with a growing delay (a full disk may take a while, a file the
    /// peer cannot read may stay so), and at once when the peer sends a newer version.
    fn retry_later(&mut self, conn: ConnId, e: Entry, why: String) {
        let n = self.attempts.entry(e.path.clone()).or_insert(0);
        *n += 1;
        let wait = (RETRY_AFTER * 2u32.pow((*n - 1).min(6))).min(MAX_RETRY_AFTER);
        if self.told.insert(e.path.clone()) {
            log::error!("{why}; retrying in {}s, then less often", wait.as_secs());
            self.tell(why);
        } else {
            log::debug!("{why}; retrying in {}s", wait.as_secs());
        }
        self.retries.push((Instant::now() + wait, conn, e));
    }

    /// A peer's entry that cannot be applied here as our tree is now: reported once, kept, and
    /// offered again when a directory or symlink changes here, or by the peer's next session.
    /// The session goes on: one path never costs the others their sync.
    fn refuse(&mut self, conn: ConnId, e: Entry, why: String) {
        if self.told.insert(e.path.clone()) {
            let msg = format!("not syncing {} here: {why}; tried again when that changes", e.path);
            log::warn!("{msg}");
            self.tell(msg);
        }
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.refused.insert(e.path.clone(), e);
        }
    }

    /// A local path no peer could take (longer than 4,096 bytes, a name longer than 255):
    /// reported once (log and `status`), then left alone while the rest syncs.
    fn unsyncable(&mut self, p: &Path) {
        if self.told_local.len() < 10_000 && self.told_local.insert(p.to_path_buf()) {
            let len = p.as_os_str().len();
            let why = match p.components().map(|c| c.as_os_str().len()).max() {
                _ if len > mirror_protocol::path::MAX_PATH_LEN => {
                    format!(
                        "its path is {len} bytes long, more than the {} a peer takes",
                        mirror_protocol::path::MAX_PATH_LEN
                    )
                }
                Some(n) if n > 255 => format!("a name in it is {n} bytes long, more than 255"),
                _ => "its name cannot be synced".into(),
            };
            let msg = format!("not syncing {}: {why}", p.display());
            log::warn!("{msg}");
            self.tell(msg);
        }
    }

    /// Puts a problem in `status` (its last error).
    fn tell(&self, msg: String) {
        if let Some(s) = &self.status {
            s.update(|r| r.last_error = Some(msg));
        }
    }

    fn reoffer_refused(&mut self) {
        if !std::mem::take(&mut self.shape_changed) {
            return;
        }
        self.reoffer_held(|s| &mut s.refused);
    }

    fn move_local_aside(&mut self, l: &LocalEntry) -> Result<(), ExecError> {
        let base = conflict_path_of(&l.entry, self.name_max);
        let mut to = base.clone();
        let mut n = 1;
        while let Some(there) = self.disk.lstat(&to)? {
            // The copy may exist already: a peer that saw the same conflict kept our version
            // under the same name. Then ours is safe, and moving it would make a duplicate.
            let same = self.index.get(&to).is_some_and(|c| c.entry.kind == l.entry.kind && c.stat == Some(there));
            if same {
                self.disk.remove(&l.entry.path, l.stat)?;
                self.conflicts += 1;
                log::warn!(
                    "conflict on {}: our version lost; it is already kept as {to} ({} conflicts so far)",
                    l.entry.path,
                    self.conflicts
                );
                return Ok(());
            }
            n += 1;
            to = numbered(&base, n, self.name_max);
        }
        self.disk.move_aside(&l.entry.path, l.stat, &to)?;
        self.conflicts += 1;
        log::warn!(
            "conflict on {}: our version lost and is kept as {to} ({} conflicts so far)",
            l.entry.path,
            self.conflicts
        );
        self.record_copy(&to, &l.entry);
        Ok(())
    }

    /// Records a conflict copy we just made at `at` of the losing version `loser`. A new copy
    /// takes the loser's version vector and origin rather than a new change of ours: every
    /// replica that secures the same loser makes the same name (conflict.rs) and now the same
    /// entry, so their copies meet as equal, and a later edit or deletion of the copy anywhere
    /// supersedes all of them. (With a fresh version each, a deleted copy came back from a
    /// replica that had made its own: concurrent, and a deletion never beats a modification.)
    fn record_copy(&mut self, at: &RelPath, loser: &Entry) {
        if self.index.contains_key(at) {
            self.scan_one(at); // the name was used before: a new change of ours over its history
            return;
        }
        let seen = self.disk.observe(at, &|_| None).ok().flatten();
        match seen {
            Some(seen) if !matches!(seen.kind, Kind::Directory) => {
                let entry = Entry {
                    path: at.clone(),
                    kind: seen.kind,
                    mtime: seen.mtime,
                    version: loser.version.clone(),
                    origin: loser.origin.clone(),
                };
                self.set(entry, Some(seen.stat), None);
            }
            _ => {
                self.scan_one(at);
            }
        }
    }

    fn keep_remote_copy(&mut self, conn: ConnId, e: Entry) {
        let at = conflict_path_of(&e, self.name_max);
        match &e.kind {
            Kind::File { .. } => self.enqueue(conn, e, Purpose::KeepRemoteCopy { at }),
            Kind::Symlink { target } => {
                let mut dest = at.clone();
                let mut n = 1;
                loop {
                    if self.index.get(&dest).is_some_and(|c| c.entry.kind == e.kind) {
                        break; // already kept under this name
                    }
                    if self.disk.lstat(&dest).ok().flatten().is_none() {
                        if let Err(err) = self.disk.make_symlink(&dest, None, target) {
                            self.exec_failed(conn, e, err);
                            return;
                        }
                        self.record_copy(&dest, &e);
                        break;
                    }
                    n += 1;
                    dest = numbered(&at, n, self.name_max);
                }
                self.won_conflict(&e, &dest);
            }
            Kind::Directory | Kind::Deleted => self.won_conflict(&e, &at),
        }
    }

    /// Our version won a conflict and the peer's is secured: supersede theirs.
    fn won_conflict(&mut self, e: &Entry, copy: &RelPath) {
        if let Some(l) = self.index.get(&e.path).cloned() {
            self.conflicts += 1;
            log::warn!(
                "conflict on {}: our version won; the peer's is kept as {copy} ({} conflicts so far)",
                e.path,
                self.conflicts
            );
            // A new change of ours over both. The merge alone is not enough: the peer may have
            // won another conflict (against an older version of ours) and made the very same
            // merge for its own content, and the two sides then held a directory and a symlink
            // under one version for ever (model seed 20038). A tick makes ours newer than
            // anything the peer merged without it; if the peer's winner was different, the next
            // round compares the same two entries on both sides and they agree.
            let version = self.next_version(&l.entry.version.merged(&e.version));
            // Sent to the loser's peer too: it must learn that this version supersedes its own.
            self.set(Entry { version, ..l.entry }, l.stat, None);
        }
    }

    fn retry_deferred(&mut self) {
        let mut progress = true;
        while progress && !self.deferred.is_empty() {
            progress = false;
            for (until, conn, e) in std::mem::take(&mut self.deferred) {
                // Superseded while it waited (the peer made the directory again, or we have
                // something newer): it is no longer a deletion to carry out, now or later.
                if reconcile(self.index.get(&e.path).map(|l| &l.entry), &e) != Action::Apply {
                    log::info!("{}: the deletion that waited is superseded", e.path);
                    continue;
                }
                let expected = self.index.get(&e.path).and_then(|l| l.stat);
                match self.attempt(&e, |d| d.remove(&e.path, expected)) {
                    Err(ExecError::NotEmpty) => self.deferred.push((until, conn, e)),
                    r => {
                        progress = true;
                        self.finish_local(
                            conn,
                            e,
                            r.map(|()| Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 }),
                        );
                    }
                }
            }
        }
        // What is still deferred when its time is up holds files the peer never had (ignored
        // here, or new): keep them. If some are synced ones, the directory is live again
        // everywhere: a new change of ours over the peer's deletion (a modification beats a
        // deletion), or the two sides would differ for ever.
        let now = Instant::now();
        let (waiting, expired): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.deferred).into_iter().partition(|d| d.0 > now);
        self.deferred = waiting;
        for (_, _, e) in expired {
            log::warn!("not deleting directory {}: it still holds files the peer does not have", e.path);
            let synced_inside = subtree(&self.index, &e.path).any(|(p, l)| *p != e.path && !l.entry.kind.is_deleted());
            if synced_inside && let Some(l) = self.index.get(&e.path).cloned() {
                let version = self.next_version(&l.entry.version.merged(&e.version));
                self.set(Entry { version, ..l.entry }, l.stat, None);
            }
        }
    }

    fn process_retries(&mut self) {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries).into_iter().partition(|r| r.0 <= now);
        self.retries = later;
        for (_, conn, e) in due {
            if self.sessions.contains_key(&conn) {
                let _ = self.on_remote(conn, e);
            }
        }
    }

    // ----- transfers -----------------------------------------------------------------------

    fn enqueue(&mut self, conn: ConnId, entry: Entry, purpose: Purpose) {
        // A file that cannot fit is not requested (a peer announcing 2^62 bytes would otherwise
        // fill the disk): reported once and tried again later, as a full disk is.
        if let Kind::File { size, .. } = entry.kind
            && size >= SPACE_CHECK_FROM
            && let Some(free) = self.disk.free_space()
            && size > free
        {
            let err = io::Error::new(
                io::ErrorKind::StorageFull,
                format!("no room for it (disk full): {size} bytes needed, {free} free"),
            );
            self.exec_failed(conn, entry, ExecError::Io(err));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let decided = self.index.get(&entry.path).map(|l| l.entry.version.clone());
        if let Some(s) = self.sessions.get_mut(&conn) {
            let pending = Pending { conn, id, version: entry.version.clone(), also: Vec::new() };
            self.fetching.insert(entry.path.clone(), pending);
            if self.folding.active() {
                self.fetch_fold.entry(self.folding.key(&entry.path)).or_insert_with(|| entry.path.clone());
            }
            let f =
                Fetch { entry, purpose, decided, tmp: None, hasher: blake3::Hasher::new(), received: 0, failed: false };
            s.queued.push_back((id, f));
        }
    }

    fn pump_all(&mut self) {
        for (conn, s) in self.sessions.iter_mut() {
            while s.in_flight.len() < MAX_IN_FLIGHT {
                let Some((id, f)) = s.queued.pop_front() else { break };
                if let Kind::File { size, hash, .. } = &f.entry.kind {
                    log::trace!("request {id} {}", f.entry.path);
                    let msg = Message::Request { id, path: f.entry.path.clone(), size: *size, hash: *hash };
                    self.net.send(ToNet::Send { conn: *conn, msg });
                    s.in_flight.insert(id, f);
                }
            }
        }
    }

    fn serve(&mut self, conn: ConnId, id: u64, path: RelPath, size: u64, hash: Hash) {
        let ok = matches!(self.index.get(&path).map(|l| &l.entry.kind), Some(Kind::File { hash: h, .. }) if *h == hash);
        let reply = |reason: &str| ToNet::Send { conn, msg: Message::DataAbort { id, reason: reason.into() } };
        if !ok {
            self.net.send(reply("not the current version here"));
            return;
        }
        match self.disk.open_upload(&path) {
            Ok(file) => self.net.send(ToNet::Upload { conn, id, file, size }),
            Err(e) => {
                log::warn!("cannot read {path} for the peer: {e}");
                self.net.send(reply(&e.to_string()));
            }
        }
    }

    fn on_data(&mut self, conn: ConnId, id: u64, bytes: &[u8]) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
        let Some(f) = s.in_flight.get_mut(&id) else {
            return Err(PeerError::Violation(Violation::DataForUnknownRequest { id }));
        };
        f.received += bytes.len() as u64;
        let Kind::File { size, .. } = f.entry.kind else { return Ok(()) };
        if f.received > size {
            return Err(PeerError::Violation(Violation::MoreThanRequested { id, size }));
        }
        if f.failed {
            return Ok(());
        }
        f.hasher.update(bytes);
        let target = match &f.purpose {
            Purpose::Apply { .. } => f.entry.path.clone(),
            Purpose::KeepRemoteCopy { at } => at.clone(),
        };
        if f.tmp.is_none() {
            match self.disk.create_temp(&target) {
                Ok(t) => f.tmp = Some(t),
                Err(ExecError::Jail(e)) => {
                    f.failed = true;
                    let entry = f.entry.clone();
                    self.refuse(conn, entry, e.to_string());
                    return Ok(());
                }
                Err(e) => {
                    f.failed = true;
                    log::error!("cannot receive {target}: {e}; retrying in {}s", RETRY_AFTER.as_secs());
                    self.retries.push((Instant::now() + RETRY_AFTER, conn, f.entry.clone()));
                    return Ok(());
                }
            }
        }
        if let Some(t) = &mut f.tmp
            && let Err(e) = self.disk.write_temp(t, bytes)
        {
            f.failed = true;
            f.tmp = None; // removes the partial file
            let hint = if e.raw_os_error() == Some(libc::ENOSPC) { " (disk full)" } else { "" };
            log::error!(
                "cannot write {target}{hint}: {e}; removed the partial file, retrying in {}s",
                RETRY_AFTER.as_secs()
            );
            self.retries.push((Instant::now() + RETRY_AFTER, conn, f.entry.clone()));
        }
        Ok(())
    }

    fn on_data_end(&mut self, conn: ConnId, id: u64, size: u64, hash: Hash) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
        let Some(mut f) = s.in_flight.remove(&id) else {
            return Err(PeerError::Violation(Violation::EndOfUnknownRequest { id }));
        };
        self.fetch_done(&f.entry.path, conn, id);
        if size != f.received {
            return Err(PeerError::Violation(Violation::SizeMismatch { id, claimed: size, sent: f.received }));
        }
        if f.failed {
            return Ok(());
        }
        let ours = *f.hasher.finalize().as_bytes();
        if ours != hash {
            log::warn!("{}: the bytes the peer sent do not match their hash; dropping them", f.entry.path);
            return Err(PeerError::Violation(Violation::HashMismatch { id }));
        }
        let Kind::File { size: want_size, hash: want_hash, .. } = f.entry.kind else { return Ok(()) };
        if want_hash != hash || want_size != size {
            // Changed at the source while it was sent: its update supersedes this; if none
            // comes (rewritten keeping size and mtime), asking again gets the source to look.
            let why = format!("{} changed at the source while it was sent", f.entry.path);
            self.retry_later(conn, f.entry, why);
            return Ok(());
        }
        let target = match &f.purpose {
            Purpose::Apply { .. } => f.entry.path.clone(),
            Purpose::KeepRemoteCopy { at } => at.clone(),
        };
        let tmp = match f.tmp.take() {
            Some(t) => t,
            None => match self.disk.create_temp(&target) {
                Ok(t) => t,
                Err(ExecError::Jail(e)) => {
                    self.refuse(conn, f.entry, e.to_string());
                    return Ok(());
                }
                Err(e) => {
                    self.exec_failed(conn, f.entry, e);
                    return Ok(());
                }
            },
        };
        self.install_fetched(conn, f, tmp, hash)
    }

    /// Puts a fetched (or locally copied) file, complete and verified in `tmp`, where `f` says.
    fn install_fetched(
        &mut self,
        conn: ConnId,
        f: Fetch,
        tmp: <RealDisk as Disk>::Temp,
        hash: Hash,
    ) -> Result<(), PeerError> {
        let Kind::File { mode, .. } = f.entry.kind else { return Ok(()) };
        // Our version moved on while the content travelled (a local save scanned meanwhile):
        // what was decided no longer holds. Decide again from what is here now; installing
        // would write over that save (issue 11, item 3).
        if matches!(f.purpose, Purpose::Apply { .. })
            && self.index.get(&f.entry.path).map(|l| &l.entry.version) != f.decided.as_ref()
        {
            log::debug!("{}: changed here while it was fetched; deciding again", f.entry.path);
            drop(tmp);
            return self.on_remote(conn, f.entry);
        }
        match f.purpose {
            Purpose::Apply { keep_local_copy } => {
                let local = self.index.get(&f.entry.path).cloned();
                let mut expected = local.as_ref().and_then(|l| l.stat);
                if keep_local_copy && let Some(l) = &local {
                    if let Err(err) = self.move_local_aside(l) {
                        self.exec_failed(conn, f.entry, err);
                        return Ok(());
                    }
                    expected = None;
                }
                let r = self.attempt(&f.entry, |d| d.install(tmp, &f.entry.path, expected, f.entry.mtime, mode));
                self.finish_local(conn, f.entry, r);
            }
            Purpose::KeepRemoteCopy { at } => {
                let mut dest = at.clone();
                let mut n = 1;
                loop {
                    match self.index.get(&dest).map(|l| &l.entry.kind) {
                        Some(Kind::File { hash: h, .. }) if *h == hash => break, // already kept
                        _ if self.disk.lstat(&dest).ok().flatten().is_none() => {
                            if let Err(e) = self.disk.install(tmp, &dest, None, f.entry.mtime, mode) {
                                self.exec_failed(conn, f.entry, e);
                                return Ok(());
                            }
                            self.record_copy(&dest, &f.entry);
                            break;
                        }
                        _ => {
                            n += 1;
                            dest = numbered(&at, n, self.name_max);
                        }
                    }
                }
                self.won_conflict(&f.entry, &dest);
            }
        }
        Ok(())
    }
}

/// Device and inode of the root directory.
/// What decides which paths are synced: the command line's patterns, the name collisions
/// reported, `.git/info/exclude` and every `.gitignore` in `index`.
fn rules_fingerprint(patterns_key: &[u8; 32], collided: &HashSet<Vec<u8>>, root: &Path, index: &Index) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    h.update(patterns_key);
    let mut collided: Vec<&Vec<u8>> = collided.iter().collect();
    collided.sort();
    for k in collided {
        h.update(b"c").update(k).update(&[0]);
    }
    if let Ok(b) = std::fs::read(root.join(".git/info/exclude")) {
        h.update(b"x").update(&b);
    }
    for (p, l) in index {
        if let Kind::File { hash, .. } = &l.entry.kind
            && is_rules_file(p)
        {
            h.update(p.as_bytes()).update(&[0]).update(hash);
        }
    }
    let mut fp = Fingerprint::default();
    fp.copy_from_slice(&h.finalize().as_bytes()[..16]);
    fp
}

/// Whether a change to this path changes the ignore rules.
fn is_rules_file(p: &RelPath) -> bool {
    p.file_name() == b".gitignore" || p.as_bytes() == b".git/info/exclude"
}

fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() }
}

fn describe(k: &Kind) -> String {
    match k {
        Kind::File { size, .. } => format!("{size} bytes"),
        Kind::Directory => "directory".into(),
        Kind::Symlink { .. } => "symlink".into(),
        Kind::Deleted => "deletion".into(),
    }
}

fn log_change(what: &str, e: &Entry, from: Option<&str>) {
    match from {
        Some(h) => log::info!("{what} {} ({}) from {h}", e.path, describe(&e.kind)),
        None => log::info!("{what} {} ({})", e.path, describe(&e.kind)),
    }
}
