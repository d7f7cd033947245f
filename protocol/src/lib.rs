//! The mirror-agent wire protocol, with no I/O of its own.
//!
//! Bytes go in, messages come out (and the other way round); sockets, TLS and threads belong to the
//! caller. Keeping the protocol free of I/O lets it be tested with golden bytes, round trips and a
//! fuzzer without any network, and lets a hostile peer be nothing more than a byte string.
//!
//! A connection is a [`Preamble`] each way (magic bytes and protocol version, so that a peer speaking
//! something else is told so before anything is parsed), then length-prefixed [frames](frame), each
//! carrying one postcard-encoded [`Message`]. The [session](session) rules say which message may
//! come when, and name everything a peer can do wrong ([`Violation`]). `PROTOCOL.md` beside this
//! crate is the byte-level spec.
#![forbid(unsafe_code)]

pub mod delta;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod origin;
pub mod path;
pub mod preamble;
pub mod session;
pub mod version;

pub use frame::{DecodeError, Decoder, encode, encode_into};
pub use message::{Entry, Hash, Hello, Kind, Message, Timestamp, Welcome};
pub use origin::Origin;
pub use path::{PathError, RelPath};
pub use preamble::{PREAMBLE_LEN, Preamble, PreambleError};
pub use session::{Connection, Event, MAX_REQUESTS_IN_FLIGHT, Session, Side, Violation};
pub use version::{Ordering as VersionOrdering, ReplicaId, VersionVector};

/// The protocol version this build speaks. Peers must match exactly.
pub const PROTOCOL_VERSION: u32 = 5;

/// The largest payload a frame may carry. Checked before anything is allocated.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// The largest file-content chunk a [`Message::Data`] may carry.
pub const MAX_CHUNK_LEN: usize = 1024 * 1024;

/// The largest file a [`Message::Push`] may carry.
pub const MAX_PUSH_LEN: usize = 256 * 1024;

/// The most bytes of [`Message::Push`]es a peer may send before the `Update` or `IndexBatch`
/// they belong to: the receiver holds them until then.
pub const MAX_PUSHED: usize = 4 * 1024 * 1024;

/// The most include plus exclude patterns a `Hello` may carry, and their total length: a server
/// builds matchers from them, and refuses a client asking for more (it says so in a `Goodbye`).
pub const MAX_PATTERNS: usize = 1000;
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;

/// Entries per index batch: keeps every batch far below [`MAX_FRAME_LEN`] even with long paths.
pub const MAX_BATCH_ENTRIES: usize = 256;
