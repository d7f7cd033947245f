//! [`MemJournal`]: a replica's persistent base in memory, behind `mirror_core::journal::Journal`,
//! that a crash cuts short.
//!
//! It keeps what the agent's journal (`agent/src/store.rs`) keeps, as records in the order
//! written, grouped in *writes* (one call, one `write(2)` there). A crash ([`MemJournal::crash`])
//! is a `kill -9`: everything handed over survives but the last write, which may be torn after
//! any of its records (the store drops a torn tail at start-up). Clock reservations and the halt
//! are written atomically beside the journal and always survive. [`MemJournal::base`] is what a
//! restart loads, computed from the records exactly as the store replays them.

use mirror_core::journal::{Base, Fingerprint, Journal};
use mirror_core::tree::{Index, LocalEntry};
use mirror_protocol::fuzz::Rng;
use mirror_protocol::{Entry, RelPath, ReplicaId};
use std::collections::BTreeMap;
use std::io;

#[derive(Debug, Clone)]
enum Record {
    Entry(LocalEntry),
    Intent(Entry),
    Void(RelPath),
    Have(ReplicaId, u64),
    Rules(Fingerprint),
    Checkpoint(String),
}

/// A replica's base in memory.
#[derive(Debug, Clone)]
pub struct MemJournal {
    replica: ReplicaId,
    /// The snapshot the journal starts from (written whole, atomically).
    snapshot: Vec<Record>,
    /// Each write since the snapshot, in order.
    writes: Vec<Vec<Record>>,
    /// Records waiting for the next `append` (`Have`, `Rules`, `Checkpoint`).
    pending: Vec<Record>,
    have: BTreeMap<ReplicaId, u64>,
    rules: Option<Fingerprint>,
    records_since_snapshot: usize,
    live_at_snapshot: usize,
    clock_reserved: u64,
    halted: Option<String>,
    existed: bool,
    /// Every write fails while set (a full disk under the state directory).
    pub fail_writes: bool,
}

impl MemJournal {
    /// The base of a new pair, for replica `replica`.
    pub fn new(replica: ReplicaId) -> Self {
        MemJournal {
            replica,
            snapshot: Vec::new(),
            writes: Vec::new(),
            pending: Vec::new(),
            have: BTreeMap::new(),
            rules: None,
            records_since_snapshot: 0,
            live_at_snapshot: 0,
            clock_reserved: 0,
            halted: None,
            existed: false,
            fail_writes: false,
        }
    }

    /// `mirror-agent resume`: the halt is lifted (as the agent's `--resume` clears it).
    pub fn resume(&mut self) {
        self.halted = None;
    }

    /// A `kill -9`: the records waiting for an `append` are lost, and the last write is torn
    /// after a record `rng` picks (perhaps before its first).
    pub fn crash(&mut self, rng: &mut Rng) {
        self.pending.clear();
        if let Some(last) = self.writes.last_mut() {
            let keep = rng.below(last.len() + 1);
            last.truncate(keep);
        }
    }

    /// What a restart loads (as `Store::open` replays it), and the journal it goes on with: a
    /// new generation, the loaded state as its snapshot.
    pub fn restart(&mut self) -> Base {
        let mut index = Index::new();
        let mut intents = BTreeMap::new();
        let mut have = BTreeMap::new();
        let mut rules = None;
        for r in self.snapshot.iter().chain(self.writes.iter().flatten()) {
            match r {
                Record::Entry(l) => {
                    intents.remove(&l.entry.path);
                    index.insert(l.entry.path.clone(), l.clone());
                }
                Record::Intent(e) => {
                    intents.insert(e.path.clone(), e.clone());
                }
                Record::Void(p) => {
                    intents.remove(p);
                }
                Record::Have(peer, seq) => {
                    have.insert(*peer, *seq);
                }
                Record::Rules(fp) => {
                    have.clear();
                    rules = Some(*fp);
                }
                Record::Checkpoint(_) => {}
            }
        }
        let existed = self.existed;
        self.have = have;
        self.rules = rules;
        self.write_snapshot(&index);
        Base { replica: self.replica, index, existed, clock_start: self.clock_reserved, intents }
    }

    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// The journal since the last snapshot, one line a record in the order written: `entry
    /// PATH`, `intent PATH`, `void PATH`, `have PEER SEQ`, `rules`, `checkpoint TEXT`.
    pub fn lines(&self) -> Vec<String> {
        self.writes
            .iter()
            .flatten()
            .map(|r| match r {
                Record::Entry(l) => format!("entry {}", l.entry.path),
                Record::Intent(e) => format!("intent {}", e.path),
                Record::Void(p) => format!("void {p}"),
                Record::Have(peer, seq) => format!("have {peer:x} {seq}"),
                Record::Rules(_) => "rules".into(),
                Record::Checkpoint(c) => format!("checkpoint {c}"),
            })
            .collect()
    }

    /// Bytes of the journal now, counted as records (for a checker: it stays bounded).
    pub fn records(&self) -> usize {
        self.snapshot.len() + self.writes.iter().map(Vec::len).sum::<usize>()
    }

    fn write_snapshot(&mut self, index: &Index) {
        self.pending.clear();
        let mut snap: Vec<Record> = index.values().cloned().map(Record::Entry).collect();
        snap.extend(self.have.iter().map(|(p, s)| Record::Have(*p, *s)));
        snap.extend(self.rules.map(Record::Rules));
        self.snapshot = snap;
        self.writes.clear();
        self.records_since_snapshot = 0;
        self.live_at_snapshot = index.values().filter(|l| !l.entry.kind.is_deleted()).count();
        self.existed = true;
    }

    fn write(&mut self, records: Vec<Record>) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the state directory is full"));
        }
        if !records.is_empty() {
            self.records_since_snapshot += records.len();
            self.existed = true;
            self.writes.push(records);
        }
        Ok(())
    }
}

impl Journal for MemJournal {
    fn append(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()> {
        let mut recs: Vec<Record> = entries.cloned().map(Record::Entry).collect();
        recs.append(&mut self.pending);
        self.write(recs)
    }
    fn append_unsynced(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()> {
        let recs: Vec<Record> = entries.cloned().map(Record::Entry).collect();
        self.write(recs)
    }
    fn append_intent(&mut self, entry: &Entry) -> io::Result<()> {
        self.write(vec![Record::Intent(entry.clone())])
    }
    fn append_void(&mut self, path: &RelPath) -> io::Result<()> {
        self.write(vec![Record::Void(path.clone())])
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the state directory is full"));
        }
        Ok(())
    }
    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
    fn wants_snapshot(&self) -> bool {
        self.records_since_snapshot > 10_000.max(2 * self.live_at_snapshot)
    }
    fn snapshot(&mut self, index: &Index) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the state directory is full"));
        }
        self.write_snapshot(index);
        Ok(())
    }
    fn have(&self, peer: ReplicaId) -> u64 {
        self.have.get(&peer).copied().unwrap_or(0)
    }
    fn set_have(&mut self, peer: ReplicaId, seq: u64) {
        if self.have.insert(peer, seq) != Some(seq) {
            self.pending.push(Record::Have(peer, seq));
        }
    }
    fn set_rules(&mut self, fingerprint: Fingerprint) {
        if self.rules != Some(fingerprint) {
            self.rules = Some(fingerprint);
            self.have.clear();
            self.pending.push(Record::Rules(fingerprint));
        }
    }
    fn set_checkpoint(&mut self, text: String) {
        self.pending.push(Record::Checkpoint(text));
    }
    fn reserve_clock(&mut self, upto: u64) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the state directory is full"));
        }
        self.clock_reserved = upto;
        Ok(())
    }
    fn set_halted(&mut self, reason: Option<&str>) -> io::Result<()> {
        self.halted = reason.map(str::to_owned);
        Ok(())
    }
    fn location(&self) -> String {
        format!("the simulated base of {:016x}", self.replica)
    }
}
