//! The persistent base of one sync pair: what was last synced for every path, the replica's
//! identity and clock, and whether the pair is halted.
//!
//! # Why a snapshot and a journal of our own
//! The engine keeps the whole index in memory anyway (reconciliation consults it for every
//! event), so the store needs durability, not queries. An append-only journal of changed entries
//! costs one sequential write and one `fdatasync` per batch of changes, and recovery is "the last
//! valid record for a path wins". An embedded B-tree store (redb, sled) would keep a second copy
//! of the index in pages and pay copy-on-write for every batch, for look-ups we never make.
//!
//! # Crash safety
//! - Journal records are `[len: u32 BE][check: 4 bytes of blake3][postcard payload]`. Loading
//!   stops at the first short or mismatching record: a torn tail from `kill -9` or a power cut is
//!   dropped. Losing the tail is safe: those paths' disk state no longer matches the stored stat,
//!   so the start-up scan reports them again as local changes with fresh versions.
//! - A snapshot is written to a temp file, fsynced and renamed over the old one, then a new,
//!   empty journal is renamed in. Both carry a generation number, and a journal is replayed only
//!   onto the snapshot of its own generation, so a crash between the two renames replays nothing
//!   twice and loses nothing.
//! - The replica clock is reserved in blocks ([`mirror_core::clock::BLOCK`]) that are persisted *before* any
//!   counter of the block is used, so a version once sent is never reused after a crash, even if
//!   the journal lost the entry that carried it.
//! - Before the disk is changed for a peer's entry, an `Intent` record says what it is about to
//!   hold (a `Void` follows if the change fails, the entry's own record if it succeeds). A
//!   restart that finds an intent without its outcome, and the disk holding exactly it, takes
//!   the path as that peer's version: as a fresh change of ours it would beat whatever the peer
//!   did next (a directory applied just before a `kill -9` came back after the peer deleted it).
//! - Entries are handed to the kernel before they are sent to any peer (the `fdatasync` comes
//!   after the send), so a `kill -9` never makes us forget a version a peer holds.
//! - A lock file (`flock`) keeps a second agent off the same pair.
//!
//! # What else the journal holds
//! Every entry carries the replica's change counter (`seq`) it was last changed at, and `Have`
//! records say up to which counter of each peer replica everything was taken in: after a
//! reconnect the peer sends only what changed since then. A `Have` is appended after the entries
//! it covers, so a torn tail can only lose it together with them. A `Rules` record (the ignore
//! rules changed) voids every earlier `Have`: entries skipped under the old rules may be wanted.
//! A `Checkpoint` record is the watcher's position in its event history (FSEvents) up to which
//! every change is in the entries before it; it too is appended after them.
//!
//! # Formats
//! Journal format 5 added `Intent` and `Void` records; 4 added file modes; 3 added `Checkpoint`
//! records; 2 added counters, `Have` and `Rules`. Every earlier format is still read; a file of a newer format is refused with a clear error rather than half read.
//! Format 1 files (no counters) are still read; their entries count as changed at 0.
//!
//! # Why one file
//! About 800 lines, over the usual 600: the record format, the replay that reads it and the
//! writer that appends and compacts it are one invariant (what is written is what a restart
//! replays, generation by generation); split, the format would live in two places. The tests
//! are apart, in `store/tests.rs`.

use crate::index::{Index, LocalEntry, Stat};
use mirror_protocol::{Entry, RelPath, ReplicaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const SNAP_MAGIC: &[u8; 8] = b"MIRBASE4";
const LOG_MAGIC: &[u8; 8] = b"MIRJRNL5";
/// Records that fit in memory at once while loading; bounds a corrupt length prefix.
const MAX_RECORD: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct Header {
    replica: ReplicaId,
    generation: u64,
}

/// One record of a snapshot or journal (format 4: formats 2 and 3 with a file's permission bits;
/// new variants go at the end).
#[derive(Serialize, Deserialize)]
enum Record {
    /// A path as this replica knows it, with the change counter it was last changed at.
    Entry { entry: Entry, stat: Option<Stat>, seq: u64 },
    /// Everything of peer replica `peer` up to its counter `seq` has been taken in.
    Have { peer: ReplicaId, seq: u64 },
    /// The ignore rules in force from here on (a fingerprint); voids every earlier `Have`.
    Rules { fingerprint: Fingerprint },
    /// The watcher's history position that the entries so far cover (format 3).
    Checkpoint { text: String },
    /// What the disk is about to be made to hold for a peer's entry (format 5), written before
    /// the change: if the process dies between the change and its `Entry` record, the restart
    /// finds the disk holding exactly this and takes it as the peer's version it is, not as a
    /// new change of ours (which, concurrent with whatever the peer did next, brought deleted
    /// directories back: model seed 20038).
    Intent { entry: Entry },
    /// The change begun by the last `Intent` for this path failed: nothing to take (format 5).
    Void { path: RelPath },
}

/// The records of formats 1 to 3, whose file entries carried only an executable bit.
mod legacy {
    use super::{Fingerprint, ReplicaId, Stat};
    use mirror_protocol::{Hash, RelPath, Timestamp, VersionVector};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub enum Kind {
        File { size: u64, hash: Hash, executable: bool },
        Directory,
        Symlink { target: Vec<u8> },
        Deleted,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Entry {
        pub path: RelPath,
        pub kind: Kind,
        pub mtime: Timestamp,
        pub version: VersionVector,
        pub origin: String,
    }

    /// Formats 2 and 3.
    #[derive(Serialize, Deserialize)]
    pub enum Record {
        Entry { entry: Entry, stat: Option<Stat>, seq: u64 },
        Have { peer: ReplicaId, seq: u64 },
        Rules { fingerprint: Fingerprint },
        Checkpoint { text: String },
    }

    /// Format 1: entries only.
    #[derive(Serialize, Deserialize)]
    pub struct RecordV1 {
        pub entry: Entry,
        pub stat: Option<Stat>,
    }

    impl Entry {
        /// The entry in today's terms: a file's mode is what its recorded stat says, or what
        /// its executable bit implied under the usual umask.
        pub fn upgrade(self, stat: Option<&Stat>) -> mirror_protocol::Entry {
            use mirror_protocol::Kind as K;
            let kind = match self.kind {
                Kind::File { size, hash, executable } => {
                    let default = if executable { 0o755 } else { 0o644 };
                    K::File { size, hash, mode: stat.map_or(default, |s| s.mode & 0o777) }
                }
                Kind::Directory => K::Directory,
                Kind::Symlink { target } => K::Symlink { target },
                Kind::Deleted => K::Deleted,
            };
            mirror_protocol::Entry {
                path: self.path,
                kind,
                mtime: self.mtime,
                version: self.version,
                origin: self.origin.into(),
            }
        }
    }

    impl Record {
        pub fn upgrade(self) -> super::Record {
            match self {
                Record::Entry { entry, stat, seq } => {
                    super::Record::Entry { entry: entry.upgrade(stat.as_ref()), stat, seq }
                }
                Record::Have { peer, seq } => super::Record::Have { peer, seq },
                Record::Rules { fingerprint } => super::Record::Rules { fingerprint },
                Record::Checkpoint { text } => super::Record::Checkpoint { text },
            }
        }
    }
}

/// A fingerprint of the ignore rules.
pub use mirror_core::journal::Fingerprint;

/// What the records of a pair add up to.
#[derive(Debug, Default)]
struct Replayed {
    index: Index,
    have: BTreeMap<ReplicaId, u64>,
    rules: Option<Fingerprint>,
    checkpoint: Option<String>,
    intents: BTreeMap<RelPath, Entry>,
}

impl Replayed {
    fn apply(&mut self, r: Record) {
        match r {
            Record::Entry { entry, stat, seq } => {
                self.intents.remove(&entry.path);
                self.index.insert(entry.path.clone(), LocalEntry { entry, stat, seq });
            }
            Record::Intent { entry } => {
                self.intents.insert(entry.path.clone(), entry);
            }
            Record::Void { path } => {
                self.intents.remove(&path);
            }
            Record::Have { peer, seq } => {
                self.have.insert(peer, seq);
            }
            Record::Rules { fingerprint } => {
                self.have.clear();
                self.rules = Some(fingerprint);
            }
            Record::Checkpoint { text } => self.checkpoint = Some(text),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct Meta {
    /// Counters below this may have been used; the next run starts here.
    clock_reserved: u64,
    /// Device and inode of the root when the pair last ran.
    root_id: Option<(u64, u64)>,
}

/// An error with the path it happened at.
#[derive(Debug)]
pub struct StoreError {
    pub path: PathBuf,
    pub what: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sync state {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for StoreError {}

fn err(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError { path: path.to_path_buf(), what: what.to_string() }
}

/// What a pair's state dir held.
#[derive(Debug)]
pub struct Loaded {
    pub replica: ReplicaId,
    pub index: Index,
    /// Whether any base existed (false on the first run of a pair).
    pub existed: bool,
    pub clock_start: u64,
    pub root_id: Option<(u64, u64)>,
    pub halted: Option<String>,
    /// The ignore rules in force when the pair last ran.
    pub rules: Option<Fingerprint>,
    /// The watcher's history position the base covers (see [`Store::set_checkpoint`]).
    pub checkpoint: Option<String>,
    /// Changes begun for peers whose outcome was never recorded (the process died): for the
    /// start-up scan only, which takes each whose path holds exactly it.
    pub intents: BTreeMap<RelPath, Entry>,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    log: BufWriter<File>,
    generation: u64,
    replica: ReplicaId,
    records_since_snapshot: usize,
    live_at_snapshot: usize,
    meta: Meta,
    /// Records handed to the kernel but not yet fsynced.
    unsynced: bool,
    /// Per peer replica, the counter up to which everything was taken in.
    have: BTreeMap<ReplicaId, u64>,
    rules: Option<Fingerprint>,
    checkpoint: Option<String>,
    /// `Have`/`Rules`/`Checkpoint` records waiting for the next [`append`](Self::append).
    pending: Vec<u8>,
    _lock: File,
}

/// The state directory of the pair syncing `root`.
pub fn pair_dir(state_dir: &Path, root: &Path) -> PathBuf {
    let key = blake3::hash(root.as_os_str().as_encoded_bytes());
    state_dir.join("pairs").join(&key.to_hex()[..16])
}

/// Creates the pair's directory and takes its lock: one agent per pair.
fn lock_pair(dir: &Path, root: &Path) -> Result<File, StoreError> {
    private_dir(dir).map_err(|e| err(dir, e))?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(&lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(err(dir, format!("another mirror-agent is already syncing {} with this state", root.display())));
    }
    Ok(lock)
}

/// The pair's state as its snapshot and journal have it: their header (a new replica id when
/// there is no snapshot), whether there was a base, and the records replayed.
fn replay(dir: &Path) -> Result<(Header, bool, Replayed), StoreError> {
    let snap_path = dir.join("base.snap");
    let mut state = Replayed::default();
    let (header, mut existed) = match File::open(&snap_path) {
        Ok(f) => {
            let (h, recs) = read_file(f, SNAP_MAGIC, true).map_err(|e| err(&snap_path, e))?;
            recs.into_iter().for_each(|r| state.apply(r));
            (h, true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut rnd = [0u8; 8];
            getrandom::fill(&mut rnd).map_err(|e| err(dir, e))?;
            (Header { replica: u64::from_le_bytes(rnd) | 1, generation: 0 }, false)
        }
        Err(e) => return Err(err(&snap_path, e)),
    };
    let log_path = dir.join("base.log");
    if let Ok(f) = File::open(&log_path) {
        match read_file(f, LOG_MAGIC, false) {
            Ok((h, recs)) if h.generation == header.generation && h.replica == header.replica => {
                existed = true;
                recs.into_iter().for_each(|r| state.apply(r));
            }
            Ok(_) => {} // a journal of an older generation: already in the snapshot
            Err(e) => log::warn!("{}: {e}; ignoring the journal", log_path.display()),
        }
    }
    Ok((header, existed, state))
}

/// Why the pair syncing `root` is halted, if it is (read without opening the pair).
pub fn halted_reason(state_dir: &Path, root: &Path) -> Option<String> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    fs::read_to_string(pair_dir(state_dir, &root).join("halted")).ok()
}

impl Store {
    /// Opens (creating if needed) the state of the pair syncing `root`.
    pub fn open(state_dir: &Path, root: &Path) -> Result<(Store, Loaded), StoreError> {
        let dir = pair_dir(state_dir, root);
        let lock = lock_pair(&dir, root)?;
        let root_file = dir.join("root");
        if !root_file.exists() {
            write_atomic(&root_file, root.as_os_str().as_encoded_bytes()).map_err(|e| err(&root_file, e))?;
        }
        let meta_path = dir.join("meta");
        let meta: Meta = match fs::read(&meta_path) {
            Ok(b) => postcard::from_bytes(&b).map_err(|e| err(&meta_path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(err(&meta_path, e)),
        };
        let halted = match fs::read_to_string(dir.join("halted")) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(&dir.join("halted"), e)),
        };
        let (header, existed, state) = replay(&dir)?;
        let Replayed { index, have, rules, checkpoint, intents } = state;
        let loaded = Loaded {
            replica: header.replica,
            existed,
            clock_start: meta.clock_reserved,
            root_id: meta.root_id,
            halted,
            index,
            rules,
            checkpoint: checkpoint.clone(),
            intents,
        };
        // Start a fresh generation: the loaded state as a snapshot, an empty journal.
        let generation = header.generation + 1;
        let log = write_snapshot(&dir, header.replica, generation, &loaded.index, &have, rules, checkpoint.as_deref())
            .map_err(|e| err(&dir, e))?;
        let store = Store {
            log: BufWriter::new(log),
            dir,
            generation,
            replica: header.replica,
            records_since_snapshot: 0,
            live_at_snapshot: loaded.index.values().filter(|l| !l.entry.kind.is_deleted()).count(),
            meta,
            unsynced: false,
            have,
            rules,
            checkpoint,
            pending: Vec::new(),
            _lock: lock,
        };
        Ok((store, loaded))
    }

    /// Appends the current entries of `paths`, then any `Have`/`Rules` records set since the
    /// last call, and makes them durable.
    pub fn append<'a>(&mut self, entries: impl Iterator<Item = &'a LocalEntry>) -> io::Result<()> {
        let wrote = self.write_entries(entries)?;
        if !wrote && self.pending.is_empty() {
            return self.sync();
        }
        let pending = std::mem::take(&mut self.pending);
        self.log.write_all(&pending)?;
        self.log.flush()?;
        self.unsynced = false;
        self.log.get_ref().sync_data()
    }

    /// Appends one entry and hands it to the kernel at once, without waiting for the disk: it then
    /// survives the process being killed (not a power cut; the next [`append`](Self::append) or
    /// [`sync`](Self::sync) makes it durable).
    #[cfg(test)]
    pub fn append_now(&mut self, l: &LocalEntry) -> io::Result<()> {
        self.append_unsynced(std::iter::once(l))
    }

    /// Records, before the disk is changed, what it is about to hold for a peer's entry (see
    /// [`Record::Intent`]); handed to the kernel, not waited for.
    pub fn append_intent(&mut self, entry: &Entry) -> io::Result<()> {
        self.append_raw(&Record::Intent { entry: entry.clone() })
    }

    /// The change begun by the last [`append_intent`](Self::append_intent) for `path` failed.
    pub fn append_void(&mut self, path: &RelPath) -> io::Result<()> {
        self.append_raw(&Record::Void { path: path.clone() })
    }

    fn append_raw(&mut self, r: &Record) -> io::Result<()> {
        let mut buf = Vec::new();
        encode_record(&mut buf, r);
        self.records_since_snapshot += 1;
        self.unsynced = true;
        self.log.write_all(&buf)?;
        self.log.flush()
    }

    /// [`append_now`](Self::append_now) for several entries (no `Have` or `Rules` records: those
    /// wait for [`append`](Self::append), after the entries they cover).
    pub fn append_unsynced<'a>(&mut self, entries: impl Iterator<Item = &'a LocalEntry>) -> io::Result<()> {
        if self.write_entries(entries)? {
            self.unsynced = true;
            self.log.flush()?;
        }
        Ok(())
    }

    /// Writes a record of each entry to the log (not flushed), a buffer at a time: a start-up
    /// scan journals every path at once. Whether there were any.
    fn write_entries<'a>(&mut self, entries: impl Iterator<Item = &'a LocalEntry>) -> io::Result<bool> {
        const CHUNK: usize = 256 * 1024;
        let mut buf = Vec::new();
        let mut any = false;
        for l in entries {
            encode_record(&mut buf, &entry_record(l));
            self.records_since_snapshot += 1;
            any = true;
            if buf.len() >= CHUNK {
                self.unsynced = true;
                self.log.write_all(&buf)?;
                buf.clear();
            }
        }
        self.log.write_all(&buf)?;
        Ok(any)
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.unsynced) {
            self.log.flush()?;
            self.log.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Whether the journal has grown enough that a snapshot is worth writing.
    pub fn wants_snapshot(&self) -> bool {
        self.records_since_snapshot > 10_000.max(2 * self.live_at_snapshot)
    }

    /// Up to which counter everything of peer replica `peer` was taken in (0: nothing known).
    pub fn have(&self, peer: ReplicaId) -> u64 {
        self.have.get(&peer).copied().unwrap_or(0)
    }

    /// Records that everything of `peer` up to `seq` was taken in; written by the next
    /// [`append`](Self::append), after the entries it covers.
    pub fn set_have(&mut self, peer: ReplicaId, seq: u64) {
        if self.have.insert(peer, seq) != Some(seq) {
            encode_record(&mut self.pending, &Record::Have { peer, seq });
            self.records_since_snapshot += 1;
        }
    }

    /// Whether `Have`/`Rules` records wait for the next [`append`](Self::append).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records the ignore rules now in force; if they differ from the last ones, forgets every
    /// peer's `Have` (written by the next [`append`](Self::append)).
    pub fn set_rules(&mut self, fingerprint: Fingerprint) {
        if self.rules != Some(fingerprint) {
            self.rules = Some(fingerprint);
            self.have.clear();
            encode_record(&mut self.pending, &Record::Rules { fingerprint });
            self.records_since_snapshot += 1;
        }
    }

    /// Records the watcher's history position that the entries appended so far (and with the
    /// next [`append`](Self::append)) cover; written by that append, after them.
    pub fn set_checkpoint(&mut self, text: String) {
        if self.checkpoint.as_ref() != Some(&text) {
            encode_record(&mut self.pending, &Record::Checkpoint { text: text.clone() });
            self.checkpoint = Some(text);
            self.records_since_snapshot += 1;
        }
    }

    /// Writes `index` as the new snapshot and starts an empty journal.
    pub fn snapshot(&mut self, index: &Index) -> io::Result<()> {
        let generation = self.generation + 1;
        // The snapshot holds the `Have`/`Rules` state itself: nothing is pending after it.
        self.pending.clear();
        self.log = BufWriter::new(write_snapshot(
            &self.dir,
            self.replica,
            generation,
            index,
            &self.have,
            self.rules,
            self.checkpoint.as_deref(),
        )?);
        self.generation = generation;
        self.records_since_snapshot = 0;
        self.live_at_snapshot = index.values().filter(|l| !l.entry.kind.is_deleted()).count();
        Ok(())
    }

    /// Reserves counters up to `upto` (persisted before use).
    pub fn reserve_clock(&mut self, upto: u64) -> io::Result<()> {
        self.meta.clock_reserved = upto;
        self.write_meta()
    }

    pub fn set_root_id(&mut self, id: (u64, u64)) -> io::Result<()> {
        if self.meta.root_id != Some(id) {
            self.meta.root_id = Some(id);
            self.write_meta()?;
        }
        Ok(())
    }

    fn write_meta(&self) -> io::Result<()> {
        write_atomic(&self.dir.join("meta"), &postcard::to_stdvec(&self.meta).map_err(io::Error::other)?)
    }

    /// Records that the pair is halted, and why; survives restarts until resumed.
    pub fn set_halted(&mut self, reason: Option<&str>) -> io::Result<()> {
        let p = self.dir.join("halted");
        match reason {
            Some(r) => write_atomic(&p, r.as_bytes()),
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes the snapshot of `generation`, then an empty journal of the same generation (in that
/// order: see the module docs), and returns the journal open for appending.
fn write_snapshot(
    dir: &Path,
    replica: ReplicaId,
    generation: u64,
    index: &Index,
    have: &BTreeMap<ReplicaId, u64>,
    rules: Option<Fingerprint>,
    checkpoint: Option<&str>,
) -> io::Result<File> {
    let header = postcard::to_stdvec(&Header { replica, generation }).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(64 + index.len() * 96);
    buf.extend_from_slice(SNAP_MAGIC);
    encode_record_raw(&mut buf, &header);
    if let Some(fingerprint) = rules {
        encode_record(&mut buf, &Record::Rules { fingerprint });
    }
    for (peer, seq) in have {
        encode_record(&mut buf, &Record::Have { peer: *peer, seq: *seq });
    }
    for l in index.values() {
        encode_record(&mut buf, &entry_record(l));
    }
    if let Some(text) = checkpoint {
        encode_record(&mut buf, &Record::Checkpoint { text: text.to_string() });
    }
    write_atomic(&dir.join("base.snap"), &buf)?;
    let mut log = LOG_MAGIC.to_vec();
    encode_record_raw(&mut log, &header);
    write_atomic(&dir.join("base.log"), &log)?;
    OpenOptions::new().append(true).open(dir.join("base.log"))
}

fn check(payload: &[u8]) -> [u8; 4] {
    let h = blake3::hash(payload);
    let mut c = [0u8; 4];
    c.copy_from_slice(&h.as_bytes()[..4]);
    c
}

fn encode_record_raw(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&check(payload));
    out.extend_from_slice(payload);
}

fn entry_record(l: &LocalEntry) -> Record {
    Record::Entry { entry: l.entry.clone(), stat: l.stat, seq: l.seq }
}

fn encode_record(out: &mut Vec<u8>, r: &Record) {
    // Serializing our own types into a Vec cannot fail.
    if let Ok(p) = postcard::to_stdvec(r) {
        encode_record_raw(out, &p);
    }
}

/// Reads a snapshot or journal: magic (`[current, format 1]`), header record, then records up to
/// the first invalid one. A snapshot must be whole (`strict`); a journal may end in a torn record.
/// Reads a snapshot or journal whose current magic is `magic`; its last byte is the format, and
/// every earlier format is read too.
fn read_file(mut f: File, magic: &[u8; 8], strict: bool) -> io::Result<(Header, Vec<Record>)> {
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if bytes.len() < 8 || bytes[..7] != magic[..7] || bytes[7] < b'1' {
        return Err(bad("not a mirror-agent state file"));
    }
    if bytes[7] > magic[7] {
        return Err(bad(&format!(
            "written by a newer mirror-agent (state format {}, this one reads up to {})",
            char::from(bytes[7]),
            char::from(magic[7])
        )));
    }
    let format = bytes[7];
    let mut pos = 8;
    let next = |pos: &mut usize| -> Option<&[u8]> {
        let rest = &bytes[*pos..];
        if rest.len() < 8 {
            return None;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_RECORD || rest.len() < 8 + len {
            return None;
        }
        let payload = &rest[8..8 + len];
        if check(payload) != rest[4..8] {
            return None;
        }
        *pos += 8 + len;
        Some(payload)
    };
    let header: Header = next(&mut pos).and_then(|p| postcard::from_bytes(p).ok()).ok_or_else(|| bad("bad header"))?;
    let mut recs = Vec::new();
    while let Some(p) = next(&mut pos) {
        let r = match format {
            b'1' => postcard::from_bytes::<legacy::RecordV1>(p).map(|r| Record::Entry {
                entry: r.entry.upgrade(r.stat.as_ref()),
                stat: r.stat,
                seq: 0,
            }),
            b'2' | b'3' => postcard::from_bytes::<legacy::Record>(p).map(legacy::Record::upgrade),
            _ => postcard::from_bytes(p),
        };
        match r {
            Ok(r) => recs.push(r),
            Err(_) => break,
        }
    }
    if strict && pos != bytes.len() {
        return Err(bad("snapshot is damaged"));
    }
    if pos != bytes.len() {
        log::info!("dropped a torn journal tail of {} bytes (an interrupted write)", bytes.len() - pos);
    }
    Ok((header, recs))
}

impl mirror_core::journal::Journal for Store {
    fn append(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()> {
        Store::append(self, entries)
    }
    fn append_unsynced(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()> {
        Store::append_unsynced(self, entries)
    }
    fn append_intent(&mut self, entry: &Entry) -> io::Result<()> {
        Store::append_intent(self, entry)
    }
    fn append_void(&mut self, path: &RelPath) -> io::Result<()> {
        Store::append_void(self, path)
    }
    fn sync(&mut self) -> io::Result<()> {
        Store::sync(self)
    }
    fn has_pending(&self) -> bool {
        Store::has_pending(self)
    }
    fn wants_snapshot(&self) -> bool {
        Store::wants_snapshot(self)
    }
    fn snapshot(&mut self, index: &Index) -> io::Result<()> {
        Store::snapshot(self, index)
    }
    fn have(&self, peer: ReplicaId) -> u64 {
        Store::have(self, peer)
    }
    fn set_have(&mut self, peer: ReplicaId, seq: u64) {
        Store::set_have(self, peer, seq)
    }
    fn set_rules(&mut self, fingerprint: Fingerprint) {
        Store::set_rules(self, fingerprint)
    }
    fn set_checkpoint(&mut self, text: String) {
        Store::set_checkpoint(self, text)
    }
    fn reserve_clock(&mut self, upto: u64) -> io::Result<()> {
        Store::reserve_clock(self, upto)
    }
    fn set_halted(&mut self, reason: Option<&str>) -> io::Result<()> {
        Store::set_halted(self, reason)
    }
    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A pair that is halted for safety refuses to start until it is resumed.
#[derive(Debug)]
pub struct Halted {
    /// Why it halted.
    pub reason: String,
    /// How to resume it, for the user of this machine.
    pub hint: String,
}

impl std::fmt::Display for Halted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.reason, self.hint)
    }
}

impl std::error::Error for Halted {}

/// Creates `dir` and its missing parents for the agent's state: owner only (0700), whatever the
/// umask, so no other local user can read the state or add a trusted ID.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync the directory.
///
/// The file is readable by its owner only, whatever the umask: everything written this way is
/// the agent's state (or the user's configuration, which names their machines and paths).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
