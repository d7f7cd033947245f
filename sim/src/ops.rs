//! The user's operations on a machine's disk, with what its watcher reports of each, and the
//! bookkeeping of the no-lost-write check: every content written is recorded, and marked
//! *superseded* when a user who held it replaced or deleted it (then it may rightly be gone).

use crate::disk::{MemDisk, Shape};
use crate::plan::Op;
use crate::world::{World, Written};
use mirror_core::replica::Hint;
use mirror_core::tree::S_IFMT;
use mirror_protocol::RelPath;
use std::path::PathBuf;

/// `rel` as the watcher names it.
pub fn os_path(rel: &RelPath) -> PathBuf {
    mirror_core::paths::rel_path(rel).to_path_buf()
}

fn shape(d: &MemDisk, p: &RelPath) -> Option<Shape> {
    d.shape(p)
}

impl World {
    /// A new content of `len` bytes, unique in the whole history.
    fn content(&mut self, m: usize, len: usize) -> Vec<u8> {
        self.counter += 1;
        let mut c = format!("{}:{}:", self.machines[m].name, self.counter).into_bytes();
        let seed = self.counter;
        c.extend((0..len).map(|i| (seed as usize).wrapping_mul(7).wrapping_add(i * 31) as u8));
        c
    }

    fn wrote(&mut self, m: usize, path: &RelPath, content: &[u8]) {
        let hash = *blake3::hash(content).as_bytes();
        let w = Written { hash, machine: m, path: path.clone(), len: content.len(), superseded: false };
        self.written.insert(hash, w);
    }

    /// What `m` holds at and beneath `p` is replaced by its user, knowingly.
    fn supersede(&mut self, m: usize, p: &RelPath) {
        let Some(d) = self.machines[m].disk() else { return };
        let gone: Vec<[u8; 32]> = match d.shape(p) {
            None | Some(Shape::Symlink { .. }) => return,
            Some(Shape::File { content, .. }) => vec![*blake3::hash(&content).as_bytes()],
            Some(Shape::Dir) => d
                .snapshot()
                .into_iter()
                .filter(|(q, _)| q == p || q.starts_with(p))
                .filter_map(|(_, s)| match s {
                    Shape::File { content, .. } => Some(*blake3::hash(&content).as_bytes()),
                    _ => None,
                })
                .collect(),
        };
        for h in gone {
            if let Some(w) = self.written.get_mut(&h) {
                w.superseded = true;
            }
        }
    }

    /// Hints for the directories `p`'s creation made.
    fn made_parents(&mut self, m: usize, before: &[RelPath]) {
        for a in before {
            self.hint(m, Hint::Settled(os_path(a)));
        }
    }

    /// `p`'s ancestors that do not exist on `m` yet.
    fn missing_parents(&self, m: usize, p: &RelPath) -> Vec<RelPath> {
        let Some(d) = self.machines[m].disk() else { return Vec::new() };
        let mut out = Vec::new();
        let mut cur = p.parent();
        while let Some(a) = cur {
            cur = a.parent();
            if shape(d, &a).is_none() {
                out.push(a);
            }
        }
        out.reverse();
        out
    }

    /// Machine `m`'s user does `op` (on its disk even while its agent is down).
    pub(crate) fn user(&mut self, m: usize, op: &Op) {
        if self.machines[m].unmounted {
            return; // its disk is gone, and its pair halted: nothing done there is synced
        }
        let Some(d) = self.machines[m].disk() else { return };
        let now = self.time(m).wall;
        match op {
            Op::Write { path, len } | Op::Save { path, len } => {
                if !matches!(shape(d, path), None | Some(Shape::File { .. })) {
                    return;
                }
                let parents = self.missing_parents(m, path);
                if parents.iter().any(|a| self.machines[m].disk().is_some_and(|d| blocked(d, a))) {
                    return;
                }
                let content = self.content(m, *len);
                self.supersede(m, path);
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                let r = if matches!(op, Op::Write { .. }) { d.write(path, &content) } else { d.save(path, &content) };
                if r.is_err() {
                    return;
                }
                self.wrote(m, path, &content);
                self.made_parents(m, &parents);
                if matches!(op, Op::Write { .. }) {
                    self.hint(m, Hint::Writing(os_path(path)));
                }
                self.hint(m, Hint::Settled(os_path(path)));
            }
            Op::Append { path } | Op::Edit { path } => {
                let Some(Shape::File { mut content, .. }) = shape(d, path) else { return };
                self.counter += 1;
                let new = format!("+{}\n", self.counter).into_bytes();
                if matches!(op, Op::Edit { .. }) && content.len() > 2 * new.len() {
                    let at = content.len() / 2;
                    content[at..at + new.len()].copy_from_slice(&new);
                } else {
                    content.extend_from_slice(&new);
                }
                self.supersede(m, path);
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                if d.write(path, &content).is_ok() {
                    self.wrote(m, path, &content);
                    self.hint(m, Hint::Writing(os_path(path)));
                    // One append in three is by a writer that keeps the file open (a log): no
                    // close follows, and the replica must read it all the same.
                    if !self.counter.is_multiple_of(3) {
                        self.hint(m, Hint::Settled(os_path(path)));
                    }
                }
            }
            Op::Delete { path } => {
                if !matches!(shape(d, path), Some(Shape::File { .. } | Shape::Symlink { .. })) {
                    return;
                }
                self.supersede(m, path);
                if let Some(d) = self.machines[m].disk_mut()
                    && d.remove_all(path).is_ok()
                {
                    self.hint(m, Hint::Unlinked(os_path(path)));
                }
            }
            Op::Rename { from, to } => {
                let Some(s) = shape(d, from) else { return };
                if shape(d, to).is_some() || to.starts_with(from) || from == to {
                    return;
                }
                let parents = self.missing_parents(m, to);
                if parents.iter().any(|a| self.machines[m].disk().is_some_and(|d| blocked(d, a))) {
                    return;
                }
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                if d.rename(from, to).is_err() {
                    return;
                }
                // The content moved, not replaced: it is what it was, at its new path.
                self.made_parents(m, &parents);
                self.hint(m, Hint::Settled(os_path(from)));
                let h = if s == Shape::Dir { Hint::RescanSubtree(os_path(to)) } else { Hint::Settled(os_path(to)) };
                self.hint(m, h);
            }
            Op::Mkdir { path } => {
                if shape(d, path).is_some() {
                    return;
                }
                let mut made = self.missing_parents(m, path);
                if made.iter().any(|a| self.machines[m].disk().is_some_and(|d| blocked(d, a))) {
                    return;
                }
                made.push(path.clone());
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                if d.mkdir_p(path).is_ok() {
                    self.made_parents(m, &made);
                }
            }
            Op::RemoveAll { path } | Op::DirToSymlink { path } => {
                if shape(d, path) != Some(Shape::Dir) {
                    return;
                }
                let beneath: Vec<RelPath> =
                    d.snapshot().into_keys().filter(|q| q.starts_with(path) && q != path).collect();
                self.supersede(m, path);
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                if d.remove_all(path).is_err() {
                    return;
                }
                if matches!(op, Op::DirToSymlink { .. }) {
                    let _ = d.symlink(path, b"replaced");
                }
                for q in beneath.iter().rev() {
                    self.hint(m, Hint::Dirty(os_path(q)));
                }
                self.hint(m, Hint::Settled(os_path(path)));
            }
            Op::Chmod { path } => {
                if !matches!(shape(d, path), Some(Shape::File { .. })) {
                    return;
                }
                let Some(d) = self.machines[m].disk_mut() else { return };
                let Ok(Some(st)) = mirror_core::disk::Disk::lstat(d, path) else { return };
                let perm = st.mode & !S_IFMT & 0o777;
                let flipped = if perm & 0o100 == 0 { perm | 0o111 } else { perm & !0o111 };
                if d.chmod(path, flipped).is_ok() {
                    self.hint(m, Hint::Settled(os_path(path)));
                }
            }
            Op::Symlink { path, target } => {
                if shape(d, path).is_some() {
                    return;
                }
                let parents = self.missing_parents(m, path);
                if parents.iter().any(|a| self.machines[m].disk().is_some_and(|d| blocked(d, a))) {
                    return;
                }
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                if d.symlink(path, target).is_ok() {
                    self.made_parents(m, &parents);
                    self.hint(m, Hint::Settled(os_path(path)));
                }
            }
            Op::MoveTreeIn { path } => {
                if shape(d, path).is_some() {
                    return;
                }
                let parents = self.missing_parents(m, path);
                if parents.iter().any(|a| self.machines[m].disk().is_some_and(|d| blocked(d, a))) {
                    return;
                }
                let (x, late) = (self.content(m, 40), self.content(m, 60));
                let (px, plate) = (path.join(b"a/x.txt"), path.join(b"a/new/late.txt"));
                let (Ok(px), Ok(plate), Ok(b)) = (px, plate, path.join(b"a/b")) else { return };
                let Some(d) = self.machines[m].disk_mut() else { return };
                d.set_time(now);
                // Made outside and moved in: no event for what is inside, one for the tree.
                if d.mkdir_p(&b).is_err() || d.write(&px, &x).is_err() {
                    return;
                }
                let _ = d.write(&plate, &late);
                self.wrote(m, &px, &x);
                self.wrote(m, &plate, &late);
                self.made_parents(m, &parents);
                self.hint(m, Hint::RescanSubtree(os_path(path)));
                if let Ok(new) = path.join(b"a/new") {
                    self.hint(m, Hint::Settled(os_path(&new)));
                }
                self.hint(m, Hint::Settled(os_path(&plate)));
            }
            Op::Deny { path } => {
                if !matches!(shape(d, path), Some(Shape::File { .. })) {
                    return;
                }
                if let Some(d) = self.machines[m].disk_mut() {
                    d.deny(path);
                }
                let back = self.t + 200_000 + self.rng.below(5_000_000) as u64;
                self.allow_at(back, m, path.clone());
            }
            Op::Allow { path } => {
                if let Some(d) = self.machines[m].disk_mut() {
                    d.allow(path);
                }
            }
        }
    }
}

/// Whether `a` exists on `d` as something other than a directory (a path through it cannot
/// be made).
fn blocked(d: &MemDisk, a: &RelPath) -> bool {
    matches!(shape(d, a), Some(Shape::File { .. } | Shape::Symlink { .. }))
}
