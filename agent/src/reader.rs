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
use mirror_protocol::{MAX_CHUNK_LEN, Message};
use std::fs::File;
use std::io::{self, Read};

/// One chunk of a file being sent.
pub const UPLOAD_CHUNK: usize = 64 * 1024;
/// Threads reading: a file on a hung mount holds one, the others go on.
const THREADS: usize = 4;

/// A file being sent, and how far.
#[derive(Debug)]
pub struct Source {
    file: File,
    size: u64,
    sent: u64,
    hash: blake3::Hasher,
}

impl Source {
    pub fn new(file: File, size: u64) -> Box<Self> {
        Box::new(Source { file, size, sent: 0, hash: blake3::Hasher::new() })
    }

    /// The next frame: a chunk of data, or the end (`DataEnd`, or `DataAbort` if the file could
    /// not be read or grew). Returns whether that was the last.
    pub fn next(&mut self, id: u64) -> (Message, bool) {
        let want = usize::try_from(self.size - self.sent).unwrap_or(usize::MAX).min(UPLOAD_CHUNK).min(MAX_CHUNK_LEN);
        // At the declared size, probe one byte further: a file that grew is not sent as the old one.
        let mut buf = vec![0; want.max(1)];
        match read_some(&mut self.file, &mut buf) {
            Ok(0) => (Message::DataEnd { id, size: self.sent, hash: *self.hash.finalize().as_bytes() }, true),
            Ok(_) if want == 0 => (Message::DataAbort { id, reason: "file grew while being sent".into() }, true),
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.sent += n as u64;
                buf.truncate(n);
                (Message::Data { id, bytes: buf }, false)
            }
            Err(e) => (Message::DataAbort { id, reason: format!("read failed: {e}") }, true),
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
#[derive(Clone, Debug)]
pub struct Readers {
    tx: Sender<Job>,
}

impl Readers {
    /// Starts the threads; each chunk read is handed to the network thread through `net`.
    /// `queue` bounds the jobs waiting (one per connection at most).
    pub fn start(net: NetHandle, queue: usize) -> io::Result<Self> {
        let (tx, rx) = bounded(queue);
        for i in 0..THREADS {
            let (rx, net): (Receiver<Job>, NetHandle) = (rx.clone(), net.clone());
            // Not joined: a thread ends once the network thread is gone (its channels close),
            // after the read it may be blocked in.
            std::thread::Builder::new().name(format!("reader {i}")).spawn(move || {
                for Job { conn, id, mut src } in rx {
                    let (msg, last) = src.next(id);
                    if !net.send_checked(ToNet::Chunk(Chunk { conn, id, msg, src: (!last).then_some(src) })) {
                        return;
                    }
                }
            })?;
        }
        Ok(Readers { tx })
    }

    /// Asks for the next chunk; hands the job back if the queue is full (try again later).
    pub fn read(&self, job: Job) -> Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Err(j),
        }
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
        Source::new(f, size)
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
}
