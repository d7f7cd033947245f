//! What happens in one simulated history, drawn from its seed before it runs: the machines, the
//! links between them, and rounds of steps (a user's operation on one machine, or a fault) at
//! given times. A plan is plain data, so that a shrinker can drop steps and run it again.
//!
//! Paths come from a small namespace (three top directories, a few names at each depth), so
//! that operations meet: two machines write one name, a directory is renamed while a file in it
//! is edited, a file is deleted here while it is changed there.

use mirror_protocol::RelPath;
use mirror_protocol::fuzz::Rng;

/// One machine's operation, as a user (or the user's tools) would do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes the file in place (same inode), making it and its parents if needed.
    Write {
        path: RelPath,
        len: usize,
    },
    /// Saves as an editor does: a new file renamed over the old one.
    Save {
        path: RelPath,
        len: usize,
    },
    /// Appends a line to the file.
    Append {
        path: RelPath,
    },
    /// Changes a few bytes in the middle of the file, in place (a database page, a jar's entry).
    Edit {
        path: RelPath,
    },
    /// Deletes the file or symlink.
    Delete {
        path: RelPath,
    },
    /// Renames a file or directory to a name that is free.
    Rename {
        from: RelPath,
        to: RelPath,
    },
    Mkdir {
        path: RelPath,
    },
    /// `rm -r`.
    RemoveAll {
        path: RelPath,
    },
    /// Flips the executable bits of a file.
    Chmod {
        path: RelPath,
    },
    Symlink {
        path: RelPath,
        target: Vec<u8>,
    },
    /// `rm -r` of a directory, and a symlink in its place.
    DirToSymlink {
        path: RelPath,
    },
    /// A directory tree moved in from outside the root, then filled at once.
    MoveTreeIn {
        path: RelPath,
    },
    /// The file becomes unreadable (then readable again with [`Op::Allow`]).
    Deny {
        path: RelPath,
    },
    Allow {
        path: RelPath,
    },
}

/// Something that goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a machine's agent: its memory is gone, its journal's last write torn. It
    /// starts again a moment later.
    Crash { machine: usize },
    /// A client's connection is cut (both sides see it close).
    Cut { client: usize },
    /// A client's link goes silent: nothing arrives either way, nobody is told; each side's
    /// heartbeat finds out, the client first, and it connects again while the hub still holds
    /// the old connection.
    Silent { client: usize },
    /// Nothing moves on a client's link for a while; then everything arrives, in order.
    Freeze { client: usize, ms: u64 },
    /// A machine's watcher loses its queue and says so.
    Overflow { machine: usize },
    /// A machine's disk is full for a while: writes of file content fail.
    DiskFull { machine: usize, ms: u64 },
    /// The disk under a machine's state directory is full for a while: its journal cannot be
    /// written, so its pair halts (and its agent cannot start). Once there is room its user
    /// resumes it (`mirror-agent resume`).
    StateFull { machine: usize, ms: u64 },
    /// The next file content sent on a client's link arrives with a byte changed (a broken
    /// peer): the receiver must drop the session and still get the file from the next one.
    Corrupt { client: usize },
    /// A client's root is unmounted under its running agent (an empty directory in its place):
    /// its pair must halt, and nothing of it may be deleted anywhere else.
    Unmount { client: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    User {
        machine: usize,
        op: Op,
    },
    /// Every machine saves the same path at the same moment (all those saves are concurrent).
    Race {
        path: RelPath,
        len: usize,
    },
    Fault(Fault),
}

/// One step of a round: an action at a time (milliseconds from the round's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u64,
    pub action: Action,
}

/// A whole history.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Clients of the hub (machine 0); machines `1..=clients`.
    pub clients: usize,
    /// Each client's one-way delay to the hub, in microseconds.
    pub delay_us: Vec<u64>,
    /// Each client's link bandwidth, in bytes per millisecond.
    pub bytes_per_ms: Vec<u64>,
    /// Each machine's wall-clock skew, in seconds.
    pub skew_secs: Vec<i64>,
    pub rounds: Vec<Vec<Step>>,
}

const TOPS: [&str; 3] = ["d0", "d1", "d2"];

/// Every name here is made from the fixed namespace below: always a valid path.
fn path(s: &str) -> RelPath {
    RelPath::new(s).expect("the plan's namespace makes valid paths")
}

/// A directory of the namespace: a top directory, maybe a level or two below.
fn dir(rng: &mut Rng) -> String {
    let mut d = TOPS[rng.below(TOPS.len())].to_string();
    for _ in 0..rng.below(3) {
        d = format!("{d}/e{}", rng.below(3));
    }
    d
}

fn file(rng: &mut Rng) -> RelPath {
    let d = dir(rng);
    if rng.chance(2) {
        // A name at the file system's length limit: its conflict copy must still fit.
        return path(&format!("{d}/{}", "n".repeat(255)));
    }
    path(&format!("{d}/f{}.txt", rng.below(4)))
}

fn inner_dir(rng: &mut Rng) -> RelPath {
    path(&format!("{}/e{}", TOPS[rng.below(TOPS.len())], rng.below(3)))
}

fn len(rng: &mut Rng) -> usize {
    if rng.chance(8) { 150_000 + rng.below(100_000) } else { rng.below(3000) }
}

fn op(rng: &mut Rng) -> Op {
    match rng.below(100) {
        0..=19 => Op::Write { path: file(rng), len: len(rng) },
        20..=24 => Op::Edit { path: file(rng) },
        25..=39 => Op::Save { path: file(rng), len: len(rng) },
        40..=47 => Op::Append { path: file(rng) },
        48..=56 => Op::Delete { path: file(rng) },
        57..=64 => Op::Rename { from: file(rng), to: file(rng) },
        65..=70 => Op::Mkdir { path: inner_dir(rng) },
        71..=74 => Op::RemoveAll { path: inner_dir(rng) },
        75..=80 => Op::Rename { from: inner_dir(rng), to: inner_dir(rng) },
        81..=84 => Op::Chmod { path: file(rng) },
        85..=87 => {
            Op::Symlink { path: path(&format!("{}/l{}", dir(rng), rng.below(2))), target: b"elsewhere".to_vec() }
        }
        88..=90 => Op::DirToSymlink { path: inner_dir(rng) },
        91..=93 => Op::MoveTreeIn { path: path(&format!("{}/in{}", TOPS[rng.below(TOPS.len())], rng.below(2))) },
        94..=96 => Op::Deny { path: file(rng) },
        _ => Op::Allow { path: file(rng) },
    }
}

fn fault(rng: &mut Rng, clients: usize) -> Fault {
    let client = 1 + rng.below(clients);
    let machine = rng.below(clients + 1);
    match rng.below(21) {
        0..=3 => Fault::Crash { machine },
        4..=6 => Fault::Cut { client },
        7..=9 => Fault::Silent { client },
        10..=12 => Fault::Freeze { client, ms: 50 + rng.below(2000) as u64 },
        13..=14 => Fault::Overflow { machine },
        15..=16 => Fault::DiskFull { machine, ms: 100 + rng.below(20_000) as u64 },
        17 => Fault::Unmount { client },
        18 => Fault::Corrupt { client },
        19 => Fault::StateFull { machine, ms: 100 + rng.below(5_000) as u64 },
        _ => Fault::Crash { machine: client },
    }
}

impl Plan {
    /// The plan of `seed`.
    pub fn of(seed: u64) -> Plan {
        let mut rng = Rng(seed ^ 0x51_6d_69_72_72_6f_72);
        let clients = 1 + rng.below(4);
        let delay_us = (0..clients).map(|_| [0, 200, 5_000, 20_000, 60_000][rng.below(5)]).collect();
        let bytes_per_ms = (0..clients).map(|_| [2_500, 125_000, 1_000_000][rng.below(3)]).collect();
        let skew_secs = (0..=clients).map(|_| rng.below(7200) as i64 - 3600).collect();
        let mut rounds = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let mut steps = Vec::new();
            let mut at = 0u64;
            for _ in 0..4 + rng.below(20) {
                at += [0, 0, 1, 3, 10, 40, 200][rng.below(7)];
                let action = if rng.chance(6) {
                    Action::Race { path: file(&mut rng), len: len(&mut rng) }
                } else if rng.chance(12) {
                    Action::Fault(fault(&mut rng, clients))
                } else {
                    Action::User { machine: rng.below(clients + 1), op: op(&mut rng) }
                };
                steps.push(Step { at_ms: at, action });
            }
            rounds.push(steps);
        }
        Plan { clients, delay_us, bytes_per_ms, skew_secs, rounds }
    }

    /// How many steps in all.
    pub fn len(&self) -> usize {
        self.rounds.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This plan with only the steps whose index (counted across rounds) `keep` says.
    pub fn only(&self, keep: &dyn Fn(usize) -> bool) -> Plan {
        let mut i = 0;
        let rounds = self
            .rounds
            .iter()
            .map(|r| {
                r.iter()
                    .filter(|_| {
                        let k = keep(i);
                        i += 1;
                        k
                    })
                    .cloned()
                    .collect()
            })
            .collect();
        Plan { rounds, ..self.clone() }
    }
}
