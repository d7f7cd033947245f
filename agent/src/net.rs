//! The network thread: one mio loop for the listener and every connection.
//!
//! It only moves bytes: the preamble check, frame decoding and the handshake route a
//! connection to its engine, after which messages pass through untouched once the session rules
//! ([`mirror_protocol::session`]) accepted them (a peer that breaks one is closed here, with the
//! [`Violation`] as the reason), except file uploads: their bytes are read by the upload readers
//! ([`crate::reader`]), at most [`READ_AHEAD_CHUNKS`] chunks ahead of what the socket has taken,
//! so a file of any size costs a few chunks of memory and a slow disk stalls no connection.
//!
//! It never blocks on an engine: a message the engine's channel cannot take yet is parked, and
//! the connection is not read again until the message is delivered.
//!
//! About 950 lines, over the usual 600: a connection's reading, writing, TLS, handshake and
//! heartbeat all act on the one `Conn` while the loop holds it out of its map, and on the loop's
//! listener, engines and reconnect timer; split by concern, each part would take both whole.

use crate::link::{ConnId, NetHandle, ToEngine, ToNet};
use crate::reader::{Chunk, Job, Readers, Source, UPLOAD_CHUNK};
use crate::status::{State as PairState, Status};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use mirror_protocol::session::{DEAD_AFTER, HANDSHAKE_DEADLINE, PING_INTERVAL};
use mirror_protocol::{
    Connection, Decoder, Event, Hello, Message, PREAMBLE_LEN, Preamble, ReplicaId, Side, Violation, Welcome,
    encode_into,
};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the network loop ended other than by being stopped.
#[derive(Debug)]
pub enum NetError {
    /// Waiting for readiness failed.
    Poll(io::Error),
    /// A client's server did not speak this protocol (or this version of it, or TLS as we do).
    Preamble { peer: String, reason: String },
    /// A client's server refused it for good; its goodbye says why.
    Refused { peer: String, reason: String },
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Poll(e) => write!(f, "network loop: waiting for sockets failed: {e}"),
            NetError::Preamble { peer, reason } => write!(f, "server {peer}: {reason}"),
            NetError::Refused { peer, reason } => write!(f, "server {peer} refused the connection: {reason}"),
        }
    }
}

/// Its text says everything, the cause included (so a chain printed with `{:#}` says it once).
impl std::error::Error for NetError {}

pub const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

// Timing is the protocol's (`PROTOCOL.md`, "Liveness"): every open connection is sent a `Ping`
// each PING_INTERVAL, whatever else it carries, and one on which no byte moved for DEAD_AFTER,
// either way, is considered dead: nothing arrived, and nothing we queued was taken off our hands
// (see [`Conn::last_drain`]). A connection must complete its handshake within HANDSHAKE_DEADLINE
// of being opened, however slowly its bytes trickle in (a slowloris peer sending one byte a
// second is closed all the same).
/// The longest wait between reconnection attempts (before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Stop reading a connection whose undecoded input exceeds this (room for one largest frame).
const IN_HIGH_WATER: usize = mirror_protocol::MAX_FRAME_LEN + 64 * 1024;
/// How far a connection's input is read before the frames in it are decoded and handed on:
/// a hub's many peers each hold this much, not a high-water mark's worth (10 clients sending
/// their indexes at once held 47 MB of undecoded input).
const READ_AHEAD: usize = 256 * 1024;

/// How much undecoded input to read up to: the frame under way whole, or [`READ_AHEAD`].
fn read_ahead(dec: &Decoder) -> usize {
    dec.wanted().clamp(READ_AHEAD, IN_HIGH_WATER)
}
/// A peer whose output waiting here passes this is not reading it: closed. What a peer can make
/// us answer is bounded well below (one pong at a time, and as many uploads as the session lets
/// it have requests in flight: [`mirror_protocol::MAX_REQUESTS_IN_FLIGHT`]); this is the backstop
/// against an index or updates it never takes. (Not reading a connection whose output waits
/// would be simpler, but two sides sending large indexes at once would stall each other.)
const OUT_LIMIT: usize = 1024 * 1024 * 1024;
/// How long a client's TCP handshake with its server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An engine sending its index a burst at a time hears the connection drained
/// ([`ToEngine::Drained`]) once no more than this waits here to be sent.
const DRAIN_MARK: usize = 256 * 1024;
/// Connections still in their handshake, from one address and in all: a slowloris peer cannot
/// take every descriptor (the handshake also has an absolute deadline).
const MAX_HANDSHAKING_PER_ADDR: usize = 16;
const MAX_HANDSHAKING: usize = 256;
/// Open connections in all.
const MAX_CONNS: usize = 2048;
/// What a drained output buffer keeps of its room: a chunk and its frame header.
const KEEP_OUT: usize = UPLOAD_CHUNK + 1024;

/// A server's answer to a client's `Hello`: the engine of the directory it asked for, or why not.
pub type Opened = Result<Served, Refusal>;

/// The engine a `Hello` was routed to.
#[derive(Debug)]
pub struct Served {
    pub engine: Sender<ToEngine>,
    pub replica: ReplicaId,
    /// The directory, resolved inside the server's root.
    pub dir: PathBuf,
}

/// Why a client's directory is not served: what the server's log says, and what the client is
/// told in its `Goodbye`.
#[derive(Debug)]
pub struct Refusal {
    pub log: String,
    pub told: String,
}

/// Resolves a client's remote directory inside the server's root (the first argument) and finds
/// or starts its engine. It runs on a thread of its own for each `Hello`, never on the network
/// thread: resolving reads the disk, and opening a pair's store and watching its tree take
/// seconds on a large directory, while every other connection must go on.
pub type EngineFactory = Arc<dyn Fn(&std::path::Path, &Hello) -> Opened + Send + Sync>;

pub enum Role {
    Server { listener: TcpListener, root: PathBuf, engines: EngineFactory },
    Client { addr: String, hello: Hello, engine: Sender<ToEngine> },
}

/// Where the driver routes a connection's messages. Which message may come when is the
/// protocol's [`Connection`] state (`Conn::proto`); this only says whether the preamble passed
/// and, once the handshake is done, which engine the session belongs to.
enum State {
    Preamble,
    Handshake,
    /// A server's opener looks for the engine of the directory the `Hello` asked for; nothing
    /// more is read from the connection until it answers (a client sends nothing more before
    /// our `Welcome`).
    Opening,
    Open(Sender<ToEngine>),
}

/// A file being sent in answer to request `id`: its chunks are read by the upload readers
/// ([`crate::reader`]), a chunk or two ahead of the socket.
struct Upload {
    id: u64,
    /// Where to read on from; `None` while a reader has it, and after the last chunk.
    src: Option<Box<Source>>,
    /// Chunks read and not yet sent.
    ready: VecDeque<Message>,
    /// The last message (`DataEnd` or `DataAbort`) is in `ready` or sent.
    read_all: bool,
}

/// Chunks read ahead of the socket, per upload.
const READ_AHEAD_CHUNKS: usize = 2;

struct Conn {
    id: ConnId,
    stream: TcpStream,
    /// The TLS session on top of `stream`, unless the agent runs `--insecure`.
    tls: Option<Box<rustls::Connection>>,
    peer: String,
    /// The peer's address (accepted connections), for the per-address limit.
    addr: Option<std::net::IpAddr>,
    state: State,
    /// The session rules: what the peer may send next, given what it and we sent so far.
    proto: Connection,
    dec: Decoder,
    /// Frames being written, and how far; refilled from `ctrl` first, then with one upload chunk.
    out: Vec<u8>,
    out_pos: usize,
    /// Control frames (everything but file data) waiting for `out`: they go ahead of bulk data,
    /// so a heartbeat or a request never queues behind megabytes of a file.
    ctrl: Vec<u8>,
    uploads: VecDeque<Upload>,
    parked: Option<ToEngine>,
    /// Close once everything queued is written (or when nothing moved for `DEAD_AFTER`).
    closing: bool,
    closing_since: Option<Instant>,
    /// A `Pong` waits in `ctrl`: a peer's pings are answered once, however many it sends.
    pong_queued: bool,
    /// The socket is gone: close at once.
    dead: bool,
    /// Where the chunks of `uploads` are read.
    readers: Readers,
    /// Why it closed, for the engine and the log.
    close_reason: Option<String>,
    /// When bytes last arrived, and when we last pinged.
    last_rx: Instant,
    last_ping: Instant,
    /// When the socket last took bytes after pushing back: the peer acknowledged some of what
    /// we sent, so the link moves even if the peer has nothing to say (a long upload on a slow
    /// link, whose pings and pongs queue behind data in the network).
    last_drain: Instant,
    /// The socket pushed back (`WouldBlock`) on the last write.
    blocked: bool,
    opened: Instant,
    /// The engine wants to hear when what waits here falls to [`DRAIN_MARK`] (to send more of
    /// its index).
    drain_wanted: bool,
}

impl Conn {
    fn new(
        id: ConnId,
        stream: TcpStream,
        tls: Option<Box<rustls::Connection>>,
        peer: String,
        first_out: Vec<u8>,
        readers: Readers,
    ) -> Self {
        Self {
            id,
            stream,
            tls,
            peer,
            addr: None,
            state: State::Preamble,
            proto: Connection::Closed,
            dec: Decoder::new(),
            out: first_out,
            out_pos: 0,
            ctrl: Vec::new(),
            uploads: VecDeque::new(),
            parked: None,
            closing: false,
            closing_since: None,
            pong_queued: false,
            dead: false,
            readers,
            close_reason: None,
            last_rx: Instant::now(),
            last_ping: Instant::now(),
            last_drain: Instant::now(),
            blocked: false,
            opened: Instant::now(),
            drain_wanted: false,
        }
    }

    /// Queues a control message (ahead of any file data not yet in `out`).
    fn send(&mut self, msg: &Message) {
        self.proto.sent(msg);
        encode_into(msg, &mut self.ctrl);
    }

    /// Bytes still to go out: our plaintext, plus (as 1) whatever TLS records wait in rustls.
    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
            + self.ctrl.len()
            + usize::from(self.tls.as_ref().is_some_and(|t| t.wants_write()))
    }

    /// Once `out` is written: the queued control frames, or else the next chunk of the upload
    /// under way. Returns whether `out` has something to write.
    fn refill(&mut self) -> bool {
        if self.out_pos < self.out.len() {
            return true;
        }
        self.out.clear();
        // A whole index may have passed through: an idle connection keeps a small buffer.
        self.out.shrink_to(KEEP_OUT);
        self.out_pos = 0;
        if !self.ctrl.is_empty() {
            std::mem::swap(&mut self.out, &mut self.ctrl);
            self.pong_queued = false;
            return true;
        }
        let msg = self.uploads.front_mut().and_then(|u| u.ready.pop_front());
        if let Some(u) = self.uploads.front()
            && u.read_all
            && u.ready.is_empty()
        {
            self.uploads.pop_front();
        }
        self.read_ahead();
        let Some(msg) = msg else { return false };
        self.proto.sent(&msg); // a DataEnd or DataAbort answers the request
        encode_into(&msg, &mut self.out);
        true
    }

    /// Asks the readers for the next chunk of the upload under way, unless one is being read
    /// or enough wait.
    fn read_ahead(&mut self) {
        let Some(u) = self.uploads.front_mut() else { return };
        if u.ready.len() >= READ_AHEAD_CHUNKS {
            return;
        }
        if let Some(src) = u.src.take()
            && let Err(job) = self.readers.read(Job { conn: self.id, id: u.id, src })
        {
            // The queue is full (it has room for every connection's one read): next turn.
            u.src = Some(job.src);
        }
    }

    /// A reader read a chunk of one of our uploads.
    fn chunk_read(&mut self, chunk: Chunk) {
        let Some(u) = self.uploads.iter_mut().find(|u| u.id == chunk.id && u.src.is_none() && !u.read_all) else {
            return; // the upload was dropped meanwhile (the connection is closing)
        };
        u.ready.push_back(chunk.msg);
        u.read_all = chunk.src.is_none();
        u.src = chunk.src;
        self.read_ahead();
    }

    /// A write attempt took `n` bytes (0: the socket pushed back).
    fn wrote(&mut self, n: usize) {
        if n == 0 {
            self.blocked = true;
        } else if std::mem::take(&mut self.blocked) {
            self.last_drain = Instant::now();
        }
    }

    /// The identity the peer proved, once the TLS handshake is done.
    fn peer_id(&self) -> String {
        self.tls.as_deref().and_then(crate::tls::peer_id).map(|id| format!(", ID {id}")).unwrap_or_default()
    }

    /// Closes after flushing what is queued (a goodbye, usually).
    fn fail(&mut self, reason: String) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
        self.closing = true;
        self.closing_since.get_or_insert_with(Instant::now);
    }

    /// The connection is unusable: close without flushing.
    fn lost(&mut self, reason: String) {
        self.fail(format!("connection lost: {reason}"));
        self.dead = true;
    }
}

pub struct Net {
    poll: Poll,
    rx: Receiver<ToNet>,
    stop: Arc<AtomicBool>,
    role: Role,
    conns: HashMap<ConnId, Conn>,
    next_conn: usize,
    /// Disconnect notices an engine could not take yet.
    notices: VecDeque<(Sender<ToEngine>, ToEngine)>,
    reconnect_at: Option<Instant>,
    /// A dialer is connecting to the server (a client's loop only).
    dialing: bool,
    backoff: Duration,
    /// Set when a client's server refused it for good; the loop ends with this error.
    fatal: Option<NetError>,
    root_canon: Option<PathBuf>,
    parked_flag: Arc<AtomicBool>,
    /// TLS configuration; `None` for `--insecure`.
    tls: Option<crate::tls::Tls>,
    status: Option<Status>,
    /// How the opener threads hand their results to this loop.
    handle: NetHandle,
    /// Where uploads are read.
    readers: Readers,
    /// The opener threads still running (one per `Hello` being served).
    openers: Vec<std::thread::JoinHandle<()>>,
}

impl Net {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        poll: Poll,
        rx: Receiver<ToNet>,
        handle: NetHandle,
        parked_flag: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        mut role: Role,
        tls: Option<crate::tls::Tls>,
        status: Option<Status>,
    ) -> io::Result<Self> {
        // Every connection and every file being sent is a descriptor: take what the system
        // allows (the soft limit is often 1,024; on macOS 256).
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => log::debug!("descriptor limit {n}"),
            Err(e) => log::warn!("cannot raise the descriptor limit: {e}"),
        }
        let mut root_canon = None;
        if let Role::Server { listener, root, .. } = &mut role {
            poll.registry().register(listener, LISTENER, Interest::READABLE)?;
            root_canon = Some(root.canonicalize()?);
        }
        let reconnect_at = matches!(role, Role::Client { .. }).then(Instant::now);
        let readers = Readers::new(handle.clone(), MAX_CONNS);
        Ok(Self {
            poll,
            rx,
            stop,
            role,
            conns: HashMap::new(),
            next_conn: FIRST_CONN,
            notices: VecDeque::new(),
            reconnect_at,
            backoff: Duration::from_millis(200),
            fatal: None,
            root_canon,
            parked_flag,
            tls,
            status,
            handle,
            readers,
            openers: Vec::new(),
            dialing: false,
        })
    }

    /// Tells `status` how the connection(s) stand.
    fn report(&self, state: Option<PairState>, error: Option<&str>) {
        let Some(s) = &self.status else { return };
        let peers = self.conns.values().filter(|c| matches!(c.state, State::Open(_))).count() as u64;
        s.update(|r| {
            r.peers = peers;
            if let Some(st) = state {
                r.state = st;
            }
            if let Some(e) = error {
                r.last_error = Some(e.to_string());
            }
        });
    }

    /// Runs until the stop flag is set (or a client is refused for good).
    pub fn run(mut self) -> Result<(), NetError> {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::SeqCst) {
            // A parked message is retried when its engine signals room (NetHandle::made_room);
            // the timeout is only a safety net.
            let busy = !self.notices.is_empty() || self.conns.values().any(|c| c.parked.is_some());
            let mut timeout = if busy { Some(Duration::from_millis(20)) } else { None };
            if !self.conns.is_empty() {
                // Heartbeats need a look at every connection now and then.
                timeout = Some(timeout.map_or(PING_INTERVAL / 2, |t| t.min(PING_INTERVAL / 2)));
            }
            if let Some(at) = self.reconnect_at {
                let d = at.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetError::Poll(e));
            }
            // Every connection is serviced on every turn (reads and writes stop at WouldBlock),
            // so readiness only needs to wake the loop; the listener is the one token we act on.
            if events.iter().any(|ev| ev.token() == LISTENER) {
                self.accept();
            }
            self.drain_engines();
            self.deliver_notices();
            if self.reconnect_at.is_some_and(|at| at <= Instant::now()) {
                self.reconnect_at = None;
                self.connect();
            }
            let ids: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ids {
                self.service(id);
            }
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
        }
        for (_, mut c) in std::mem::take(&mut self.conns) {
            c.send(&Message::Goodbye { reason: "agent shutting down".into() });
            if let Some(t) = &mut c.tls {
                t.send_close_notify();
            }
            // Best effort: the socket is non-blocking and the peer may be gone.
            flush(&mut c);
        }
        // An engine an opener starts now is stopped by whoever owns the engines, after this.
        for t in self.openers.drain(..) {
            let _ = t.join();
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let Role::Server { listener, .. } = &mut self.role else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    let handshaking = self.conns.values().filter(|c| !matches!(c.state, State::Open(_)));
                    let (mut from_here, mut all) = (0, 0);
                    for c in handshaking {
                        all += 1;
                        from_here += usize::from(c.addr == Some(addr.ip()));
                    }
                    if self.conns.len() >= MAX_CONNS || all >= MAX_HANDSHAKING || from_here >= MAX_HANDSHAKING_PER_ADDR
                    {
                        log::warn!(
                            "refusing a connection from {addr}: {} open, {all} in their handshake ({from_here} from \
                             there); limits {MAX_CONNS}, {MAX_HANDSHAKING}, {MAX_HANDSHAKING_PER_ADDR}",
                            self.conns.len()
                        );
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let tls = match self.tls.as_ref().map(crate::tls::Tls::accept).transpose() {
                        Ok(t) => t.map(Box::new),
                        Err(e) => {
                            log::error!("cannot start TLS with {addr}: {e}");
                            continue;
                        }
                    };
                    if let Some(id) = self.add_conn(stream, tls, addr.to_string(), Preamble::ours().encode().to_vec())
                        && let Some(c) = self.conns.get_mut(&id)
                    {
                        c.addr = Some(addr.ip());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        tls: Option<Box<rustls::Connection>>,
        peer: String,
        first_out: Vec<u8>,
    ) -> Option<ConnId> {
        let id = self.next_conn;
        self.next_conn += 1;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE) {
            log::warn!("cannot register connection from {peer}: {e}");
            return None;
        }
        log::debug!("connection {id} with {peer}");
        let conn = Conn::new(id as ConnId, stream, tls, peer, first_out, self.readers.clone());
        self.conns.insert(id as ConnId, conn);
        Some(id as ConnId)
    }

    /// Client only: (re)connects to the server and sends the preamble and hello.
    /// Dials the server on a thread of its own: resolving its name and the TCP handshake can
    /// take seconds (a resolver that does not answer, a server whose packets are dropped), and
    /// this thread goes on meanwhile (a stop is seen at once). The answer comes back as
    /// [`ToNet::Dialed`]. The dialer is not joined: once the loop is gone it ends with its
    /// connect timeout.
    fn connect(&mut self) {
        let Role::Client { addr, .. } = &self.role else { return };
        if self.dialing {
            return;
        }
        let (addr, net) = (addr.clone(), self.handle.clone());
        let dialer = std::thread::Builder::new().name("dial".into()).spawn(move || {
            let result = resolve(&addr).and_then(|sa| std::net::TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT));
            net.send(ToNet::Dialed { result });
        });
        match dialer {
            Ok(_) => self.dialing = true,
            Err(e) => {
                log::error!("cannot start a thread to connect: {e}");
                self.schedule_reconnect();
            }
        }
    }

    /// The dialer's answer.
    fn dialed(&mut self, result: io::Result<std::net::TcpStream>) {
        self.dialing = false;
        let Role::Client { addr, hello, .. } = &self.role else { return };
        let (addr, hello) = (addr.clone(), hello.clone());
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        match result {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                if s.set_nonblocking(true).is_err() {
                    self.schedule_reconnect();
                    return;
                }
                let mut first = Preamble::ours().encode().to_vec();
                encode_into(&Message::Hello(hello), &mut first);
                let tls = match self.tls.as_ref().map(|t| t.connect_to(&addr)).transpose() {
                    Ok(t) => t.map(Box::new),
                    Err(e) => {
                        log::error!("cannot start TLS: {e}");
                        self.schedule_reconnect();
                        return;
                    }
                };
                if self.add_conn(TcpStream::from_std(s), tls, addr.clone(), first).is_none() {
                    self.schedule_reconnect();
                }
            }
            Err(e) => {
                log::warn!("cannot connect to {addr}: {e}; retrying in {:.1}s", self.backoff.as_secs_f32());
                self.report(Some(PairState::Reconnecting), Some(&format!("cannot connect to {addr}: {e}")));
                self.schedule_reconnect();
            }
        }
    }

    /// Capped exponential backoff with jitter (0.5x to 1.5x), so that many clients of a server
    /// that just came back do not all knock at the same instant.
    fn schedule_reconnect(&mut self) {
        let mut r = [0u8; 2];
        let jitter = if getrandom::fill(&mut r).is_ok() { f64::from(u16::from_le_bytes(r)) / 65535.0 } else { 0.5 };
        self.reconnect_at = Some(Instant::now() + self.backoff.mul_f64(0.5 + jitter));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn drain_engines(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                ToNet::Send { conn, msg } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.send(&msg);
                    }
                }
                ToNet::Dialed { result } => self.dialed(result),
                ToNet::WhenDrained { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.drain_wanted = true;
                    }
                }
                ToNet::Upload { conn, id, file, size, base } => {
                    // At most one per request the session let in: MAX_REQUESTS_IN_FLIGHT.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        let src = Some(Source::new(file, size, base.as_deref()));
                        c.uploads.push_back(Upload { id, src, ready: VecDeque::new(), read_all: false });
                        c.read_ahead();
                    }
                }
                ToNet::Chunk(chunk) => {
                    if let Some(c) = self.conns.get_mut(&chunk.conn) {
                        c.chunk_read(chunk);
                    }
                }
                ToNet::Close { conn, reason } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.send(&Message::Goodbye { reason: reason.clone() });
                        c.fail(reason);
                    }
                }
                ToNet::Opened { conn, hello, result } => {
                    // The connection may have closed meanwhile: the engine stays for the next.
                    if let Some(mut c) = self.conns.remove(&conn) {
                        self.on_opened(conn, &mut c, hello, result);
                        self.conns.insert(conn, c);
                    }
                }
            }
        }
    }

    fn deliver_notices(&mut self) {
        for _ in 0..self.notices.len() {
            let Some((tx, m)) = self.notices.pop_front() else { break };
            if let Err(Offer::Full(m)) = offer(&tx, m, &self.parked_flag) {
                self.notices.push_back((tx, m));
            }
        }
    }

    /// Reads, decodes, dispatches, uploads and writes for one connection.
    fn service(&mut self, id: ConnId) {
        let Some(mut c) = self.conns.remove(&id) else { return };
        // Deliver what was parked before reading more.
        if let (Some(m), State::Open(tx)) = (c.parked.take(), &c.state) {
            match offer(tx, m, &self.parked_flag) {
                Ok(()) => {}
                Err(Offer::Full(m)) => c.parked = Some(m),
                Err(Offer::Gone) => c.lost("the sync engine stopped".into()),
            }
        }
        // Edge-triggered: read until the kernel buffer is empty, or no readable event would ever
        // come back for what is left in it. Only engine back-pressure (a parked message) stops
        // this early, and the engine's wake-up resumes it.
        while c.parked.is_none() && !c.closing && !matches!(c.state, State::Opening) {
            let drained = self.read(&mut c);
            self.dispatch(id, &mut c);
            if drained {
                break;
            }
        }
        // Heartbeat: a ping every PING_INTERVAL, so the peer hears us even while it is the one
        // sending (its own pings may be queued behind its data, in the network); a connection
        // on which nothing moved either way for DEAD_AFTER is dead. One we stopped reading (its
        // engine is busy) still pings, and is not judged: that is not the peer's fault.
        if !c.closing && matches!(c.state, State::Open(_)) {
            let quiet = c.last_rx.elapsed().min(c.last_drain.elapsed());
            if c.parked.is_none() && quiet >= DEAD_AFTER {
                log::warn!(
                    "{}: nothing heard for {}s, and nothing we sent moved; the connection is dead",
                    c.peer,
                    quiet.as_secs()
                );
                c.lost(format!("no heartbeat for {}s", quiet.as_secs()));
            } else if c.last_ping.elapsed() >= PING_INTERVAL {
                c.send(&Message::Ping);
                c.last_ping = Instant::now();
            }
        } else if c.closing
            && !c.dead
            && c.closing_since.is_some_and(|t| t.elapsed() >= DEAD_AFTER)
            && c.last_drain.elapsed() >= DEAD_AFTER
        {
            // Its goodbye never leaves (the peer stopped reading, or the link is gone): close.
            c.lost("closing: nothing moved".into());
        } else if !c.closing && !matches!(c.state, State::Open(_)) && c.opened.elapsed() >= HANDSHAKE_DEADLINE {
            log::warn!("{}: no complete handshake within {}s; closing", c.peer, HANDSHAKE_DEADLINE.as_secs());
            c.lost("handshake timed out".into());
        }
        // A connection on its way out sends what is queued (a goodbye), not more file data.
        if c.closing {
            c.uploads.clear();
        }
        if !c.closing && c.pending_out() > OUT_LIMIT {
            log::error!("{}: more than {} MiB wait to be sent; it does not read; closing", c.peer, OUT_LIMIT >> 20);
            c.lost("the peer does not read what we send".into());
        }
        // Edge-triggered: write until the socket pushes back or nothing is left, or no event
        // would ever come back to continue an upload.
        flush(&mut c);
        if c.drain_wanted
            && !c.closing
            && c.pending_out() <= DRAIN_MARK
            && let State::Open(tx) = &c.state
        {
            c.drain_wanted = false;
            if let Err(Offer::Full(m)) = offer(tx, ToEngine::Drained { conn: id }, &self.parked_flag) {
                self.notices.push_back((tx.clone(), m));
            }
        }
        if c.dead || (c.closing && c.pending_out() == 0) {
            self.close(id, c);
        } else {
            self.conns.insert(id, c);
        }
    }

    /// Reads into the decoder up to its high-water mark. Returns whether the socket has nothing
    /// more to give for now (drained, closed or failed), as opposed to stopping at the mark.
    fn read(&mut self, c: &mut Conn) -> bool {
        if c.tls.is_some() {
            return self.read_tls(c);
        }
        let mut buf = [0u8; 64 * 1024];
        while c.dec.buffered() < read_ahead(&c.dec) {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.lost("peer closed the connection".into());
                    return true;
                }
                Ok(n) => {
                    c.dec.extend(&buf[..n]);
                    c.last_rx = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.lost(e.to_string());
                    return true;
                }
            }
        }
        false
    }

    /// [`read`](Self::read) through TLS: records in, plaintext out into the decoder.
    fn read_tls(&mut self, c: &mut Conn) -> bool {
        let mut buf = [0u8; 64 * 1024];
        let Some(tls) = c.tls.as_deref_mut() else { return true };
        loop {
            if c.dec.buffered() >= read_ahead(&c.dec) {
                return false;
            }
            match tls.reader().read(&mut buf) {
                Ok(0) => {
                    c.lost("peer closed the TLS session".into());
                    return true;
                }
                Ok(n) => {
                    c.dec.extend(&buf[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    c.lost(format!("TLS: {e}"));
                    return true;
                }
            }
            match tls.read_tls(&mut c.stream) {
                Ok(0) => {
                    c.lost("peer closed the connection".into());
                    return true;
                }
                Ok(_) => {
                    c.last_rx = Instant::now();
                    if let Err(e) = tls.process_new_packets() {
                        let me = self.tls.as_ref().map(|t| t.me.clone());
                        let msg = me.map_or_else(|| e.to_string(), |me| crate::tls::explain(&e, &me));
                        log::error!("{}: {msg}", c.peer);
                        // Send rustls's alert, so the peer learns why.
                        let _ = tls.write_tls(&mut c.stream);
                        c.lost(msg);
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.lost(e.to_string());
                    return true;
                }
            }
        }
    }

    /// Decodes what `c` received and acts on it, until it needs more bytes, a message waits
    /// for the engine, or the connection fails.
    fn dispatch(&mut self, id: ConnId, c: &mut Conn) {
        loop {
            // What a client sent right after its `Hello` waits, decoded or not, for its engine.
            if c.parked.is_some() || matches!(c.state, State::Opening) {
                return;
            }
            if let State::Preamble = c.state {
                if self.on_preamble(c) {
                    continue;
                }
                return;
            }
            let msg = match c.dec.decode() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    log::error!("{}: {e}; closing the connection", c.peer);
                    c.send(&Message::Goodbye { reason: e.to_string() });
                    c.fail(format!("protocol error: {e}"));
                    return;
                }
            };
            let event = match std::mem::replace(&mut c.proto, Connection::Closed).receive(msg) {
                Ok((next, event)) => {
                    c.proto = next;
                    event
                }
                Err(v) => {
                    violated(c, v);
                    return;
                }
            };
            if !self.on_event(id, c, event) {
                return;
            }
        }
    }

    /// The preamble, once it is all in: the handshake follows (true), or the connection fails.
    fn on_preamble(&mut self, c: &mut Conn) -> bool {
        match Preamble::decode(c.dec.peek()) {
            Ok(None) => false,
            Ok(Some(_)) => {
                c.dec.take_raw(PREAMBLE_LEN);
                let side = if matches!(self.role, Role::Server { .. }) { Side::Server } else { Side::Client };
                c.proto = Connection::new(side);
                c.state = State::Handshake;
                true
            }
            Err(err) => {
                let e = crate::tls::plaintext_met_tls(c.dec.peek(), self.tls.is_none()).unwrap_or(err.to_string());
                log::error!("{}: {e}", c.peer);
                if matches!(self.role, Role::Client { .. }) {
                    self.fatal = Some(NetError::Preamble { peer: c.peer.clone(), reason: e.clone() });
                } else if matches!(err, mirror_protocol::PreambleError::VersionMismatch { .. }) {
                    // PROTOCOL.md, "Version mismatch": say why before closing.
                    c.send(&Message::Goodbye { reason: e.clone() });
                    c.fail(e);
                    return false;
                }
                c.lost(e);
                false
            }
        }
    }

    /// What the session rules made of a message: whether to go on decoding.
    fn on_event(&mut self, id: ConnId, c: &mut Conn, event: Event) -> bool {
        match event {
            Event::Ping => {
                if !std::mem::replace(&mut c.pong_queued, true) {
                    c.send(&Message::Pong);
                }
            }
            Event::Nothing => {}
            Event::Hello(h) => self.on_hello(id, c, h),
            Event::Welcome(w) => self.on_welcome(id, c, w),
            Event::Refused { reason } => {
                let reason = crate::logsafe::clean(&reason);
                log::error!("{} refused us: {reason}", c.peer);
                if matches!(self.role, Role::Client { .. }) {
                    self.fatal = Some(NetError::Refused { peer: c.peer.clone(), reason: reason.clone() });
                }
                c.lost(format!("refused: {reason}"));
                return false;
            }
            Event::Session(msg) => {
                // The session is open exactly when the handshake routed it to an engine.
                let State::Open(tx) = &c.state else { return true };
                if let Message::Goodbye { reason } = &msg {
                    log::info!("{} closed the connection: {}", c.peer, crate::logsafe::shown(reason));
                }
                match offer(tx, ToEngine::Message { conn: id, msg }, &self.parked_flag) {
                    Ok(()) => {}
                    Err(Offer::Full(m)) => {
                        c.parked = Some(m);
                        return false;
                    }
                    Err(Offer::Gone) => {
                        c.lost("the sync engine stopped".into());
                        return false;
                    }
                }
            }
        }
        true
    }

    /// A client's `Hello`: an opener thread finds its directory's engine (or says why not), and
    /// the connection waits in [`State::Opening`] for the answer ([`Net::on_opened`]).
    fn on_hello(&mut self, id: ConnId, c: &mut Conn, h: Hello) {
        let h = Hello { host: crate::logsafe::clean(&h.host), ..h };
        let Role::Server { engines, .. } = &self.role else { return };
        let Some(root) = self.root_canon.clone() else { return };
        let (engines, handle) = (engines.clone(), self.handle.clone());
        self.openers.retain(|t| !t.is_finished());
        let opener = std::thread::Builder::new().name("opener".into()).spawn(move || {
            let result = engines(&root, &h);
            handle.send(ToNet::Opened { conn: id, hello: h, result });
        });
        match opener {
            Ok(t) => {
                self.openers.push(t);
                c.state = State::Opening;
            }
            Err(e) => {
                let reason = format!("cannot serve the connection now: {e}");
                log::error!("{}: {reason}", c.peer);
                c.send(&Message::Goodbye { reason: reason.clone() });
                c.fail(reason);
            }
        }
    }

    /// The opener's answer to a `Hello`: welcome the client into its engine, or refuse it.
    fn on_opened(&mut self, id: ConnId, c: &mut Conn, h: Hello, result: Opened) {
        if !matches!(c.state, State::Opening) || c.closing {
            return;
        }
        match result {
            Ok(Served { engine: tx, replica, dir }) => {
                c.send(&Message::Welcome(Welcome { replica, host: crate::hostname() }));
                log::info!("{} ({}{}) syncs {}", h.host, c.peer, c.peer_id(), dir.display());
                let hello = ToEngine::Connected { conn: id, peer_host: h.host, peer_replica: h.replica };
                match offer(&tx, hello, &self.parked_flag) {
                    Ok(()) => {}
                    Err(Offer::Full(m)) => c.parked = Some(m),
                    Err(Offer::Gone) => c.fail("the sync engine stopped".into()),
                }
                c.state = State::Open(tx);
                if let Some(s) = &self.status {
                    s.update(|r| r.peers += 1);
                }
            }
            Err(Refusal { log, told }) => {
                log::error!("{} ({}): {log}", c.peer, h.host);
                c.send(&Message::Goodbye { reason: told });
                c.fail(log);
            }
        }
    }

    fn on_welcome(&mut self, id: ConnId, c: &mut Conn, w: Welcome) {
        let w = Welcome { host: crate::logsafe::clean(&w.host), ..w };
        let Role::Client { engine, .. } = &self.role else { return };
        log::info!("connected to {} ({}{})", w.host, c.peer, c.peer_id());
        self.backoff = Duration::from_millis(200);
        c.state = State::Open(engine.clone());
        if let Some(s) = &self.status {
            s.update(|r| {
                r.state = PairState::Connected;
                r.peers = 1;
            });
        }
        match offer(
            engine,
            ToEngine::Connected { conn: id, peer_host: w.host, peer_replica: w.replica },
            &self.parked_flag,
        ) {
            Ok(()) => {}
            Err(Offer::Full(m)) => c.parked = Some(m),
            Err(Offer::Gone) => c.fail("the sync engine stopped".into()),
        }
    }

    fn close(&mut self, id: ConnId, mut c: Conn) {
        let _ = self.poll.registry().deregister(&mut c.stream);
        let reason = c.close_reason.take().unwrap_or_else(|| "closed".into());
        log::debug!("connection {id} with {} closed: {reason}", c.peer);
        let was_open = matches!(c.state, State::Open(_));
        if matches!(self.role, Role::Client { .. }) {
            self.report(Some(PairState::Reconnecting), was_open.then_some(reason.as_str()));
        } else {
            self.report(None, None);
        }
        if let State::Open(tx) = &c.state {
            let notice = ToEngine::Disconnected { conn: id, reason };
            if let Err(Offer::Full(m)) = offer(tx, notice, &self.parked_flag) {
                self.notices.push_back((tx.clone(), m));
            }
        }
        if matches!(self.role, Role::Client { .. }) && self.fatal.is_none() && self.reconnect_at.is_none() {
            self.schedule_reconnect();
        }
    }
}

/// The peer broke a session rule: say which in a `Goodbye`, and close.
fn violated(c: &mut Conn, v: Violation) {
    let reason = v.to_string();
    log::error!("{}: {reason}; closing the connection", c.peer);
    c.send(&Message::Goodbye { reason: reason.clone() });
    c.fail(reason);
}

/// Hands `m` to an engine without blocking. When the channel is full, the parked flag is raised
/// *before* one last try, so an engine that drains in between either lets the retry through or
/// sees the flag and wakes us: no wake-up is lost.
fn offer(tx: &Sender<ToEngine>, m: ToEngine, parked: &AtomicBool) -> Result<(), Offer> {
    match tx.try_send(m) {
        Ok(()) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(Offer::Gone),
        Err(TrySendError::Full(m)) => {
            parked.store(true, Ordering::SeqCst);
            match tx.try_send(m) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(m)) => Err(Offer::Full(m)),
                Err(TrySendError::Disconnected(_)) => Err(Offer::Gone),
            }
        }
    }
}

enum Offer {
    Full(ToEngine),
    Gone,
}

/// Writes control frames first, then upload chunks, until the socket pushes back or nothing
/// is left.
fn flush(c: &mut Conn) {
    if c.tls.is_some() {
        return flush_tls(c);
    }
    while c.refill() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => {
                c.lost("write returned 0".into());
                return;
            }
            Ok(n) => {
                c.out_pos += n;
                c.wrote(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.wrote(0);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                c.lost(e.to_string());
                return;
            }
        }
    }
}

/// [`flush`] through TLS: plaintext into rustls (as much as its bounded buffer takes), records
/// out to the socket, until the socket pushes back or all is sent.
fn flush_tls(c: &mut Conn) {
    loop {
        let mut progress = false;
        // Into rustls while its bounded buffer takes it: control frames first (refill).
        while c.refill() {
            let Some(tls) = c.tls.as_deref_mut() else { return };
            match tls.writer().write(&c.out[c.out_pos..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    c.out_pos += n;
                    progress = true;
                }
            }
        }
        loop {
            let Some(tls) = c.tls.as_deref_mut() else { return };
            if !tls.wants_write() {
                break;
            }
            match tls.write_tls(&mut c.stream) {
                Ok(0) => {
                    c.lost("write returned 0".into());
                    return;
                }
                Ok(n) => {
                    c.wrote(n);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.wrote(0);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.lost(e.to_string());
                    return;
                }
            }
        }
        if !progress || c.pending_out() == 0 {
            return;
        }
    }
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}")))
}

#[cfg(test)]
mod tests;
