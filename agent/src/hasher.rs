//! The hashers of a pair: a thread or two that read and hash the large files the replica saw
//! change ([`Command::Hash`](mirror_core::replica::Command::Hash)), so that a 2 GiB file being
//! hashed does not hold up everything else the pair does (a small file saved meanwhile, a
//! peer's change, its index); and that describe a file as the base of a delta
//! ([`Command::Sign`](mirror_core::replica::Command::Sign)).
//!
//! The engine hands a path over with [`Hashers::hash`] and takes the answers from
//! [`Hashers::done`], an input of its loop. At most [`IN_FLIGHT`] jobs are with the threads;
//! the rest wait in the engine's own queue (one per path at most: the replica asks once for a
//! path as it is), so nothing here grows with the tree.

use crate::index::stat_of;
use crate::paths::abs;
use crate::scan::hash_file;
use crossbeam_channel::{Receiver, Sender, unbounded};
use mirror_core::delta::Signer;
use mirror_core::tree::Stat;
use mirror_protocol::delta::Base;
use mirror_protocol::{Hash, RelPath};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// Threads hashing: one file on a hung mount holds one, the other goes on.
const THREADS: usize = 2;
/// Jobs with the threads at once.
const IN_FLIGHT: usize = 4;

/// A file to hash (or, with an average chunk size, to describe), as the replica saw it.
#[derive(Debug)]
struct Job {
    path: RelPath,
    stat: Stat,
    /// The content's hash as the replica knows it, and the average chunk size.
    sign: Option<(Hash, u32)>,
}

impl Job {
    fn run(self, root: &Path) -> Hashed {
        let abs = abs(root, &self.path);
        let done = match self.sign {
            None => Done::Hash(hash_as_seen(&abs, &self.stat)),
            Some((hash, avg)) => Done::Base(sign_as_seen(&abs, &self.stat, hash, avg)),
        };
        Hashed { path: self.path, stat: self.stat, done }
    }
}

/// A file hashed or described, while its stat stayed `stat`, or why not.
#[derive(Debug)]
pub struct Hashed {
    pub path: RelPath,
    pub stat: Stat,
    pub done: Done,
}

#[derive(Debug)]
pub enum Done {
    Hash(io::Result<Hash>),
    Base(io::Result<Base>),
}

/// The hashers of one root. Threads start on demand, up to [`THREADS`], and end with this.
#[derive(Debug)]
pub struct Hashers {
    root: PathBuf,
    jobs: Option<Sender<Job>>,
    jobs_rx: Receiver<Job>,
    done_tx: Sender<Hashed>,
    done: Receiver<Hashed>,
    waiting: VecDeque<Job>,
    in_flight: usize,
    started: usize,
}

impl Hashers {
    pub fn new(root: PathBuf) -> Self {
        let (jobs, jobs_rx) = unbounded();
        let (done_tx, done) = unbounded();
        Hashers { root, jobs: Some(jobs), jobs_rx, done_tx, done, waiting: VecDeque::new(), in_flight: 0, started: 0 }
    }

    /// Where the answers come, one for every [`hash`](Self::hash); take each with
    /// [`take`](Self::take).
    pub fn done(&self) -> &Receiver<Hashed> {
        &self.done
    }

    /// Asks for the hash of `path`, expected to have `stat`.
    pub fn hash(&mut self, path: RelPath, stat: Stat) {
        self.waiting.push_back(Job { path, stat, sign: None });
        self.pump();
    }

    /// Asks for the base of `path`, expected to have `stat`, cut at `avg` bytes on average.
    pub fn sign(&mut self, path: RelPath, stat: Stat, hash: Hash, avg: u32) {
        self.waiting.push_back(Job { path, stat, sign: Some((hash, avg)) });
        self.pump();
    }

    /// An answer received from [`done`](Self::done): room for the next job.
    pub fn take(&mut self, h: Hashed) -> Hashed {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pump();
        h
    }

    fn pump(&mut self) {
        while self.in_flight < IN_FLIGHT {
            let Some(job) = self.waiting.pop_front() else { return };
            if self.started < THREADS.min(self.in_flight + 1) {
                self.spawn();
            }
            self.in_flight += 1;
            let sent = match &self.jobs {
                Some(jobs) if self.started > 0 => jobs.send(job).map_err(|e| e.into_inner()),
                _ => Err(job),
            };
            if let Err(job) = sent {
                // No thread to take it: done here, on the engine's thread, rather than never.
                let _ = self.done_tx.send(job.run(&self.root));
            }
        }
    }

    /// Starts one more thread.
    fn spawn(&mut self) {
        let (rx, done, root) = (self.jobs_rx.clone(), self.done_tx.clone(), self.root.clone());
        let started = std::thread::Builder::new().name(format!("hasher {}", self.started)).spawn(move || {
            for job in rx.iter() {
                if done.send(job.run(&root)).is_err() {
                    return;
                }
            }
        });
        match started {
            Ok(_) => self.started += 1,
            Err(e) => log::error!("cannot start a hasher: {e}"),
        }
    }
}

impl Drop for Hashers {
    fn drop(&mut self) {
        // The threads end after the job they may be in (not joined: one may be stuck on a hung mount).
        self.jobs = None;
    }
}

/// The hash of the file at `abs`, if it had `stat` before and after it was read: a version
/// cut by a write made while reading is never taken for one (`Interrupted`).
pub fn hash_as_seen(abs: &Path, stat: &Stat) -> io::Result<Hash> {
    let same = |what: &str| -> io::Result<()> {
        let m = std::fs::symlink_metadata(abs)?;
        if stat_of(&m) == *stat {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::Interrupted, format!("changed {what} being hashed")))
        }
    };
    same("before")?;
    let (hash, n) = hash_file(abs)?;
    if n != stat.size {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "changed while being hashed"));
    }
    same("while")?;
    Ok(hash)
}

/// The base of the file at `abs` for a delta, cut at `avg` bytes on average, if it had `stat`
/// before and after it was read (`Interrupted` if not); `hash` is its content's as recorded.
pub fn sign_as_seen(abs: &Path, stat: &Stat, hash: Hash, avg: u32) -> io::Result<Base> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let changed = || io::Error::new(io::ErrorKind::Interrupted, "changed while being read for a delta");
    let mut signer = Signer::new(avg).ok_or_else(|| io::Error::other(format!("no chunks of {avg} bytes")))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(abs)?;
    if stat_of(&f.metadata()?) != *stat {
        return Err(changed());
    }
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        signer.update(&buf[..n]);
    }
    let base = signer.finish(hash);
    if base.size != stat.size || stat_of(&std::fs::symlink_metadata(abs)?) != *stat {
        return Err(changed());
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_file_is_hashed_as_it_was_seen() {
        let d = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3_000_000).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("big"), &bytes).unwrap();
        let stat = stat_of(&std::fs::symlink_metadata(d.path().join("big")).unwrap());
        let mut h = Hashers::new(d.path().to_path_buf());
        for _ in 0..10 {
            h.hash(rel("big"), stat);
        }
        for _ in 0..10 {
            let got = h.done().recv_timeout(Duration::from_secs(30)).unwrap();
            let got = h.take(got);
            assert_eq!(got.path, rel("big"));
            let Done::Hash(hash) = got.done else { panic!("not a hash") };
            assert_eq!(hash.unwrap(), *blake3::hash(&bytes).as_bytes());
        }
        assert!(h.started <= THREADS);
    }

    #[test]
    fn a_file_changed_since_it_was_seen_or_gone_is_not_hashed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"one").unwrap();
        let stat = stat_of(&std::fs::symlink_metadata(d.path().join("f")).unwrap());
        std::fs::write(d.path().join("f"), b"other").unwrap();
        let err = hash_as_seen(&d.path().join("f"), &stat).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        std::fs::remove_file(d.path().join("f")).unwrap();
        let err = hash_as_seen(&d.path().join("f"), &stat).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
