//! The network thread against real sockets on loopback, with stand-in engines: what must go on
//! while some other connection waits for the disk.

use super::*;
use crossbeam_channel::bounded;
use mio::Waker;
use std::net::TcpStream as StdStream;
use std::sync::Mutex;
use std::thread::JoinHandle;

/// How long a test waits for what must happen (what must not happen shows as this expiring).
const DEADLINE: Duration = Duration::from_secs(10);

/// A server's network thread on an ephemeral loopback port, without TLS.
struct Server {
    addr: SocketAddr,
    handle: NetHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), super::NetError>>>,
}

impl Server {
    fn start(engines: EngineFactory) -> Self {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let (tx, rx) = bounded(1024);
        let parked = Arc::new(AtomicBool::new(false));
        let handle = NetHandle { tx, waker, parked: parked.clone() };
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let root = std::env::temp_dir();
        let stop = Arc::new(AtomicBool::new(false));
        let role = Role::Server { listener, root, engines };
        let net = Net::new(poll, rx, handle.clone(), parked, stop.clone(), role, None, None).unwrap();
        let thread = Some(std::thread::spawn(move || net.run()));
        Server { addr, handle, stop, thread }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client speaking the protocol by hand.
struct Peer {
    stream: StdStream,
    dec: Decoder,
    preamble: bool,
}

impl Peer {
    fn connect(addr: SocketAddr, remote: &str) -> Self {
        let stream = StdStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut p = Peer { stream, dec: Decoder::new(), preamble: false };
        let mut first = Preamble::ours().encode().to_vec();
        let hello = Hello {
            replica: 7,
            host: format!("test-{remote}"),
            remote: remote.as_bytes().to_vec(),
            includes: vec![],
            excludes: vec![],
        };
        encode_into(&Message::Hello(hello), &mut first);
        p.stream.write_all(&first).unwrap();
        p
    }

    fn send(&mut self, msg: &Message) {
        let mut buf = Vec::new();
        encode_into(msg, &mut buf);
        self.stream.write_all(&buf).unwrap();
    }

    /// The next message the server sent, if one came within `wait`.
    fn recv(&mut self, wait: Duration) -> Option<Message> {
        let end = Instant::now() + wait;
        loop {
            if !self.preamble && self.dec.buffered() >= PREAMBLE_LEN {
                self.dec.take_raw(PREAMBLE_LEN);
                self.preamble = true;
            }
            if self.preamble
                && let Some(m) = self.dec.decode().unwrap()
            {
                return Some(m);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next message that is not a heartbeat.
    fn recv_session(&mut self, wait: Duration) -> Option<Message> {
        let end = Instant::now() + wait;
        loop {
            match self.recv(end.saturating_duration_since(Instant::now()))? {
                Message::Ping | Message::Pong => {}
                m => return Some(m),
            }
        }
    }
}

/// Engines for the tests: a directory named `slow` takes until the test releases it to open;
/// every other opens at once, into a channel the test reads.
struct Engines {
    entered: crossbeam_channel::Receiver<()>,
    release: Sender<()>,
    connected: crossbeam_channel::Receiver<ToEngine>,
    factory: EngineFactory,
}

fn engines() -> Engines {
    let (entered_tx, entered) = bounded(8);
    let (release, release_rx) = bounded::<()>(8);
    let (engine_tx, connected) = bounded(64);
    let release_rx = Mutex::new(release_rx);
    let factory: EngineFactory = Arc::new(move |root: &std::path::Path, h: &Hello| {
        let dir = root.join(String::from_utf8_lossy(&h.remote).into_owned());
        if h.remote == b"slow" {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv_timeout(DEADLINE * 3);
        }
        Ok(Served { engine: engine_tx.clone(), replica: 42, dir })
    });
    Engines { entered, release, connected, factory }
}

#[test]
fn a_directory_slow_to_open_holds_up_no_other_client() {
    let e = engines();
    let server = Server::start(e.factory.clone());
    let mut slow = Peer::connect(server.addr, "slow");
    e.entered.recv_timeout(DEADLINE).expect("the slow directory's opener never started");
    // While it opens, another client is welcomed and its engine hears of it.
    let mut fast = Peer::connect(server.addr, "fast");
    match fast.recv_session(DEADLINE) {
        Some(Message::Welcome(w)) => assert_eq!(w.replica, 42),
        other => panic!("the second client was not welcomed while the first directory opened: {other:?}"),
    }
    match e.connected.recv_timeout(DEADLINE) {
        Ok(ToEngine::Connected { peer_host, .. }) => assert_eq!(peer_host, "test-fast"),
        other => panic!("the engine did not hear of the second client: {other:?}"),
    }
    // Its session works: a ping is answered.
    fast.send(&Message::Ping);
    assert!(matches!(fast.recv(DEADLINE), Some(Message::Pong)), "the second client's ping went unanswered");
    // The first is still waiting, and is welcomed once its directory is open.
    assert_eq!(slow.recv_session(Duration::from_millis(200)), None, "welcomed before its directory was open");
    e.release.send(()).unwrap();
    assert!(matches!(slow.recv_session(DEADLINE), Some(Message::Welcome(_))), "the first client was never welcomed");
    match e.connected.recv_timeout(DEADLINE) {
        Ok(ToEngine::Connected { peer_host, .. }) => assert_eq!(peer_host, "test-slow"),
        other => panic!("the engine did not hear of the first client: {other:?}"),
    }
}

#[test]
fn a_refused_directory_is_told_why_in_a_goodbye() {
    let factory: EngineFactory = Arc::new(|_: &std::path::Path, _: &Hello| {
        Err(Refusal { log: "cannot sync x: it is on fire".into(), told: "the directory is on fire".into() })
    });
    let server = Server::start(factory);
    let mut p = Peer::connect(server.addr, "x");
    match p.recv_session(DEADLINE) {
        Some(Message::Goodbye { reason }) => assert_eq!(reason, "the directory is on fire"),
        other => panic!("expected a goodbye with the refusal, got {other:?}"),
    }
    assert_eq!(p.recv(DEADLINE), None, "the connection stayed open after the refusal");
}

#[test]
fn what_a_client_sends_before_its_welcome_reaches_its_engine() {
    let e = engines();
    let server = Server::start(e.factory.clone());
    let mut slow = Peer::connect(server.addr, "slow");
    // Sent at once behind the hello, in the same segment: it must wait for the engine, not be
    // dropped while the directory opens.
    slow.send(&Message::IndexFrom { since: 0 });
    e.entered.recv_timeout(DEADLINE).expect("the opener never started");
    e.release.send(()).unwrap();
    assert!(matches!(slow.recv_session(DEADLINE), Some(Message::Welcome(_))));
    assert!(matches!(e.connected.recv_timeout(DEADLINE), Ok(ToEngine::Connected { .. })));
    match e.connected.recv_timeout(DEADLINE) {
        Ok(ToEngine::Message { msg: Message::IndexFrom { since: 0 }, .. }) => {}
        other => panic!("the message sent behind the hello was lost: {other:?}"),
    }
}

/// The peer's connection and the id the engine knows it by, once welcomed.
fn welcomed(e: &Engines, server: &Server, remote: &str) -> (Peer, ConnId) {
    let mut p = Peer::connect(server.addr, remote);
    assert!(matches!(p.recv_session(DEADLINE), Some(Message::Welcome(_))), "not welcomed");
    match e.connected.recv_timeout(DEADLINE) {
        Ok(ToEngine::Connected { conn, .. }) => (p, conn),
        other => panic!("the engine did not hear of the client: {other:?}"),
    }
}

#[test]
fn a_file_slow_to_read_holds_up_neither_its_connection_nor_others() {
    let e = engines();
    let server = Server::start(e.factory.clone());
    let (mut a, conn) = welcomed(&e, &server, "a");
    let (mut b, _) = welcomed(&e, &server, "b");
    let path = mirror_protocol::RelPath::new("slow.bin").unwrap();
    let hash = *blake3::hash(b"hello").as_bytes();
    a.send(&Message::Request { id: 1, path, size: 5, hash, base: None });
    assert!(matches!(e.connected.recv_timeout(DEADLINE), Ok(ToEngine::Message { msg: Message::Request { .. }, .. })));
    // A file whose reads block (a pipe with nothing in it yet: a hung mount, a drive spinning
    // up) is what the engine hands over to send.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
    server.handle.send(ToNet::Upload { conn, id: 1, file, size: 5, base: None });
    // Both connections still answer while the read waits.
    for p in [&mut a, &mut b] {
        p.send(&Message::Ping);
        assert!(matches!(p.recv(DEADLINE), Some(Message::Pong)), "a ping went unanswered while a file was read");
    }
    writer.write_all(b"hello").unwrap();
    drop(writer);
    match a.recv_session(DEADLINE) {
        Some(Message::Data { id: 1, bytes }) => assert_eq!(bytes, b"hello"),
        other => panic!("expected the file's data, got {other:?}"),
    }
    match a.recv_session(DEADLINE) {
        Some(Message::DataEnd { id: 1, size: 5, hash: h }) => assert_eq!(h, hash),
        other => panic!("expected the end of the file, got {other:?}"),
    }
}

#[test]
fn a_large_file_arrives_whole_and_in_order_behind_pings() {
    let e = engines();
    let server = Server::start(e.factory.clone());
    let (mut a, conn) = welcomed(&e, &server, "a");
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let hash = *blake3::hash(&bytes).as_bytes();
    let path = mirror_protocol::RelPath::new("big.bin").unwrap();
    a.send(&Message::Request { id: 9, path, size: bytes.len() as u64, hash, base: None });
    assert!(matches!(e.connected.recv_timeout(DEADLINE), Ok(ToEngine::Message { .. })));
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&bytes).unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    server.handle.send(ToNet::Upload { conn, id: 9, file: f, size: bytes.len() as u64, base: None });
    let mut got = Vec::new();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "the file did not arrive in time ({} of {} bytes)", got.len(), bytes.len());
        if got.len() % (UPLOAD_CHUNK * 8) == 0 {
            a.send(&Message::Ping);
        }
        match a.recv_session(DEADLINE) {
            Some(Message::Data { id: 9, bytes }) => got.extend(bytes),
            Some(Message::DataEnd { id: 9, size, hash: h }) => {
                assert_eq!((size, h), (bytes.len() as u64, hash));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == bytes, "the file arrived changed");
}

/// An engine that sends its index a burst at a time hears the connection drained only once the
/// peer took what was sent: a peer that does not read holds a burst or two here, not the index.
#[test]
fn a_drain_is_told_once_the_peer_took_what_was_sent() {
    use mirror_protocol::{Entry, Kind, Timestamp, VersionVector};
    let e = engines();
    let server = Server::start(e.factory.clone());
    let (mut a, conn) = welcomed(&e, &server, "a");
    let entry = |i: usize| Entry {
        path: mirror_protocol::RelPath::new(format!("dir/file-{i:08}")).unwrap(),
        kind: Kind::File { size: 5, hash: [7; 32], mode: 0o644 },
        mtime: Timestamp { secs: 1_700_000_000, nanos: 5 },
        version: VersionVector::new().incremented(3),
        origin: "desk".into(),
    };
    // About 16 MiB: more than the socket buffers of both ends hold, so most of it waits here.
    let batches = 640;
    for b in 0..batches {
        let entries = (0..256).map(|i| entry(b * 256 + i)).collect();
        server.handle.send(ToNet::Send { conn, msg: Message::Update { entries, seq: 1 } });
    }
    server.handle.send(ToNet::WhenDrained { conn });
    // Not while it all waits (the peer reads nothing yet).
    match e.connected.recv_timeout(Duration::from_millis(500)) {
        Err(_) => {}
        Ok(m) => panic!("told before the peer read anything: {m:?}"),
    }
    // The peer reads: the engine hears of it before the last of it is read.
    let mut got = 0;
    let mut told_at = None;
    let end = Instant::now() + DEADLINE * 3;
    while got < batches {
        assert!(Instant::now() < end, "only {got} of {batches} batches arrived");
        if let Some(Message::Update { .. }) = a.recv_session(DEADLINE) {
            got += 1;
        }
        if told_at.is_none()
            && let Ok(m) = e.connected.try_recv()
        {
            assert!(matches!(m, ToEngine::Drained { conn: c } if c == conn), "unexpected {m:?}");
            told_at = Some(got);
        }
    }
    let told_at = told_at.unwrap_or_else(|| match e.connected.recv_timeout(DEADLINE) {
        Ok(ToEngine::Drained { conn: c }) if c == conn => batches,
        other => panic!("never told the connection drained: {other:?}"),
    });
    assert!(told_at > 0, "told before any of it was read");
    assert!(e.connected.recv_timeout(Duration::from_millis(200)).is_err(), "told more than once");
}

/// Whether the kernel has a connection of ours to `port` still in its TCP handshake (SYN sent,
/// nothing back).
fn syn_sent_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2].ends_with(&port) && f[3] == "02"
    })
}

/// A server that does not answer (its SYNs dropped: here a listener whose queue is full; on a
/// real network a host gone, a firewall, a resolver that does not reply) holds up neither the
/// client's loop nor its stop: connecting happens on a thread of its own.
#[test]
fn a_client_stops_at_once_while_its_server_does_not_answer() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill its queue with connections nobody accepts, until one does not get through.
    let mut held = Vec::new();
    while let Ok(s) = StdStream::connect_timeout(&addr, Duration::from_millis(300)) {
        held.push(s);
        assert!(held.len() < 64, "the listener's queue never filled");
    }
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
    let (tx, rx) = bounded(1024);
    let parked = Arc::new(AtomicBool::new(false));
    let handle = NetHandle { tx, waker, parked: parked.clone() };
    let (engine, _engine_rx) = bounded(64);
    let hello = Hello { replica: 7, host: "test".into(), remote: b"p".to_vec(), includes: vec![], excludes: vec![] };
    let role = Role::Client { addr: addr.to_string(), hello, engine };
    let stop = Arc::new(AtomicBool::new(false));
    let net = Net::new(poll, rx, handle.clone(), parked, stop.clone(), role, None, None).unwrap();
    let (done_tx, done) = bounded(1);
    let thread = std::thread::spawn(move || {
        let r = net.run();
        let _ = done_tx.send(());
        r
    });
    let end = Instant::now() + DEADLINE;
    while !syn_sent_to(addr.port()) {
        assert!(Instant::now() < end, "the client never tried to connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    handle.waker.wake().unwrap();
    // Well before the connect attempt itself would give up (CONNECT_TIMEOUT).
    assert!(done.recv_timeout(CONNECT_TIMEOUT / 2).is_ok(), "the stop waited for the connect attempt");
    assert!(thread.join().unwrap().is_ok());
}
