//! The upload readers: a few threads that read the files being sent, chunk by chunk, for the
//! network thread, which never waits for a disk itself (a slow disk, a network file system, a
//! drive spinning up, a file on a FUSE mount that hangs): every other connection, and the
//! heartbeats of this one, go on meanwhile.
//!
//! The network thread hands a [`Source`] over with [`Readers::read`] when it wants the next
//! chunk of an upload, and gets it back, with the message to send, as
//! [`ToNet::Chunk`](crate::link::ToNet::Chunk). At most one read per connection is in flight
//! (only the upload at the front of a connection's queue reads), so the job queue is bounded
//! by the number of connections.

use crate::link::{ConnId, NetHandle, ToNet};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use mirror_core::delta::{Encoder, Piece};
use mirror_protocol::delta::Base;
use mirror_protocol::{MAX_CHUNK_LEN, Message};
use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One chunk of a file being sent.
pub const UPLOAD_CHUNK: usize = 64 * 1024;
/// Threads reading: a file on a hung mount holds one, the others go on.
const THREADS: usize = 4;

/// A file being sent, and how far.
#[derive(Debug)]
pub struct Source {
    how: How,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a Source is boxed whole; the common case stays one allocation
enum How {
    /// Every byte, in chunks.
    Whole { file: File, size: u64, sent: u64, hash: blake3::Hasher },
    /// As a delta against the base the request named.
    Delta(Box<Encoder<File>>),
}

impl Source {
    /// The answer to a request for `file`, seen at `size` bytes: a delta against `base` if the
    /// request named one, every byte otherwise.
    pub fn new(file: File, size: u64, base: Option<&Base>) -> Box<Self> {
        let file = match base {
            Some(b) => match Encoder::new(file, size, b) {
                Ok(e) => return Box::new(Source { how: How::Delta(Box::new(e)) }),
                // A base the session would not have let in: sent whole all the same.
                Err(file) => file,
            },
            None => file,
        };
        let how = How::Whole { file, size, sent: 0, hash: blake3::Hasher::new() };
        Box::new(Source { how })
    }

    /// The next frame: a chunk of data (or a piece of the base), or the end (`DataEnd`, or
    /// `DataAbort` if the file could not be read or grew). Returns whether that was the last.
    pub fn next(&mut self, id: u64) -> (Message, bool) {
        match &mut self.how {
            How::Whole { file, size, sent, hash } => {
                let want = usize::try_from(*size - *sent).unwrap_or(usize::MAX).min(UPLOAD_CHUNK).min(MAX_CHUNK_LEN);
                // At the declared size, probe one byte further: a file that grew is not sent as the old one.
                let mut buf = vec![0; want.max(1)];
                match read_some(file, &mut buf) {
                    Ok(0) => (Message::DataEnd { id, size: *sent, hash: *hash.finalize().as_bytes() }, true),
                    Ok(_) if want == 0 => {
                        (Message::DataAbort { id, reason: "file grew while being sent".into() }, true)
                    }
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        *sent += n as u64;
                        buf.truncate(n);
                        (Message::Data { id, bytes: buf }, false)
                    }
                    Err(e) => (Message::DataAbort { id, reason: format!("read failed: {e}") }, true),
                }
            }
            How::Delta(e) => match e.next_piece() {
                Ok(Some(Piece::Copy { offset, len })) => (Message::Copy { id, offset, len }, false),
                Ok(Some(Piece::Literal(bytes))) => (Message::Data { id, bytes }, false),
                Ok(None) => (Message::DataEnd { id, size: e.sent(), hash: e.hash() }, true),
                Err(err) if err.kind() == io::ErrorKind::Other => {
                    (Message::DataAbort { id, reason: err.to_string() }, true)
                }
                Err(err) => (Message::DataAbort { id, reason: format!("read failed: {err}") }, true),
            },
        }
    }
}

fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A read to do: the next chunk of upload `id` on connection `conn`.
#[derive(Debug)]
pub struct Job {
    pub conn: ConnId,
    pub id: u64,
    pub src: Box<Source>,
}

/// A chunk read: the message to send, and the source to read on from (none after the last).
#[derive(Debug)]
pub struct Chunk {
    pub conn: ConnId,
    pub id: u64,
    pub msg: Message,
    pub src: Option<Box<Source>>,
}

/// The pool's door. Cloning it is cheap; the threads end when the last clone is gone.
///
/// Threads start on demand, when a read finds none idle, up to [`THREADS`]: an agent that sends
/// nothing has none, and one that sends a file at a time has one.
#[derive(Clone, Debug)]
pub struct Readers {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    net: NetHandle,
    /// Threads started, and of those how many wait for a job.
    started: Arc<AtomicUsize>,
    idle: Arc<AtomicUsize>,
}

impl Readers {
    /// The pool, with no thread yet; each chunk read is handed to the network thread through
    /// `net`. `queue` bounds the jobs waiting (one per connection at most).
    pub fn new(net: NetHandle, queue: usize) -> Self {
        let (tx, rx) = bounded(queue);
        Readers { tx, rx, net, started: Arc::default(), idle: Arc::default() }
    }

    /// Asks for the next chunk; hands the job back if it cannot be taken now (the queue is
    /// full, or no reader could be started): try again later.
    pub fn read(&self, job: Job) -> Result<(), Job> {
        if self.idle.load(Ordering::SeqCst) == 0
            && self.started.load(Ordering::SeqCst) < THREADS
            && let Err(e) = self.spawn()
        {
            log::error!("cannot start an upload reader: {e}");
            if self.started.load(Ordering::SeqCst) == 0 {
                return Err(job);
            }
        }
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Err(j),
        }
    }

    fn spawn(&self) -> io::Result<()> {
        let i = self.started.fetch_add(1, Ordering::SeqCst);
        let (rx, net, idle) = (self.rx.clone(), self.net.clone(), self.idle.clone());
        // Counted idle from the start, so the reads right after this one start no more threads
        // than they need.
        idle.fetch_add(1, Ordering::SeqCst);
        // Not joined: a thread ends once the network thread is gone (its channels close), after
        // the read it may be blocked in.
        let started = std::thread::Builder::new().name(format!("reader {i}")).spawn(move || {
            for Job { conn, id, mut src } in rx.iter() {
                idle.fetch_sub(1, Ordering::SeqCst);
                let (msg, last) = src.next(id);
                // Idle again before the chunk is handed over: the read it prompts finds this
                // thread free rather than starting another.
                idle.fetch_add(1, Ordering::SeqCst);
                if !net.send_checked(ToNet::Chunk(Chunk { conn, id, msg, src: (!last).then_some(src) })) {
                    return;
                }
            }
        });
        if let Err(e) = started {
            self.started.fetch_sub(1, Ordering::SeqCst);
            self.idle.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(bytes: &[u8], size: u64) -> Box<Source> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        Source::new(f, size, None)
    }

    /// An agent that sends nothing keeps no reader; one file at a time keeps one.
    #[test]
    fn readers_start_only_when_wanted() {
        let poll = mio::Poll::new().unwrap();
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = bounded(16);
        let net = NetHandle { tx, waker, parked: Arc::default() };
        let readers = Readers::new(net, 4);
        assert_eq!(readers.started.load(Ordering::SeqCst), 0, "a reader started with nothing to read");
        let mut src = Some(source(&[7u8; UPLOAD_CHUNK * 3], (UPLOAD_CHUNK * 3) as u64));
        let mut chunks = 0;
        while let Some(s) = src.take() {
            readers.read(Job { conn: 1, id: 9, src: s }).unwrap();
            match rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap() {
                ToNet::Chunk(c) => src = c.src,
                other => panic!("unexpected {other:?}"),
            }
            chunks += 1;
        }
        assert_eq!(chunks, 4, "three chunks and the end");
        assert_eq!(readers.started.load(Ordering::SeqCst), 1, "one file at a time wants one reader");
    }

    #[test]
    fn a_file_is_sent_in_chunks_then_its_end_with_the_hash_of_what_was_sent() {
        let bytes: Vec<u8> = (0..UPLOAD_CHUNK * 2 + 10).map(|i| (i % 251) as u8).collect();
        let mut src = source(&bytes, bytes.len() as u64);
        let mut got = Vec::new();
        loop {
            match src.next(5) {
                (Message::Data { id: 5, bytes }, false) => {
                    assert!(bytes.len() <= UPLOAD_CHUNK);
                    got.extend(bytes);
                }
                (Message::DataEnd { id: 5, size, hash }, true) => {
                    assert_eq!(size, bytes.len() as u64);
                    assert_eq!(hash, *blake3::hash(&bytes).as_bytes());
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, bytes);
    }

    #[test]
    fn a_file_longer_than_announced_is_aborted_not_cut() {
        let mut src = source(b"0123456789", 4);
        assert!(matches!(src.next(1), (Message::Data { bytes, .. }, false) if bytes == b"0123"));
        match src.next(1) {
            (Message::DataAbort { reason, .. }, true) => assert!(reason.contains("grew"), "{reason}"),
            other => panic!("a longer file was not aborted: {other:?}"),
        }
    }

    #[test]
    fn a_file_shorter_than_announced_ends_at_what_it_holds() {
        // The receiver checks size and hash against what it asked for and refuses the short one.
        let mut src = source(b"abc", 10);
        assert!(matches!(src.next(1), (Message::Data { bytes, .. }, false) if bytes == b"abc"));
        assert!(matches!(src.next(1), (Message::DataEnd { size: 3, .. }, true)));
    }

    #[test]
    fn a_file_asked_against_a_base_goes_as_copies_of_it_and_the_new_bytes() {
        let old: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut new = old.clone();
        new.extend_from_slice(b"appended");
        let base = mirror_core::delta::sign(&old, 65536).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&new).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let mut src = Source::new(f, new.len() as u64, Some(&base));
        let (mut rebuilt, mut data) = (Vec::new(), 0);
        loop {
            match src.next(2) {
                (Message::Copy { id: 2, offset, len }, false) => {
                    rebuilt.extend_from_slice(&old[offset as usize..(offset + len) as usize]);
                }
                (Message::Data { id: 2, bytes }, false) => {
                    data += bytes.len();
                    rebuilt.extend(bytes);
                }
                (Message::DataEnd { id: 2, size, hash }, true) => {
                    assert_eq!((size, hash), (new.len() as u64, *blake3::hash(&new).as_bytes()));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(rebuilt == new, "the pieces do not make the file");
        assert_eq!(data, 8, "sent more than what was appended");
    }
}
