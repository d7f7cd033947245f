//! The messages peers exchange, one per frame.

use crate::path::RelPath;
use crate::version::{ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

/// A blake3 digest of file contents.
pub type Hash = [u8; 32];

/// Seconds and nanoseconds since the Unix epoch. Carried as data; never used to order changes
/// except to pick the same winner of a true conflict on every replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What a path holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    File {
        size: u64,
        hash: Hash,
        /// Permission bits: read, write and execute for user, group and others (`0o777` at
        /// most; set-id and sticky bits are never carried, and a receiver masks them off).
        mode: u32,
    },
    Directory,
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// A tombstone: the path was deleted at this version.
    Deleted,
}

impl Kind {
    pub fn is_deleted(&self) -> bool {
        matches!(self, Kind::Deleted)
    }
}

/// One path's state as a replica knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    pub mtime: Timestamp,
    pub version: VersionVector,
    /// Host name of the replica that made this version (names conflict copies).
    pub origin: crate::origin::Origin,
}

impl Entry {
    /// Whether two entries describe the same content (kind, bytes, mode, link target),
    /// whatever their versions and mtimes.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
    }
}

/// The client's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub replica: ReplicaId,
    pub host: String,
    /// The directory to sync, resolved by the server inside its root.
    #[serde(with = "serde_bytes")]
    pub remote: Vec<u8>,
    /// The client's `-i` patterns (gitignore syntax): the server syncs these paths too.
    pub includes: Vec<String>,
    /// The client's `-e` patterns (gitignore syntax): the server does not sync these.
    pub excludes: Vec<String>,
}

/// The server's answer to an acceptable [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The replica id of the directory the server syncs for this client.
    pub replica: ReplicaId,
    pub host: String,
}

/// Everything that travels in a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    /// A batch of the sender's index (the entries that changed after the `since` of the
    /// receiver's [`Message::IndexFrom`]), sent once per session in answer to it; `last` ends it.
    /// `seq`, on the last batch, is the sender's change counter the index covers.
    IndexBatch {
        entries: Vec<Entry>,
        last: bool,
        seq: u64,
    },
    /// Entries that changed on the sender since it last said; with them, the receiver has every
    /// change of the sender up to `seq`.
    Update {
        entries: Vec<Entry>,
        seq: u64,
    },
    /// Asks for the contents of a file at the given size and hash. With a `base` (the version
    /// the requester holds at the path, as chunks) the answer may take pieces of that version
    /// ([`Message::Copy`]) instead of sending their bytes.
    Request {
        id: u64,
        path: RelPath,
        size: u64,
        hash: Hash,
        base: Option<Box<crate::delta::Base>>,
    },
    /// A chunk of a requested file, at most [`crate::MAX_CHUNK_LEN`] bytes, in order.
    Data {
        id: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// All of a requested file was sent; `hash` and `size` are what was read.
    DataEnd {
        id: u64,
        size: u64,
        hash: Hash,
    },
    /// The requested file could not be sent as asked (changed, deleted, unreadable).
    DataAbort {
        id: u64,
        reason: String,
    },
    Ping,
    Pong,
    /// The sender is closing the connection, and why.
    Goodbye {
        reason: String,
    },
    /// Sent by each side first in a session: "I have every change of yours up to `since`; send
    /// your index from there" (0: all of it).
    IndexFrom {
        since: u64,
    },
    /// The whole content of a small file (at most [`crate::MAX_PUSH_LEN`] bytes), sent just
    /// before the `Update` or `IndexBatch` that holds an entry with this hash, so that the
    /// receiver needs no `Request` for it. The receiver checks the hash, and forgets what the
    /// next `Update` or `IndexBatch` did not use.
    Push {
        hash: Hash,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The next `len` bytes of the file of request `id` are bytes `offset..offset + len` of the
    /// base its `Request` named (at most [`crate::delta::MAX_COPY_LEN`]), in order with its
    /// `Data`: they count toward its size and its hash alike.
    Copy {
        id: u64,
        offset: u64,
        len: u64,
    },
}

impl Message {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::IndexBatch { .. } => "IndexBatch",
            Message::Update { .. } => "Update",
            Message::Request { .. } => "Request",
            Message::Data { .. } => "Data",
            Message::DataEnd { .. } => "DataEnd",
            Message::DataAbort { .. } => "DataAbort",
            Message::Ping => "Ping",
            Message::Pong => "Pong",
            Message::Goodbye { .. } => "Goodbye",
            Message::IndexFrom { .. } => "IndexFrom",
            Message::Push { .. } => "Push",
            Message::Copy { .. } => "Copy",
        }
    }
}
