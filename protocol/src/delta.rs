//! The wire side of deltas: the version of a file a receiver already holds, described as a list
//! of content-defined chunks ([`Base`]), sent with its `Request`; the sender answers with
//! [`Message::Copy`](crate::Message::Copy) pieces of that version and `Data` for the new bytes.
//!
//! How chunks are cut and hashed (FastCDC, blake3) is `mirror-core`'s `delta` module; here is
//! only what a peer may send, and the limits a receiver of it checks before anything is built.
//! Correctness never depends on the two sides cutting alike: every piece lands in a temp file
//! whose whole hash is checked, and a mismatch falls back to a full transfer.

use serde::{Deserialize, Serialize};

/// The smallest average chunk size a base may name.
pub const MIN_AVG: u32 = 1024;
/// The largest average chunk size a base may name.
pub const MAX_AVG: u32 = 4 * 1024 * 1024;
/// The most chunks a base may list (at 20 bytes each, 1.25 MiB: far below a frame).
pub const MAX_BASE_CHUNKS: usize = 65536;
/// The most bytes one [`Message::Copy`](crate::Message::Copy) may take from the base: the
/// receiver reads them at once.
pub const MAX_COPY_LEN: u64 = 4 * 1024 * 1024;

/// One chunk of a base: its length and the first 16 bytes of its blake3 hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSig {
    pub len: u32,
    pub hash: [u8; 16],
}

/// The version of a file the requester holds at the path: its size, its whole hash, the average
/// chunk size it was cut with (a power of two; chunks are at least a quarter of it and at most
/// four times it, the last one shorter), and its chunks in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub size: u64,
    pub hash: crate::Hash,
    pub avg: u32,
    pub chunks: Vec<ChunkSig>,
}

/// Why a peer's [`Base`] is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadBase {
    /// The average is not a power of two between [`MIN_AVG`] and [`MAX_AVG`].
    Average(u32),
    /// More than [`MAX_BASE_CHUNKS`] chunks.
    TooManyChunks(usize),
    /// A chunk is empty or longer than four times the average.
    ChunkLength(u32),
    /// The chunks do not add up to the size.
    Size { size: u64, sum: u64 },
}

impl std::fmt::Display for BadBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Average(a) => write!(f, "average chunk size {a} is not a power of two from {MIN_AVG} to {MAX_AVG}"),
            Self::TooManyChunks(n) => write!(f, "{n} chunks (at most {MAX_BASE_CHUNKS})"),
            Self::ChunkLength(l) => write!(f, "a chunk of {l} bytes (empty, or over four times the average)"),
            Self::Size { size, sum } => write!(f, "chunks of {sum} bytes for a base of {size}"),
        }
    }
}

impl Base {
    /// The longest chunk the base's average allows.
    pub fn max_chunk(avg: u32) -> u32 {
        avg.saturating_mul(4)
    }

    /// Whether the base is well formed.
    pub fn check(&self) -> Result<(), BadBase> {
        if !self.avg.is_power_of_two() || !(MIN_AVG..=MAX_AVG).contains(&self.avg) {
            return Err(BadBase::Average(self.avg));
        }
        if self.chunks.len() > MAX_BASE_CHUNKS {
            return Err(BadBase::TooManyChunks(self.chunks.len()));
        }
        let max = Self::max_chunk(self.avg);
        let mut sum = 0u64;
        for c in &self.chunks {
            if c.len == 0 || c.len > max {
                return Err(BadBase::ChunkLength(c.len));
            }
            sum += u64::from(c.len);
        }
        if sum != self.size {
            return Err(BadBase::Size { size: self.size, sum });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(avg: u32, lens: &[u32]) -> Base {
        let chunks = lens.iter().map(|&len| ChunkSig { len, hash: [0; 16] }).collect();
        Base { size: lens.iter().map(|&l| u64::from(l)).sum(), hash: [0; 32], avg, chunks }
    }

    #[test]
    fn a_base_is_checked_before_it_is_used() {
        assert_eq!(base(4096, &[4096, 100, 16384]).check(), Ok(()));
        assert_eq!(base(4096, &[]).check(), Ok(()));
        assert_eq!(base(4095, &[10]).check(), Err(BadBase::Average(4095)));
        assert_eq!(base(512, &[10]).check(), Err(BadBase::Average(512)));
        assert_eq!(base(MAX_AVG * 2, &[10]).check(), Err(BadBase::Average(MAX_AVG * 2)));
        assert_eq!(base(4096, &[0]).check(), Err(BadBase::ChunkLength(0)));
        assert_eq!(base(4096, &[16385]).check(), Err(BadBase::ChunkLength(16385)));
        let mut b = base(4096, &[10, 20]);
        b.size = 31;
        assert_eq!(b.check(), Err(BadBase::Size { size: 31, sum: 30 }));
        assert_eq!(base(1024, &vec![1; MAX_BASE_CHUNKS + 1]).check(), Err(BadBase::TooManyChunks(MAX_BASE_CHUNKS + 1)));
    }
}
