//! The portable backend: scan the tree every interval and report what differs.
//!
//! It needs nothing from the kernel, so it works on network and FUSE mounts where inotify is
//! silent, and it is the fallback on platforms without a native backend. It cannot overflow.

use crate::{DirFilter, WatchConfig, WatchError, WatchEvent, Watcher};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a scan remembers of each path: enough to notice any content or metadata change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    kind: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    mode: u32,
}

#[derive(Debug)]
pub(crate) struct PollWatcher {
    thread: Option<JoinHandle<()>>,
    control: Sender<Control>,
    replaying: bool,
}

enum Control {
    Stop,
    Refresh,
}

impl PollWatcher {
    pub(crate) fn start(config: WatchConfig, sink: Sender<WatchEvent>) -> Result<Self, WatchError> {
        let first = snapshot(&config.root, &config.descend)
            .map_err(|source| WatchError::Io { path: config.root.clone(), source })?;
        let replaying = match &config.history {
            Some(file) => test_history(file, config.resume.as_ref(), &sink),
            None => false,
        };
        let (control, rx) = crossbeam_channel::bounded(4);
        let thread = std::thread::Builder::new()
            .name("watch-poll".into())
            .spawn(move || run(config, first, sink, rx))
            .map_err(|source| WatchError::Io { path: PathBuf::new(), source })?;
        Ok(Self { thread: Some(thread), control, replaying })
    }
}

impl Watcher for PollWatcher {
    fn backend(&self) -> crate::Backend {
        crate::Backend::Poll
    }

    fn replaying(&self) -> bool {
        self.replaying
    }

    fn refresh(&self, _path: &Path) {
        let _ = self.control.try_send(Control::Refresh);
    }

    fn stop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PollWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(config: WatchConfig, mut prev: HashMap<PathBuf, Stamp>, sink: Sender<WatchEvent>, control: Receiver<Control>) {
    let interval = config.poll_interval.max(Duration::from_millis(10));
    loop {
        match control.recv_timeout(interval) {
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            // A refresh does not say which directory (the queue holds a few at most): every
            // scan walks the whole tree anyway, so the rules forget everything they read.
            Ok(Control::Refresh) => config.descend.reload(Path::new("")),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let next = match snapshot(&config.root, &config.descend) {
            Ok(s) => s,
            Err(_) => {
                let _ = sink.send(WatchEvent::RootGone);
                return;
            }
        };
        for p in changed(&prev, &next) {
            if sink.send(WatchEvent::Dirty(p)).is_err() {
                return;
            }
        }
        prev = next;
    }
}

/// The paths whose stamp differs between two scans, or that are in only one, in order.
fn changed(prev: &HashMap<PathBuf, Stamp>, next: &HashMap<PathBuf, Stamp>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = next
        .iter()
        .filter(|(p, s)| prev.get(*p) != Some(s))
        .map(|(p, _)| p.clone())
        .chain(prev.keys().filter(|p| !next.contains_key(*p)).cloned())
        .collect();
    out.sort();
    out
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        kind: m.mode() & libc_s_ifmt(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
        mode: m.mode(),
    }
}

/// Adds every path beneath directory `start` (relative to `root`) with its stamp to `out`.
fn walk_into(root: &Path, start: &Path, descend: &DirFilter, out: &mut HashMap<PathBuf, Stamp>) {
    let mut stack = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(crate::join(root, &dir)) else { continue };
        for ent in rd.flatten() {
            let rel = dir.join(ent.file_name());
            let Ok(m) = ent.metadata() else { continue };
            if m.is_dir() && descend.descend(&rel) {
                stack.push(rel.clone());
            }
            out.insert(rel, stamp(&m));
        }
    }
}

/// Every path under `root` with its stamp. Fails only if the root itself cannot be read.
fn snapshot(root: &Path, descend: &DirFilter) -> std::io::Result<HashMap<PathBuf, Stamp>> {
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "root is not a directory"));
    }
    let mut out = HashMap::new();
    walk_into(root, Path::new(""), descend, &mut out);
    Ok(out)
}

/// `rel` (a file, or a directory and everything beneath it that `descend` accepts) with stamps;
/// empty when nothing is there.
#[cfg_attr(not(any(target_os = "linux", kqueue)), allow(dead_code))]
fn stamps_of(root: &Path, rel: &Path, descend: &DirFilter) -> HashMap<PathBuf, Stamp> {
    let mut out = HashMap::new();
    if let Ok(m) = std::fs::symlink_metadata(crate::join(root, rel)) {
        out.insert(rel.to_path_buf(), stamp(&m));
        if m.is_dir() {
            walk_into(root, rel, descend, &mut out);
        }
    }
    out
}

/// Paths another backend could not watch (inotify's watch limit, kqueue out of descriptors),
/// scanned every interval instead: each covered path, a file or a directory with everything
/// beneath it, is stamped again and compared with its last stamps. A path beneath a covered
/// directory is not covered twice.
#[cfg_attr(not(any(target_os = "linux", kqueue)), allow(dead_code))]
pub(crate) struct Coverage {
    root: PathBuf,
    descend: DirFilter,
    covered: BTreeMap<PathBuf, HashMap<PathBuf, Stamp>>,
    interval: Duration,
    scanned_at: Instant,
    /// The user was told that a limit was reached (once is enough).
    limit_told: bool,
}

#[cfg_attr(not(any(target_os = "linux", kqueue)), allow(dead_code))]
impl Coverage {
    /// Coverage of paths under `root`, scanned every `interval` (10 ms at the least).
    pub(crate) fn new(root: &Path, descend: DirFilter, interval: Duration) -> Self {
        Self {
            root: root.to_path_buf(),
            descend,
            covered: BTreeMap::new(),
            interval: interval.max(Duration::from_millis(10)),
            scanned_at: Instant::now(),
            limit_told: false,
        }
    }

    /// Covers `rel`, which could not be watched because a limit (`why`) was reached; the first
    /// time, tells the user.
    pub(crate) fn cover_past_limit(&mut self, rel: &Path, why: WatchError) {
        self.cover(rel);
        if !std::mem::replace(&mut self.limit_told, true) {
            log::error!("{why}; until then, what cannot be watched is polled every {:?}", self.interval);
        }
    }

    /// How long until the next [`scan_if_due`](Self::scan_if_due) has work; `None` while
    /// nothing is covered.
    pub(crate) fn wait(&self) -> Option<Duration> {
        (!self.is_empty()).then(|| self.interval.saturating_sub(self.scanned_at.elapsed()))
    }

    /// [`scan`](Self::scan) when an interval has passed since the last one; nothing otherwise.
    pub(crate) fn scan_if_due(&mut self) -> Vec<PathBuf> {
        if self.is_empty() || self.scanned_at.elapsed() < self.interval {
            return Vec::new();
        }
        self.scanned_at = Instant::now();
        self.scan()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.covered.is_empty()
    }

    /// Covers `rel` from now on: what changes after this call is reported by the next scan.
    pub(crate) fn cover(&mut self, rel: &Path) {
        if rel.ancestors().any(|a| self.covered.contains_key(a)) {
            return;
        }
        self.uncover_tree(rel);
        let stamps = stamps_of(&self.root, rel, &self.descend);
        self.covered.insert(rel.to_path_buf(), stamps);
    }

    /// How many paths are covered (each directory counting once).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.covered.len()
    }

    /// Stops covering `rel` and everything beneath it (it was moved away or deleted).
    pub(crate) fn uncover_tree(&mut self, rel: &Path) {
        self.covered.retain(|p, _| !p.starts_with(rel));
    }

    /// Stamps every covered path again; returns what changed, came or went since the last scan.
    /// A covered path that is gone is reported, then no longer covered.
    pub(crate) fn scan(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (rel, old) in &mut self.covered {
            let new = stamps_of(&self.root, rel, &self.descend);
            out.extend(changed(old, &new));
            if new.is_empty() {
                gone.push(rel.clone());
            }
            *old = new;
        }
        for rel in gone {
            self.covered.remove(&rel);
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Test hook, [`WatchConfig::history`] (the agent's hidden `--test-history FILE`): gives this
/// backend an event history to resume from, the way FSEvents keeps one per volume, so that a
/// consumer's resume path (checkpoints saved, history replayed instead of a full scan) runs on
/// Linux. The test plays the volume: the file's first line is `uuid <U>`, then one `<id> <path>` line per
/// change (ids rising, paths relative to the root). The same [`crate::resume::decide`] as
/// FSEvents judges the consumer's checkpoint. Returns whether the history was replayed.
fn test_history(file: &Path, resume: Option<&crate::Checkpoint>, sink: &Sender<WatchEvent>) -> bool {
    use crate::resume::{self, Position, Start};
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines = text.lines();
    let uuid = lines.next().and_then(|l| l.strip_prefix("uuid ")).map(str::to_string);
    let events: Vec<(u64, &str)> =
        lines.filter_map(|l| l.split_once(' ')).filter_map(|(id, p)| Some((id.parse().ok()?, p))).collect();
    let current = events.iter().map(|e| e.0).max().unwrap_or(0);
    let start = resume::decide("history", resume, uuid.as_deref(), current);
    if let Start::Replay(since) = start {
        for (_, p) in events.iter().filter(|e| e.0 > since) {
            let _ = sink.send(WatchEvent::Dirty(PathBuf::from(p)));
        }
    }
    if let Some(uuid) = uuid {
        let _ = sink.send(WatchEvent::Checkpoint(resume::encode("history", &Position { uuid, id: current })));
    }
    let replaying = matches!(start, Start::Replay(_));
    if replaying {
        let _ = sink.send(WatchEvent::Replayed);
    }
    replaying
}

const fn libc_s_ifmt() -> u32 {
    0o170000
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;
    use std::sync::Arc;

    #[test]
    fn covered_paths_are_scanned_for_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("big/sub")).unwrap();
        fs::write(root.join("big/sub/a"), "a").unwrap();
        fs::write(root.join("big/b"), "b").unwrap();
        fs::write(root.join("lone"), "1").unwrap();
        fs::write(root.join("watched"), "w").unwrap();
        let p = |s: &str| PathBuf::from(s);
        let mut c = Coverage::new(root, Arc::new(|_: &Path| true), Duration::from_millis(500));
        assert!(c.is_empty());
        c.cover(Path::new("big/sub"));
        c.cover(Path::new("big"));
        c.cover(Path::new("big/sub/a"));
        c.cover(Path::new("lone"));
        assert_eq!(c.len(), 2, "what is beneath a covered directory is covered by it");
        assert_eq!(c.scan(), Vec::<PathBuf>::new(), "nothing changed yet");
        fs::write(root.join("big/sub/a"), "changed").unwrap();
        fs::write(root.join("big/sub/new"), "n").unwrap();
        fs::remove_file(root.join("big/b")).unwrap();
        fs::write(root.join("lone"), "22").unwrap();
        fs::write(root.join("watched"), "not covered").unwrap();
        let want = [p("big"), p("big/b"), p("big/sub"), p("big/sub/a"), p("big/sub/new"), p("lone")];
        assert_eq!(c.scan(), want, "directories whose entries changed, too");
        assert_eq!(c.scan(), Vec::<PathBuf>::new(), "each change is reported once");
        // A covered path that goes is reported, then dropped.
        fs::remove_file(root.join("lone")).unwrap();
        assert_eq!(c.scan(), [p("lone")]);
        fs::write(root.join("lone"), "back").unwrap();
        assert_eq!(c.scan(), Vec::<PathBuf>::new(), "no longer covered");
        // Uncovered with its subtree (moved away): silent from then on.
        c.uncover_tree(Path::new("big"));
        fs::write(root.join("big/sub/a"), "again").unwrap();
        assert_eq!(c.scan(), Vec::<PathBuf>::new());
        assert!(c.is_empty());
    }
}
