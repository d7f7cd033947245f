//! The invariants, checked once a round has settled (nothing left to happen):
//! - every machine's agent is running, none halted;
//! - all trees are identical;
//! - no write is lost: every content a user wrote is somewhere in the tree (at its path, moved,
//!   or in a conflict copy), unless a user who held it replaced or deleted it;
//! - no temp or stash file is left, and no name is longer than the file system takes;
//! - a quiet system sends nothing: every path reported again by a spurious watcher event, and
//!   not one message goes out (no echo).

use crate::disk::Shape;
use crate::world::{Failure, HUB, World};
use mirror_core::replica::Hint;
use std::collections::BTreeSet;

impl World {
    pub(crate) fn check(&mut self, round: usize) -> Result<(), Failure> {
        let fail = |what: String| Err(Failure { round, what });
        for m in &self.machines {
            match (&m.halted, m.unmounted) {
                (None, true) => return fail(format!("{}'s root was unmounted, and its pair did not halt", m.name)),
                (Some(_), true) if m.deletions_after_unmount > 0 => {
                    return fail(format!(
                        "{} sent {} deletions after its root was unmounted",
                        m.name, m.deletions_after_unmount
                    ));
                }
                (Some(_), true) => continue,
                (Some(h), false) => return fail(format!("{} halted: {h}", m.name)),
                (None, false) if m.replica.is_none() => return fail(format!("{}'s agent is not running", m.name)),
                (None, false) => {}
            }
        }
        let snaps: Vec<_> = self.machines.iter().map(|m| m.disk().map(|d| d.snapshot()).unwrap_or_default()).collect();
        let hub = &snaps[HUB];
        for (m, snap) in snaps.iter().enumerate().skip(1) {
            if self.machines[m].unmounted {
                continue;
            }
            if snap != hub {
                let differs = hub
                    .iter()
                    .find(|(p, s)| snap.get(*p) != Some(*s))
                    .map(|(p, s)| {
                        format!(
                            "{p}: the hub has {}, {} has {}",
                            show(Some(s)),
                            self.machines[m].name,
                            show(snap.get(p))
                        )
                    })
                    .or_else(|| {
                        snap.iter()
                            .find(|(p, _)| !hub.contains_key(*p))
                            .map(|(p, s)| format!("{p}: only {} has it ({})", self.machines[m].name, show(Some(s))))
                    })
                    .unwrap_or_default();
                return fail(format!("the trees differ: {differs}"));
            }
        }
        if let Some(p) = hub.keys().find(|p| p.as_bytes().split(|b| *b == b'/').any(|n| n.len() > 255)) {
            return fail(format!("a name longer than 255 bytes was made: {p}"));
        }
        for m in self.machines.iter().filter(|m| !m.unmounted) {
            let Some(d) = m.disk() else { continue };
            if d.live_temps() > 0 || !d.stashed().is_empty() {
                return fail(format!("{} keeps {} temp and {} stash files", m.name, d.live_temps(), d.stashed().len()));
            }
        }
        let present: BTreeSet<[u8; 32]> = hub
            .values()
            .filter_map(|s| match s {
                Shape::File { content, .. } => Some(*blake3::hash(content).as_bytes()),
                _ => None,
            })
            .collect();
        if let Some(w) = self.written.values().find(|w| !w.superseded && !present.contains(&w.hash)) {
            return fail(format!(
                "a write was lost: {} bytes written by {} at {}",
                w.len, self.machines[w.machine].name, w.path
            ));
        }
        Ok(())
    }

    /// Every machine's watcher reports every path once more, spuriously: nothing may be sent.
    pub(crate) fn check_quiet(&mut self, round: usize) -> Result<(), Failure> {
        let before = self.sends;
        for m in 0..self.machines.len() {
            let paths: Vec<_> = self.machines[m].disk().map(|d| d.snapshot().into_keys().collect()).unwrap_or_default();
            for p in paths {
                self.hint(m, Hint::Dirty(crate::ops::os_path(&p)));
            }
        }
        self.settle(round)?;
        if self.sends > before {
            return Err(Failure {
                round,
                what: format!(
                    "a quiet system sent {} messages after spurious watcher events (an echo)",
                    self.sends - before
                ),
            });
        }
        Ok(())
    }
}

fn show(s: Option<&Shape>) -> String {
    match s {
        None => "nothing".into(),
        Some(Shape::Dir) => "a directory".into(),
        Some(Shape::File { content, mode, mtime }) => {
            format!("a file of {} bytes (mode {mode:o}, mtime {}.{:09})", content.len(), mtime.secs, mtime.nanos)
        }
        Some(Shape::Symlink { target }) => format!("a symlink to {}", String::from_utf8_lossy(target)),
    }
}
