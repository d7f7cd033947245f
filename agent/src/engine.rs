//! The engine: the thread that drives one sync root's [`Replica`].
//!
//! Everything that decides is in `mirror_core::replica`; this is its driver. One thread per
//! root feeds the replica what the watcher and the network thread say (over bounded channels),
//! with the time, and carries out the commands that come back: messages and uploads go to the
//! network thread, a directory whose ignore rules changed is watched again, problems go to
//! `status`. The replica reaches the disk through [`RealDisk`], its journal through [`Store`].

use crate::disk::RealDisk;
use crate::executor;
use crate::fold;
use crate::hasher::{Done, Hashers};
use crate::link::{NetHandle, ToEngine, ToNet};
use crate::rules::{Rules, WatchRules};
use crate::status::{Status, unix_now};
use crate::store::Store;
use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use mirror_backends::{Backend, Checkpoint, WatchConfig, WatchEvent, Watcher};
use mirror_core::disk::Disk;
use mirror_core::ignore::Ignore;
use mirror_core::journal::Base;
use mirror_core::replica::{self, Command, Halt, Hint, Input, Replay, Replica, Time};
use mirror_protocol::{ReplicaId, Timestamp};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How long a watcher's replayed event history may take before a full scan is done instead.
const REPLAY_LIMIT: Duration = Duration::from_secs(60);
/// How long the engine sleeps with nothing due: the root check and lone checkpoints ride on it.
const IDLE_TURN: Duration = Duration::from_secs(1);
/// A file this large that we hold a version of is fetched as a delta against it (above the
/// largest file pushed with its entry, 128 KiB: BENCHMARKS.md, "Deltas").
const DELTA_FROM: u64 = 256 * 1024;
/// A changed file this large is hashed by the pair's hashers, not on its engine's thread: about
/// a millisecond of blake3 here, which a small file saved meanwhile may wait.
const HASH_APART_FROM: u64 = 1024 * 1024;

type Engine = Replica<RealDisk, Store, Rules>;

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
    pub thread: JoinHandle<Result<(), Halt>>,
    /// The pair's replica id (persistent).
    pub replica: ReplicaId,
    /// How many peer sessions are attached now (a server may restart an engine nobody uses).
    pub attached: Arc<AtomicUsize>,
}

/// Why a pair's engine did not start.
#[derive(Debug)]
pub enum StartError {
    /// An `-i`/`-e` pattern does not parse.
    Pattern(crate::rules::PatternError),
    /// The pair's state cannot be opened (locked by another agent, unreadable, corrupt).
    Store(crate::store::StoreError),
    /// The pair is halted for safety until it is resumed.
    Halted(crate::store::Halted),
    /// The root cannot be watched.
    Watch(mirror_backends::WatchError),
    /// Some other file-system or system call failed.
    Io { what: &'static str, root: PathBuf, source: std::io::Error },
}

impl StartError {
    fn io(what: &'static str, root: &Path, source: std::io::Error) -> Self {
        StartError::Io { what, root: root.to_path_buf(), source }
    }

    /// What a server tells a client whose directory `target` it cannot sync. A halt is the
    /// server's to resume: `--resume` on the client does nothing for it, so the client is told
    /// so, not handed the server's own hint.
    pub fn told_to_client(&self, target: &Path) -> String {
        match self {
            StartError::Halted(h) => format!(
                "the server's directory {} is halted for safety ({}); it must be resumed on the server \
                 (restart the server with --resume, or `mirror-agent resume NAME` there under \
                 `mirror-agent run`): --resume on this client does not resume it",
                target.display(),
                h.reason
            ),
            e => format!("cannot sync {}: {e}", target.display()),
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Pattern(e) => e.fmt(f),
            StartError::Store(e) => e.fmt(f),
            StartError::Halted(e) => e.fmt(f),
            StartError::Watch(e) => e.fmt(f),
            StartError::Io { what, root, source } => write!(f, "{what} {}: {source}", root.display()),
        }
    }
}

/// Its text says everything, the cause included (so a chain printed with `{:#}` says it once).
impl std::error::Error for StartError {}

impl From<crate::rules::PatternError> for StartError {
    fn from(e: crate::rules::PatternError) -> Self {
        StartError::Pattern(e)
    }
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        StartError::Store(e)
    }
}

impl From<crate::store::Halted> for StartError {
    fn from(e: crate::store::Halted) -> Self {
        StartError::Halted(e)
    }
}

impl From<mirror_backends::WatchError> for StartError {
    fn from(e: mirror_backends::WatchError) -> Self {
        StartError::Watch(e)
    }
}

/// The time now, as a replica takes it.
fn now() -> Time {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let wall = Timestamp { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() };
    Time { mono: Instant::now(), wall }
}

/// Starts the engine thread for `cfg.root`. Returns once the root is watched; the initial scan
/// runs on the engine thread before it serves any peer.
pub fn spawn(cfg: EngineConfig, net: NetHandle) -> Result<EngineHandle, StartError> {
    let rules = Rules::new(&cfg.root, &cfg.includes, &cfg.excludes)?;
    let (store, loaded, disk, root_id) = open_base(&cfg)?;
    let folding = cfg.hooks.folding.unwrap_or_else(|| fold::probe(&cfg.root));
    log_folding(&cfg.root, folding);
    let patterns_key = patterns_key(&cfg.includes, &cfg.excludes);
    // The watcher may replay what changed while we were stopped, instead of a full scan, only
    // from a base that is whole and trusted: not halted, not `--resume`d, the same rules (paths
    // ignored last time are nowhere in the history we would replay). A `.gitignore` edited
    // while stopped is in that history and is handled as it would be live.
    let resume = match &loaded.checkpoint {
        Some(c)
            if loaded.existed
                && !cfg.resume
                && loaded.rules
                    == Some(replica::rules_fingerprint(
                        &patterns_key,
                        &BTreeSet::new(),
                        rules.info_exclude().as_deref(),
                        &loaded.index,
                    )) =>
        {
            Some(Checkpoint(c.clone()))
        }
        _ => None,
    };
    let (watch_tx, watch_rx) = bounded(4096);
    let wcfg = WatchConfig {
        root: cfg.root.clone(),
        descend: Arc::new(WatchRules::new(rules.clone())),
        poll_interval: cfg.poll_interval,
        resume,
        history: cfg.hooks.history.clone(),
    };
    let watcher = mirror_backends::start(cfg.backend, wcfg, watch_tx)?;
    // Small on purpose: a data chunk is up to 256 KiB, so this bounds what a fast sender can
    // queue in front of a slow disk to a few MiB.
    let (tx, rx) = bounded(16);
    let attached = Arc::new(AtomicUsize::new(0));
    let me = loaded.replica;
    let base = Base {
        replica: me,
        index: loaded.index,
        existed: loaded.existed,
        clock_start: loaded.clock_start,
        intents: loaded.intents,
    };
    let rcfg = replica::Config {
        root: cfg.root.clone(),
        host: cfg.host.clone(),
        debug_prefix: cfg.debug_prefix.clone(),
        folding,
        name_max: crate::paths::name_limit(&cfg.root),
        scan_delay: cfg.hooks.scan_delay,
        accept_empty: cfg.resume,
        patterns_key,
        index_pacing: replica::IndexPacing::default(),
        hash_apart_from: HASH_APART_FROM,
        // inotify reports closes; kqueue and FSEvents do not (BENCHMARKS.md, "A close is final").
        close_is_final: cfg!(target_os = "linux"),
        push_max: replica::PUSH_MAX,
        delta_from: DELTA_FROM,
        delta_avg: mirror_core::delta::DEFAULT_AVG,
    };
    let replica = Replica::new(rcfg, base, disk, store, rules, root_id, now())
        .map_err(|e| StartError::io("reserving clock values for", &cfg.root, e))?;
    let hashers = Hashers::new(cfg.root.clone());
    let driver = Driver { root: cfg.root.clone(), net, status: cfg.status, attached: attached.clone(), hashers };
    let name = format!("engine {}", cfg.root.display());
    let thread = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || driver.run(replica, rx, watcher, watch_rx))
        .map_err(|e| StartError::io("starting the engine thread of", &cfg.root, e))?;
    Ok(EngineHandle { tx, thread, replica: me, attached })
}

/// Opens the pair's base and its root: refuses a halted pair (unless `--resume`) and a root
/// that is not the directory synced before, and removes what a crash left in the agent's own
/// directory.
fn open_base(cfg: &EngineConfig) -> Result<(Store, crate::store::Loaded, RealDisk, (u64, u64)), StartError> {
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
        store.set_halted(None).map_err(|e| StartError::io("clearing the halt", &cfg.root, e))?;
    }
    let disk = RealDisk::new(cfg.root.clone());
    let root_id = disk.root_identity().map_err(|e| StartError::io("looking at", &cfg.root, e))?;
    if loaded.existed && loaded.root_id.is_some_and(|id| id != root_id) && !cfg.resume {
        let reason = format!(
            "sync root {} is not the directory that was synced before (another file system or a \
             re-created directory)",
            cfg.root.display()
        );
        store.set_halted(Some(&reason)).map_err(|e| StartError::io("recording the halt of", &cfg.root, e))?;
        return Err(crate::store::Halted { reason, hint: resume_hint }.into());
    }
    store.set_root_id(root_id).map_err(|e| StartError::io("recording the identity of", &cfg.root, e))?;
    // Whatever a crash left in the agent's own directory (temp and stash files) goes first.
    match executor::clean_agent_dir(&cfg.root) {
        Ok(0) => {}
        Ok(n) => log::info!("{}: removed {n} leftover temp files of an earlier run", cfg.root.display()),
        Err(e) => log::warn!("{}: cannot clean up temp files: {e}", cfg.root.display()),
    }
    Ok((store, loaded, disk, root_id))
}

/// Says once that names folding here are collisions, not synced twice.
fn log_folding(root: &Path, folding: mirror_core::fold::Folding) {
    if folding.active() {
        log::info!(
            "{}: this file system treats names differing only in {} as one; such names from peers \
             are reported as collisions, never synced twice",
            root.display(),
            match (folding.case, folding.unicode) {
                (true, true) => "case or Unicode normalization",
                (true, false) => "case",
                _ => "Unicode normalization",
            }
        );
    }
}

/// What identifies the command line's patterns (part of the rules' fingerprint).
fn patterns_key(includes: &[String], excludes: &[String]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (tag, pats) in [(b"i", includes), (b"e", excludes)] {
        for pat in pats {
            h.update(tag).update(pat.as_bytes()).update(&[0]);
        }
    }
    *h.finalize().as_bytes()
}

/// What the engine thread needs besides its replica.
struct Driver {
    root: PathBuf,
    net: NetHandle,
    status: Option<Status>,
    attached: Arc<AtomicUsize>,
    hashers: Hashers,
}

/// A watcher's event as a replica's hint (`Replayed` is the driver's business).
fn hint(ev: WatchEvent) -> Option<Hint> {
    Some(match ev {
        WatchEvent::Dirty(p) => Hint::Dirty(p),
        WatchEvent::Settled(p) => Hint::Settled(p),
        WatchEvent::Unlinked(p) => Hint::Unlinked(p),
        WatchEvent::Writing(p) => Hint::Writing(p),
        WatchEvent::RescanSubtree(p) => Hint::RescanSubtree(p),
        WatchEvent::Overflow => Hint::Overflow,
        WatchEvent::RootGone => Hint::RootGone,
        WatchEvent::Checkpoint(c) => Hint::Checkpoint(c.0),
        WatchEvent::Replayed => return None,
    })
}

impl Driver {
    fn run(
        mut self,
        mut replica: Engine,
        rx: Receiver<ToEngine>,
        mut watcher: Box<dyn Watcher>,
        watch_rx: Receiver<WatchEvent>,
    ) -> Result<(), Halt> {
        let started = Instant::now();
        let replayed = watcher.replaying() && self.replay(&mut replica, &watch_rx);
        if !replayed {
            replica.scan_all(now());
        }
        replica.started();
        log::info!(
            "watching {} ({} entries, {} backend, {} in {:.0?})",
            self.root.display(),
            replica.live(),
            watcher.backend().name(),
            if replayed { "caught up from its event history" } else { "scanned" },
            started.elapsed()
        );
        // After the line above: the daemon says "ready" at once.
        if let Some(s) = &self.status {
            s.set_scanned();
        }
        let mut watch_rx = watch_rx;
        let hashed = self.hashers.done().clone();
        let mut out = Vec::new();
        loop {
            let timeout = replica.next_deadline().map_or(IDLE_TURN, |d| d.saturating_duration_since(Instant::now()));
            let mut stop = false;
            select! {
                recv(rx) -> m => match m {
                    Ok(m) => stop |= self.feed_net(&mut replica, m),
                    Err(_) => stop = true,
                },
                recv(hashed) -> h => if let Ok(h) = h {
                    let h = self.hashers.take(h);
                    let input = match h.done {
                        Done::Hash(hash) => Input::Hashed { path: h.path, stat: h.stat, hash },
                        Done::Base(base) => Input::Signed { path: h.path, stat: h.stat, base },
                    };
                    replica.feed(now(), input);
                },
                recv(watch_rx) -> ev => match ev {
                    Ok(ev) => self.feed_watch(&mut replica, ev),
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
                    Ok(ev) => self.feed_watch(&mut replica, ev),
                    Err(_) => break,
                }
            }
            for _ in 0..64 {
                match rx.try_recv() {
                    Ok(m) => stop |= self.feed_net(&mut replica, m),
                    Err(_) => break,
                }
            }
            self.net.made_room();
            // A halted pair stops here: its sessions were told why, and the halt is on disk so
            // that a restart refuses too, until --resume.
            if stop || replica.halted().is_some() {
                break;
            }
            replica.turn(now(), &mut out);
            self.carry_out(&mut watcher, &mut out);
            // After the network send, so a save is on the wire before we wait for the disk.
            replica.settle(now(), &mut out);
            self.carry_out(&mut watcher, &mut out);
            self.report(&replica);
        }
        watcher.stop();
        let r = replica.stop(now(), &mut out);
        self.carry_out(&mut watcher, &mut out);
        r
    }

    /// Start-up from the watcher's event history instead of a full scan: every path the history
    /// names is read again, exactly as if the events were live, then the pair goes on. Returns
    /// false, leaving a full scan to the caller, when the history loses events, points at the
    /// whole root, or does not end within [`REPLAY_LIMIT`].
    fn replay(&self, replica: &mut Engine, watch_rx: &Receiver<WatchEvent>) -> bool {
        let end = Instant::now() + REPLAY_LIMIT;
        let mut hints = 0usize;
        let fallback = |replica: &mut Engine, why: &str| {
            log::info!("{}: {why}; scanning everything instead", self.root.display());
            replica.abandon_replay();
            false
        };
        loop {
            let ev = match watch_rx.recv_deadline(end) {
                Ok(ev) => ev,
                Err(_) => return fallback(replica, "the event history did not end in time"),
            };
            let Some(h) = hint(ev) else { break };
            if h == Hint::Overflow {
                return fallback(replica, "the event history lost events");
            }
            hints += 1;
            match replica.replay_hint(now(), h) {
                Replay::Go => {}
                Replay::Halted => return true,
                Replay::Useless => return fallback(replica, "the event history names the whole root"),
            }
        }
        log::debug!("{}: {hints} hints from the event history", self.root.display());
        replica.end_replay(now());
        true
    }

    fn feed_watch(&self, replica: &mut Engine, ev: WatchEvent) {
        if let Some(h) = hint(ev) {
            replica.feed(now(), Input::Hint(h));
        }
    }

    /// Feeds a message from the network thread; returns whether to stop.
    fn feed_net(&self, replica: &mut Engine, m: ToEngine) -> bool {
        let input = match m {
            ToEngine::Shutdown => return true,
            ToEngine::Connected { conn, peer_host, peer_replica } => Input::Connected { conn, peer_host, peer_replica },
            ToEngine::Message { conn, msg } => Input::Message { conn, msg },
            ToEngine::Disconnected { conn, reason } => Input::Disconnected { conn, reason },
            ToEngine::Drained { conn } => Input::Drained { conn },
        };
        replica.feed(now(), input);
        self.attached.store(replica.sessions(), Ordering::SeqCst);
        false
    }

    /// Does what the replica said.
    fn carry_out(&mut self, watcher: &mut Box<dyn Watcher>, out: &mut Vec<Command<File>>) {
        for c in out.drain(..) {
            match c {
                Command::Send { conn, msg } => self.net.send(ToNet::Send { conn, msg }),
                Command::Upload { conn, id, file, size, base } => {
                    self.net.send(ToNet::Upload { conn, id, file, size, base })
                }
                Command::Close { conn, reason } => self.net.send(ToNet::Close { conn, reason }),
                Command::WhenDrained { conn } => self.net.send(ToNet::WhenDrained { conn }),
                Command::Hash { path, stat } => self.hashers.hash(path, stat),
                Command::Sign { path, stat, hash, avg } => self.hashers.sign(path, stat, hash, avg),
                Command::Rewatch(dir) => watcher.refresh(&dir),
                Command::Problem(msg) => {
                    if let Some(s) = &self.status {
                        s.update(|r| r.last_error = Some(msg));
                    }
                }
                Command::Collision(msg) => {
                    if let Some(s) = &self.status {
                        s.update(|r| {
                            r.collisions += 1;
                            r.last_error = Some(msg);
                        });
                    }
                }
            }
        }
    }

    /// Updates what `status` shows: pending work, conflicts, and when we were last in sync.
    fn report(&self, replica: &Engine) {
        self.attached.store(replica.sessions(), Ordering::SeqCst);
        let Some(s) = &self.status else { return };
        let (pending, in_sync) = (replica.pending(), replica.in_sync());
        s.update(|r| {
            r.pending = pending as u64;
            r.conflicts = replica.conflicts();
            if in_sync {
                r.last_sync = Some(unix_now());
            }
        });
    }
}
