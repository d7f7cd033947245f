//! Deltas: a changed file sent as pieces of the version the receiver already holds, plus the
//! bytes that are new.
//!
//! The receiver describes its version (the *base*) as content-defined chunks ([`Signer`]:
//! FastCDC 2020, normalization level 1, chunks from a quarter to four times the average; each
//! chunk named by the first 16 bytes of its blake3 hash) and sends the list with its `Request`.
//! The sender reads its file once ([`Encoder`]) and, at each position, takes the base's chunk
//! that starts at the same offset if its bytes are the same there (an append, a change in
//! place), or else cuts the next chunk itself and looks its hash up among the base's (bytes
//! inserted or removed before it moved it): a chunk the base holds goes as a `Copy` of its
//! range, anything else as `Data`. Nothing here is trusted: the receiver checks the hash of the
//! whole file it assembled, and falls back to a full transfer on any mismatch.

use mirror_protocol::Hash;
use mirror_protocol::delta::{Base, ChunkSig, MAX_AVG, MAX_COPY_LEN, MIN_AVG};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};

/// The average chunk size of a base, for files of up to [`TARGET_CHUNKS`] times it. Measured in
/// BENCHMARKS.md ("Deltas"): smaller chunks find more of a changed file, but each costs 20 bytes
/// of the request.
pub const DEFAULT_AVG: u32 = 64 * 1024;
/// A larger file gets a larger average, so that its base lists about this many chunks at most.
const TARGET_CHUNKS: u64 = 16384;
/// The most new bytes one `Data` of a delta carries.
pub const LITERAL_MAX: usize = 64 * 1024;

/// The average chunk size to describe a file of `size` bytes with: `least` (a power of two the
/// protocol allows; [`DEFAULT_AVG`] in the agent), or larger for a large file.
pub fn avg_for(size: u64, least: u32) -> u32 {
    let mut avg = least.clamp(MIN_AVG, MAX_AVG).next_power_of_two();
    while size / u64::from(avg) > TARGET_CHUNKS && avg < MAX_AVG {
        avg *= 2;
    }
    avg
}

/// A chunk's name: the first 16 bytes of its blake3 hash.
pub fn chunk_hash(bytes: &[u8]) -> [u8; 16] {
    let mut h = [0; 16];
    h.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    h
}

/// Where content-defined chunks end, for one average size.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// The chunker for an average of `avg` bytes: a power of two the protocol allows.
    pub fn new(avg: u32) -> Option<Self> {
        if !avg.is_power_of_two() || !(MIN_AVG..=MAX_AVG).contains(&avg) {
            return None;
        }
        let avg = avg as usize;
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(avg, fastcdc::v2020::Normalization::Level1);
        Some(Chunker { min: avg / 4, avg, max: avg * 4, mask_s, mask_l })
    }

    /// The longest chunk.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The length of the chunk that starts at `window[0]`, where `window` holds at least
    /// [`max`](Self::max) bytes or the rest of the file (the same cut either way).
    pub fn cut(&self, window: &[u8]) -> usize {
        let (m, l) = (self.mask_s, self.mask_l);
        fastcdc::v2020::cut(window, self.min, self.avg, self.max, m, l, m << 1, l << 1).1
    }
}

/// Describes a file as a [`Base`], from its bytes in order.
#[derive(Debug)]
pub struct Signer {
    chunker: Chunker,
    avg: u32,
    buf: Vec<u8>,
    chunks: Vec<ChunkSig>,
    size: u64,
}

impl Signer {
    pub fn new(avg: u32) -> Option<Self> {
        let chunker = Chunker::new(avg)?;
        Some(Signer { chunker, avg, buf: Vec::new(), chunks: Vec::new(), size: 0 })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while self.buf.len() - start >= self.chunker.max {
            start += self.cut(start);
        }
        self.buf.drain(..start);
    }

    fn cut(&mut self, start: usize) -> usize {
        let w = &self.buf[start..];
        let n = self.chunker.cut(w).max(1).min(w.len());
        self.chunks.push(ChunkSig { len: n as u32, hash: chunk_hash(&w[..n]) });
        n
    }

    /// The base: every chunk and the size of the bytes given, and `hash`, their whole hash as
    /// the caller knows it (it is not computed again here: the file was read while its stat
    /// stayed the one that hash was recorded with, and the rebuilt file is checked whole).
    pub fn finish(mut self, hash: Hash) -> Base {
        let mut start = 0;
        while start < self.buf.len() {
            start += self.cut(start);
        }
        Base { size: self.size, hash, avg: self.avg, chunks: self.chunks }
    }
}

/// The base of `bytes` (what the simulator's disk and the tests use; the agent reads a file
/// through a [`Signer`]).
pub fn sign(bytes: &[u8], avg: u32) -> Option<Base> {
    let mut s = Signer::new(avg)?;
    s.update(bytes);
    Some(s.finish(*blake3::hash(bytes).as_bytes()))
}

/// One piece of a delta, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes `offset..offset + len` of the base.
    Copy { offset: u64, len: u64 },
    /// New bytes (at most [`LITERAL_MAX`]).
    Literal(Vec<u8>),
}

/// Reads a file once and says it as [`Piece`]s against a base, hashing it whole as it goes.
#[derive(Debug)]
pub struct Encoder<R> {
    src: R,
    /// The size the file is sent at: a file that grew past it is not sent as it.
    size: u64,
    chunker: Chunker,
    /// The base's chunks by hash (the first of equal ones), and by the offset they start at.
    by_hash: HashMap<[u8; 16], (u64, u32)>,
    at: HashMap<u64, ChunkSig>,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// The offset in the file of `buf[start]`: every byte before it is said.
    pos: u64,
    read: u64,
    whole: blake3::Hasher,
    /// The piece being gathered (adjacent copies, new bytes), and whole pieces to say.
    pending: Option<Piece>,
    ready: VecDeque<Piece>,
}

impl<R: Read> Encoder<R> {
    /// The encoder of `src`, a file of `size` bytes, against `base`; `src` back if the base
    /// names an average the protocol does not allow.
    pub fn new(src: R, size: u64, base: &Base) -> Result<Self, R> {
        let Some(chunker) = Chunker::new(base.avg) else { return Err(src) };
        let mut by_hash = HashMap::with_capacity(base.chunks.len());
        let mut at = HashMap::with_capacity(base.chunks.len());
        let mut offset = 0u64;
        for c in &base.chunks {
            by_hash.entry(c.hash).or_insert((offset, c.len));
            at.insert(offset, *c);
            offset += u64::from(c.len);
        }
        Ok(Encoder {
            src,
            size,
            chunker,
            by_hash,
            at,
            buf: Vec::new(),
            start: 0,
            eof: false,
            pos: 0,
            read: 0,
            whole: blake3::Hasher::new(),
            pending: None,
            ready: VecDeque::new(),
        })
    }

    /// The bytes said so far.
    pub fn sent(&self) -> u64 {
        self.pos
    }

    /// The hash of the whole file, once [`next_piece`](Self::next_piece) said the end.
    pub fn hash(&self) -> Hash {
        *self.whole.finalize().as_bytes()
    }

    /// Reads until a chunk's worth is held, or the end. A file that grew past its size is an
    /// error (it is not sent as the size it was seen at).
    fn fill(&mut self) -> io::Result<()> {
        let max = self.chunker.max();
        if self.buf.len() - self.start >= max || self.eof {
            return Ok(());
        }
        self.buf.drain(..self.start);
        self.start = 0;
        while !self.eof && self.buf.len() < max {
            let old = self.buf.len();
            self.buf.resize(old + (max - old).max(LITERAL_MAX), 0);
            let n = loop {
                match self.src.read(&mut self.buf[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + n);
            self.eof = n == 0;
            self.read += n as u64;
            if self.read > self.size {
                return Err(io::Error::other("file grew while being sent"));
            }
        }
        Ok(())
    }

    /// Where the chunk at the current position comes from in the base, and its length.
    fn step(&self, w: &[u8]) -> (Option<u64>, usize) {
        if let Some(sig) = self.at.get(&self.pos) {
            let len = sig.len as usize;
            if len <= w.len() && chunk_hash(&w[..len]) == sig.hash {
                return (Some(self.pos), len);
            }
        }
        let n = self.chunker.cut(w).max(1).min(w.len());
        let found = self.by_hash.get(&chunk_hash(&w[..n])).filter(|(_, len)| *len as usize == n);
        (found.map(|(offset, _)| *offset), n)
    }

    /// The next piece, `None` once the whole file is said.
    pub fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Ok(Some(p));
            }
            self.fill()?;
            let w = &self.buf[self.start..];
            if w.is_empty() {
                let Some(last) = self.pending.take() else { return Ok(None) };
                self.say(last);
                continue;
            }
            let (from, n) = self.step(w);
            let chunk = &self.buf[self.start..self.start + n];
            self.whole.update(chunk);
            let len = n as u64;
            let out = match (from, &mut self.pending) {
                (Some(f), Some(Piece::Copy { offset, len: l })) if *offset + *l == f && *l + len <= MAX_COPY_LEN => {
                    *l += len;
                    None
                }
                (Some(f), _) => self.pending.replace(Piece::Copy { offset: f, len }),
                (None, Some(Piece::Literal(v))) => {
                    v.extend_from_slice(chunk);
                    None
                }
                (None, _) => self.pending.replace(Piece::Literal(chunk.to_vec())),
            };
            self.start += n;
            self.pos += len;
            if let Some(p) = out {
                self.say(p);
            }
            // New bytes go as soon as a piece's worth is gathered.
            while let Some(Piece::Literal(v)) = &mut self.pending
                && v.len() >= LITERAL_MAX
            {
                let rest = v.split_off(LITERAL_MAX);
                let full = std::mem::replace(v, rest);
                self.ready.push_back(Piece::Literal(full));
            }
            if matches!(&self.pending, Some(Piece::Literal(v)) if v.is_empty()) {
                self.pending = None;
            }
        }
    }

    /// Queues a finished piece, new bytes cut to [`LITERAL_MAX`] a piece.
    fn say(&mut self, p: Piece) {
        match p {
            Piece::Literal(mut v) => {
                while v.len() > LITERAL_MAX {
                    let rest = v.split_off(LITERAL_MAX);
                    self.ready.push_back(Piece::Literal(std::mem::replace(&mut v, rest)));
                }
                if !v.is_empty() {
                    self.ready.push_back(Piece::Literal(v));
                }
            }
            copy => self.ready.push_back(copy),
        }
    }
}

#[cfg(test)]
mod tests;
