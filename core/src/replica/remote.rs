//! A peer's entry for one path: reconciled with ours, then applied to the disk (or retried,
//! deferred, refused), each change journaled as an intent first.

use super::*;

/// What keeps a peer's entry from being applied, as far as telling the user goes. Reported when
/// it is new for its path: the same trouble on every retry is not news, but a full disk met after
/// the peer could not send the file is (it was once hidden behind the first report), and it
/// starts its own backoff.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Trouble {
    /// The peer could not read it for us (changed while being read, unreadable there).
    PeerCannotSend,
    /// It changed at the source while it was sent.
    ChangedAtSource,
    /// Writing it here failed, with this kind of error (a full disk, a name too long).
    CannotApply(io::ErrorKind),
    /// Its path cannot be synced here as our tree is now.
    Refused,
}

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    /// A peer's entry for one path.
    pub(super) fn on_remote(&mut self, conn: ConnId, e: Entry) -> Result<(), PeerError> {
        self.retries.supersede(conn, &e);
        let Some(e) = self.syncable(conn, e) else { return Ok(()) };
        let Some(e) = self.past_pending(conn, e) else { return Ok(()) };
        // Executor discipline: what the user did since the last scan counts first. A pending
        // subtree rescan (a directory moved in) is done whole here, or what it holds is never read.
        if let Some(deep) = self.debounce.take(&e.path) {
            self.scan_path(&e.path, deep);
        } else if self.index.get(&e.path).is_some_and(|l| self.disk_moved(l)) {
            // Read as a hint would be: a directory that is another one now is read whole, or
            // its stat would be taken here and the hint's own read would find nothing new,
            // leaving what the old directory held in the index for ever (simulator seed 1364882).
            self.scan_path(&e.path, false);
        }
        let local = self.index.get(&e.path).map(|l| &l.entry);
        let action = reconcile(local, &e);
        #[cfg(feature = "planted-bugs")]
        let action = match action {
            Action::Adopt(_)
                if self.planted(crate::planted::Bug::DeletionWins)
                    && e.kind.is_deleted()
                    && self.index.get(&e.path).is_some_and(|l| !l.entry.kind.is_deleted()) =>
            {
                Action::Apply
            }
            a => a,
        };
        if self.traced(&e.path) {
            log::info!(
                "[trace] {}: remote {:?} v{:?} vs local {:?} -> {action:?}",
                e.path,
                e.kind,
                e.version,
                local.map(|l| (&l.kind, &l.version))
            );
        }
        // Only now, about to write, does a symlink (or file) on the way matter: a stale entry
        // beneath a directory we replaced by a symlink is ignored above, not an attack.
        let writes = matches!(action, Action::Apply | Action::ConflictKeepLocalCopy | Action::ConflictKeepRemoteCopy);
        if writes
            && !e.kind.is_deleted()
            && let Err(err) = self.disk.check_parents(&e.path)
        {
            self.refuse(conn, e, err.to_string());
            return Ok(());
        }
        match action {
            Action::Nothing => {}
            Action::Adopt(version) => self.adopt(conn, e, version),
            Action::Apply => self.apply(conn, e, false),
            Action::ConflictKeepLocalCopy => self.apply(conn, e, true),
            Action::ConflictKeepRemoteCopy => self.keep_remote_copy(conn, e),
        }
        Ok(())
    }

    /// `e`, unless its path is not synced here (ignored, or the same name as one of ours on a
    /// file system that folds names): then it is held for the session to offer again.
    fn syncable(&mut self, conn: ConnId, e: Entry) -> Option<Entry> {
        let is_dir = matches!(e.kind, Kind::Directory);
        if !self.is_ignored(rel_path(&e.path), is_dir) {
            let Some(ours) = self.fold_collision(&e) else { return Some(e) };
            let key = self.cfg.folding.key(&e.path);
            if self.collided.insert(key) {
                self.conflicts_named(&e.path, &ours);
                // Skipped like an ignored entry: the next session must offer it again.
                let fp = self.rules_fingerprint();
                self.journal.set_rules(fp);
            }
        }
        if let Some(s) = self.sessions.get_mut(&conn) {
            hold(&mut s.skipped, e);
        }
        None
    }

    /// `e`, unless a transfer under way for its path stands: kept unless `e` supersedes it.
    fn past_pending(&mut self, conn: ConnId, e: Entry) -> Option<Entry> {
        let Some(pending) = self.pending_version(&e.path) else { return Some(e) };
        match pending.compare(&e.version) {
            mirror_protocol::VersionOrdering::Before => {
                self.cancel_fetches(&e.path);
                Some(e)
            }
            // Made without knowledge of the version being fetched: a conflict to decide
            // once that version is in place. Look at it again shortly.
            mirror_protocol::VersionOrdering::Concurrent => {
                self.retries.push(self.now + Duration::from_millis(20), conn, e);
                None
            }
            // The same version (or an older one) from another session: not fetched twice,
            // but owed by that session until the transfer under way is in.
            _ => {
                if let Some(p) = self.fetching.get_mut(&e.path)
                    && p.conn != conn
                {
                    p.also.retain(|(c, _)| *c != conn);
                    p.also.push((conn, e));
                }
                None
            }
        }
    }

    /// The same content under another history: ours takes `version`, the disk is untouched.
    fn adopt(&mut self, conn: ConnId, e: Entry, version: VersionVector) {
        let stat = self.index.get(&e.path).and_then(|l| l.stat);
        // Ours is live and beats the peer's concurrent deletion: a new change of ours
        // over both, as the winner of any conflict makes. The merge alone is not enough:
        // elsewhere that deletion may have met another one, and their merge was the same
        // vector as ours for a deletion, not our content: equal versions, two contents,
        // for ever (simulator seed 190890).
        let live_over_deletion =
            e.kind.is_deleted() && self.index.get(&e.path).is_some_and(|l| !l.entry.kind.is_deleted());
        let version = if live_over_deletion { self.next_version(&version) } else { version };
        // The source already has its own version; a merge is news to it as well.
        let to_source = if version == e.version { Some(conn) } else { None };
        let entry = match self.index.get(&e.path) {
            Some(l) => Entry { version, ..l.entry.clone() },
            None => Entry { version, ..e },
        };
        self.set(entry, stat, to_source);
    }

    /// On a file system that folds names: the live path of ours that is the same name as the
    /// peer's new `e` (or one of its directories) under another spelling.
    pub(super) fn fold_collision(&self, e: &Entry) -> Option<RelPath> {
        if !self.cfg.folding.active() || e.kind.is_deleted() {
            return None;
        }
        if self.index.get(&e.path).is_some_and(|l| !l.entry.kind.is_deleted()) {
            return None; // the same spelling as ours
        }
        let mut p = Some(e.path.clone());
        while let Some(cur) = p {
            let key = self.cfg.folding.key(&cur);
            // Ours on disk, or on its way (a transfer of another spelling under way).
            for ours in [self.index.folded(&key), self.fetch_fold.get(&key)].into_iter().flatten() {
                if *ours != cur {
                    return Some(ours.clone());
                }
            }
            p = cur.parent();
        }
        None
    }

    /// Makes the disk match the peer's entry. With `keep_local_copy`, our version (which lost a
    /// conflict) is first moved aside to a conflict copy.
    pub(super) fn apply(&mut self, conn: ConnId, e: Entry, keep_local_copy: bool) {
        let local = self.index.get(&e.path).cloned();
        let expected = local.as_ref().and_then(|l| l.stat);
        if let Kind::File { hash, mode, .. } = &e.kind {
            let same_bytes =
                matches!(local.as_ref().map(|l| &l.entry.kind), Some(Kind::File { hash: h, .. }) if h == hash);
            if same_bytes && !keep_local_copy {
                let (mtime, mode) = (e.mtime, *mode);
                let r = self.attempt(&e, |d| d.set_meta(&e.path, expected, mtime, mode));
                self.finish_local(conn, e, r);
            } else if let Some(from) = self.take_stash(hash) {
                self.waited_move.remove(&(e.path.clone(), *hash));
                self.apply_from_stash(conn, e, from, local.as_ref(), keep_local_copy);
            } else if let Some(src) = self.same_content_here(&e) {
                // The content is here under another name: most likely a rename whose delete
                // comes a moment later (the peer saw the new names first, as when a directory
                // moves into directories made for it). Wait for that delete once, then move
                // the file; without it, copy ours instead of fetching the bytes again.
                let key = (e.path.clone(), *hash);
                if self.waited_move.insert(key.clone()) {
                    self.retries.push(self.now + MOVE_WAIT, conn, e);
                } else {
                    self.waited_move.remove(&key);
                    self.copy_local(conn, e, &src, keep_local_copy);
                }
            } else {
                self.enqueue(conn, e, Purpose::Apply { keep_local_copy });
            }
            return;
        }
        if let (
            Kind::Deleted,
            Some(LocalEntry { entry: Entry { kind: Kind::File { hash, .. }, .. }, stat: Some(_), .. }),
        ) = (&e.kind, &local)
        {
            match self.attempt(&e, |d| d.stash(&e.path, expected)) {
                Ok(p) => {
                    self.stash.entry(*hash).or_default().push((p, self.now));
                    let gone = Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 };
                    self.finish_local(conn, e, Ok(gone));
                    return;
                }
                Err(err) if err.crosses_devices() => {} // delete it below
                Err(err) => {
                    self.exec_failed(conn, e, err);
                    return;
                }
            }
        }
        if keep_local_copy
            && let Some(l) = &local
            && let Err(err) = self.move_local_aside(l)
        {
            self.exec_failed(conn, e, err);
            return;
        }
        let expected = if keep_local_copy { None } else { expected };
        if matches!(e.kind, Kind::File { .. }) {
            return;
        }
        let r = self.attempt(&e, |d| match &e.kind {
            Kind::Deleted => d.remove(&e.path, expected).map(|()| None),
            Kind::Directory => d.make_dir(&e.path, expected).map(Some),
            Kind::Symlink { target } => d.make_symlink(&e.path, expected, target).map(Some),
            Kind::File { .. } => Ok(None),
        });
        match r {
            Err(ExecError::NotEmpty) if e.kind.is_deleted() => {
                self.deferred.push((self.now + STASH_FOR, conn, e));
            }
            r => self.finish_local(
                conn,
                e,
                r.map(|s| s.unwrap_or(Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 })),
            ),
        }
    }

    /// A live file of ours, at another path, with the content `e` wants (large files only:
    /// small ones cost less to send than to wait for).
    pub(super) fn same_content_here(&self, e: &Entry) -> Option<RelPath> {
        let Kind::File { size, hash, .. } = &e.kind else { return None };
        if *size < BY_CONTENT_MIN {
            return None;
        }
        self.index.elsewhere(hash, &e.path).cloned()
    }

    /// Makes `e`'s content from our copy at `src` (verified by hash as it is read) instead of
    /// fetching it; fetches it after all if `src` changed.
    pub(super) fn copy_local(&mut self, conn: ConnId, e: Entry, src: &RelPath, keep_local_copy: bool) {
        let Kind::File { hash, .. } = e.kind else { return };
        let expected = self.index.get(src).and_then(|l| l.stat);
        let copied = self.disk.copy_to_temp(src, expected, &e.path, &hash);
        let tmp = match copied {
            Ok(Some(t)) => t,
            Ok(None) | Err(_) => return self.enqueue(conn, e, Purpose::Apply { keep_local_copy }),
        };
        log::debug!("{}: content copied from {src} here, nothing transferred", e.path);
        let decided = self.index.get(&e.path).map(|l| l.entry.version.clone());
        let purpose = Purpose::Apply { keep_local_copy };
        let f = Fetch { entry: e, purpose, decided, progress: Progress::Requested, delta: transfers::Delta::No };
        if let Err(err) = self.install_fetched(conn, f, tmp, hash) {
            self.drop_session(conn, err);
        }
    }

    /// Puts a stashed file (same content, deleted a moment ago) at the peer's new path: a
    /// rename, with no data sent.
    pub(super) fn apply_from_stash(
        &mut self,
        conn: ConnId,
        e: Entry,
        from: D::Stashed,
        local: Option<&LocalEntry>,
        keep_local_copy: bool,
    ) {
        let Kind::File { hash, mode, .. } = e.kind else { return };
        let mut expected = local.and_then(|l| l.stat);
        if keep_local_copy && let Some(l) = local {
            if let Err(err) = self.move_local_aside(l) {
                self.stash.entry(hash).or_default().push((from, self.now));
                self.exec_failed(conn, e, err);
                return;
            }
            expected = None;
        }
        match self.attempt(&e, |d| d.unstash(&from, &e.path, expected, e.mtime, mode)) {
            Ok(stat) => {
                log::debug!("{}: content found locally (a rename), nothing transferred", e.path);
                self.finish_local(conn, e, Ok(stat));
            }
            Err(err) => {
                self.stash.entry(hash).or_default().push((from, self.now));
                self.exec_failed(conn, e, err);
            }
        }
    }

    /// Records the outcome of a disk change made for the peer's entry `e`.
    pub(super) fn finish_local(&mut self, conn: ConnId, e: Entry, r: Result<Stat, ExecError>) {
        match r {
            Ok(stat) => {
                let version =
                    self.index.get(&e.path).map_or_else(|| e.version.clone(), |l| l.entry.version.merged(&e.version));
                let host = self.sessions.get(&conn).map(|s| s.peer_host.clone());
                log_change("applied", &e, host.as_deref());
                let stat = if e.kind.is_deleted() { None } else { Some(stat) };
                let rules_file = is_rules_file(&e.path);
                let path = e.path.clone();
                self.attempts.remove(&path);
                self.told.remove(&path);
                if !self.no_delta.is_empty() {
                    self.no_delta.retain(|(p, _)| *p != path);
                }
                let to_source = if version == e.version { Some(conn) } else { None };
                self.set(Entry { version, ..e }, stat, to_source);
                // Journal it right away (fsync comes with the batch): if this process is killed
                // now, the restart must not mistake the peer's change for a local edit.
                if let Some(l) = self.index.get(&path) {
                    match self.journal.append_unsynced(&mut std::iter::once(l)) {
                        Ok(()) => {
                            self.unsaved.remove(&path);
                        }
                        Err(e) => log::warn!("cannot journal {path} yet: {e}; it will be with the batch"),
                    }
                }
                if rules_file {
                    self.rules_changed_at(&path);
                }
            }
            Err(err) => self.exec_failed(conn, e, err),
        }
    }

    pub(super) fn exec_failed(&mut self, conn: ConnId, e: Entry, err: ExecError) {
        match err {
            ExecError::Changed => {
                // The user changed the path while we worked: that change is news; scan it and
                // decide again with the peer's entry.
                log::debug!("{}: changed locally meanwhile; reconciling again", e.path);
                self.scan_one(&e.path);
                let local = self.index.get(&e.path).map(|l| &l.entry);
                if reconcile(local, &e) != Action::Nothing {
                    self.retries.push(self.now + Duration::from_millis(10), conn, e);
                }
            }
            ExecError::Jail(err) => self.refuse(conn, e, err.to_string()),
            // The peer replaced a directory (by a file or symlink) that still holds what it does
            // not have: written here meanwhile. As a modification beats a deletion, the
            // directory wins; the peer's entry is kept as a conflict copy, and our directory's
            // merged version makes the peer take the directory back (issue 11, item 5).
            ExecError::NotEmpty if !e.kind.is_deleted() => {
                log::info!("{}: the peer replaced this directory, which still holds files it does not have", e.path);
                self.keep_remote_copy(conn, e);
            }
            err => {
                let why = format!("cannot apply {} ({}): {err}", e.path, describe(&e.kind));
                let kind = match &err {
                    ExecError::Io(io) => io.kind(),
                    ExecError::NotEmpty => io::ErrorKind::DirectoryNotEmpty,
                    _ => io::ErrorKind::Other,
                };
                self.retry_later(conn, e, Trouble::CannotApply(kind), why);
            }
        }
    }

    /// Reported once; retried with a growing delay (a full disk may take a while, a file the
    /// peer cannot read may stay so), and at once when the peer sends a newer version.
    pub(super) fn retry_later(&mut self, conn: ConnId, e: Entry, trouble: Trouble, why: String) {
        let news = self.told.insert(e.path.clone(), trouble) != Some(trouble);
        if news {
            self.attempts.remove(&e.path);
        }
        let n = self.attempts.entry(e.path.clone()).or_insert(0);
        *n += 1;
        let wait = (RETRY_AFTER * 2u32.pow((*n - 1).min(6))).min(MAX_RETRY_AFTER);
        if news {
            log::error!("{why}; retrying in {}s, then less often", wait.as_secs());
            self.tell(why);
        } else {
            log::debug!("{why}; retrying in {}s", wait.as_secs());
        }
        self.retries.push(self.now + wait, conn, e);
    }

    /// A peer's entry that cannot be applied here as our tree is now: reported once, kept, and
    /// offered again when a directory or symlink changes here, or by the peer's next session.
    /// The session goes on: one path never costs the others their sync.
    pub(super) fn refuse(&mut self, conn: ConnId, e: Entry, why: String) {
        if self.told.insert(e.path.clone(), Trouble::Refused) != Some(Trouble::Refused) {
            let msg = format!("not syncing {} here: {why}; tried again when that changes", e.path);
            log::warn!("{msg}");
            self.tell(msg);
        }
        if let Some(s) = self.sessions.get_mut(&conn) {
            hold(&mut s.refused, e);
        }
    }

    /// Changes the disk at `e`'s path to what `e` says, journaling the intent first and its
    /// failure after: if the process dies between the change and its entry's journal record
    /// (written by [`finish_local`](Self::finish_local)), the restart knows the change as the
    /// peer's `e`, not as a new one of ours. (As one of ours, a directory applied for a peer
    /// beat the peer's later deletion of it: model seed 20038.)
    pub(super) fn attempt<T>(
        &mut self,
        e: &Entry,
        change: impl FnOnce(&mut D) -> Result<T, ExecError>,
    ) -> Result<T, ExecError> {
        if let Err(err) = self.journal.append_intent(e) {
            log::warn!("cannot journal the change to {} yet: {err}", e.path);
        }
        let r = change(&mut self.disk);
        if r.is_err()
            && let Err(err) = self.journal.append_void(&e.path)
        {
            log::warn!("cannot journal the failed change to {}: {err}", e.path);
        }
        r
    }

    pub(super) fn retry_deferred(&mut self) {
        let mut progress = true;
        while progress && !self.deferred.is_empty() {
            progress = false;
            for (until, conn, e) in std::mem::take(&mut self.deferred) {
                // Superseded while it waited (the peer made the directory again, or we have
                // something newer): it is no longer a deletion to carry out, now or later.
                if reconcile(self.index.get(&e.path).map(|l| &l.entry), &e) != Action::Apply {
                    log::info!("{}: the deletion that waited is superseded", e.path);
                    continue;
                }
                let expected = self.index.get(&e.path).and_then(|l| l.stat);
                match self.attempt(&e, |d| d.remove(&e.path, expected)) {
                    Err(ExecError::NotEmpty) => self.deferred.push((until, conn, e)),
                    r => {
                        progress = true;
                        self.finish_local(
                            conn,
                            e,
                            r.map(|()| Stat { mode: 0, size: 0, mtime: Timestamp::default(), ino: 0 }),
                        );
                    }
                }
            }
        }
        // What is still deferred when its time is up holds files the peer never had (ignored
        // here, or new): keep them. If some are synced ones, the directory is live again
        // everywhere: a new change of ours over the peer's deletion (a modification beats a
        // deletion), or the two sides would differ for ever.
        let now = self.now;
        let (waiting, expired): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.deferred).into_iter().partition(|d| d.0 > now);
        self.deferred = waiting;
        for (_, _, e) in expired {
            log::warn!("not deleting directory {}: it still holds files the peer does not have", e.path);
            let synced_inside = subtree(&self.index, &e.path).any(|(p, l)| *p != e.path && !l.entry.kind.is_deleted());
            if synced_inside && let Some(l) = self.index.get(&e.path).cloned() {
                let version = self.next_version(&l.entry.version.merged(&e.version));
                self.set(Entry { version, ..l.entry }, l.stat, None);
            }
        }
    }

    pub(super) fn process_retries(&mut self) {
        if !self.deferred.is_empty() {
            self.retry_deferred();
        }
        for (conn, e) in self.retries.take_due(self.now) {
            if self.sessions.contains_key(&conn) {
                let _ = self.on_remote(conn, e);
            }
        }
    }

    /// Deletes stashed files older than `age`, and forgets deleted inodes as old.
    pub(super) fn purge_stash(&mut self, age: Duration) {
        let now = self.now;
        self.index.forget_gone(now, age);
        if self.stash.is_empty() {
            return;
        }
        let disk = &mut self.disk;
        for v in self.stash.values_mut() {
            v.retain(|(p, t)| {
                let keep = now.duration_since(*t) < age;
                if !keep {
                    disk.drop_stashed(p);
                }
                keep
            });
        }
        self.stash.retain(|_, v| !v.is_empty());
    }

    pub(super) fn take_stash(&mut self, hash: &Hash) -> Option<D::Stashed> {
        let v = self.stash.get_mut(hash)?;
        let (p, _) = v.pop()?;
        if v.is_empty() {
            self.stash.remove(hash);
        }
        Some(p)
    }
}

/// Keeps a session's entry for a path that is not applied now, unless the one already kept is
/// newer: what a peer says about a path only moves forward (simulator seed 448180).
fn hold(held: &mut BTreeMap<RelPath, Entry>, e: Entry) {
    if held.get(&e.path).is_some_and(|old| old.version.compare(&e.version) == mirror_protocol::VersionOrdering::After) {
        return;
    }
    held.insert(e.path.clone(), e);
}
