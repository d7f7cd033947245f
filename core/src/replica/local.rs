//! Local changes: what the watcher names, read from the disk and compared with the index.

use super::*;
use mirror_protocol::Origin;

impl<D: Disk, J: Journal, R: Ignore> Replica<D, J, R> {
    pub(super) fn on_watch(&mut self, ev: Hint) {
        log::trace!("watch {ev:?}");
        match ev {
            Hint::Dirty(p) => self.mark(&p, false, false),
            Hint::Settled(p) => self.mark(&p, false, true),
            Hint::Writing(p) => {
                if let Some(rel) = self.hinted(&p) {
                    self.debounce.writing(rel, self.now);
                }
            }
            Hint::Unlinked(p) => {
                if let Some(rel) = self.hinted(&p) {
                    self.debounce.unlinked(rel, self.now);
                }
            }
            Hint::RescanSubtree(p) => self.mark(&p, true, true),
            Hint::Overflow => {
                log::warn!("{}: watcher queue overflowed; rescanning everything", self.cfg.root.display());
                self.debounce.rescan_all();
            }
            Hint::RootGone => self.halt(HaltReason::RootVanished),
            Hint::Checkpoint(c) => self.checkpoint = Some(c),
        }
    }

    /// Marks a path to be read again (soon if the change looks `settled`).
    pub(super) fn mark_dirty(&mut self, p: &Path, deep: bool) {
        self.mark(p, deep, true);
    }

    pub(super) fn mark(&mut self, p: &Path, deep: bool, settled: bool) {
        if p.as_os_str().is_empty() {
            if deep {
                self.debounce.rescan_all();
            }
            return;
        }
        if let Some(rel) = self.hinted(p) {
            self.debounce.hint(rel, deep, settled, self.now);
        }
    }

    /// The path a hint names, if it is one we sync (not the root, not a temp file of ours).
    fn hinted(&mut self, p: &Path) -> Option<RelPath> {
        if p.as_os_str().is_empty() {
            return None;
        }
        let Some(rel) = to_rel(p) else {
            self.unsyncable(p);
            return None;
        };
        (!is_temp(p)).then_some(rel)
    }

    pub(super) fn process_dirty(&mut self) {
        if self.debounce.take_full_rescan() {
            self.full_scan();
            return;
        }
        for (p, deep) in self.debounce.due(self.now) {
            self.scan_path(&p, deep);
            if is_rules_file(&p) {
                self.rules_changed_at(&p);
            }
        }
    }

    /// A `.gitignore` (or `.git/info/exclude`) changed, here or by a peer: reload the rules of
    /// its directory, rescan that directory whole, watch what is no longer ignored, and offer
    /// the peers' skipped entries again.
    pub(super) fn rules_changed_at(&mut self, file: &RelPath) {
        let dir = file.parent();
        let dir_path = dir.as_ref().map(|d| rel_path(d).to_path_buf()).unwrap_or_default();
        self.rules.invalidate(&dir_path);
        match &dir {
            Some(d) if !matches!(d.as_bytes(), b".git/info") => self.mark_dirty(&dir_path, true),
            _ => self.debounce.rescan_all(),
        }
        self.out.push(Command::Rewatch(dir_path));
        self.rules_changed = true;
    }

    /// Walks the whole root.
    /// A root that is empty where the base knew files halts the pair instead (an unmounted disk
    /// looks exactly like a user who deleted everything).
    pub(super) fn full_scan(&mut self) {
        let mut seen = BTreeSet::new();
        self.walk(None, &mut seen);
        let live = self.index.values().filter(|l| !l.entry.kind.is_deleted()).count();
        let accept = std::mem::take(&mut self.accept_empty);
        if seen.is_empty() && live > 0 && !accept {
            self.halt(HaltReason::RootEmpty { live });
            return;
        }
        let gone: Vec<RelPath> = self
            .index
            .iter()
            .filter(|(p, l)| !l.entry.kind.is_deleted() && !seen.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.scan_one(&p);
        }
    }

    /// Re-reads `rel`; for a directory that is new, or when `deep`, everything beneath it too.
    pub(super) fn scan_path(&mut self, rel: &RelPath, deep: bool) {
        let was_dir = self.index.get(rel).is_some_and(|l| matches!(l.entry.kind, Kind::Directory));
        let ino = |this: &Self| this.index.get(rel).and_then(|l| l.stat).map(|s| s.ino);
        let before = ino(self);
        let is_dir = self.scan_one(rel);
        // A directory that is another one now (moved away, and made again: by the user, or by
        // us as the parent of a peer's new entry before the move was seen) holds only what is
        // in it now: what the old one held is looked at again (simulator seed 1521).
        let replaced = was_dir && is_dir && before.is_some() && ino(self) != before;
        // An ignored directory may still hold files an include pattern wants.
        let ignored_dir = !is_dir
            && self.rules.has_includes()
            && self.disk.lstat(rel).ok().flatten().is_some_and(|s| s.mode & S_IFMT == S_IFDIR);
        if (is_dir && (deep || !was_dir || replaced)) || ignored_dir {
            let mut seen = BTreeSet::new();
            self.walk_from(Some(rel.clone()), ignored_dir, &mut seen);
            let gone: Vec<RelPath> = subtree(&self.index, rel)
                .filter(|(p, l)| *p != rel && !l.entry.kind.is_deleted() && !seen.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                self.scan_one(&p);
            }
        }
    }

    /// Lists `dir` (the root when `None`) recursively, scanning every synced path.
    pub(super) fn walk(&mut self, dir: Option<RelPath>, seen: &mut BTreeSet<RelPath>) {
        self.walk_from(dir, false, seen);
    }

    /// [`walk`](Self::walk), starting inside an ignored directory when `inside_ignored` (then
    /// only what include patterns name is scanned).
    pub(super) fn walk_from(&mut self, dir: Option<RelPath>, inside_ignored: bool, seen: &mut BTreeSet<RelPath>) {
        let has_includes = self.rules.has_includes();
        let mut stack: Vec<(Option<RelPath>, bool)> = vec![(dir, inside_ignored)];
        while let Some((dir, inside_ignored)) = stack.pop() {
            let children = match self.disk.list(dir.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        let dir_abs =
                            dir.as_ref().map_or_else(|| self.cfg.root.clone(), |d| self.cfg.root.join(rel_path(d)));
                        log::warn!("cannot list {}: {e}; skipping it", dir_abs.display());
                    }
                    continue;
                }
            };
            for ent in children {
                let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&ent.name);
                let child_path = match &dir {
                    Some(d) => rel_path(d).join(name),
                    None => PathBuf::from(name),
                };
                if is_temp(&child_path) {
                    continue; // ours: never synced (a crash's leftovers went at start)
                }
                let Some(rel) = to_rel(&child_path) else {
                    self.unsyncable(&child_path);
                    continue;
                };
                let is_dir = ent.is_dir;
                let (ignored, included) = {
                    let r = &mut self.rules;
                    let included = r.is_included(&child_path, is_dir);
                    (!included && (inside_ignored || r.ignored_here(&child_path, is_dir)), included)
                };
                if ignored {
                    if is_dir && has_includes {
                        stack.push((Some(rel), true));
                    }
                    continue;
                }
                seen.insert(rel.clone());
                self.scan_one(&rel);
                if is_dir {
                    stack.push((Some(rel), inside_ignored && !included));
                }
            }
        }
    }

    /// Compares one path on disk with the index and records a local change if there is one.
    /// Returns whether the path is now a directory.
    pub(super) fn scan_one(&mut self, rel: &RelPath) -> bool {
        // A file moved here keeps its inode: reuse the hash recorded under its old name.
        let index = &self.index;
        let known = |ino: u64| {
            index.get(rel).and_then(known_hash).filter(|(s, _)| s.ino == ino).or_else(|| index.known_inode(ino))
        };
        let from = if self.hash_apart { self.cfg.hash_apart_from } else { u64::MAX };
        let seen = match self.disk.observe_light(rel, &known, from) {
            Ok(Some(Observed::Unhashed(u))) => {
                if !self.is_ignored(rel_path(rel), false) {
                    self.hash_apart(rel, u);
                }
                return false;
            }
            Ok(Some(Observed::Seen(s))) => Some(s),
            Ok(None) => None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.mark_dirty(rel_path(rel), false);
                return false;
            }
            Err(e) => {
                log::warn!("cannot read {rel}: {e}; skipping it until it changes");
                return false;
            }
        };
        let Some(seen) = seen else {
            self.local_delete(rel);
            return false;
        };
        let is_dir = matches!(seen.kind, Kind::Directory);
        if self.is_ignored(rel_path(rel), is_dir) {
            return false;
        }
        self.local_seen(rel, seen);
        is_dir
    }

    /// A large file changed: hashed by the driver, then taken in by [`on_hashed`](Self::on_hashed).
    /// Meanwhile the index keeps what it knew: a peer's change for the path finds the disk
    /// other than that when it verifies, and waits.
    fn hash_apart(&mut self, rel: &RelPath, u: Unhashed) {
        if self.hashing.get(rel).is_some_and(|h| h.stat == u.stat) {
            return; // already being hashed as it is
        }
        if self.traced(rel) {
            log::info!("[trace] {rel}: hashed apart ({} bytes)", u.stat.size);
        }
        self.out.push(Command::Hash { path: rel.clone(), stat: u.stat });
        self.hashing.insert(rel.clone(), u);
    }

    /// The hash of a large file, from the driver: taken in as a scan's look would be, if the file
    /// is still as it was hashed; otherwise it is looked at again.
    pub(super) fn on_hashed(&mut self, path: RelPath, stat: Stat, hash: io::Result<Hash>) {
        // An answer for an older look (a newer one is under way), or for one forgotten.
        if self.halted.is_some() || self.hashing.get(&path).is_none_or(|u| u.stat != stat) {
            return;
        }
        let Some(u) = self.hashing.remove(&path) else { return };
        let hash = match hash {
            Ok(h) => h,
            // Changed while read, or gone: what is there now is looked at.
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::NotFound) => {
                self.mark_dirty(rel_path(&path), false);
                return;
            }
            Err(e) => {
                log::warn!("cannot read {path}: {e}; skipping it until it changes");
                return;
            }
        };
        match self.disk.lstat(&path) {
            Ok(Some(now)) if now == stat && !self.is_ignored(rel_path(&path), false) => {
                self.local_seen(&path, u.seen(hash));
            }
            Ok(Some(now)) if now == stat => {}
            _ => self.mark_dirty(rel_path(&path), false),
        }
    }

    pub(super) fn is_ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        self.rules.is_ignored(rel, is_dir)
    }

    pub(super) fn local_seen(&mut self, rel: &RelPath, seen: Seen) {
        // For files the mtime is part of what is synced (build tools compare them); directory
        // mtimes move with their children and are not.
        let is_file = matches!(seen.kind, Kind::File { .. });
        #[cfg(feature = "planted-bugs")]
        let echo = self.planted(crate::planted::Bug::Echo)
            && self.index.get(rel).is_some_and(|l| l.entry.origin != self.cfg.host && !l.entry.kind.is_deleted());
        #[cfg(not(feature = "planted-bugs"))]
        let echo = false;
        let (version, was_dir) = match self.index.get(rel) {
            Some(l) if echo => (l.entry.version.clone(), matches!(l.entry.kind, Kind::Directory)),
            Some(l) if !l.entry.kind.is_deleted() && l.stat == Some(seen.stat) => return,
            Some(l) if l.entry.kind == seen.kind && (!is_file || l.entry.mtime == seen.mtime) => {
                self.index.set_stat(rel, seen.stat);
                return;
            }
            Some(l) => (l.entry.version.clone(), matches!(l.entry.kind, Kind::Directory)),
            None => (VersionVector::new(), false),
        };
        if was_dir && !matches!(seen.kind, Kind::Directory) {
            self.delete_descendants(rel);
        }
        if let Some(applied) = self.intended(rel, &seen.kind, seen.mtime) {
            self.set(applied, Some(seen.stat), None);
            return;
        }
        let version = self.next_version(&version);
        if self.traced(rel) {
            log::info!("[trace] {rel}: local change {:?} v{:?}", seen.kind, version);
        }
        // Being written: the next event for it waits for a quiet moment.
        self.debounce.found_changed(rel, self.now);
        let entry = Entry {
            path: rel.clone(),
            kind: seen.kind,
            mtime: seen.mtime,
            version,
            origin: Origin::new(&self.cfg.host),
        };
        // The planted echo keeps the peer as the origin, so that every report of the path echoes.
        #[cfg(feature = "planted-bugs")]
        let entry = match self.index.get(rel) {
            Some(l) if echo => Entry { origin: l.entry.origin.clone(), ..entry },
            _ => entry,
        };
        if !self.initial {
            log_change("changed", &entry, None);
        }
        self.set(entry, Some(seen.stat), None);
    }

    pub(super) fn local_delete(&mut self, rel: &RelPath) {
        let Some(l) = self.index.get(rel) else { return };
        if l.entry.kind.is_deleted() {
            return;
        }
        let was_dir = matches!(l.entry.kind, Kind::Directory);
        let old = l.entry.version.clone();
        if was_dir {
            self.delete_descendants(rel);
        }
        if let Some(applied) = self.intended(rel, &Kind::Deleted, Timestamp::default()) {
            self.set(applied, None, None);
            return;
        }
        let version = self.next_version(&old);
        let entry = Entry {
            path: rel.clone(),
            kind: Kind::Deleted,
            mtime: self.wall,
            version,
            origin: Origin::new(&self.cfg.host),
        };
        log_change("deleted", &entry, None);
        self.set(entry, None, None);
    }

    /// The peer's entry we were applying at `rel` when the process died, if the disk holds
    /// exactly it (`kind`, and for a file its `mtime`): it was applied, and is that version.
    pub(super) fn intended(&mut self, rel: &RelPath, kind: &Kind, mtime: Timestamp) -> Option<Entry> {
        let i = self.intents.remove(rel)?;
        let same = i.kind == *kind && (!matches!(kind, Kind::File { .. }) || i.mtime == mtime);
        if same {
            log::info!("{rel}: applied for a peer just before the last stop (its version, not a change here)");
        }
        same.then_some(i)
    }

    pub(super) fn delete_descendants(&mut self, dir: &RelPath) {
        let live: Vec<RelPath> = subtree(&self.index, dir)
            .filter(|(p, l)| *p != dir && !l.entry.kind.is_deleted())
            .map(|(p, _)| p.clone())
            .collect();
        for p in live.into_iter().rev() {
            if let Some(old) = self.index.get(&p).map(|l| l.entry.version.clone()) {
                let version = self.next_version(&old);
                let entry = Entry {
                    path: p.clone(),
                    kind: Kind::Deleted,
                    mtime: self.wall,
                    version,
                    origin: Origin::new(&self.cfg.host),
                };
                self.set(entry, None, None);
            }
        }
    }

    /// A local path no peer could take (longer than 4,096 bytes, a name longer than 255):
    /// reported once (log and `status`), then left alone while the rest syncs.
    pub(super) fn unsyncable(&mut self, p: &Path) {
        if self.told_local.len() < 10_000 && self.told_local.insert(p.to_path_buf()) {
            let len = p.as_os_str().len();
            let why = match p.components().map(|c| c.as_os_str().len()).max() {
                _ if len > mirror_protocol::path::MAX_PATH_LEN => {
                    format!(
                        "its path is {len} bytes long, more than the {} a peer takes",
                        mirror_protocol::path::MAX_PATH_LEN
                    )
                }
                Some(n) if n > 255 => format!("a name in it is {n} bytes long, more than 255"),
                _ => "its name cannot be synced".into(),
            };
            let msg = format!("not syncing {}: {why}", p.display());
            log::warn!("{msg}");
            self.tell(msg);
        }
    }

    pub(super) fn disk_moved(&self, l: &LocalEntry) -> bool {
        self.disk.lstat(&l.entry.path).map_or(true, |s| s != l.stat)
    }
}
