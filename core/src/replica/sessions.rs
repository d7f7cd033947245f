//! Peer sessions: what each peer asked for, was told, and has; the index and updates sent.

use super::*;
use std::collections::HashMap;
use std::ops::Bound;

pub(super) struct Session<D: Disk> {
    pub(super) peer_host: String,
    pub(super) peer_replica: ReplicaId,
    /// What we asked the peer for: its changes after this counter of its (0: everything).
    pub(super) asked_since: u64,
    /// We answered the peer's `IndexFrom`: from now on it gets our updates.
    pub(super) ready: bool,
    /// The peer's index (its answer to our `IndexFrom`) is complete, and how many entries it had.
    pub(super) index_done: bool,
    pub(super) index_entries: usize,
    /// The peer's change counter its messages so far cover (valid once `index_done`).
    pub(super) have: u64,
    /// Our change counter the messages we sent it so far cover.
    pub(super) told: u64,
    pub(super) in_flight: BTreeMap<u64, Fetch<D>>,
    pub(super) queued: VecDeque<(u64, Fetch<D>)>,
    /// Transfers waiting for the base of their delta ([`Command::Sign`]) before they are asked.
    pub(super) held: Vec<(u64, Fetch<D>)>,
    /// The peer's entries that our rules ignored, offered again when the rules change (a
    /// `.gitignore` arriving after the files it un-ignores, for instance).
    pub(super) skipped: BTreeMap<RelPath, Entry>,
    /// The peer's entries that cannot be applied here now (a symlink or a file where their
    /// path needs a directory): refused alone, tried again when our tree changes shape. They
    /// hold the peer's high-water mark back, so a later session offers them again.
    pub(super) refused: BTreeMap<RelPath, Entry>,
    /// Our index on its way to the peer, sent a burst at a time as its connection drains.
    pub(super) index_out: Option<IndexOut>,
    /// Contents the peer pushed ahead of its next `Update` or `IndexBatch`, by hash: a transfer
    /// of that hash is installed from them, with no request. Forgotten after that message.
    pub(super) pushed: HashMap<Hash, Vec<u8>>,
}

/// How far our index went out to a peer.
pub(super) struct IndexOut {
    /// Entries changed after this counter of ours go (all of them when `full`).
    since: u64,
    full: bool,
    /// Our counter when the peer asked: every batch says it (what came after goes as updates
    /// too, so the peer's mark never covers a change it was not sent).
    seq: u64,
    /// The last path sent; the next batch starts after it.
    after: Option<RelPath>,
    sent: usize,
}

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    /// A peer finished the handshake: a session begins with our `IndexFrom`.
    pub(super) fn connected(&mut self, conn: ConnId, peer_host: String, peer_replica: ReplicaId) {
        log::debug!("{peer_host} (replica {peer_replica:016x}) attached to {}", self.cfg.root.display());
        if let Some(halt) = &self.halted {
            self.out.push(Command::Close { conn, reason: halt.to_string() });
            return;
        }
        // The same replica again, while its old connection still looks alive (a one-way
        // dead link, a client restarted before its old socket timed out): the new one
        // replaces it, and what the old one owed is asked for again below.
        let old: Vec<ConnId> =
            self.sessions.iter().filter(|(_, s)| s.peer_replica == peer_replica).map(|(c, _)| *c).collect();
        for c in old {
            log::info!("{peer_host}: connection {c} replaced by a new connection from the same replica");
            self.end_session(c);
            self.out.push(Command::Close { conn: c, reason: "replaced by a newer connection".into() });
        }
        // Only what changed since the last session we took in whole, if we know the peer.
        let since = self.journal.have(peer_replica);
        let s = Session {
            peer_host,
            peer_replica,
            asked_since: since,
            ready: false,
            index_done: false,
            index_entries: 0,
            have: 0,
            told: 0,
            in_flight: BTreeMap::new(),
            queued: VecDeque::new(),
            held: Vec::new(),
            skipped: BTreeMap::new(),
            refused: BTreeMap::new(),
            index_out: None,
            pushed: HashMap::new(),
        };
        self.sessions.insert(conn, s);
        self.out.push(Command::Send { conn, msg: Message::IndexFrom { since } });
    }

    pub(super) fn drop_session(&mut self, conn: ConnId, why: PeerError) {
        let host = self.sessions.get(&conn).map(|s| s.peer_host.clone()).unwrap_or_default();
        let reason = why.to_string();
        match why {
            PeerError::Left(_) => {
                log::info!("{host} ended the session: {reason}"); // a normal end
                self.end_session(conn);
            }
            PeerError::Violation(_) => {
                log::error!("closing connection to {host}: {reason}");
                // What the broken message was part of (a transfer whose data did not add up)
                // is not taken in: nothing of this session counts beyond what earlier turns
                // recorded, so the next session asks for it again (simulator seed 9986).
                self.forget_session(conn);
            }
        }
        self.out.push(Command::Close { conn, reason });
    }

    /// Forgets a session and everything it had pending (invariant 9). What it owed is not lost:
    /// its peer's high-water mark never moved over it (see [`advance_peers`](Self::advance_peers)),
    /// so the peer's next session is asked for it again; entries other sessions offered for the
    /// same transfers are looked at again now.
    pub(super) fn end_session(&mut self, conn: ConnId) {
        // What the session took in completely counts before it goes: its last entry may have
        // been installed in the same turn as its end, before the turn's journal write.
        self.advance_peers();
        self.forget_session(conn);
    }

    /// [`end_session`](Self::end_session) without counting what it took in this turn.
    pub(super) fn forget_session(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
        self.retries.forget_conn(conn);
        self.deferred.retain(|d| d.1 != conn);
        for p in self.fetching.values_mut() {
            p.also.retain(|(c, _)| *c != conn);
        }
        self.forget_fetches_of(conn);
    }

    /// Answers a peer's `IndexFrom`: the entries that changed after `since` (all of them when
    /// `since` is 0, or beyond our counter: then our state is not the one the peer knew), a
    /// burst of batches at a time ([`send_index_more`](Self::send_index_more)).
    pub(super) fn send_index(&mut self, conn: ConnId, since: u64) {
        self.journal_before_sending();
        if self.halted.is_some() {
            return;
        }
        let seq = self.seq_now();
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        s.told = seq;
        let full = since == 0 || since > seq;
        s.index_out = Some(IndexOut { since, full, seq, after: None, sent: 0 });
        self.send_index_more(conn);
    }

    /// Sends the next burst of the index a peer asked for, from where the last one ended, and
    /// asks to hear when the connection drained ([`Input::Drained`]) if more is to come. Entries
    /// are read as they are now: one that changed since the peer asked goes out as an update
    /// as well, which the peer takes as the same news twice.
    pub(super) fn send_index_more(&mut self, conn: ConnId) {
        if self.halted.is_some() {
            return;
        }
        // Entries in the index but not yet in the journal are not sent before they are.
        self.journal_before_sending();
        if self.halted.is_some() {
            return;
        }
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        let Some(o) = s.index_out.as_mut() else { return };
        let after = o.after.take();
        let from = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let (full, since) = (o.full, o.since);
        let pacing = self.cfg.index_pacing;
        let per_batch = pacing.batch.clamp(1, MAX_BATCH_ENTRIES);
        let mut entries = self
            .index
            .range::<RelPath, _>((from, Bound::Unbounded))
            .filter(|(_, l)| full || l.seq > since)
            .map(|(_, l)| &l.entry)
            .peekable();
        for _ in 0..pacing.burst.max(1) {
            // The first batch goes even when empty: its `last` ends the index.
            let batch: Vec<Entry> = entries.by_ref().take(per_batch).cloned().collect();
            let last = entries.peek().is_none();
            o.sent += batch.len();
            if let Some(e) = batch.last() {
                o.after = Some(e.path.clone());
            } else {
                o.after.clone_from(&after);
            }
            self.out.push(Command::Send { conn, msg: Message::IndexBatch { entries: batch, last, seq: o.seq } });
            if last {
                log::debug!("index for {conn}: {} of {} entries (since {since})", o.sent, self.index.len());
                s.index_out = None;
                return;
            }
        }
        self.out.push(Command::WhenDrained { conn });
    }

    /// Records, for every peer whose messages were all taken in (nothing fetched, retried or
    /// deferred any more), that we have its changes up to what it last said: the next session
    /// asks only for what came after. Called before the journal write, so the record follows
    /// the entries it covers.
    pub(super) fn advance_peers(&mut self) {
        if self.halted.is_some() {
            return;
        }
        // Those that could advance; most turns of a sync have none, or none idle.
        let journal = &self.journal;
        let could = |s: &Session<D>| s.index_done && s.have > journal.have(s.peer_replica);
        if !self.sessions.values().any(could) {
            return;
        }
        // Busy: retries, deferred deletions or transfers of a session. The transfers owed by a
        // session through another's (`also`) are looked for last, and only when some session
        // is otherwise idle: during an initial sync they are a walk of every pending transfer.
        let mut busy: BTreeSet<ConnId> = self
            .retries
            .conns()
            .chain(self.deferred.iter().map(|d| d.1))
            .chain(
                self.sessions
                    .iter()
                    .filter(|(_, s)| {
                        !s.in_flight.is_empty() || !s.queued.is_empty() || !s.held.is_empty() || !s.refused.is_empty()
                    })
                    .map(|(c, _)| *c),
            )
            .collect();
        #[cfg(feature = "planted-bugs")]
        let planted = self.planted(crate::planted::Bug::HaveTooEarly);
        #[cfg(not(feature = "planted-bugs"))]
        let planted = false;
        if planted {
            busy.clear();
        }
        // A replica is only as far as the least advanced of its sessions (normally one).
        let replicas_of = |busy: &BTreeSet<ConnId>| -> BTreeSet<ReplicaId> {
            self.sessions.iter().filter(|(c, _)| busy.contains(*c)).map(|(_, s)| s.peer_replica).collect()
        };
        let mut busy_replicas = replicas_of(&busy);
        if self.sessions.values().all(|s| !could(s) || busy_replicas.contains(&s.peer_replica)) {
            return;
        }
        if !planted {
            busy.extend(self.fetching.values().flat_map(|p| p.also.iter().map(|(c, _)| *c)));
            busy_replicas = replicas_of(&busy);
        }
        let advance: Vec<(ReplicaId, u64)> = self
            .sessions
            .values()
            .filter(|s| could(s) && !busy_replicas.contains(&s.peer_replica))
            .map(|s| (s.peer_replica, s.have))
            .collect();
        for (replica, have) in advance {
            // Two sessions of one replica (a reconnect while the old one lingers): the furthest.
            if have > self.journal.have(replica) {
                self.journal.set_have(replica, have);
            }
        }
    }

    pub(super) fn on_message(&mut self, conn: ConnId, msg: Message) -> Result<(), PeerError> {
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
                        self.journal.set_have(s.peer_replica, 0);
                    }
                }
            }
            Message::Push { hash, bytes } => {
                let check = true;
                #[cfg(feature = "planted-bugs")]
                let check = check && !self.planted(crate::planted::Bug::PushUnchecked);
                if check && *blake3::hash(&bytes).as_bytes() != hash {
                    return Err(PeerError::Violation(Violation::PushHashMismatch));
                }
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.pushed.insert(hash, bytes);
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
            Message::Request { id, path, size, hash, base } => self.serve(conn, id, path, size, hash, base),
            Message::Data { id, bytes } => self.on_data(conn, id, bytes)?,
            Message::Copy { id, offset, len } => self.on_copy(conn, id, offset, len)?,
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
                    if current && !f.progress.discarding() {
                        let why =
                            format!("the peer could not send {} ({})", f.entry.path, crate::logsafe::shown(&reason));
                        self.retry_later(conn, f.entry, Trouble::PeerCannotSend, why);
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

    pub(super) fn take_entries(&mut self, conn: ConnId, entries: Vec<Entry>) -> Result<(), PeerError> {
        if self.halted.is_none() {
            for e in order_for_apply(entries) {
                self.on_remote(conn, e)?;
            }
        }
        // What was pushed for these entries and not used (the content was here already, the
        // entry waits for something) is asked for when it is wanted, as any other.
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.pushed = HashMap::new();
        }
        if self.halted.is_none() {
            self.retry_deferred();
        }
        Ok(())
    }

    pub(super) fn flush_outbox(&mut self) {
        let owed = std::mem::take(&mut self.root_check_owed);
        if self.outbox.is_empty() && !owed {
            return;
        }
        // Deletions of ours go out only from a root that is still there: `rm -rf` of the root
        // unlinks every file before the root itself, and the watcher's word that the root went
        // may come a batch after the files' (halts.rs saw all five deletions sent under load).
        // With nobody connected they go out later, with the next session's index.
        let look = owed || self.outbox.iter().any(|(e, from)| from.is_none() && e.kind.is_deleted());
        #[cfg(feature = "planted-bugs")]
        let look = look && !self.planted(crate::planted::Bug::RootUnchecked);
        if look {
            self.check_root_now();
        }
        self.journal_before_sending();
        if self.halted.is_some() {
            return; // what is not journaled is not sent
        }
        let outbox = std::mem::take(&mut self.outbox);
        let seq = self.seq_now();
        let mut read: HashMap<Hash, Option<Vec<u8>>> = HashMap::new();
        // A session not yet ready gets all of this with its index.
        let ready: Vec<ConnId> = self.sessions.iter().filter(|(_, s)| s.ready).map(|(c, _)| *c).collect();
        for conn in ready {
            let mine: Vec<Entry> =
                outbox.iter().filter(|(_, from)| *from != Some(conn)).map(|(e, _)| e.clone()).collect();
            let told = self.sessions.get(&conn).map_or(seq, |s| s.told);
            if mine.is_empty() {
                // Only its own changes, applied here: say how far our counter went, or the next
                // session would ask for them again.
                if seq > told {
                    self.out.push(Command::Send { conn, msg: Message::Update { entries: Vec::new(), seq } });
                }
            }
            for chunk in order_for_apply(mine).chunks(MAX_BATCH_ENTRIES) {
                self.push_ahead(conn, chunk, &mut read);
                self.out.push(Command::Send { conn, msg: Message::Update { entries: chunk.to_vec(), seq } });
            }
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.told = seq;
            }
        }
    }

    /// Sends `conn` the bytes of the small files of `entries` that are still as the entries
    /// say ([`Config::push_max`], at most [`PUSH_BUDGET`] in all), so that the peer needs no request
    /// for them. `read` keeps what was read for the other sessions (`None`: changed since).
    fn push_ahead(&mut self, conn: ConnId, entries: &[Entry], read: &mut HashMap<Hash, Option<Vec<u8>>>) {
        let mut budget = PUSH_BUDGET;
        let mut sent: Vec<Hash> = Vec::new();
        for e in entries {
            let Kind::File { size, hash, .. } = &e.kind else { continue };
            if *size > self.cfg.push_max || *size as usize > budget || sent.contains(hash) {
                continue;
            }
            let bytes = read.entry(*hash).or_insert_with(|| {
                let bytes = self.disk.read_small(&e.path, *size).ok().flatten();
                bytes.filter(|b| blake3::hash(b).as_bytes() == hash)
            });
            let Some(bytes) = bytes else { continue };
            budget -= bytes.len();
            sent.push(*hash);
            self.out.push(Command::Send { conn, msg: Message::Push { hash: *hash, bytes: bytes.clone() } });
        }
    }

    pub(super) fn reoffer_skipped(&mut self) {
        if !std::mem::take(&mut self.rules_changed) {
            return;
        }
        // What we skipped in earlier sessions may be wanted now: the next ones ask for all.
        let fp = self.rules_fingerprint();
        self.journal.set_rules(fp);
        self.reoffer_held(|s| &mut s.skipped);
    }

    /// Takes the peer entries every session holds in `held` (skipped or refused ones) and
    /// looks at each again.
    pub(super) fn reoffer_held(&mut self, held: fn(&mut Session<D>) -> &mut BTreeMap<RelPath, Entry>) {
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

    pub(super) fn reoffer_refused(&mut self) {
        if !std::mem::take(&mut self.shape_changed) {
            return;
        }
        self.reoffer_held(|s| &mut s.refused);
    }
}
