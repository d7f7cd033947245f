//! What a replica asks of its persistent base, as one trait: the agent's journal and snapshot
//! files (`agent/src/store.rs`), or a simulator's records in memory that a crash cuts short.
//!
//! The order of persistence is the replica's to keep ("a `Have` never before its entries"):
//! the journal writes what it is given, in the order given. `Have`, `Rules` and `Checkpoint`
//! records wait for the next [`append`](Journal::append), after the entries it carries.

use crate::tree::{Index, LocalEntry};
use mirror_protocol::{Entry, RelPath, ReplicaId};
use std::collections::BTreeMap;
use std::io;

/// A fingerprint of the ignore rules in force.
pub type Fingerprint = [u8; 16];

/// What a replica's base held when it started.
#[derive(Debug, Default)]
pub struct Base {
    pub replica: ReplicaId,
    pub index: Index,
    /// Whether any base existed (false on the first run of a pair).
    pub existed: bool,
    /// The clock values reserved before the last stop (none of them is handed out again).
    pub clock_start: u64,
    /// Changes begun for peers whose outcome was never recorded (the process died): for the
    /// start-up scan only, which takes each whose path holds exactly it.
    pub intents: BTreeMap<RelPath, Entry>,
}

/// The persistent base of one replica.
pub trait Journal {
    /// Appends these entries and whatever `Have`/`Rules`/`Checkpoint` records wait, and makes
    /// everything durable (fsync).
    fn append(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()>;
    /// Hands these entries to the kernel now, without waiting for the disk: they survive the
    /// process being killed, not a power cut (the next `append` or `sync` makes them durable).
    fn append_unsynced(&mut self, entries: &mut dyn Iterator<Item = &LocalEntry>) -> io::Result<()>;
    /// Records, before the disk is changed, what it is about to hold for a peer's entry.
    fn append_intent(&mut self, entry: &Entry) -> io::Result<()>;
    /// The change begun by the last intent for `path` failed.
    fn append_void(&mut self, path: &RelPath) -> io::Result<()>;
    /// Makes everything appended durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Whether `Have`/`Rules`/`Checkpoint` records wait for the next `append`.
    fn has_pending(&self) -> bool;
    /// Whether the journal has grown enough that a snapshot is worth writing.
    fn wants_snapshot(&self) -> bool;
    /// Writes `index` as the new snapshot and starts an empty journal.
    fn snapshot(&mut self, index: &Index) -> io::Result<()>;
    /// Up to which counter everything of `peer` was taken in (0: nothing known).
    fn have(&self, peer: ReplicaId) -> u64;
    /// Everything of `peer` up to `seq` was taken in (written by the next `append`).
    fn set_have(&mut self, peer: ReplicaId, seq: u64);
    /// The ignore rules now in force; new ones forget every peer's `Have`.
    fn set_rules(&mut self, fingerprint: Fingerprint);
    /// The watcher's history position the entries so far cover.
    fn set_checkpoint(&mut self, text: String);
    /// Reserves clock values up to `upto`, durably, before any is used.
    fn reserve_clock(&mut self, upto: u64) -> io::Result<()>;
    /// Records that the pair is halted, and why (`None`: resumed); survives restarts.
    fn set_halted(&mut self, reason: Option<&str>) -> io::Result<()>;
    /// Where the base lives, for messages.
    fn location(&self) -> String;
}
