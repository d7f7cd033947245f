//! The session rules: what a peer may send, and when, as a state machine with no I/O.
//!
//! A [`Connection`] is an enum of `Expect*` states, one value per connection and side. Each
//! message the peer sends is fed to [`Connection::receive`], which consumes the state and returns
//! the next one with an [`Event`] saying what the caller has to do (answer a `Hello`, hand a
//! session message on, answer a `Ping`), or a [`Violation`]: something the peer did wrong, after
//! which the connection is closed (`Goodbye` with the violation's text as the reason). Each
//! message we send is shown to [`Connection::sent`], because what a peer may send depends on it
//! (a `Data` is only acceptable for a `Request` of ours; a request of the peer's stops counting
//! against its limit once we answered it).
//!
//! Why a state machine of its own: the rules used to be spread over the network loop (handshake
//! order, the limit on open uploads) and the sync engine (unknown request ids, over-sending, an
//! index sent twice), each checked where it happened to be convenient and each phrased as a
//! string. Here every rule a peer must follow that can be checked without file contents is in
//! one place, testable from a table of `(state, message, violation)`, and the same for every
//! driver (the mio loop today, a simulator tomorrow). What needs file contents (the hash of the
//! bytes received) stays with whoever hashes them; [`Violation::HashMismatch`] is its name.
//!
//! After the handshake a [`Session`] has two directions, each a small state enum plus the
//! transfers under way in it:
//! - [`Inbound`]: what flows from the peer to us: its index (in answer to our `IndexFrom`) and
//!   then its updates ([`InboundIndex`]), and the files we requested from it ([`Fetch`]).
//! - [`Outbound`]: what flows from us to the peer: our index once it asked with `IndexFrom`
//!   ([`OutboundIndex`]), and the answers we owe to its requests, at most
//!   [`MAX_REQUESTS_IN_FLIGHT`].
//!
//! `PROTOCOL.md`, "Session states", has the diagram.

use crate::message::{Hello, Message, Welcome};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// The most requests of one peer whose answer (`DataEnd` or `DataAbort`) we have not sent yet.
/// Each one may hold an open file on our side, so a peer above it is cut off. Requesters of the
/// reference implementation keep at most 64 in flight.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// Each side sends `Ping` this often on an open connection, whatever else it sends.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

/// A connection on which nothing moved for this long is dead: no byte arrived, and none of the
/// bytes we queued was taken by the network after it had pushed back (`PROTOCOL.md`,
/// "Liveness"). Also how long a closing connection waits for its `Goodbye` to leave.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);

/// A connection must complete its handshake within this long of being opened, however slowly
/// its bytes trickle in.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Which end of the connection this state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Connected out, sends `Hello`.
    Client,
    /// Accepted the connection, answers `Hello` with `Welcome`.
    Server,
}

/// Something a peer did wrong. Every violation is fatal for the connection; its `Display` is
/// the reason to put in the `Goodbye` and the log (it carries no peer-supplied text, so it is
/// safe to log as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A message the handshake state does not take (a session message before `Welcome`, say).
    Unexpected {
        message: &'static str,
        /// What the state was waiting for.
        expected: &'static str,
    },
    /// A client sent `Hello` again.
    SecondHello,
    /// A server sent `Welcome` again.
    SecondWelcome,
    /// A server sent `Hello`: only a client does.
    HelloFromServer,
    /// A client sent `Welcome`: only a server does.
    WelcomeFromClient,
    /// A `Hello` with more include/exclude patterns than a server builds matchers for
    /// ([`crate::MAX_PATTERNS`], [`crate::MAX_PATTERN_BYTES`]).
    TooManyPatterns { count: usize, bytes: usize },
    /// A second `IndexFrom` in one session.
    IndexFromTwice,
    /// An `IndexBatch` after the one with `last = true`.
    IndexTwice,
    /// A `Request` whose id is the id of a request we are still answering.
    DuplicateRequest { id: u64 },
    /// A `Request` beyond [`MAX_REQUESTS_IN_FLIGHT`] unanswered ones.
    TooManyRequests,
    /// `Data` for an id we did not request, or whose answer already ended.
    DataForUnknownRequest { id: u64 },
    /// `DataEnd` for an id we did not request, or whose answer already ended.
    EndOfUnknownRequest { id: u64 },
    /// More `Data` bytes than the `size` of the request.
    MoreThanRequested { id: u64, size: u64 },
    /// A `DataEnd` whose `size` is not the number of bytes its `Data` carried.
    SizeMismatch { id: u64, claimed: u64, sent: u64 },
    /// The bytes of a transfer do not hash to its `DataEnd`'s `hash`. Not detected here (the
    /// session does not hash file contents); the receiver that hashes them names it so.
    HashMismatch { id: u64 },
    /// A `Push` of more than [`crate::MAX_PUSH_LEN`] bytes.
    PushTooLarge { len: usize },
    /// More `Push` bytes than [`crate::MAX_PUSHED`] before the `Update` or `IndexBatch` they
    /// belong to.
    TooMuchPushed,
    /// The bytes of a `Push` do not hash to its `hash` (checked by the receiver, as
    /// [`Violation::HashMismatch`] is).
    PushHashMismatch,
    /// A `Request` whose base is malformed ([`crate::delta::Base::check`]).
    BadBase { id: u64, why: crate::delta::BadBase },
    /// A `Copy` for a request that named no base.
    CopyWithoutBase { id: u64 },
    /// A `Copy` of no bytes, of more than [`crate::delta::MAX_COPY_LEN`], or reaching past the
    /// end of the base.
    CopyOutOfRange { id: u64, offset: u64, len: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unexpected { message, expected } => {
                write!(f, "unexpected {message} during the handshake (expected {expected})")
            }
            Self::SecondHello => f.write_str("the peer sent a second Hello"),
            Self::SecondWelcome => f.write_str("the server sent a second Welcome"),
            Self::HelloFromServer => f.write_str("the server sent a Hello (only a client does)"),
            Self::WelcomeFromClient => f.write_str("the client sent a Welcome (only a server does)"),
            Self::TooManyPatterns { count, bytes } => write!(
                f,
                "too many include/exclude patterns ({count} patterns, {bytes} bytes; at most {} patterns of {} \
                 bytes in all)",
                crate::MAX_PATTERNS,
                crate::MAX_PATTERN_BYTES
            ),
            Self::IndexFromTwice => f.write_str("the peer asked for our index twice"),
            Self::IndexTwice => f.write_str("the peer sent its index twice"),
            Self::DuplicateRequest { id } => {
                write!(f, "the peer sent request {id} again while its answer was still being sent")
            }
            Self::TooManyRequests => write!(f, "more than {MAX_REQUESTS_IN_FLIGHT} requests in flight"),
            Self::DataForUnknownRequest { id } => write!(f, "data for unknown request {id}"),
            Self::EndOfUnknownRequest { id } => write!(f, "end of unknown request {id}"),
            Self::MoreThanRequested { id, size } => {
                write!(f, "peer sent more than the {size} bytes of request {id}")
            }
            Self::SizeMismatch { id, claimed, sent } => {
                write!(f, "peer claimed {claimed} bytes for request {id} but sent {sent}")
            }
            Self::HashMismatch { id } => write!(f, "the bytes of request {id} do not match the hash the peer sent"),
            Self::PushTooLarge { len } => {
                write!(f, "the peer pushed a file of {len} bytes (at most {} are pushed)", crate::MAX_PUSH_LEN)
            }
            Self::TooMuchPushed => {
                write!(f, "the peer pushed more than {} bytes ahead of the entries they belong to", crate::MAX_PUSHED)
            }
            Self::PushHashMismatch => f.write_str("the bytes the peer pushed do not match their hash"),
            Self::BadBase { id, why } => write!(f, "request {id} names a malformed base: {why}"),
            Self::CopyWithoutBase { id } => write!(f, "a copy from the base for request {id}, which named none"),
            Self::CopyOutOfRange { id, offset, len } => write!(
                f,
                "a copy of {len} bytes at {offset} for request {id}: empty, over {} bytes, or past the end of the base",
                crate::delta::MAX_COPY_LEN
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// What the caller does with a message the state machine accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Server: a client's `Hello`. Answer it with `Welcome` or `Goodbye` (and show the answer to
    /// [`Connection::sent`]); the client sends nothing else until then.
    Hello(Hello),
    /// Client: the server's `Welcome`; the session is open.
    Welcome(Welcome),
    /// A `Goodbye` before the handshake completed: the peer refused us (or gave up).
    Refused { reason: String },
    /// A `Ping`: answer `Pong`.
    Ping,
    /// A session message, checked: hand it on. A `Goodbye` among them ends the session.
    Session(Message),
    /// Nothing to do: a `Pong`, or whatever arrives after a `Goodbye`.
    Nothing,
}

/// One connection's protocol state, as one side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Client: our `Hello` went out right after the preamble; the server's `Welcome`, or its
    /// refusal (`Goodbye`), comes next.
    ExpectWelcome,
    /// Server: the client's `Hello` comes next.
    ExpectHello,
    /// Server: the `Hello` is in and ours to answer (`Welcome` or `Goodbye`); the client sends
    /// nothing but pings until it has the answer.
    ExpectAnswer,
    /// The handshake is done.
    Open(Session),
    /// A `Goodbye` went one way or the other: nothing more is taken from the peer.
    Closed,
}

impl Connection {
    /// The state a new connection starts in, once both preambles passed.
    pub fn new(side: Side) -> Self {
        match side {
            Side::Client => Self::ExpectWelcome,
            Side::Server => Self::ExpectHello,
        }
    }

    /// Whether the handshake is done and the connection not closed.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }

    /// Consumes a message from the peer: the next state and what to do, or what the peer did
    /// wrong (then the connection is to be closed; there is no next state).
    pub fn receive(self, msg: Message) -> Result<(Self, Event), Violation> {
        match (self, msg) {
            (Self::Closed, _) => Ok((Self::Closed, Event::Nothing)),
            (s, Message::Ping) => Ok((s, Event::Ping)),
            (s, Message::Pong) => Ok((s, Event::Nothing)),
            (Self::Open(session), msg) => session.receive(msg),
            (Self::ExpectWelcome | Self::ExpectHello | Self::ExpectAnswer, Message::Goodbye { reason }) => {
                Ok((Self::Closed, Event::Refused { reason }))
            }
            (Self::ExpectWelcome, Message::Welcome(w)) => {
                Ok((Self::Open(Session::new(Side::Client)), Event::Welcome(w)))
            }
            (Self::ExpectWelcome, Message::Hello(_)) => Err(Violation::HelloFromServer),
            (Self::ExpectHello, Message::Hello(h)) => {
                let count = h.includes.len() + h.excludes.len();
                let bytes: usize = h.includes.iter().chain(&h.excludes).map(String::len).sum();
                if count > crate::MAX_PATTERNS || bytes > crate::MAX_PATTERN_BYTES {
                    return Err(Violation::TooManyPatterns { count, bytes });
                }
                Ok((Self::ExpectAnswer, Event::Hello(h)))
            }
            (Self::ExpectAnswer, Message::Hello(_)) => Err(Violation::SecondHello),
            (Self::ExpectHello | Self::ExpectAnswer, Message::Welcome(_)) => Err(Violation::WelcomeFromClient),
            (s @ (Self::ExpectWelcome | Self::ExpectHello | Self::ExpectAnswer), msg) => {
                let expected = match s {
                    Self::ExpectWelcome => "Welcome",
                    Self::ExpectHello => "Hello",
                    _ => "nothing before our Welcome",
                };
                Err(Violation::Unexpected { message: msg.name(), expected })
            }
        }
    }

    /// Records a message we send: a server's answer to `Hello` opens or closes the connection,
    /// our requests make the peer's `Data` acceptable, and our answers free the peer's slots.
    /// Messages that change nothing (and our own mistakes, such as `Welcome` from a client)
    /// leave the state as it is.
    pub fn sent(&mut self, msg: &Message) {
        match (&mut *self, msg) {
            (_, Message::Goodbye { .. }) => *self = Self::Closed,
            (Self::ExpectAnswer, Message::Welcome(_)) => *self = Self::Open(Session::new(Side::Server)),
            (Self::Open(session), msg) => session.sent(msg),
            _ => {}
        }
    }
}

/// An open session: the two directions of a connection after its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    side: Side,
    inbound: Inbound,
    outbound: Outbound,
}

/// From the peer to us: its index, then its updates, and the files we asked it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub index: InboundIndex,
    /// Our requests the peer has not finished answering, by id.
    pub fetches: HashMap<u64, Fetch>,
    /// `Push` bytes since the last `Update` or `IndexBatch` (held by the receiver until then).
    pub pushed: usize,
}

/// The peer's index, in answer to our `IndexFrom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundIndex {
    /// `IndexBatch` messages until the one with `last = true`. `Update`s may come meanwhile.
    ExpectIndexBatch,
    /// The index is complete; only `Update`s from now on.
    ExpectUpdate,
}

/// One of our requests, being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// The size we asked for: the peer sends at most this many bytes.
    pub size: u64,
    /// The `Data` bytes that arrived so far.
    pub received: u64,
    /// The size of the base the request named: `Copy` pieces come from it.
    pub base: Option<u64>,
}

/// From us to the peer: our index once it asked, and the answers to its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub index: OutboundIndex,
    /// The peer's requests whose answer (`DataEnd` or `DataAbort`) we have not sent yet.
    pub owed: HashSet<u64>,
}

/// Our index, as the peer asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundIndex {
    /// The peer's `IndexFrom` comes once.
    ExpectIndexFrom,
    /// It came: our index answers it, then our updates follow.
    Asked,
}

impl Session {
    fn new(side: Side) -> Self {
        Self {
            side,
            inbound: Inbound { index: InboundIndex::ExpectIndexBatch, fetches: HashMap::new(), pushed: 0 },
            outbound: Outbound { index: OutboundIndex::ExpectIndexFrom, owed: HashSet::new() },
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn inbound(&self) -> &Inbound {
        &self.inbound
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    fn receive(mut self, msg: Message) -> Result<(Connection, Event), Violation> {
        match &msg {
            Message::Hello(_) if self.side == Side::Server => return Err(Violation::SecondHello),
            Message::Hello(_) => return Err(Violation::HelloFromServer),
            Message::Welcome(_) if self.side == Side::Client => return Err(Violation::SecondWelcome),
            Message::Welcome(_) => return Err(Violation::WelcomeFromClient),
            Message::Goodbye { .. } => return Ok((Connection::Closed, Event::Session(msg))),
            Message::IndexFrom { .. } => {
                self.outbound.index = match self.outbound.index {
                    OutboundIndex::ExpectIndexFrom => OutboundIndex::Asked,
                    OutboundIndex::Asked => return Err(Violation::IndexFromTwice),
                }
            }
            Message::IndexBatch { last, .. } => {
                self.inbound.pushed = 0;
                self.inbound.index = match (self.inbound.index, last) {
                    (InboundIndex::ExpectIndexBatch, false) => InboundIndex::ExpectIndexBatch,
                    (InboundIndex::ExpectIndexBatch, true) => InboundIndex::ExpectUpdate,
                    (InboundIndex::ExpectUpdate, _) => return Err(Violation::IndexTwice),
                }
            }
            Message::Update { .. } => self.inbound.pushed = 0,
            Message::Push { bytes, .. } => {
                if bytes.len() > crate::MAX_PUSH_LEN {
                    return Err(Violation::PushTooLarge { len: bytes.len() });
                }
                self.inbound.pushed += bytes.len();
                if self.inbound.pushed > crate::MAX_PUSHED {
                    return Err(Violation::TooMuchPushed);
                }
            }
            Message::Request { id, base, .. } => {
                if let Some(b) = base {
                    b.check().map_err(|why| Violation::BadBase { id: *id, why })?;
                }
                if self.outbound.owed.contains(id) {
                    return Err(Violation::DuplicateRequest { id: *id });
                }
                if self.outbound.owed.len() >= MAX_REQUESTS_IN_FLIGHT {
                    return Err(Violation::TooManyRequests);
                }
                self.outbound.owed.insert(*id);
            }
            Message::Data { id, bytes } => {
                let id = *id;
                let Some(f) = self.inbound.fetches.get_mut(&id) else {
                    return Err(Violation::DataForUnknownRequest { id });
                };
                let received = f.received.saturating_add(bytes.len() as u64);
                if received > f.size {
                    return Err(Violation::MoreThanRequested { id, size: f.size });
                }
                f.received = received;
            }
            Message::Copy { id, offset, len } => {
                let (id, offset, len) = (*id, *offset, *len);
                let Some(f) = self.inbound.fetches.get_mut(&id) else {
                    return Err(Violation::DataForUnknownRequest { id });
                };
                let Some(base) = f.base else { return Err(Violation::CopyWithoutBase { id }) };
                if len == 0 || len > crate::delta::MAX_COPY_LEN || offset.checked_add(len).is_none_or(|end| end > base)
                {
                    return Err(Violation::CopyOutOfRange { id, offset, len });
                }
                let received = f.received.saturating_add(len);
                if received > f.size {
                    return Err(Violation::MoreThanRequested { id, size: f.size });
                }
                f.received = received;
            }
            Message::DataEnd { id, size, .. } => {
                let id = *id;
                let Some(f) = self.inbound.fetches.remove(&id) else {
                    return Err(Violation::EndOfUnknownRequest { id });
                };
                if *size != f.received {
                    return Err(Violation::SizeMismatch { id, claimed: *size, sent: f.received });
                }
            }
            Message::DataAbort { id, .. } => {
                // An abort for an id that is not (or no longer) under way is ignored: it carries
                // nothing that could be misapplied, and closing over it gains nothing.
                self.inbound.fetches.remove(id);
            }
            Message::Ping | Message::Pong => {}
        }
        Ok((Connection::Open(self), Event::Session(msg)))
    }

    fn sent(&mut self, msg: &Message) {
        match msg {
            Message::Request { id, size, base, .. } => {
                let base = base.as_ref().map(|b| b.size);
                self.inbound.fetches.insert(*id, Fetch { size: *size, received: 0, base });
            }
            Message::DataEnd { id, .. } | Message::DataAbort { id, .. } => {
                self.outbound.owed.remove(id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
