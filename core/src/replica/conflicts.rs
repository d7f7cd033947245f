//! Conflicts: the losing version kept beside the winner under a name every replica agrees on,
//! and name collisions on a file system that folds names.

use super::*;

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    /// Reports a name collision: the peer's `theirs` is `ours` on this file system.
    pub(super) fn conflicts_named(&mut self, theirs: &RelPath, ours: &RelPath) {
        let msg = format!(
            "name collision: the peer's {theirs} is the same name as our {ours} on this file system \
             (case or Unicode normalization); {theirs} is not synced here until one of them is renamed"
        );
        log::warn!("{msg}");
        self.out.push(Command::Collision(msg));
    }

    pub(super) fn move_local_aside(&mut self, l: &LocalEntry) -> Result<(), ExecError> {
        let base = conflict_path_of(&l.entry, self.cfg.name_max);
        let mut to = base.clone();
        let mut n = 1;
        while let Some(there) = self.disk.lstat(&to)? {
            // The copy may exist already: a peer that saw the same conflict kept our version
            // under the same name. Then ours is safe, and moving it would make a duplicate.
            let same = self.index.get(&to).is_some_and(|c| c.entry.kind == l.entry.kind && c.stat == Some(there));
            if same {
                self.disk.remove(&l.entry.path, l.stat)?;
                self.conflicts += 1;
                log::warn!(
                    "conflict on {}: our version lost; it is already kept as {to} ({} conflicts so far)",
                    l.entry.path,
                    self.conflicts
                );
                return Ok(());
            }
            n += 1;
            to = numbered(&base, n, self.cfg.name_max);
        }
        self.disk.move_aside(&l.entry.path, l.stat, &to)?;
        self.conflicts += 1;
        log::warn!(
            "conflict on {}: our version lost and is kept as {to} ({} conflicts so far)",
            l.entry.path,
            self.conflicts
        );
        self.record_copy(&to, &l.entry);
        Ok(())
    }

    /// Records a conflict copy we just made at `at` of the losing version `loser`. A new copy
    /// takes the loser's version vector and origin rather than a new change of ours: every
    /// replica that secures the same loser makes the same name (conflict.rs) and now the same
    /// entry, so their copies meet as equal, and a later edit or deletion of the copy anywhere
    /// supersedes all of them. (With a fresh version each, a deleted copy came back from a
    /// replica that had made its own: concurrent, and a deletion never beats a modification.)
    pub(super) fn record_copy(&mut self, at: &RelPath, loser: &Entry) {
        if self.index.contains_key(at) {
            self.scan_one(at); // the name was used before: a new change of ours over its history
            return;
        }
        let seen = self.disk.observe(at, &|_| None).ok().flatten();
        match seen {
            Some(seen) if !matches!(seen.kind, Kind::Directory) => {
                let entry = Entry {
                    path: at.clone(),
                    kind: seen.kind,
                    mtime: seen.mtime,
                    version: loser.version.clone(),
                    origin: loser.origin.clone(),
                };
                self.set(entry, Some(seen.stat), None);
            }
            _ => {
                self.scan_one(at);
            }
        }
    }

    pub(super) fn keep_remote_copy(&mut self, conn: ConnId, e: Entry) {
        let at = conflict_path_of(&e, self.cfg.name_max);
        match &e.kind {
            Kind::File { .. } => self.enqueue(conn, e, Purpose::KeepRemoteCopy { at }),
            Kind::Symlink { target } => {
                let mut dest = at.clone();
                let mut n = 1;
                loop {
                    if self.index.get(&dest).is_some_and(|c| c.entry.kind == e.kind) {
                        break; // already kept under this name
                    }
                    if self.disk.lstat(&dest).ok().flatten().is_none() {
                        if let Err(err) = self.disk.make_symlink(&dest, None, target) {
                            self.exec_failed(conn, e, err);
                            return;
                        }
                        self.record_copy(&dest, &e);
                        break;
                    }
                    n += 1;
                    dest = numbered(&at, n, self.cfg.name_max);
                }
                self.won_conflict(&e, &dest);
            }
            Kind::Directory | Kind::Deleted => self.won_conflict(&e, &at),
        }
    }

    /// Our version won a conflict and the peer's is secured: supersede theirs.
    pub(super) fn won_conflict(&mut self, e: &Entry, copy: &RelPath) {
        if let Some(l) = self.index.get(&e.path).cloned() {
            self.conflicts += 1;
            log::warn!(
                "conflict on {}: our version won; the peer's is kept as {copy} ({} conflicts so far)",
                e.path,
                self.conflicts
            );
            // A new change of ours over both. The merge alone is not enough: the peer may have
            // won another conflict (against an older version of ours) and made the very same
            // merge for its own content, and the two sides then held a directory and a symlink
            // under one version for ever (model seed 20038). A tick makes ours newer than
            // anything the peer merged without it; if the peer's winner was different, the next
            // round compares the same two entries on both sides and they agree.
            let version = self.next_version(&l.entry.version.merged(&e.version));
            // Sent to the loser's peer too: it must learn that this version supersedes its own.
            self.set(Entry { version, ..l.entry }, l.stat, None);
        }
    }
}
