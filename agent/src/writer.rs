//! Write-behind for the files being received: a large file's bytes are written to its temp file
//! by the root's writer thread, not by the engine, so that a slow disk (a USB stick, a network
//! file system, writeback throttling once the page cache is full of dirty pages) holds up only
//! the writes, not the pair's other work (a small file saved meanwhile, a peer's change, its
//! index, the heartbeats of the network).
//!
//! A file's first [`INLINE_UPTO`] bytes are held in memory: a small file, the common case, is
//! written in one go when it is complete, on the engine's thread, as fast as it gets (a thread
//! hand-over would cost more than the write). Past that the bytes go to the writer in batches of
//! [`BATCH`] (a chunk of [`DIRECT_FROM`] or more as it came). Its queue holds at most [`QUEUE`] batches for the whole root; when it is full the
//! engine waits for the disk, its input waits in turn, and then the peer's socket: back-pressure
//! end to end, and nothing here grows with what the peer sends.
//!
//! A write that fails (a full disk) is reported at the file's next write or when it is
//! installed, which waits for every batch of the file to be written first: a file is never
//! installed with bytes still on their way, and never with a write that failed.

use crate::executor::TempFile;
use crossbeam_channel::{Sender, bounded};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Bytes of a file held in memory before its writes go to the writer.
pub const INLINE_UPTO: usize = 64 * 1024;
/// Bytes the writer takes at once, gathered from smaller chunks.
const BATCH: usize = 128 * 1024;
/// A chunk this large goes to the writer as it came (a peer's chunks are 64 KiB).
const DIRECT_FROM: usize = 32 * 1024;
/// Batches waiting for the writer of a root. A batch is one chunk of [`DIRECT_FROM`] bytes or
/// more, or smaller chunks gathered up to [`BATCH`] (then at most `BATCH` plus one chunk): 1 MiB
/// of a peer's 64 KiB chunks, 2 MiB of small ones, at most about 18 MiB of the largest chunk a
/// peer may send (1 MiB), plus the batch being written. Besides, each file being received
/// holds less than a batch of its own.
const QUEUE: usize = 16;

/// The writer of one root: a thread, started with the first file large enough to need it. It
/// ends once this is dropped and what it was given is written.
#[derive(Debug, Default)]
pub struct Writer {
    jobs: Option<Sender<Batch>>,
}

/// Bytes for a file, in the order they arrived.
struct Batch {
    to: Arc<Target>,
    /// The writer's handle of the file, let go before the batch counts as written: once a
    /// file's writes have settled, the writer holds it open no more (an executable installed
    /// and run at once would fail with "text file busy" while some process held it for writing).
    file: Arc<File>,
    bytes: Vec<u8>,
}

/// A file written behind, and how its writes stand.
struct Target {
    state: Mutex<State>,
    settled: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches given to the writer and not yet written.
    queued: usize,
    /// The first write that failed: the rest are skipped.
    failed: Option<io::Error>,
    /// Nobody wants the file any more (its transfer failed or was cancelled).
    dropped: bool,
}

impl Target {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// On the writer's thread.
    fn write(&self, file: Arc<File>, bytes: Vec<u8>) {
        let skip = {
            let s = self.state();
            s.failed.is_some() || s.dropped
        };
        let r = if skip { Ok(()) } else { (&mut &*file).write_all(&bytes) };
        drop(file);
        drop(bytes);
        let mut s = self.state();
        if let Err(e) = r {
            s.failed.get_or_insert(e);
        }
        s.queued -= 1;
        if s.queued == 0 {
            self.settled.notify_all();
        }
    }

    /// The failure of an earlier write, if one failed.
    fn check(s: &State) -> io::Result<()> {
        match &s.failed {
            Some(e) => Err(io::Error::new(e.kind(), format!("an earlier write failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Waits until everything given to the writer is written.
    fn wait(&self) -> io::Result<()> {
        let mut s = self.state();
        while s.queued > 0 {
            s = self.settled.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        Self::check(&s)
    }
}

/// Marks the file unwanted when its transfer goes: what is still queued for it is skipped.
struct Behind(Arc<Target>);

impl Drop for Behind {
    fn drop(&mut self) {
        self.0.state().dropped = true;
    }
}

impl Writer {
    fn send(&mut self, batch: Batch) -> io::Result<()> {
        let jobs = match &self.jobs {
            Some(j) => j,
            None => {
                let (tx, rx) = bounded::<Batch>(QUEUE);
                std::thread::Builder::new().name("mirror-writer".into()).spawn(move || {
                    for Batch { to, file, bytes } in rx {
                        to.write(file, bytes);
                    }
                })?;
                self.jobs.insert(tx)
            }
        };
        jobs.send(batch).map_err(|_| io::Error::other("the writer thread has ended"))
    }
}

/// Gives `bytes` for `to` (its `file`) to the writer.
fn send(w: &mut Writer, to: Arc<Target>, file: Arc<File>, bytes: Vec<u8>) -> io::Result<()> {
    to.state().queued += 1;
    w.send(Batch { to: Arc::clone(&to), file, bytes }).inspect_err(|_| to.state().queued -= 1)
}

/// A file being received: its bytes held back (so far), or going to the writer.
pub struct Receiving {
    tmp: TempFile,
    held: Vec<u8>,
    behind: Option<Behind>,
}

impl fmt::Debug for Receiving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiving")
            .field("tmp", &self.tmp)
            .field("held", &self.held.len())
            .field("behind", &self.behind.is_some())
            .finish()
    }
}

impl Receiving {
    pub fn new(tmp: TempFile) -> Self {
        Receiving { tmp, held: Vec::new(), behind: None }
    }

    /// Takes `bytes` in: held, or given to the writer (waiting for room in its queue). A chunk
    /// of [`DIRECT_FROM`] bytes or more, with nothing held before it, goes as it is: the bytes
    /// of a large file are not copied on their way.
    pub fn write(&mut self, w: &mut Writer, bytes: Vec<u8>) -> io::Result<()> {
        if let Some(b) = &self.behind {
            Target::check(&b.0.state())?;
            if self.held.is_empty() && bytes.len() >= DIRECT_FROM {
                let to = Arc::clone(&b.0);
                return send(w, to, self.tmp.shared_file()?, bytes);
            }
        }
        if self.held.is_empty() && bytes.len() >= INLINE_UPTO {
            self.held = bytes;
        } else {
            self.held.extend_from_slice(&bytes);
        }
        let limit = if self.behind.is_some() { BATCH } else { INLINE_UPTO };
        if self.held.len() >= limit { self.hand_over(w) } else { Ok(()) }
    }

    fn hand_over(&mut self, w: &mut Writer) -> io::Result<()> {
        let to = match &self.behind {
            Some(b) => Arc::clone(&b.0),
            None => {
                let t = Arc::new(Target { state: Mutex::default(), settled: Condvar::new() });
                self.behind = Some(Behind(Arc::clone(&t)));
                t
            }
        };
        let bytes = std::mem::take(&mut self.held);
        send(w, to, self.tmp.shared_file()?, bytes)
    }

    /// Waits until every byte taken in is written; or says why a write failed. Called when
    /// the last byte has arrived, before anything is moved for the file (a full disk found here
    /// fails the transfer, not an install half done).
    pub fn settle(&mut self, w: &mut Writer) -> io::Result<()> {
        let Some(b) = &self.behind else {
            self.tmp.write_all(&self.held)?;
            self.held = Vec::new();
            return Ok(());
        };
        let target = Arc::clone(&b.0);
        if !self.held.is_empty() {
            self.hand_over(w)?;
        }
        target.wait()
    }

    /// The temp file with every byte written, ready to install; or why a write failed.
    pub fn finish(mut self, w: &mut Writer) -> io::Result<TempFile> {
        self.settle(w)?;
        Ok(self.tmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// A temp file over a named pipe: a "disk" that takes 64 KiB and then waits for the test.
    fn pipe(dir: &std::path::Path) -> (TempFile, File) {
        let path = dir.join("slow");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        // Opened for reading and writing, a pipe's write end opens at once (Linux), and then
        // so does its read end.
        let writer = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let reader = File::open(&path).unwrap();
        (TempFile::over(path, writer), reader)
    }

    fn install(t: TempFile, root: &std::path::Path, name: &str) -> Vec<u8> {
        let rel = mirror_protocol::RelPath::new(name).unwrap();
        t.install(root, &rel, None, Default::default(), 0o644).unwrap();
        std::fs::read(root.join(name)).unwrap()
    }

    #[test]
    fn small_and_large_files_arrive_whole_in_any_chunking() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::default();
        for (i, (len, chunk)) in
            [(0, 1), (10, 3), (INLINE_UPTO - 1, 4096), (INLINE_UPTO, 1000), (3 << 20, 65_536), (777_777, 99_999)]
                .into_iter()
                .enumerate()
        {
            let want = content(len);
            let name = format!("f{i}");
            let rel = mirror_protocol::RelPath::new(name.as_str()).unwrap();
            let mut r = Receiving::new(TempFile::create(d.path(), &rel).unwrap());
            for c in want.chunks(chunk) {
                r.write(&mut w, c.to_vec()).unwrap();
            }
            assert_eq!(r.behind.is_some(), len >= INLINE_UPTO, "{len} bytes");
            let got = install(r.finish(&mut w).unwrap(), d.path(), &name);
            assert!(got == want, "{len} bytes in chunks of {chunk}: the installed file differs");
        }
        // Chunks of every size in turn: some held and gathered, some handed over as they came.
        let want = content(5 << 20);
        let rel = mirror_protocol::RelPath::new("mixed").unwrap();
        let mut r = Receiving::new(TempFile::create(d.path(), &rel).unwrap());
        let (mut at, mut i) = (0, 0);
        while at < want.len() {
            let n = [1000, 40_000, 3, 70_000, 20_000, 1 << 20][i % 6].min(want.len() - at);
            r.write(&mut w, want[at..at + n].to_vec()).unwrap();
            (at, i) = (at + n, i + 1);
        }
        assert!(
            install(r.finish(&mut w).unwrap(), d.path(), "mixed") == want,
            "chunks of mixed sizes went out of order"
        );
    }

    #[test]
    fn once_settled_the_writer_holds_the_file_open_no_more() {
        // An executable installed and run at once fails with "text file busy" while anything
        // holds it open for writing.
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::default();
        let rel = mirror_protocol::RelPath::new("tool").unwrap();
        let mut r = Receiving::new(TempFile::create(d.path(), &rel).unwrap());
        for c in content(1 << 20).chunks(65_536) {
            r.write(&mut w, c.to_vec()).unwrap();
        }
        r.settle(&mut w).unwrap();
        let handles = Arc::strong_count(&r.tmp.shared_file().unwrap());
        assert_eq!(handles, 2, "besides the temp file's own handle and this one, something holds the file");
    }

    #[test]
    fn a_slow_disk_does_not_hold_up_the_receiver_until_the_queue_is_full() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, mut disk) = pipe(d.path());
        let total = 64 << 20; // far more than the pipe and the queue hold
        let want = content(total);
        let sent = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let receiver = {
            let (want, sent) = (want.clone(), Arc::clone(&sent));
            std::thread::spawn(move || {
                let mut w = Writer::default();
                let mut r = Receiving::new(tmp);
                for c in want.chunks(65_536) {
                    r.write(&mut w, c.to_vec()).unwrap();
                    sent.fetch_add(c.len(), Ordering::SeqCst);
                }
                let _ = done_tx.send(r.finish(&mut w).map(|_| ()));
            })
        };
        // The pipe holds 64 KiB; the receiver gets well past that (and the 64 KiB it holds
        // itself) while nothing is read: it is not the one writing (a write on its own thread
        // would block there, for ever).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while sent.load(Ordering::SeqCst) < 512 << 10 {
            assert!(std::time::Instant::now() < deadline, "the receiver waits for the disk");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Then the disk, read slowly, paces it: never more than the queue, a batch being
        // written, the one being filled and the pipe ahead of what the disk took.
        let bound = (QUEUE + 2) * BATCH + INLINE_UPTO + (1 << 20);
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 32 * 1024];
        while got.len() < total {
            let n = disk.read(&mut buf).unwrap();
            assert!(n > 0, "the pipe closed early");
            got.extend_from_slice(&buf[..n]);
            let ahead = sent.load(Ordering::SeqCst).saturating_sub(got.len());
            assert!(ahead <= bound, "{ahead} bytes taken in ahead of the disk: the queue is not bounded");
        }
        assert_eq!(done.recv_timeout(Duration::from_secs(20)).unwrap().ok(), Some(()));
        receiver.join().unwrap();
        assert!(got == want, "the bytes reached the disk out of order or changed");
    }

    #[test]
    fn a_write_that_fails_is_reported_and_nothing_is_installed() {
        let d = tempfile::tempdir().unwrap();
        // A file the writer cannot write to: every write fails, as on a full disk.
        let path = d.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let ro = File::open(&path).unwrap();
        let mut w = Writer::default();
        let mut r = Receiving::new(TempFile::over(path.clone(), ro));
        r.write(&mut w, content(INLINE_UPTO)).unwrap(); // handed over: fails behind
        let more = content(BATCH);
        let mut reported = false;
        for _ in 0..10_000 {
            if r.write(&mut w, more[..1].to_vec()).is_err() {
                reported = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(reported, "a later write did not report the failed one");
        assert!(r.finish(&mut w).is_err(), "the file was handed out to be installed");

        // A full disk stays a full disk when it is reported late (the core tells the user so).
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        // No path: the temp file's guard must not remove /dev/full.
        let mut r = Receiving::new(TempFile::over(std::path::PathBuf::new(), full));
        r.write(&mut w, content(INLINE_UPTO)).unwrap();
        let late = r.settle(&mut w).unwrap_err();
        assert_eq!(late.kind(), io::ErrorKind::StorageFull, "{late}");
        assert_eq!(r.write(&mut w, vec![1]).unwrap_err().kind(), io::ErrorKind::StorageFull);

        // Held back only (a small file): the failure comes when it is finished.
        let path2 = d.path().join("ro2");
        std::fs::write(&path2, b"").unwrap();
        let mut r = Receiving::new(TempFile::over(path2, File::open(d.path().join("ro2")).unwrap()));
        r.write(&mut w, b"small".to_vec()).unwrap();
        assert!(r.finish(&mut w).is_err());
    }
}
