//! The world one history runs in: a hub and its clients, each a [`Replica`] on a [`MemDisk`]
//! with a [`MemJournal`], links between them, a watcher per machine, and one agenda of events
//! in simulated time. Everything is decided by the plan and one seeded generator, so a seed
//! replays byte for byte.
//!
//! What stands in for the real parts:
//! - **Network**: per client one link to the hub with a one-way delay and a bandwidth; messages
//!   on it arrive in order; links are independent (so messages reorder across them). A link is
//!   cut (both sides told), goes silent (nobody told until the heartbeat's `DEAD_AFTER`, the hub
//!   later than the client), or freezes. The handshake is one round trip; uploads are streamed
//!   as the agent's network thread does (64 KiB chunks, `DataAbort` if the file grew).
//! - **Watcher**: every change to a machine's disk, the user's and the replica's own, is
//!   reported after a small delay (`Dirty` while written, `Settled` when done, `RescanSubtree`
//!   for a directory moved in); an overflow drops what is queued and says so.
//! - **Crashes**: a `kill -9` drops the replica (its memory) and tears its journal's last write;
//!   the agent starts again a moment later, scans, and reconnects.
//!
//! The user's operations and the checks are in `ops.rs` and `check.rs`. This file is over the
//! usual 600 lines because the agenda, the links and the machines are one state machine whose
//! parts all reach into the same event queue; split, each would take the whole `World`.

use crate::disk::{MemDisk, Mutation, Op as DiskOp, Stashed};
use crate::journal::MemJournal;
use crate::plan::{Action, Fault, Plan};
use mirror_core::delta::Piece;
use mirror_core::disk::{Disk, Seen};
use mirror_core::fold::Folding;
use mirror_core::ignore::SyncAll;
use mirror_core::replica::{Command, Config, ConnId, Hint, Input, Replica, Time};
use mirror_core::tree::Stat;
use mirror_protocol::fuzz::Rng;
use mirror_protocol::{Kind, Message, RelPath, Timestamp, VersionVector};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub type SimReplica = Replica<MemDisk, MemJournal, SyncAll>;

/// Machine 0 is the hub.
pub const HUB: usize = 0;
/// How long after any input a machine's engine turns once more with nothing due (the agent's
/// idle turn: root checks, checkpoints).
const TICK_US: u64 = 1_000_000;
/// How long a silent link goes unnoticed.
const DEAD_AFTER_US: u64 = 6_000_000;
/// How long after a lost connection a client tries again.
const RECONNECT_US: u64 = 1_000_000;
/// Upload chunks, as the agent's network thread sends them.
const UPLOAD_CHUNK: usize = 64 * 1024;
/// The wall clock's start (2026-01-01), before each machine's skew.
const EPOCH: i64 = 1_767_225_600;
/// At most this many turns of the loop until a round settles; more is a livelock.
const STEP_LIMIT: usize = 300_000;
/// At most this much simulated time until a round settles.
const SETTLE_LIMIT_US: u64 = 20 * 60 * 1_000_000;

/// Why a history failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub round: usize,
    pub what: String,
}

pub(crate) struct Machine {
    pub(crate) name: String,
    pub(crate) id: u64,
    /// The running agent; `None` while crashed (then `parts` holds its disk and journal).
    pub(crate) replica: Option<SimReplica>,
    pub(crate) parts: Option<(MemDisk, MemJournal)>,
    root_id: Option<(u64, u64)>,
    skew: i64,
    /// When the watcher's last report is due (they stay in order).
    hint_at: u64,
    tick_at: Option<u64>,
    pub(crate) halted: Option<String>,
    /// Its root was unmounted: it must halt, and is left out of the checks from then on.
    pub(crate) unmounted: bool,
    /// Deletions it sent after its root was unmounted (there must be none).
    pub(crate) deletions_after_unmount: usize,
    /// The deletions its index held when its root was unmounted: the user's, made before, and
    /// sent with any index after it (news of nothing the unmount did).
    deleted_before_unmount: HashSet<(RelPath, VersionVector)>,
    /// Its next start is with `--resume` (its user resumed it after a halt).
    resume_next: bool,
    /// Starts of its agent so far: what an earlier one asked for is not answered to this one.
    life: u64,
}

impl Machine {
    pub(crate) fn disk(&self) -> Option<&MemDisk> {
        match (&self.replica, &self.parts) {
            (Some(r), _) => Some(r.disk()),
            (None, Some((d, _))) => Some(d),
            _ => None,
        }
    }

    fn journal_mut(&mut self) -> Option<&mut MemJournal> {
        match (&mut self.replica, &mut self.parts) {
            (Some(r), _) => Some(r.journal_mut()),
            (None, Some((_, j))) => Some(j),
            _ => None,
        }
    }

    pub(crate) fn disk_mut(&mut self) -> Option<&mut MemDisk> {
        match (&mut self.replica, &mut self.parts) {
            (Some(r), _) => Some(r.disk_mut()),
            (None, Some((d, _))) => Some(d),
            _ => None,
        }
    }
}

struct Link {
    epoch: u64,
    open: bool,
    silent: bool,
    hub_conn: ConnId,
    client_conn: ConnId,
    delay: u64,
    bytes_per_ms: u64,
    frozen_until: u64,
    /// When each direction (0: to the hub, 1: to the client) is free to send again.
    busy: [u64; 2],
    reconnecting: bool,
    /// The next `Data` sent on it has a byte changed.
    corrupt: bool,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        link: usize,
        epoch: u64,
        msg: Message,
    },
    Connected {
        to: usize,
        link: usize,
        epoch: u64,
    },
    Disconnected {
        to: usize,
        conn: ConnId,
        reason: &'static str,
    },
    /// What machine `to` sent on `conn` before it asked ([`Command::WhenDrained`]) has left.
    Drained {
        to: usize,
        conn: ConnId,
        epoch: u64,
    },
    Hint {
        machine: usize,
        hint: Hint,
    },
    Tick {
        machine: usize,
    },
    Act(Action),
    Restart {
        machine: usize,
    },
    Reconnect {
        client: usize,
    },
    Allow {
        machine: usize,
        path: RelPath,
    },
    DiskSpace {
        machine: usize,
    },
    /// There is room for the state of `machine` again.
    StateSpace {
        machine: usize,
    },
    /// The driver of `machine` (in its `life`-th start) hashed `path`, asked with `stat`.
    Hashed {
        machine: usize,
        life: u64,
        path: RelPath,
        stat: Stat,
    },
    /// The driver of `machine` described `path` for a delta, asked with `stat`.
    Signed {
        machine: usize,
        life: u64,
        path: RelPath,
        stat: Stat,
        avg: u32,
    },
}

/// One history being run.
#[allow(missing_debug_implementations)] // a world is looked at through its trace
pub struct World {
    pub(crate) rng: Rng,
    pub(crate) t: u64,
    base: Instant,
    pub(crate) machines: Vec<Machine>,
    links: Vec<Link>,
    agenda: BTreeMap<(u64, u64), Event>,
    seq: u64,
    next_conn: ConnId,
    next_epoch: u64,
    /// Every content a user wrote, by hash: who wrote it where, and whether a later operation
    /// of a user who held it replaced it (then it may be gone).
    pub(crate) written: BTreeMap<mirror_protocol::Hash, Written>,
    pub(crate) counter: u64,
    /// Messages the replicas sent.
    pub(crate) sends: u64,
    steps: usize,
    digest: blake3::Hasher,
    trace: Option<Vec<String>>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<mirror_core::planted::Bug>,
}

#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub(crate) hash: [u8; 32],
    pub(crate) machine: usize,
    pub(crate) path: RelPath,
    pub(crate) len: usize,
    pub(crate) superseded: bool,
}

impl World {
    pub fn new(plan: &Plan, seed: u64, trace: bool) -> World {
        crate::logs::take(); // what an earlier world on this thread logged
        let base = Instant::now();
        let mut machines = Vec::new();
        for m in 0..=plan.clients {
            let id = 0x1000_0000_0000_0001 + ((m as u64) << 8);
            let name = if m == HUB { "hub".to_string() } else { format!("c{m}") };
            machines.push(Machine {
                name,
                id,
                replica: None,
                parts: Some((MemDisk::new(), MemJournal::new(id))),
                root_id: None,
                skew: plan.skew_secs.get(m).copied().unwrap_or(0),
                hint_at: 0,
                tick_at: None,
                halted: None,
                unmounted: false,
                deletions_after_unmount: 0,
                deleted_before_unmount: HashSet::new(),
                resume_next: false,
                life: 0,
            });
        }
        let links = (0..plan.clients)
            .map(|c| Link {
                epoch: 0,
                open: false,
                silent: false,
                hub_conn: 0,
                client_conn: 0,
                delay: plan.delay_us.get(c).copied().unwrap_or(0),
                bytes_per_ms: plan.bytes_per_ms.get(c).copied().unwrap_or(125_000).max(1),
                frozen_until: 0,
                busy: [0; 2],
                reconnecting: false,
                corrupt: false,
            })
            .collect();
        World {
            rng: Rng(seed),
            t: 0,
            base,
            machines,
            links,
            agenda: BTreeMap::new(),
            seq: 0,
            next_conn: 1,
            next_epoch: 1,
            written: BTreeMap::new(),
            counter: 0,
            sends: 0,
            steps: 0,
            digest: blake3::Hasher::new(),
            trace: trace.then(Vec::new),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// Plants `bug` in every replica started from now on.
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&mut self, bug: Option<mirror_core::planted::Bug>) {
        self.bug = bug;
    }

    /// The digest of everything that happened so far.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.finalize().as_bytes()
    }

    /// The trace so far (when asked for).
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Runs the plan: every machine starts, clients connect, then each round's steps, a
    /// settling, and the checks.
    pub fn run(&mut self, plan: &Plan) -> Result<(), Failure> {
        for m in 0..self.machines.len() {
            self.restart(m);
        }
        self.settle(0)?;
        for (r, steps) in plan.rounds.iter().enumerate() {
            let start = self.t;
            for s in steps {
                self.at(start + s.at_ms * 1000, Event::Act(s.action.clone()));
            }
            self.settle(r)?;
            self.check(r)?;
            self.check_quiet(r)?;
        }
        Ok(())
    }

    pub(crate) fn note(&mut self, line: String) {
        self.digest.update(line.as_bytes()).update(b"\n");
        if let Some(t) = &mut self.trace {
            for l in crate::logs::take() {
                t.push(format!("{:>12.6}     {l}", self.t as f64 / 1e6));
            }
            t.push(format!("{:>12.6} {line}", self.t as f64 / 1e6));
        }
    }

    /// `path` on `m` becomes readable again at `t`.
    pub(crate) fn allow_at(&mut self, t: u64, m: usize, path: RelPath) {
        self.at(t, Event::Allow { machine: m, path });
    }

    fn at(&mut self, t: u64, ev: Event) {
        self.seq += 1;
        self.agenda.insert((t.max(self.t), self.seq), ev);
    }

    pub(crate) fn time(&self, m: usize) -> Time {
        let skew = self.machines[m].skew;
        let wall =
            Timestamp { secs: EPOCH + skew + (self.t / 1_000_000) as i64, nanos: ((self.t % 1_000_000) * 1000) as u32 };
        Time { mono: self.base + Duration::from_micros(self.t), wall }
    }

    fn deadline_us(&self, m: usize) -> Option<u64> {
        let d = self.machines[m].replica.as_ref()?.next_deadline()?;
        Some(d.saturating_duration_since(self.base).as_micros() as u64)
    }

    /// Runs until nothing is left to happen: no event, no deadline.
    pub(crate) fn settle(&mut self, round: usize) -> Result<(), Failure> {
        let limit = self.t + SETTLE_LIMIT_US;
        let start_steps = self.steps;
        loop {
            self.steps += 1;
            if self.steps - start_steps > STEP_LIMIT {
                return Err(Failure { round, what: format!("did not settle within {STEP_LIMIT} turns (a livelock?)") });
            }
            let next_event = self.agenda.keys().next().map(|k| k.0);
            let next_deadline = (0..self.machines.len()).filter_map(|m| self.deadline_us(m)).min();
            let Some(next) = next_event.into_iter().chain(next_deadline).min() else { return Ok(()) };
            if next > limit {
                return Err(Failure { round, what: "did not settle within 20 simulated minutes".into() });
            }
            self.t = self.t.max(next);
            let mut touched = BTreeSet::new();
            while let Some(entry) = self.agenda.first_entry() {
                if entry.key().0 > self.t {
                    break;
                }
                let ev = entry.remove();
                self.event(ev, &mut touched);
            }
            for m in 0..self.machines.len() {
                if self.deadline_us(m).is_some_and(|d| d <= self.t) {
                    self.feed(m, Input::Timer);
                    touched.insert(m);
                }
            }
            for m in touched {
                self.turn(m);
            }
        }
    }

    fn event(&mut self, ev: Event, touched: &mut BTreeSet<usize>) {
        match ev {
            Event::Deliver { to, link, epoch, msg } => self.deliver(to, link, epoch, msg, touched),
            Event::Connected { to, link, epoch } => self.connected(to, link, epoch, touched),
            Event::Disconnected { to, conn, reason } => self.disconnected(to, conn, reason, touched),
            Event::Drained { to, conn, epoch } => {
                // Only on the connection it was asked on, and while that is open.
                if self.link_of(to, conn).is_some_and(|l| self.links[l].epoch == epoch) {
                    self.feed(to, Input::Drained { conn });
                    touched.insert(to);
                }
            }
            Event::Hint { machine, hint } => {
                {
                    let line = format!("{} watcher: {hint:?}", self.machines[machine].name);
                    self.note(line);
                }
                self.feed(machine, Input::Hint(hint));
                touched.insert(machine);
            }
            Event::Tick { machine } => {
                self.machines[machine].tick_at = None;
                self.feed(machine, Input::Timer);
                touched.insert(machine);
            }
            Event::Act(action) => {
                {
                    let line = format!("do {action:?}");
                    self.note(line);
                }
                self.act(action, touched);
            }
            Event::Restart { machine } => {
                self.restart(machine);
                touched.insert(machine);
            }
            Event::Reconnect { client } => {
                self.links[client - 1].reconnecting = false;
                self.connect(client);
            }
            Event::StateSpace { machine } => {
                let Some(j) = self.machines[machine].journal_mut() else { return };
                j.fail_writes = false;
                // A pair that halted because its state could not be written is resumed by its
                // user once there is room (the unmounted one stays halted: its check is that).
                let mm = &mut self.machines[machine];
                if mm.halted.is_some() && !mm.unmounted && mm.replica.is_none() {
                    {
                        let line = format!("{} resumed by its user", mm.name);
                        self.note(line);
                    }
                    let mm = &mut self.machines[machine];
                    if let Some((_, j)) = mm.parts.as_mut() {
                        j.resume();
                    }
                    mm.halted = None;
                    mm.resume_next = true;
                    self.restart(machine);
                    touched.insert(machine);
                }
            }
            Event::Hashed { machine, life, path, stat } => {
                if self.machines[machine].life != life {
                    return;
                }
                let Some(d) = self.machines[machine].disk() else { return };
                // As the agent's hashers do: read it, then compare its stat with the one asked.
                let hash = match d.observe(&path, &|_| None) {
                    Ok(Some(Seen { kind: Kind::File { hash, .. }, stat: now, .. })) if now == stat => Ok(hash),
                    Ok(None) => Err(io::Error::new(io::ErrorKind::NotFound, "gone")),
                    Ok(Some(_)) => Err(io::Error::new(io::ErrorKind::Interrupted, "changed while being hashed")),
                    Err(e) => Err(e),
                };
                {
                    let line = format!("{} hashed {path}: {}", self.machines[machine].name, short(&hash));
                    self.note(line);
                }
                self.feed(machine, Input::Hashed { path, stat, hash });
                touched.insert(machine);
            }
            Event::Signed { machine, life, path, stat, avg } => {
                if self.machines[machine].life != life {
                    return;
                }
                let Some(d) = self.machines[machine].disk_mut() else { return };
                // As the agent's hashers do: read it if its stat is still the one asked.
                let base = match d.lstat(&path) {
                    Ok(Some(now)) if now == stat => d
                        .read_base(&path, stat, 0, stat.size)
                        .and_then(|b| mirror_core::delta::sign(&b, avg).ok_or_else(|| io::Error::other("bad average"))),
                    Ok(_) => Err(io::Error::new(io::ErrorKind::Interrupted, "changed while being read")),
                    Err(e) => Err(e),
                };
                {
                    let what = match &base {
                        Ok(b) => format!("{} chunks", b.chunks.len()),
                        Err(e) => format!("{:?}", e.kind()),
                    };
                    let line = format!("{} signed {path}: {what}", self.machines[machine].name);
                    self.note(line);
                }
                self.feed(machine, Input::Signed { path, stat, base });
                touched.insert(machine);
            }
            Event::DiskSpace { machine } => {
                if let Some(d) = self.machines[machine].disk_mut() {
                    d.set_storage_full(false);
                }
            }
            Event::Allow { machine, path } => {
                if let Some(d) = self.machines[machine].disk_mut() {
                    d.allow(&path);
                }
                self.hint(machine, Hint::Settled(crate::ops::os_path(&path)));
            }
        }
    }

    /// A message on `link` arrives at machine `to` (unless the link was cut since).
    fn deliver(&mut self, to: usize, link: usize, epoch: u64, msg: Message, touched: &mut BTreeSet<usize>) {
        let l = &self.links[link];
        if l.epoch != epoch || !l.open {
            return;
        }
        let conn = if to == HUB { l.hub_conn } else { l.client_conn };
        let line = format!("{} <- {conn}: {}", self.machines[to].name, describe(&msg));
        self.note(line);
        self.feed(to, Input::Message { conn, msg });
        touched.insert(to);
    }

    /// The handshake on `link` is over at machine `to`.
    fn connected(&mut self, to: usize, link: usize, epoch: u64, touched: &mut BTreeSet<usize>) {
        let l = &self.links[link];
        if l.epoch != epoch || !l.open {
            return;
        }
        let (conn, peer) = if to == HUB { (l.hub_conn, link + 1) } else { (l.client_conn, HUB) };
        if self.machines[to].replica.is_none() {
            // Its pair halted (or its agent died) while the connection was being made: the
            // agent refuses it with the reason, and the client tries again later (seed 13683:
            // a connection made to a halted hub stayed open, unknown to the hub once resumed).
            let line = format!("{} refuses {conn}: not running", self.machines[to].name);
            self.note(line);
            self.close(link, None, "refused by the peer");
            return;
        }
        let (peer_host, peer_replica) = (self.machines[peer].name.clone(), self.machines[peer].id);
        let line = format!("{} connected to {peer_host} on {conn}", self.machines[to].name);
        self.note(line);
        self.feed(to, Input::Connected { conn, peer_host, peer_replica });
        touched.insert(to);
    }

    /// Machine `to` learns that `conn` is gone; a client reconnects.
    fn disconnected(&mut self, to: usize, conn: ConnId, reason: &'static str, touched: &mut BTreeSet<usize>) {
        let line = format!("{} lost {conn}: {reason}", self.machines[to].name);
        self.note(line);
        self.feed(to, Input::Disconnected { conn, reason: reason.into() });
        touched.insert(to);
        if to != HUB {
            let link = to - 1;
            if self.links[link].client_conn == conn {
                self.links[link].open = false;
                self.schedule_reconnect(to);
            }
        }
    }

    fn act(&mut self, action: Action, touched: &mut BTreeSet<usize>) {
        match action {
            Action::User { machine, op } => {
                if machine < self.machines.len() {
                    self.user(machine, &op);
                    touched.insert(machine);
                }
            }
            Action::Race { path, len } => {
                for m in 0..self.machines.len() {
                    self.user(m, &crate::plan::Op::Save { path: path.clone(), len });
                    touched.insert(m);
                }
            }
            Action::Fault(f) => self.fault(f),
        }
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Crash { machine } => self.crash(machine),
            Fault::Cut { client } => {
                if let Some(l) = self.links.get(client - 1)
                    && l.open
                {
                    self.close(client - 1, None, "connection reset");
                }
            }
            Fault::Silent { client } => {
                let Some(l) = self.links.get_mut(client - 1) else { return };
                if !l.open || l.silent {
                    return;
                }
                l.silent = true;
                let (hc, cc) = (l.hub_conn, l.client_conn);
                let extra = self.rng.below(DEAD_AFTER_US as usize) as u64;
                self.at(self.t + DEAD_AFTER_US, Event::Disconnected { to: client, conn: cc, reason: "peer silent" });
                self.at(
                    self.t + DEAD_AFTER_US + extra,
                    Event::Disconnected { to: HUB, conn: hc, reason: "peer silent" },
                );
            }
            Fault::Freeze { client, ms } => self.freeze(client - 1, self.t + ms * 1000),
            Fault::DiskFull { machine, ms } => {
                if let Some(d) = self.machines.get_mut(machine).and_then(Machine::disk_mut) {
                    d.set_storage_full(true);
                    self.at(self.t + ms * 1000, Event::DiskSpace { machine });
                }
            }
            Fault::StateFull { machine, ms } => {
                if let Some(j) = self.machines.get_mut(machine).and_then(Machine::journal_mut) {
                    j.fail_writes = true;
                    self.at(self.t + ms * 1000, Event::StateSpace { machine });
                }
            }
            Fault::Unmount { client } => self.unmount(client),
            Fault::Corrupt { client } => {
                if let Some(l) = self.links.get_mut(client - 1) {
                    l.corrupt = true;
                }
            }
            Fault::Overflow { machine } => {
                if self.machines.get(machine).is_none_or(|m| m.replica.is_none()) {
                    return;
                }
                let queued: Vec<(u64, u64)> = self
                    .agenda
                    .iter()
                    .filter(|(_, e)| matches!(e, Event::Hint { machine: m, .. } if *m == machine))
                    .map(|(k, _)| *k)
                    .collect();
                for k in queued {
                    self.agenda.remove(&k);
                }
                self.hint(machine, Hint::Overflow);
            }
        }
    }

    // ----- machines ------------------------------------------------------------------------

    fn feed(&mut self, m: usize, input: Input) {
        if self.machines[m].replica.is_none() {
            return;
        }
        if !matches!(input, Input::Timer) && self.machines[m].tick_at.is_none() {
            self.machines[m].tick_at = Some(self.t + TICK_US);
            self.at(self.t + TICK_US, Event::Tick { machine: m });
        }
        let now = self.time(m);
        if let Some(r) = self.machines[m].replica.as_mut() {
            r.disk_mut().set_time(now.wall);
            r.feed(now, input);
        }
    }

    /// One turn of machine `m`'s engine: what its inputs call for, sent; then made durable.
    fn turn(&mut self, m: usize) {
        let now = self.time(m);
        let mut out = Vec::new();
        let Some(r) = self.machines[m].replica.as_mut() else { return };
        r.disk_mut().set_time(now.wall);
        r.turn(now, &mut out);
        r.settle(now, &mut out);
        let log = r.disk_mut().take_log();
        let halted = r.halted().map(|h| h.to_string());
        self.route(m, out);
        self.own_changes(m, log);
        if let Some(h) = halted
            && self.machines[m].halted.is_none()
        {
            let line = format!("{} halted: {h}", self.machines[m].name);
            self.note(line);
            self.machines[m].halted = Some(h);
            // A halted pair's engine stops, as the agent's does: its disk and journal remain.
            if let Some(mut r) = self.machines[m].replica.take() {
                let mut out = Vec::new();
                let _ = r.stop(now, &mut out);
                self.route(m, out);
                self.machines[m].parts = Some(r.into_parts());
            }
        }
    }

    /// The watcher reports the replica's own changes too (what must not echo).
    fn own_changes(&mut self, m: usize, log: Vec<Mutation>) {
        for Mutation { path, op } in log {
            match op {
                DiskOp::CreateTemp { .. } | DiskOp::DropStashed { .. } => {}
                DiskOp::MoveAside { to } => {
                    self.hint(m, Hint::Settled(crate::ops::os_path(&path)));
                    self.hint(m, Hint::Settled(crate::ops::os_path(&to)));
                }
                _ => self.hint(m, Hint::Settled(crate::ops::os_path(&path))),
            }
        }
    }

    /// The watcher of `m` reports `hint` a moment from now, after what it reported before.
    pub(crate) fn hint(&mut self, m: usize, hint: Hint) {
        if self.machines[m].replica.is_none() {
            return; // nobody watching: the next start scans
        }
        let at = (self.t + self.rng.below(2000) as u64).max(self.machines[m].hint_at);
        self.machines[m].hint_at = at;
        self.at(at, Event::Hint { machine: m, hint });
    }

    fn crash(&mut self, m: usize) {
        let Some(r) = self.machines.get_mut(m).and_then(|x| x.replica.take()) else { return };
        let (disk, mut journal) = r.into_parts();
        journal.crash(&mut self.rng);
        self.machines[m].parts = Some((disk, journal));
        self.machines[m].tick_at = None;
        {
            let line = format!("{} killed", self.machines[m].name);
            self.note(line);
        }
        let links: Vec<usize> = if m == HUB { (0..self.links.len()).collect() } else { vec![m - 1] };
        for l in links {
            if self.links[l].open {
                self.close(l, Some(m), "connection reset (peer killed)");
            }
        }
        let back = 100_000 + self.rng.below(3_000_000) as u64;
        self.at(self.t + back, Event::Restart { machine: m });
    }

    /// `client`'s root is unmounted under its agent: an empty directory (another inode) in its
    /// place. The watcher reports every path gone, and then, a moment later, the root.
    fn unmount(&mut self, client: usize) {
        if client == HUB || client >= self.machines.len() || self.machines[client].replica.is_none() {
            return;
        }
        let Some(d) = self.machines[client].disk() else { return };
        let here = d.snapshot();
        // What this disk held is still on it (a disk unmounted comes back): a move its user made
        // just before, whose new name had not gone out yet, is not lost. What must not happen
        // is checked on what the halted pair sends: not one deletion after the unmount.
        for s in here.values() {
            if let crate::disk::Shape::File { content, .. } = s
                && let Some(w) = self.written.get_mut(blake3::hash(content).as_bytes())
            {
                w.superseded = true;
            }
        }
        self.machines[client].unmounted = true;
        let before: HashSet<(RelPath, VersionVector)> = self.machines[client]
            .replica
            .as_ref()
            .map(|r| {
                r.index()
                    .values()
                    .filter(|l| l.entry.kind.is_deleted())
                    .map(|l| (l.entry.path.clone(), l.entry.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        self.machines[client].deleted_before_unmount = before;
        if let Some(d) = self.machines[client].disk_mut() {
            d.replace_root();
        }
        for p in here.keys().rev() {
            self.hint(client, Hint::Dirty(crate::ops::os_path(p)));
        }
        self.machines[client].hint_at += self.rng.below(50_000) as u64;
        self.hint(client, Hint::RootGone);
    }

    /// Starts (again) the agent of `m` from its disk and journal.
    fn restart(&mut self, m: usize) {
        let Some((mut disk, mut journal)) = self.machines[m].parts.take() else { return };
        // The agent's own directory is emptied at start.
        let stashed: Vec<u64> = disk.stashed().keys().copied().collect();
        for id in stashed {
            disk.drop_stashed(&Stashed { id });
        }
        disk.take_log();
        if journal.fail_writes {
            // The agent cannot start while its state cannot be written (its clock reservation
            // fails); its supervisor tries again a moment later.
            self.machines[m].parts = Some((disk, journal));
            self.at(self.t + 1_000_000, Event::Restart { machine: m });
            return;
        }
        if let Some(h) = journal.halted() {
            self.machines[m].halted = Some(h.to_string());
            self.machines[m].parts = Some((disk, journal));
            return;
        }
        let root_id = match disk.root_identity() {
            Ok(id) => id,
            Err(_) => {
                self.machines[m].parts = Some((disk, journal));
                return;
            }
        };
        let base = journal.restart();
        if base.existed && self.machines[m].root_id.is_some_and(|id| id != root_id) {
            self.machines[m].halted = Some("the root was replaced while the agent was stopped".into());
            self.machines[m].parts = Some((disk, journal));
            return;
        }
        self.machines[m].root_id = Some(root_id);
        let mut cfg = config(&self.machines[m].name);
        cfg.accept_empty = std::mem::take(&mut self.machines[m].resume_next);
        let now = self.time(m);
        disk.set_time(now.wall);
        let r = match Replica::new(cfg, base, disk, journal, SyncAll, root_id, now) {
            Ok(r) => r,
            Err(e) => {
                self.machines[m].halted = Some(format!("cannot start: {e}"));
                return;
            }
        };
        let mut r = r;
        #[cfg(feature = "planted-bugs")]
        r.plant(self.bug);
        r.scan_all(now);
        r.started();
        r.disk_mut().take_log();
        {
            let line = format!("{} started ({} paths)", self.machines[m].name, r.live());
            self.note(line);
        }
        self.machines[m].replica = Some(r);
        self.machines[m].life += 1;
        self.machines[m].hint_at = self.t;
        if m == HUB {
            for c in 1..self.machines.len() {
                self.schedule_reconnect(c);
            }
        } else {
            self.connect(m);
        }
    }

    // ----- links ---------------------------------------------------------------------------

    fn schedule_reconnect(&mut self, client: usize) {
        let l = &mut self.links[client - 1];
        if l.open || l.reconnecting {
            return;
        }
        l.reconnecting = true;
        let at = self.t + RECONNECT_US + self.rng.below(500_000) as u64;
        self.at(at, Event::Reconnect { client });
    }

    /// A client connects to the hub (if both are up and the link is not open already).
    fn connect(&mut self, client: usize) {
        let up = |m: &Machine| m.replica.is_some() && m.halted.is_none();
        if !up(&self.machines[client]) || self.links[client - 1].open {
            return;
        }
        if !up(&self.machines[HUB]) {
            if self.machines[HUB].halted.is_none() {
                self.schedule_reconnect(client);
            }
            return;
        }
        let (epoch, hc, cc) = (self.next_epoch, self.next_conn, self.next_conn + 1);
        self.next_epoch += 1;
        self.next_conn += 2;
        let t = self.t;
        let l = &mut self.links[client - 1];
        *l = Link {
            epoch,
            open: true,
            silent: false,
            hub_conn: hc,
            client_conn: cc,
            frozen_until: 0,
            busy: [t; 2],
            reconnecting: false,
            ..*l
        };
        let rtt = 2 * l.delay;
        {
            let line = format!("c{client} dials the hub (link {epoch}: {hc} / {cc})");
            self.note(line);
        }
        self.at(t + rtt, Event::Connected { to: HUB, link: client - 1, epoch });
        self.at(t + rtt, Event::Connected { to: client, link: client - 1, epoch });
    }

    /// Nothing arrives on link `l` before `until`; then everything, in the order sent.
    fn freeze(&mut self, l: usize, until: u64) {
        let Some(link) = self.links.get_mut(l) else { return };
        link.frozen_until = link.frozen_until.max(until);
        link.busy = link.busy.map(|b| b.max(until));
        let held: Vec<(u64, u64)> = self
            .agenda
            .iter()
            .filter(|(_, e)| matches!(e, Event::Deliver { link, .. } if *link == l))
            .map(|(k, _)| *k)
            .collect();
        // In agenda order, which is the order sent: later ones get later sequence numbers.
        for k in held {
            if let Some(ev) = self.agenda.remove(&k) {
                self.at(k.0.max(until), ev);
            }
        }
    }

    /// Closes link `l`; each side (but `quiet`, which knows) is told after the link's delay.
    fn close(&mut self, l: usize, quiet: Option<usize>, reason: &'static str) {
        let link = &mut self.links[l];
        link.open = false;
        let (hc, cc, delay) = (link.hub_conn, link.client_conn, link.delay);
        if quiet != Some(HUB) {
            self.at(self.t + delay + 100, Event::Disconnected { to: HUB, conn: hc, reason });
        }
        if quiet != Some(l + 1) {
            self.at(self.t + delay + 100, Event::Disconnected { to: l + 1, conn: cc, reason });
        }
    }

    /// Does what machine `m`'s replica said.
    fn route(&mut self, m: usize, out: Vec<Command<Vec<u8>>>) {
        for c in out {
            match c {
                Command::Send { conn, msg } => {
                    self.sends += 1;
                    if self.machines[m].unmounted
                        && let Message::Update { entries, .. } | Message::IndexBatch { entries, .. } = &msg
                    {
                        let known = &self.machines[m].deleted_before_unmount;
                        let new = entries
                            .iter()
                            .filter(|e| e.kind.is_deleted() && !known.contains(&(e.path.clone(), e.version.clone())))
                            .count();
                        self.machines[m].deletions_after_unmount += new;
                    }
                    self.send(m, conn, msg);
                }
                Command::Upload { conn, id, file, size, base } => {
                    if file.len() as u64 > size {
                        self.send(m, conn, Message::DataAbort { id, reason: "file grew while being sent".into() });
                        continue;
                    }
                    if let Some(base) = base
                        && let Ok(mut e) = mirror_core::delta::Encoder::new(&file[..], size, &base)
                    {
                        // As the agent's readers do: the pieces of the file against the base.
                        loop {
                            match e.next_piece() {
                                Ok(Some(Piece::Copy { offset, len })) => {
                                    self.send(m, conn, Message::Copy { id, offset, len })
                                }
                                Ok(Some(Piece::Literal(bytes))) => self.send(m, conn, Message::Data { id, bytes }),
                                Ok(None) => {
                                    let (size, hash) = (e.sent(), e.hash());
                                    self.send(m, conn, Message::DataEnd { id, size, hash });
                                    break;
                                }
                                Err(err) => {
                                    self.send(m, conn, Message::DataAbort { id, reason: err.to_string() });
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    for chunk in file.chunks(UPLOAD_CHUNK) {
                        self.send(m, conn, Message::Data { id, bytes: chunk.to_vec() });
                    }
                    let hash = *blake3::hash(&file).as_bytes();
                    self.send(m, conn, Message::DataEnd { id, size: file.len() as u64, hash });
                }
                Command::Close { conn, reason } => {
                    {
                        let line = format!("{} closes {conn}: {reason}", self.machines[m].name);
                        self.note(line);
                    }
                    if let Some(l) = self.link_of(m, conn) {
                        self.close(l, Some(m), "closed by the peer");
                        if m != HUB {
                            self.schedule_reconnect(m); // a client dials again
                        }
                    }
                }
                Command::WhenDrained { conn } => {
                    // When the last byte sent so far has left; a silent link never drains.
                    if let Some(l) = self.link_of(m, conn)
                        && !self.links[l].silent
                    {
                        let dir = usize::from(m == HUB);
                        let (at, epoch) = (self.t.max(self.links[l].busy[dir]), self.links[l].epoch);
                        self.at(at, Event::Drained { to: m, conn, epoch });
                    }
                }
                Command::Hash { path, stat } => {
                    // Hashed apart, taking a while: the user may change the file meanwhile.
                    let (life, after) = (self.machines[m].life, 1 + self.rng.below(30_000) as u64);
                    self.at(self.t + after, Event::Hashed { machine: m, life, path, stat });
                }
                Command::Sign { path, stat, avg, .. } => {
                    let (life, after) = (self.machines[m].life, 1 + self.rng.below(30_000) as u64);
                    self.at(self.t + after, Event::Signed { machine: m, life, path, stat, avg });
                }
                Command::Rewatch(_) => {}
                Command::Problem(p) | Command::Collision(p) => {
                    let line = format!("{} reports: {p}", self.machines[m].name);
                    self.note(line);
                }
            }
        }
    }

    /// The open link `conn` of machine `m` is on.
    fn link_of(&self, m: usize, conn: ConnId) -> Option<usize> {
        if m == HUB {
            self.links.iter().position(|l| l.open && l.hub_conn == conn)
        } else {
            let l = &self.links[m - 1];
            (l.open && l.client_conn == conn).then_some(m - 1)
        }
    }

    fn send(&mut self, m: usize, conn: ConnId, msg: Message) {
        let Some(l) = self.link_of(m, conn) else { return };
        let (dir, to) = if m == HUB { (1, l + 1) } else { (0, HUB) };
        let link = &mut self.links[l];
        if link.silent {
            return;
        }
        let mut msg = msg;
        if let Message::Data { bytes, .. } | Message::Push { bytes, .. } = &mut msg
            && let Some(b) = bytes.first_mut()
            && std::mem::take(&mut link.corrupt)
        {
            *b ^= 0x20;
        }
        if let Message::Copy { offset, .. } = &mut msg
            && std::mem::take(&mut link.corrupt)
        {
            // Another piece of the base than the one meant (past its end: a violation).
            *offset = if *offset > 0 { *offset - 1 } else { 1 };
        }
        let size = match &msg {
            Message::Data { bytes, .. } => bytes.len() as u64 + 16,
            Message::Request { base: Some(b), .. } => 64 + 20 * b.chunks.len() as u64,
            Message::Push { bytes, .. } => bytes.len() as u64 + 40,
            Message::Update { entries, .. } | Message::IndexBatch { entries, .. } => 32 + 120 * entries.len() as u64,
            _ => 32,
        };
        let start = self.t.max(link.busy[dir]);
        link.busy[dir] = start + size * 1000 / link.bytes_per_ms;
        let at = link.busy[dir] + link.delay;
        let epoch = link.epoch;
        self.at(at, Event::Deliver { to, link: l, epoch, msg });
    }
}

/// The configuration of a simulated machine's replica: root `/NAME`, no folding, names up to
/// 255 bytes, no patterns.
pub fn config(name: &str) -> Config {
    Config {
        root: PathBuf::from(format!("/{name}")),
        host: name.to_string(),
        debug_prefix: None,
        folding: Folding::default(),
        name_max: 255,
        scan_delay: None,
        accept_empty: false,
        patterns_key: [0; 32],
        // Small, so that the small trees of a history go out in several bursts.
        index_pacing: mirror_core::replica::IndexPacing { batch: 3, burst: 2 },
        // Most of a history's files: hashed apart, their hashes in while other things happen.
        hash_apart_from: 1000,
        close_is_final: true,
        // A history's files are small: half of them pushed, and deltas of most of the rest, in
        // chunks of 1 KiB.
        push_max: 1500,
        delta_from: 1024,
        delta_avg: 1024,
    }
}

/// A hash's outcome in a few words (for the trace and the digest).
fn short(h: &io::Result<mirror_protocol::Hash>) -> String {
    match h {
        Ok(h) => h[..4].iter().map(|b| format!("{b:02x}")).collect(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// A message in a few words (for the trace and the digest).
fn describe(m: &Message) -> String {
    match m {
        Message::Update { entries, seq } => {
            format!("Update seq {seq}: {}", entries.iter().map(|e| e.path.to_string()).collect::<Vec<_>>().join(" "))
        }
        Message::IndexBatch { entries, last, seq } => format!("IndexBatch {} last {last} seq {seq}", entries.len()),
        Message::Data { id, bytes } => format!("Data {id} {} bytes", bytes.len()),
        Message::Push { hash, bytes } => format!("Push {:02x}{:02x} {} bytes", hash[0], hash[1], bytes.len()),
        Message::Request { id, path, size, base, .. } => {
            let base = base.as_ref().map(|b| format!(" against {} chunks", b.chunks.len())).unwrap_or_default();
            format!("Request {id} {path} {size}{base}")
        }
        Message::Copy { id, offset, len } => format!("Copy {id} {offset}+{len}"),
        Message::DataEnd { id, size, .. } => format!("DataEnd {id} {size}"),
        other => other.name().to_string(),
    }
}
