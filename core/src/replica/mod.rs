//! One replica of a sync root, as a value: what it knows, and every decision about what to sync.
//!
//! The agent (and the simulator) drives it: it feeds [`Input`]s (a watcher hint, a peer that
//! connected, sent a message or left, a timer) with the time, and carries out the [`Command`]s
//! that come back (send a message, serve an upload, close a connection, watch a directory
//! again, report a problem). The file system, the journal and the ignore rules are traits
//! ([`Disk`], [`Journal`], [`Ignore`]) the replica calls synchronously; verify-before-mutate is
//! the disk's duty, the order of persistence the replica's. Nothing here reads a clock.
//!
//! Flow of a local change ([`local`]): a watcher hint marks a path; after a short debounce the
//! path is observed (hashed only if size, mtime or inode moved); a real change bumps our counter
//! in the path's version vector, is journaled, and is sent as an `Update`. Flow of a remote
//! change ([`remote`]): the peer's entry is reconciled against ours; content is requested and
//! streamed into a temp file ([`transfers`]), verified by hash, and renamed into place if the
//! user did not change the path meanwhile. What we write is recorded with its stat before the
//! watcher reports it, so the report finds nothing new: no echo. Sessions (what each peer was
//! told and has) are in [`sessions`], conflicts in [`conflicts`].
//!
//! About 650 lines, a little over the usual 600: the replica's fields, each with why it is
//! there, and the driving calls ([`Replica::feed`], [`Replica::turn`], [`Replica::settle`]); every
//! concept's logic is in the submodules.

mod conflicts;
mod local;
mod remote;
mod retries;
mod sessions;
mod transfers;
mod types;

pub use types::{Command, Config, Halt, HaltReason, Hint, IndexPacing, Input, PeerError, Replay, Time};

use crate::clock::Clock;
use crate::conflict::{conflict_path_of, numbered};
use crate::debounce::Debounce;
use crate::disk::{Disk, ExecError, Observed, Seen, Unhashed};
use crate::ignore::Ignore;
use crate::journal::{Base, Fingerprint, Journal};
use crate::paths::{is_temp, rel_path, to_rel};
use crate::reconcile::{Action, reconcile};
use crate::tree::{
    BY_CONTENT_MIN, Index, LocalEntry, S_IFDIR, S_IFMT, Stat, Tree, known_hash, order_for_apply, subtree,
};
use mirror_protocol::{
    Entry, Hash, Kind, MAX_BATCH_ENTRIES, Message, RelPath, ReplicaId, Timestamp, VersionVector, Violation,
};
use remote::Trouble;
use sessions::Session;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use transfers::{Fetch, Pending, Progress, Purpose};

/// Identifies one connection for as long as the process runs.
pub type ConnId = u64;

/// Requests in flight per session: enough to keep a fast link busy with small files.
const MAX_IN_FLIGHT: usize = 64;
/// How often the root's identity is checked on its own (and before any deletion of ours is sent).
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a watcher checkpoint is written when no entry changed with it.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How long a deleted file waits in the stash for a create of the same content. The other half
/// of a rename comes in the same batch, or a few messages later for a large directory.
const STASH_FOR: Duration = Duration::from_secs(2);
/// How long a peer's new file whose content is here under another name waits for the delete of
/// that name (the other half of a rename) before the content is copied (files of at least
/// [`crate::tree::BY_CONTENT_MIN`] bytes; smaller ones are simply sent).
const MOVE_WAIT: Duration = Duration::from_millis(500);
/// How long to wait before retrying a failed write (full disk, permission)...
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// ...doubling with each failure in a row, up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Files up to this size go to peers with their entry ([`Message::Push`]), saving the round trip
/// of a `Request`: on a 40 ms link a new small file arrives in one trip instead of two. Larger
/// ones are requested (a push the peer does not need, the content already there, is bytes
/// wasted: at most this many). Measured in BENCHMARKS.md, "Small files pushed". The agent's
/// [`Config::push_max`]; the simulator pushes less, so that its small files are requested too.
pub const PUSH_MAX: u64 = 128 * 1024;
/// The most bytes pushed ahead of one `Update` (far below [`mirror_protocol::MAX_PUSHED`]): the
/// rest of a large batch is requested as before.
const PUSH_BUDGET: usize = 1024 * 1024;
/// Files from this size on are requested only if they fit in the free space (one `statvfs` a
/// request would be a cost on every small file; a full disk is still handled as it fills).
const SPACE_CHECK_FROM: u64 = 1024 * 1024;

/// One replica. See the module documentation.
pub struct Replica<D: Disk, J: Journal, R: Ignore> {
    cfg: Config,
    /// The time of the input being handled.
    now: Instant,
    wall: Timestamp,
    /// What we know of each path, with its lookups (by inode, by content, by folded name).
    index: Tree,
    /// Changes begun for peers before the last stop whose outcome was never journaled (the
    /// process died in between): the start-up scan takes each whose path holds exactly it as
    /// that peer's version ([`Replica::attempt`]).
    intents: BTreeMap<RelPath, Entry>,
    journal: J,
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
    disk: D,
    root_checked: Instant,
    rules: R,
    sessions: BTreeMap<ConnId, Session<D>>,
    /// What to do, for the driver to take.
    out: Vec<Command<D::Upload>>,
    /// The paths the watcher named, waiting to be read, and whether all must be.
    debounce: Debounce,
    retries: retries::Retries,
    /// Directory deletions that waited for their children, until when: the children's own
    /// deletions may come in a later message than the directory's.
    deferred: Vec<(Instant, ConnId, Entry)>,
    /// Changed entries to broadcast, each with the session it came from (not sent back there).
    outbox: Vec<(Entry, Option<ConnId>)>,
    /// A deletion of ours was made while nobody was connected (so it is not in the outbox): the
    /// root is looked at before anything is sent, as for a deletion in the outbox.
    root_check_owed: bool,
    next_id: u64,
    /// Files deleted for a peer, kept for a while under temp names by content, so that a rename
    /// (a delete and a create of the same content) moves the file instead of transferring it.
    stash: BTreeMap<Hash, Vec<(D::Stashed, Instant)>>,
    /// Peer files whose content is here under another name, waiting once for the delete that
    /// would make them a rename.
    waited_move: BTreeSet<(RelPath, Hash)>,
    /// The transfer under way or queued for each path: which session, which request, and the
    /// other sessions that offered the same version meanwhile (owed again if this one fails).
    fetching: BTreeMap<RelPath, Pending>,
    /// Files being described by the driver for a delta ([`Command::Sign`]), as they were seen.
    signing: BTreeMap<RelPath, Stat>,
    /// Files whose delta failed (a copy of ours could not be read, or the result did not match
    /// its hash): fetched whole until one is installed.
    no_delta: BTreeSet<(RelPath, Hash)>,
    /// Large files being hashed by the driver ([`Command::Hash`]), as they were seen.
    hashing: BTreeMap<RelPath, Unhashed>,
    /// Whether large files are hashed apart: once started (the start-up scan hashes in place, so
    /// that what it finds is known, and matched with the intents of a crash, before anything is
    /// sent).
    hash_apart: bool,
    halted: Option<Halt>,
    /// During the initial scan every path is "new": log them at debug level only.
    initial: bool,
    /// `--resume`: the start-up scan accepts an emptied root (the user said so).
    accept_empty: bool,
    /// True conflicts resolved since start (for the log now, for `status` later).
    conflicts: u64,
    /// Ignore rules changed: skipped peer entries are to be offered again.
    rules_changed: bool,
    /// The fetch claims of folded names: the first spelling to arrive claims the name.
    fetch_fold: BTreeMap<Vec<u8>, RelPath>,
    /// Folded names a peer offered a second spelling of: when ours goes, theirs is offered again.
    collided: BTreeSet<Vec<u8>>,
    /// The watcher's last history position, saved once every hint before it was acted on.
    checkpoint: Option<String>,
    /// When a checkpoint may next be written on its own.
    checkpoint_due: Instant,
    /// Paths that could not be synced, each trouble reported once (log and `status`) until it
    /// syncs: the same trouble again is not news, another one is.
    told: BTreeMap<RelPath, Trouble>,
    /// Local paths that cannot be synced at all (too long), each reported once.
    told_local: BTreeSet<PathBuf>,
    /// Failed attempts to apply a path in a row (full disk, name too long): the retry backs off.
    attempts: BTreeMap<RelPath, u32>,
    /// A directory or symlink changed here: refused peer entries may apply now.
    shape_changed: bool,
    #[cfg(feature = "planted-bugs")]
    bug: Option<crate::planted::Bug>,
}

impl<D: Disk, J: Journal, R: Ignore> fmt::Debug for Replica<D, J, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("root", &self.cfg.root)
            .field("replica", &format_args!("{:016x}", self.clock.replica()))
            .field("paths", &self.index.len())
            .field("sessions", &self.sessions.len())
            .field("halted", &self.halted)
            .finish_non_exhaustive()
    }
}

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    /// A replica of the root `disk` is, starting from `base`. Reserves its first clock values
    /// in `journal` before anything else.
    pub fn new(
        cfg: Config,
        base: Base,
        disk: D,
        mut journal: J,
        rules: R,
        root_id: (u64, u64),
        now: Time,
    ) -> io::Result<Self> {
        let me = base.replica;
        let mine = base.index.values().map(|l| l.entry.version.get(me).max(l.seq)).max().unwrap_or(0);
        let (clock, reserve) = Clock::start(me, base.clock_start, mine);
        journal.reserve_clock(reserve)?;
        let folding = cfg.folding;
        let index = {
            let key = |p: &RelPath| folding.key(p);
            Tree::new(base.index, folding.active().then_some(&key as &crate::tree::FoldKey<'_>))
        };
        Ok(Replica {
            now: now.mono,
            wall: now.wall,
            index,
            intents: base.intents,
            journal,
            unsaved: BTreeSet::new(),
            journaled: false,
            clock,
            root_id,
            disk,
            root_checked: now.mono,
            rules,
            sessions: BTreeMap::new(),
            out: Vec::new(),
            debounce: Debounce::new(cfg.scan_delay, cfg.close_is_final),
            retries: retries::Retries::default(),
            deferred: Vec::new(),
            outbox: Vec::new(),
            root_check_owed: false,
            next_id: 1,
            stash: BTreeMap::new(),
            waited_move: BTreeSet::new(),
            fetching: BTreeMap::new(),
            hashing: BTreeMap::new(),
            signing: BTreeMap::new(),
            no_delta: BTreeSet::new(),
            hash_apart: false,
            halted: None,
            initial: !base.existed,
            accept_empty: cfg.accept_empty,
            conflicts: 0,
            rules_changed: false,
            fetch_fold: BTreeMap::new(),
            collided: BTreeSet::new(),
            checkpoint: None,
            checkpoint_due: now.mono,
            told: BTreeMap::new(),
            told_local: BTreeSet::new(),
            attempts: BTreeMap::new(),
            shape_changed: false,
            #[cfg(feature = "planted-bugs")]
            bug: None,
            cfg,
        })
    }

    /// Plants a bug (the simulator's test of its teeth).
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&mut self, bug: Option<crate::planted::Bug>) {
        self.bug = bug;
    }

    /// Whether `bug` is planted.
    #[cfg(feature = "planted-bugs")]
    fn planted(&self, bug: crate::planted::Bug) -> bool {
        self.bug == Some(bug)
    }

    fn at(&mut self, now: Time) {
        self.now = now.mono;
        self.wall = now.wall;
    }

    // ----- driving -------------------------------------------------------------------------

    /// The start-up scan of the whole root (unless [`replay_hint`](Self::replay_hint) caught up
    /// from the watcher's history), then [`started`](Self::started).
    pub fn scan_all(&mut self, now: Time) {
        self.at(now);
        self.full_scan();
    }

    /// One event of the watcher's replayed history: handled exactly as if it were live.
    pub fn replay_hint(&mut self, now: Time, hint: Hint) -> Replay {
        self.at(now);
        match hint {
            Hint::Overflow => return Replay::Useless,
            Hint::Checkpoint(c) => self.checkpoint = Some(c),
            // Ours (the agent's directory was emptied at start): nothing to sync.
            Hint::Dirty(p) | Hint::Settled(p) if crate::paths::is_temp(&p) => {}
            h => self.on_watch(h),
        }
        if self.halted.is_some() {
            Replay::Halted
        } else if self.debounce.full_rescan_owed() {
            Replay::Useless
        } else {
            Replay::Go
        }
    }

    /// The replayed history was no use: forget what it named (a full scan follows).
    pub fn abandon_replay(&mut self) {
        self.debounce.clear();
    }

    /// The replayed history ended: read everything it named now (no settling: nothing is being
    /// written by us yet). An emptied root halts, as a full scan would.
    pub fn end_replay(&mut self, now: Time) {
        self.at(now);
        let live = self.live();
        if live > 0 && self.disk.root_is_empty() {
            self.halt(HaltReason::RootEmpty { live });
            return;
        }
        // A `.gitignore` among them marks its directory again, and `.git/info/exclude` the root.
        for _ in 0..8 {
            if self.debounce.is_empty() && !self.debounce.full_rescan_owed() {
                break;
            }
            self.debounce.hurry(self.now);
            self.process_dirty();
        }
    }

    /// The start-up scan is over: from now on changes are news, sent to every session.
    pub fn started(&mut self) {
        self.initial = false;
        self.hash_apart = true;
        self.intents.clear();
        // Nobody is connected yet; each session gets the index. The scan's whole tree passed
        // through here: give its room back.
        self.outbox = Vec::new();
        self.root_check_owed = false;
        // Rules other than last time (edited while we were stopped): ask peers for everything.
        let fp = self.rules_fingerprint();
        self.journal.set_rules(fp);
    }

    /// Takes in one input; its consequences are worked out by the next [`turn`](Self::turn).
    pub fn feed(&mut self, now: Time, input: Input) {
        self.at(now);
        match input {
            Input::Hint(h) => self.on_watch(h),
            Input::Connected { conn, peer_host, peer_replica } => self.connected(conn, peer_host, peer_replica),
            Input::Disconnected { conn, reason } => {
                if let Some(s) = self.sessions.get(&conn) {
                    log::info!("{} disconnected: {reason}", s.peer_host);
                }
                self.end_session(conn);
            }
            Input::Message { conn, msg } => {
                if self.sessions.contains_key(&conn)
                    && let Err(err) = self.on_message(conn, msg)
                {
                    self.drop_session(conn, err);
                }
            }
            Input::Drained { conn } => self.send_index_more(conn),
            Input::Hashed { path, stat, hash } => self.on_hashed(path, stat, hash),
            Input::Signed { path, stat, base } => self.on_signed(path, stat, base),
            Input::Timer => {}
        }
    }

    /// Works out what the inputs fed since the last turn (and the time) call for, up to the
    /// messages to send: reads what is due, retries, re-offers, sends. The driver sends what is
    /// in `out` and then calls [`settle`](Self::settle).
    pub fn turn(&mut self, now: Time, out: &mut Vec<Command<D::Upload>>) {
        self.at(now);
        if self.halted.is_none() {
            self.process_dirty();
            self.process_retries();
            self.reoffer_skipped();
            self.reoffer_refused();
        }
        self.flush_outbox();
        self.pump_all();
        out.append(&mut self.out);
    }

    /// After the turn's messages are on their way: makes the turn durable (one fsync), checks
    /// the root, purges old stash files.
    pub fn settle(&mut self, now: Time, out: &mut Vec<Command<D::Upload>>) {
        self.at(now);
        self.persist();
        self.check_root();
        self.purge_stash(STASH_FOR);
        out.append(&mut self.out);
    }

    /// [`feed`](Self::feed), [`turn`](Self::turn) and [`settle`](Self::settle) in one.
    pub fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Command<D::Upload>>) {
        self.feed(now, input);
        self.turn(now, out);
        self.settle(now, out);
    }

    /// Stops: the last journal write, the stash emptied, unfinished transfers dropped, the last
    /// commands (a halt's goodbyes) in `out`. The halt, if the pair halted.
    pub fn stop(&mut self, now: Time, out: &mut Vec<Command<D::Upload>>) -> Result<(), Halt> {
        self.at(now);
        self.checkpoint_due = self.now;
        self.persist();
        self.purge_stash(Duration::ZERO);
        self.sessions.clear(); // drops temp files of unfinished transfers
        self.disk.leave();
        out.append(&mut self.out);
        match self.halted.take() {
            Some(h) => Err(h),
            None => Ok(()),
        }
    }

    // ----- what the driver may look at -----------------------------------------------------

    /// When the replica next has something to do with no input (a debounce, a retry, the end
    /// of a waiting deletion, a stash file to drop).
    pub fn next_deadline(&self) -> Option<Instant> {
        let stash = self.stash.values().flatten().map(|(_, t)| *t + STASH_FOR);
        let waits = self.retries.next_due().into_iter().chain(self.deferred.iter().map(|r| r.0));
        // A halted replica reads nothing more, so it forgets nothing either: no wake for that.
        let cool = self.debounce.cools_at().filter(|_| self.halted.is_none());
        self.debounce.next_due().into_iter().chain(cool).chain(waits).chain(stash).min()
    }

    /// Why the pair halted, if it did.
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref()
    }

    /// Work not done yet: paths to read, transfers, retries, waiting deletions.
    pub fn pending(&self) -> usize {
        self.debounce.len() + self.hashing.len() + self.fetching.len() + self.retries.len() + self.deferred.len()
    }

    /// Nothing pending, and some peer's index taken in whole.
    pub fn in_sync(&self) -> bool {
        self.pending() == 0 && self.sessions.values().any(|s| s.index_done && s.ready)
    }

    /// True conflicts resolved since start.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Sessions attached now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Paths that exist, as far as the index knows.
    pub fn live(&self) -> usize {
        self.index.values().filter(|l| !l.entry.kind.is_deleted()).count()
    }

    /// What the replica knows of every path.
    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The disk, to act on it as a user would (the simulator's operations).
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// The journal, to change under the replica (a simulator's faults).
    pub fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    /// The disk and the journal back, the replica's memory gone: what a crash leaves (the
    /// simulator's `kill -9`). Unfinished transfers' temp files go with it.
    pub fn into_parts(self) -> (D, J) {
        (self.disk, self.journal)
    }

    pub fn replica_id(&self) -> ReplicaId {
        self.clock.replica()
    }

    // ----- halts, the clock, persistence ---------------------------------------------------

    fn traced(&self, p: &RelPath) -> bool {
        self.cfg.debug_prefix.as_ref().is_some_and(|pre| p.as_bytes().starts_with(pre))
    }

    fn halt(&mut self, reason: HaltReason) {
        if self.halted.is_some() {
            return;
        }
        let halt = Halt { root: self.cfg.root.clone(), reason };
        let text = halt.to_string();
        log::error!("{text}");
        if let Err(e) = self.journal.set_halted(Some(&text)) {
            log::error!("cannot record the halt in {}: {e}", self.journal.location());
        }
        for conn in self.sessions.keys() {
            self.out.push(Command::Close { conn: *conn, reason: text.clone() });
        }
        self.halted = Some(halt);
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
        let now = self.now;
        let entries_written = !self.unsaved.is_empty() || std::mem::take(&mut self.journaled);
        if self.debounce.is_empty()
            && !self.debounce.full_rescan_owed()
            && self.fetching.is_empty()
            && self.stash.is_empty()
            && (entries_written || now >= self.checkpoint_due)
            && let Some(c) = self.checkpoint.take()
        {
            self.journal.set_checkpoint(c);
            self.checkpoint_due = now + CHECKPOINT_EVERY;
        }
        let mut r = if self.unsaved.is_empty() && !self.journal.has_pending() {
            self.journal.sync()
        } else {
            let paths = std::mem::take(&mut self.unsaved);
            self.journal.append(&mut paths.iter().filter_map(|p| self.index.get(p)))
        };
        // Whichever wrote the entries (this, or the write before a send), the journal is
        // compacted once it has grown enough.
        if r.is_ok() && self.journal.wants_snapshot() {
            r = self.journal.snapshot(&self.index);
        }
        #[cfg(feature = "planted-bugs")]
        if self.planted(crate::planted::Bug::StateErrorIgnored) {
            r = Ok(());
        }
        if let Err(e) = r {
            let location = self.journal.location();
            self.halt(HaltReason::StateUnwritable { location, error: e.to_string() });
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
        let r = self.journal.append_unsynced(&mut paths.iter().filter_map(|p| self.index.get(p)));
        #[cfg(feature = "planted-bugs")]
        let r = if self.planted(crate::planted::Bug::StateErrorIgnored) { Ok(()) } else { r };
        if let Err(e) = r {
            let location = self.journal.location();
            self.halt(HaltReason::StateUnwritable { location, error: e.to_string() });
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
            && let Err(e) = self.journal.reserve_clock(upto)
        {
            self.halt(HaltReason::ClockUnwritable(e.to_string()));
        }
    }

    /// Halts if the root vanished or was replaced since the last check (at most once a second).
    fn check_root(&mut self) {
        if self.now.saturating_duration_since(self.root_checked) >= ROOT_CHECK_EVERY {
            self.check_root_now();
        }
    }

    /// [`check_root`](Self::check_root), now.
    fn check_root_now(&mut self) {
        if self.halted.is_some() {
            return;
        }
        self.root_checked = self.now;
        match self.disk.root_identity() {
            Ok(id) if id == self.root_id => {}
            Ok(_) => self.halt(HaltReason::RootReplaced),
            Err(e) => self.halt(HaltReason::RootGone(e.to_string())),
        }
    }

    /// Our counter: every change of the index so far has a `seq` at most this.
    fn seq_now(&self) -> u64 {
        self.clock.last()
    }

    /// A fingerprint of what decides which peer entries we skip.
    fn rules_fingerprint(&self) -> Fingerprint {
        rules_fingerprint(&self.cfg.patterns_key, &self.collided, self.rules.info_exclude().as_deref(), &self.index)
    }

    /// Records `entry` with its disk stat and queues it for every session but `from`.
    fn set(&mut self, entry: Entry, stat: Option<Stat>, from: Option<ConnId>) {
        let seq = self.tick();
        let was_file = self.index.get(&entry.path).is_none_or(|l| matches!(l.entry.kind, Kind::File { .. }));
        if !(was_file && matches!(entry.kind, Kind::File { .. })) {
            self.shape_changed = true;
        }
        self.unsaved.insert(entry.path.clone());
        // With no session there is nobody to tell: the next one gets the index (a start-up scan
        // would otherwise hold a copy of every entry here).
        if !self.sessions.is_empty() {
            self.outbox.push((entry.clone(), from));
        } else if from.is_none() && entry.kind.is_deleted() {
            self.root_check_owed = true;
        }
        let key = self.cfg.folding.active().then(|| self.cfg.folding.key(&entry.path));
        let replaced = self.index.insert(LocalEntry { entry, stat, seq }, key, self.now);
        if let Some(key) = replaced.freed_fold
            && self.collided.remove(&key)
        {
            self.rules_changed = true; // offer the peers' other spelling again
        }
    }

    /// Puts a problem in `status` (its last error).
    fn tell(&mut self, msg: String) {
        self.out.push(Command::Problem(msg));
    }
}

/// What decides which paths are synced: the command line's patterns, the name collisions
/// reported, `.git/info/exclude` and every `.gitignore` in `index`.
pub fn rules_fingerprint(
    patterns_key: &[u8; 32],
    collided: &BTreeSet<Vec<u8>>,
    info_exclude: Option<&[u8]>,
    index: &Index,
) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    h.update(patterns_key);
    let mut collided: Vec<&Vec<u8>> = collided.iter().collect();
    collided.sort();
    for k in collided {
        h.update(b"c").update(k).update(&[0]);
    }
    if let Some(b) = info_exclude {
        h.update(b"x").update(b);
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
pub fn is_rules_file(p: &RelPath) -> bool {
    p.file_name() == b".gitignore" || p.as_bytes() == b".git/info/exclude"
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
