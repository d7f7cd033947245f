//! Transfers: content requested from a peer, streamed into a temp file, verified, installed;
//! and content served to a peer.

use super::*;
use crate::delta::avg_for;
use mirror_protocol::delta::Base as DeltaBase;

#[derive(Debug)]
pub(super) enum Purpose {
    /// Put the content at its path; first move our own version aside if we lost a conflict.
    Apply { keep_local_copy: bool },
    /// Keep the peer's losing version as a conflict copy at this path.
    KeepRemoteCopy { at: RelPath },
}

/// A transfer under way or queued for a path.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) conn: ConnId,
    pub(super) id: u64,
    pub(super) version: VersionVector,
    /// Entries of this version (or older) other sessions offered while it was under way: not
    /// fetched twice, but not forgotten either. When the transfer ends, however it ends, they
    /// are looked at again (and come to nothing if it was installed).
    pub(super) also: Vec<(ConnId, Entry)>,
}

/// A transfer of a session: queued (in `Session::queued`, always `Requested`) or in flight (in
/// `Session::in_flight`, keyed by its request id).
pub(super) struct Fetch<D: Disk> {
    pub(super) entry: Entry,
    pub(super) purpose: Purpose,
    /// Our version of the path when the transfer was decided. The install happens only if it is
    /// still the one: a local change scanned meanwhile means deciding again, never installing
    /// over it (issue 11, item 3).
    pub(super) decided: Option<VersionVector>,
    pub(super) progress: Progress<D>,
    /// Whether it comes as a delta against our version of the path.
    pub(super) delta: Delta,
}

/// The base of a delta ([`crate::delta`]): our version of the path, if we hold one worth it.
#[derive(Debug)]
pub(super) enum Delta {
    /// Fetched whole.
    No,
    /// Our file at the path, as indexed: to be described ([`Command::Sign`]) before the
    /// request goes.
    Wanted { stat: Stat, hash: Hash },
    /// Described: sent with the request.
    Ready { stat: Stat, base: Box<DeltaBase> },
    /// The request named our file, which had this stat: `Copy` pieces are read from it.
    Sent { stat: Stat },
}

/// Where a transfer's data stands. A queued transfer costs no hasher and no file: 30,000 queued
/// at once in an initial sync held 72 MB when each carried its hasher (`mirror-bench memory`).
pub(super) enum Progress<D: Disk> {
    /// Not asked for yet, or asked for with no byte arrived.
    Requested,
    /// Bytes arriving into a temp file, hashed as they come.
    Receiving { tmp: D::Temp, hasher: Box<blake3::Hasher>, received: u64 },
    /// Cancelled or failed: what still arrives is counted (a peer may not send more than it
    /// announced, nor end with another size) and dropped.
    Discarding { received: u64 },
}

impl<D: Disk> Progress<D> {
    fn received(&self) -> u64 {
        match self {
            Self::Requested => 0,
            Self::Receiving { received, .. } | Self::Discarding { received } => *received,
        }
    }

    /// Stops taking the data in (a temp file goes with its handle).
    pub(super) fn discard(&mut self) {
        *self = Self::Discarding { received: self.received() };
    }

    pub(super) fn discarding(&self) -> bool {
        matches!(self, Self::Discarding { .. })
    }
}

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    pub(super) fn pending_version(&self, path: &RelPath) -> Option<VersionVector> {
        self.fetching.get(path).map(|p| p.version.clone())
    }

    pub(super) fn cancel_fetches(&mut self, path: &RelPath) {
        let Some(p) = self.fetching.remove(path) else { return };
        self.unclaim(path);
        self.reoffer(p.also);
        let Some(s) = self.sessions.get_mut(&p.conn) else { return };
        s.queued.retain(|(qid, _)| *qid != p.id);
        s.held.retain(|(qid, _)| *qid != p.id);
        if let Some(f) = s.in_flight.get_mut(&p.id) {
            f.progress.discard(); // ignore the rest of its data
        }
    }

    /// Forgets the transfer `id` of `conn` for `path` (finished, aborted or failed).
    pub(super) fn fetch_done(&mut self, path: &RelPath, conn: ConnId, id: u64) {
        if self.fetching.get(path).is_some_and(|p| p.conn == conn && p.id == id)
            && let Some(p) = self.fetching.remove(path)
        {
            self.unclaim(path);
            self.reoffer(p.also);
        }
    }

    pub(super) fn forget_fetches_of(&mut self, conn: ConnId) {
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
    pub(super) fn reoffer(&mut self, also: Vec<(ConnId, Entry)>) {
        for (c, e) in also {
            self.retries.push(self.now, c, e);
        }
    }

    /// A transfer of `path` ended: its spelling no longer claims the folded name.
    pub(super) fn unclaim(&mut self, path: &RelPath) {
        if self.cfg.folding.active() {
            let key = self.cfg.folding.key(path);
            if self.fetch_fold.get(&key) == Some(path) {
                self.fetch_fold.remove(&key);
            }
        }
    }

    pub(super) fn enqueue(&mut self, conn: ConnId, entry: Entry, purpose: Purpose) {
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
        let Some((entry, purpose)) = self.install_pushed(conn, entry, purpose) else { return };
        let id = self.next_id;
        self.next_id += 1;
        let decided = self.index.get(&entry.path).map(|l| l.entry.version.clone());
        let delta = self.delta_for(&entry, &purpose);
        if let Some(s) = self.sessions.get_mut(&conn) {
            let pending = Pending { conn, id, version: entry.version.clone(), also: Vec::new() };
            self.fetching.insert(entry.path.clone(), pending);
            if self.cfg.folding.active() {
                self.fetch_fold.entry(self.cfg.folding.key(&entry.path)).or_insert_with(|| entry.path.clone());
            }
            let f = Fetch { entry, purpose, decided, progress: Progress::Requested, delta };
            s.queued.push_back((id, f));
        }
    }

    /// Installs `entry` from the bytes the peer pushed ahead of it (checked against their hash
    /// when they came), with no request. The entry and purpose back when nothing was pushed for
    /// it or the temp file cannot be made: then it is requested, and a failure is met and
    /// reported there as for any transfer.
    fn install_pushed(&mut self, conn: ConnId, entry: Entry, purpose: Purpose) -> Option<(Entry, Purpose)> {
        let Kind::File { hash, size, .. } = &entry.kind else { return Some((entry, purpose)) };
        let pushed = self.sessions.get(&conn).and_then(|s| s.pushed.get(hash));
        let Some(bytes) = pushed.filter(|b| b.len() as u64 == *size).cloned() else { return Some((entry, purpose)) };
        let hash = *hash;
        let target = match &purpose {
            Purpose::Apply { .. } => entry.path.clone(),
            Purpose::KeepRemoteCopy { at } => at.clone(),
        };
        let Ok(mut tmp) = self.disk.create_temp(&target) else { return Some((entry, purpose)) };
        if self.disk.write_temp(&mut tmp, bytes).and_then(|()| self.disk.settle_temp(&mut tmp)).is_err() {
            return Some((entry, purpose));
        }
        log::trace!("{}: installed from the bytes the peer pushed", entry.path);
        let decided = self.index.get(&entry.path).map(|l| l.entry.version.clone());
        let f = Fetch { entry, purpose, decided, progress: Progress::Requested, delta: Delta::No };
        if let Err(err) = self.install_fetched(conn, f, tmp, hash) {
            self.drop_session(conn, err);
        }
        None
    }

    /// Whether `entry` comes as a delta: a file large enough, to be put at its path, where we
    /// hold a file large enough too (not one whose delta failed).
    fn delta_for(&self, entry: &Entry, purpose: &Purpose) -> Delta {
        let Kind::File { size, hash: want, .. } = &entry.kind else { return Delta::No };
        if *size < self.cfg.delta_from || !matches!(purpose, Purpose::Apply { .. }) {
            return Delta::No;
        }
        let Some(l) = self.index.get(&entry.path) else { return Delta::No };
        match (&l.entry.kind, l.stat) {
            (Kind::File { size: ours, hash, .. }, Some(stat))
                if *ours >= self.cfg.delta_from && !self.no_delta.contains(&(entry.path.clone(), *want)) =>
            {
                Delta::Wanted { stat, hash: *hash }
            }
            _ => Delta::No,
        }
    }

    pub(super) fn pump_all(&mut self) {
        for (conn, s) in self.sessions.iter_mut() {
            while s.in_flight.len() < MAX_IN_FLIGHT {
                let Some((id, mut f)) = s.queued.pop_front() else { break };
                let Kind::File { size, hash, .. } = &f.entry.kind else { continue };
                let (size, hash) = (*size, *hash);
                let base = match std::mem::replace(&mut f.delta, Delta::No) {
                    Delta::Wanted { stat, hash: ours } => {
                        // Described first, off the replica's thread; asked for once it is.
                        if !self.signing.contains_key(&f.entry.path) {
                            let avg = avg_for(stat.size, self.cfg.delta_avg);
                            let (path, hash) = (f.entry.path.clone(), ours);
                            self.out.push(Command::Sign { path, stat, hash, avg });
                            self.signing.insert(f.entry.path.clone(), stat);
                        }
                        f.delta = Delta::Wanted { stat, hash: ours };
                        s.held.push((id, f));
                        continue;
                    }
                    Delta::Ready { stat, base } => {
                        f.delta = Delta::Sent { stat };
                        Some(base)
                    }
                    Delta::No | Delta::Sent { .. } => None,
                };
                log::trace!("request {id} {}{}", f.entry.path, if base.is_some() { " (delta)" } else { "" });
                let msg = Message::Request { id, path: f.entry.path.clone(), size, hash, base };
                self.out.push(Command::Send { conn: *conn, msg });
                s.in_flight.insert(id, f);
            }
            // An initial sync may have queued a whole tree: an idle session keeps little room.
            if s.queued.capacity() > 1024 && s.queued.len() < s.queued.capacity() / 4 {
                s.queued.shrink_to(2 * s.queued.len());
            }
        }
    }

    /// Our file at `path` described for a delta: the transfers held for it are asked for now,
    /// with it if it is still our version (and whole if it is not, or could not be read).
    pub(super) fn on_signed(&mut self, path: RelPath, stat: Stat, base: io::Result<DeltaBase>) {
        self.signing.remove(&path);
        let ours = self.index.get(&path).and_then(|l| match (&l.entry.kind, l.stat) {
            (Kind::File { hash, .. }, Some(st)) => Some((*hash, st)),
            _ => None,
        });
        let mut base = match base {
            Ok(b) => Some(b),
            Err(e) => {
                log::debug!("{path}: cannot read it for a delta ({e}); fetched whole");
                None
            }
        };
        for s in self.sessions.values_mut() {
            let mut i = 0;
            while i < s.held.len() {
                if s.held[i].1.entry.path != path {
                    i += 1;
                    continue;
                }
                let (id, mut f) = s.held.swap_remove(i);
                if let Delta::Wanted { stat: want, hash } = f.delta {
                    let fits = want == stat && ours == Some((hash, stat));
                    f.delta = match base.take_if(|b| fits && b.hash == hash && b.size == stat.size) {
                        Some(b) => Delta::Ready { stat, base: Box::new(b) },
                        None => Delta::No,
                    };
                }
                s.queued.push_front((id, f));
            }
        }
    }

    pub(super) fn serve(
        &mut self,
        conn: ConnId,
        id: u64,
        path: RelPath,
        size: u64,
        hash: Hash,
        base: Option<Box<DeltaBase>>,
    ) {
        let ok = matches!(self.index.get(&path).map(|l| &l.entry.kind), Some(Kind::File { hash: h, .. }) if *h == hash);
        let reply = |reason: &str| Command::Send { conn, msg: Message::DataAbort { id, reason: reason.into() } };
        if !ok {
            self.out.push(reply("not the current version here"));
            return;
        }
        match self.disk.open_upload(&path) {
            Ok(file) => self.out.push(Command::Upload { conn, id, file, size, base }),
            Err(e) => {
                log::warn!("cannot read {path} for the peer: {e}");
                self.out.push(reply(&e.to_string()));
            }
        }
    }

    pub(super) fn on_data(&mut self, conn: ConnId, id: u64, bytes: Vec<u8>) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
        let Some(f) = s.in_flight.get_mut(&id) else {
            return Err(PeerError::Violation(Violation::DataForUnknownRequest { id }));
        };
        let Kind::File { size, .. } = f.entry.kind else { return Ok(()) };
        let received = f.progress.received() + bytes.len() as u64;
        if received > size {
            return Err(PeerError::Violation(Violation::MoreThanRequested { id, size }));
        }
        let target = match &f.purpose {
            Purpose::Apply { .. } => f.entry.path.clone(),
            Purpose::KeepRemoteCopy { at } => at.clone(),
        };
        let failure = match &mut f.progress {
            Progress::Discarding { received: r } => {
                *r = received;
                return Ok(());
            }
            Progress::Requested => match self.disk.create_temp(&target) {
                Ok(mut tmp) => {
                    let mut hasher = Box::new(blake3::Hasher::new());
                    hasher.update(&bytes);
                    let w = self.disk.write_temp(&mut tmp, bytes);
                    f.progress = Progress::Receiving { tmp, hasher, received };
                    w.err().map(|e| (ExecError::Io(e), true))
                }
                Err(e) => Some((e, false)),
            },
            Progress::Receiving { tmp, hasher, received: r } => {
                *r = received;
                hasher.update(&bytes);
                self.disk.write_temp(tmp, bytes).err().map(|e| (ExecError::Io(e), true))
            }
        };
        let Some((err, partial)) = failure else { return Ok(()) };
        // A transfer that failed is over for every purpose but ignoring the rest of its data
        // (its temp file goes now): it no longer stands for the entry, or the entry, offered
        // again while the data still flows, would be dropped as already under way, and never
        // asked for again (simulator seed 8435).
        f.progress = Progress::Discarding { received };
        let entry = f.entry.clone();
        self.fetch_done(&entry.path, conn, id);
        if let ExecError::Jail(e) = err {
            self.refuse(conn, entry, e.to_string());
            return Ok(());
        }
        let full = matches!(&err, ExecError::Io(e) if e.kind() == io::ErrorKind::StorageFull);
        let hint = if full { " (disk full)" } else { "" };
        let removed = if partial { "; removed the partial file" } else { "" };
        log::error!("cannot receive {target}{hint}: {err}{removed}; retrying in {}s", RETRY_AFTER.as_secs());
        self.retries.push(self.now + RETRY_AFTER, conn, entry);
        Ok(())
    }

    /// A piece of our own version of the file, in place of its bytes: read from it (as it was
    /// when the request named it) and taken as data. If it cannot be read as it was (changed
    /// here since), the transfer is asked for again, whole.
    pub(super) fn on_copy(&mut self, conn: ConnId, id: u64, offset: u64, len: u64) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
        let Some(f) = s.in_flight.get_mut(&id) else {
            return Err(PeerError::Violation(Violation::DataForUnknownRequest { id }));
        };
        let Delta::Sent { stat } = f.delta else {
            return Err(PeerError::Violation(Violation::CopyWithoutBase { id }));
        };
        if let Progress::Discarding { received } = &mut f.progress {
            let Kind::File { size, .. } = f.entry.kind else { return Ok(()) };
            *received += len;
            if *received > size {
                return Err(PeerError::Violation(Violation::MoreThanRequested { id, size }));
            }
            return Ok(());
        }
        let path = f.entry.path.clone();
        match self.disk.read_base(&path, stat, offset, len) {
            Ok(bytes) => self.on_data(conn, id, bytes),
            Err(e) => {
                self.delta_failed(conn, id, &format!("our copy changed while the delta came ({e})"));
                Ok(())
            }
        }
    }

    /// A delta did not work out: the rest of its data is dropped, and the file asked for again,
    /// whole.
    fn delta_failed(&mut self, conn: ConnId, id: u64, why: &str) {
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        let Some(f) = s.in_flight.get_mut(&id) else { return };
        f.progress.discard();
        let entry = f.entry.clone();
        self.fetch_done(&entry.path, conn, id);
        self.whole_next_time(conn, entry, why);
    }

    fn whole_next_time(&mut self, conn: ConnId, entry: Entry, why: &str) {
        if let Kind::File { hash, .. } = &entry.kind {
            self.no_delta.insert((entry.path.clone(), *hash));
        }
        log::info!("{}: {why}; fetching it whole", entry.path);
        self.retries.push(self.now, conn, entry);
    }

    pub(super) fn on_data_end(&mut self, conn: ConnId, id: u64, size: u64, hash: Hash) -> Result<(), PeerError> {
        let Some(s) = self.sessions.get_mut(&conn) else { return Ok(()) };
        let Some(mut f) = s.in_flight.remove(&id) else {
            return Err(PeerError::Violation(Violation::EndOfUnknownRequest { id }));
        };
        self.fetch_done(&f.entry.path, conn, id);
        let received = f.progress.received();
        if size != received {
            return Err(PeerError::Violation(Violation::SizeMismatch { id, claimed: size, sent: received }));
        }
        let (ours, tmp) = match std::mem::replace(&mut f.progress, Progress::Requested) {
            Progress::Discarding { .. } => return Ok(()),
            Progress::Requested => (*blake3::hash(&[]).as_bytes(), None),
            Progress::Receiving { tmp, hasher, .. } => (*hasher.finalize().as_bytes(), Some(tmp)),
        };
        if ours != hash && matches!(f.delta, Delta::Sent { .. }) {
            // Our version was not what we described (changed keeping its stat), or the peer's
            // delta is wrong: either way the whole file settles it.
            self.whole_next_time(conn, f.entry, "the delta did not rebuild the peer's version");
            return Ok(());
        }
        if ours != hash {
            log::warn!("{}: the bytes the peer sent do not match their hash; dropping them", f.entry.path);
            return Err(PeerError::Violation(Violation::HashMismatch { id }));
        }
        let Kind::File { size: want_size, hash: want_hash, .. } = f.entry.kind else { return Ok(()) };
        if want_hash != hash || want_size != size {
            // Changed at the source while it was sent: its update supersedes this; if none
            // comes (rewritten keeping size and mtime), asking again gets the source to look.
            let why = format!("{} changed at the source while it was sent", f.entry.path);
            self.retry_later(conn, f.entry, Trouble::ChangedAtSource, why);
            return Ok(());
        }
        let target = match &f.purpose {
            Purpose::Apply { .. } => f.entry.path.clone(),
            Purpose::KeepRemoteCopy { at } => at.clone(),
        };
        let mut tmp = match tmp {
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
        if let Err(e) = self.disk.settle_temp(&mut tmp) {
            drop(tmp);
            self.exec_failed(conn, f.entry, ExecError::Io(e));
            return Ok(());
        }
        self.install_fetched(conn, f, tmp, hash)
    }

    /// Puts a fetched (or locally copied) file, complete and verified in `tmp`, where `f` says.
    pub(super) fn install_fetched(
        &mut self,
        conn: ConnId,
        f: Fetch<D>,
        tmp: D::Temp,
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
                            dest = numbered(&at, n, self.cfg.name_max);
                        }
                    }
                }
                self.won_conflict(&f.entry, &dest);
            }
        }
        Ok(())
    }
}
