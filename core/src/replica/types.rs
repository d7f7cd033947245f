//! The replica's vocabulary: what it is made with ([`Config`]), what it is told ([`Input`],
//! [`Hint`], [`Time`]), what it says to do ([`Command`]), and why it stops ([`Halt`],
//! [`PeerError`]).

use super::ConnId;
use crate::fold::Folding;
use crate::tree::Stat;
use mirror_protocol::{Hash, MAX_BATCH_ENTRIES, Message, RelPath, ReplicaId, Timestamp, Violation};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a replica is told when it is made.
#[derive(Debug, Clone)]
pub struct Config {
    /// The root, for messages only: the replica reaches it through its [`Disk`].
    pub root: PathBuf,
    /// This machine's name, the origin of our changes.
    pub host: String,
    /// Paths starting with this are traced (every decision logged).
    pub debug_prefix: Option<Vec<u8>>,
    /// How this file system compares names.
    pub folding: Folding,
    /// The longest name to make here (conflict copies are shortened to fit).
    pub name_max: usize,
    /// A fixed delay before every read of a changed path (the end-to-end tests' hidden flag).
    pub scan_delay: Option<Duration>,
    /// `--resume`: the start-up scan accepts an emptied root (the user said so).
    pub accept_empty: bool,
    /// A hash of the command line's `-i`/`-e` patterns (part of the rules fingerprint).
    pub patterns_key: [u8; 32],
    /// How the index goes out to a peer.
    pub index_pacing: IndexPacing,
    /// A changed file of this many bytes or more is hashed by the driver, apart
    /// ([`Command::Hash`]); smaller ones are hashed where they are seen (`u64::MAX`: all).
    pub hash_apart_from: u64,
    /// The watcher reports a writer's close as settled (inotify): such a hint is read at once,
    /// however recently the path changed before ([`crate::debounce`]).
    pub close_is_final: bool,
    /// Changed files of up to this many bytes go with their entry ([`super::PUSH_MAX`] in the
    /// agent).
    pub push_max: u64,
    /// A file of this many bytes or more that we hold a version of is requested as a delta
    /// against it ([`crate::delta`]; `u64::MAX`: never).
    pub delta_from: u64,
    /// The smallest average chunk size a base is cut at (larger files get larger chunks:
    /// [`crate::delta::avg_for`]).
    pub delta_avg: u32,
}

/// How the index goes out: `batch` entries a message (at most [`MAX_BATCH_ENTRIES`]), `burst`
/// messages before waiting for the connection to drain ([`Command::WhenDrained`]). The default
/// sends about 4,096 entries, a few hundred KiB, at a time, however large the index: serialised
/// whole at once it held 100 MiB and more per peer for a million files, and as much again for
/// each client of a hub. The simulator takes small ones, so that its small trees go out in
/// several bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPacing {
    pub batch: usize,
    pub burst: usize,
}

impl Default for IndexPacing {
    fn default() -> Self {
        IndexPacing { batch: MAX_BATCH_ENTRIES, burst: 16 }
    }
}

/// The time, as the driver sees it: a monotonic instant for every delay, and the wall clock
/// only for what is recorded (the time of a deletion). Ordering never uses the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Time {
    pub mono: Instant,
    pub wall: Timestamp,
}

/// What the watcher said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something at this path (relative to the root) changed and may still be changing.
    Dirty(PathBuf),
    /// Something at this path changed and looks finished (a close, a rename).
    Settled(PathBuf),
    /// A writer wrote into this file and may hold it open: it is read at its close (`Settled`),
    /// or a second after the first write (a log written for hours is read once a second).
    Writing(PathBuf),
    /// The name at this path was unlinked (it is read once unlinks stop: `rm -rf` of the root
    /// unlinks every file before the root).
    Unlinked(PathBuf),
    /// Everything beneath this path is to be read again (a directory moved in).
    RescanSubtree(PathBuf),
    /// Events were lost: everything is to be read again.
    Overflow,
    /// The root itself is gone.
    RootGone,
    /// The watcher's history position, once every hint before it was given.
    Checkpoint(String),
}

/// What happened.
#[derive(Debug)]
pub enum Input {
    Hint(Hint),
    /// A peer finished the handshake.
    Connected {
        conn: ConnId,
        peer_host: String,
        peer_replica: ReplicaId,
    },
    /// A peer's message, already checked against the session rules of the protocol.
    Message {
        conn: ConnId,
        msg: Message,
    },
    Disconnected {
        conn: ConnId,
        reason: String,
    },
    /// What was sent on `conn` up to a [`Command::WhenDrained`] has mostly left: send more.
    Drained {
        conn: ConnId,
    },
    /// The answer to [`Command::Hash`]: the hash of the file at `path` read while its stat was
    /// `stat` before and after, or why not (`Interrupted`: it changed while being read).
    Hashed {
        path: RelPath,
        stat: Stat,
        hash: io::Result<Hash>,
    },
    /// The answer to [`Command::Sign`]: the chunks of the file at `path` read while its stat
    /// was `stat` before and after, or why not.
    Signed {
        path: RelPath,
        stat: Stat,
        base: io::Result<mirror_protocol::delta::Base>,
    },
    /// Nothing but time passed (a deadline of [`Replica::next_deadline`]).
    Timer,
}

/// What to do.
#[derive(Debug)]
pub enum Command<U> {
    Send {
        conn: ConnId,
        msg: Message,
    },
    /// Stream `file` as the answer to request `id`: at most `size` bytes, then `DataEnd`; as a
    /// delta against `base` when the request named one ([`crate::delta::Encoder`]).
    Upload {
        conn: ConnId,
        id: u64,
        file: U,
        size: u64,
        base: Option<Box<mirror_protocol::delta::Base>>,
    },
    /// Say goodbye with `reason` and close.
    Close {
        conn: ConnId,
        reason: String,
    },
    /// Say [`Input::Drained`] once what was sent on `conn` so far has mostly left (the
    /// connection can take more without holding much): the index goes out a burst at a time.
    WhenDrained {
        conn: ConnId,
    },
    /// Hash the file at `path`, expected to have `stat`, and say [`Input::Hashed`]: off the
    /// replica's thread, for a large file.
    Hash {
        path: RelPath,
        stat: Stat,
    },
    /// Describe the file at `path`, expected to have `stat` and the content `hash`, as chunks
    /// of `avg` bytes on average, and say [`Input::Signed`]: the base of a delta, read off the
    /// replica's thread (the base carries `hash` as it is: not computed again).
    Sign {
        path: RelPath,
        stat: Stat,
        hash: Hash,
        avg: u32,
    },
    /// The ignore rules of this directory (relative to the root) changed: watch it again.
    Rewatch(PathBuf),
    /// A problem the user should see (`status`'s last error).
    Problem(String),
    /// A name collision (counted in `status`, and its last error).
    Collision(String),
}

/// Why a pair stopped syncing until the user looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// The root is empty where the base knew `live` paths (an unmounted disk looks the same).
    RootEmpty { live: usize },
    /// The watcher saw the root go.
    RootVanished,
    /// The root is another directory than the one synced (another file system, re-created).
    RootReplaced,
    /// The root cannot be looked at.
    RootGone(String),
    /// The base cannot be written.
    StateUnwritable { location: String, error: String },
    /// The replica clock cannot be reserved.
    ClockUnwritable(String),
}

/// A halt: the reason, with the root it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub root: PathBuf,
    pub reason: HaltReason,
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = self.root.display();
        match &self.reason {
            HaltReason::RootEmpty { live } => write!(
                f,
                "sync root {root} is empty, but {live} paths were synced from it; halting instead of \
                 deleting them everywhere"
            ),
            HaltReason::RootVanished => write!(
                f,
                "sync root {root} vanished or was unmounted; halting this pair instead of propagating deletions"
            ),
            HaltReason::RootReplaced => write!(
                f,
                "sync root {root} was replaced (another file system mounted, or the directory re-created); \
                 halting instead of syncing it"
            ),
            HaltReason::RootGone(e) => {
                write!(f, "sync root {root} is gone ({e}); halting this pair instead of propagating deletions")
            }
            HaltReason::StateUnwritable { location, error } => {
                write!(f, "cannot write the sync state in {location}: {error}")
            }
            HaltReason::ClockUnwritable(e) => write!(f, "cannot persist the replica clock: {e}"),
        }
    }
}

impl std::error::Error for Halt {}

/// Why a session ends on something its peer sent.
#[derive(Debug)]
pub enum PeerError {
    /// The peer broke the protocol (PROTOCOL.md, "Session states").
    Violation(Violation),
    /// The peer said goodbye: the normal end of a session. Its reason, as it sent it.
    Left(String),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Violation(v) => v.fmt(f),
            Self::Left(reason) => write!(f, "peer said goodbye: {}", crate::logsafe::shown(reason)),
        }
    }
}

/// The outcome of one event of a watcher's replayed history ([`Replica::replay_hint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Taken in; go on.
    Go,
    /// The pair halted.
    Halted,
    /// The history is no use (it names the whole root): scan everything instead.
    Useless,
}
