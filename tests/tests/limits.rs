//! One peer cannot take the server down (issue 11, item 14): everything a peer can make the
//! server hold is bounded, and past a bound that peer alone is refused while others sync on.
#![allow(clippy::unwrap_used)]

use mirror_protocol::{Entry, Kind, MAX_PATTERNS, Message, RelPath, Timestamp, VersionVector, encode};
use mirror_tests::peer::Peer;
use mirror_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A 3 MB `Hello` with 300,000 exclude patterns used to cost the server 2 GB that stayed after
/// the peer left, and stalled every other connection for seconds while matchers were built.
#[test]
fn a_hello_with_too_many_patterns_is_refused_with_the_reason() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let before = server.agent.peak_rss();
    let excludes: Vec<String> = (0..300_000).map(|i| format!("*.x{i}")).collect();
    let mut p = Peer::hello(server.port, 9, "p", vec![], excludes);
    let reason = p.expect("Goodbye", Duration::from_secs(10), |m| match m {
        Message::Goodbye { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("too many include/exclude patterns"), "{reason}");
    assert!(reason.contains(&MAX_PATTERNS.to_string()), "{reason}");
    let grew = server.agent.peak_rss().saturating_sub(before);
    assert!(grew < 256 * 1024 * 1024, "the server grew by {} MiB", grew >> 20);
    assert_still_serving(&server, &area, "a");
}

/// A peer that sends pings and never reads the pongs used to grow the server by what it sent
/// (600 MiB of pings, 638 MiB of server). Pings are answered one pong at a time now, however
/// many wait: 200 MiB of them cost the server nothing.
#[test]
fn a_peer_that_never_reads_is_held_to_a_bounded_output_buffer() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let mut p = Peer::connect(server.port, 9, "p");
    let pings: Vec<u8> = std::iter::repeat_n(encode(&Message::Ping), 1 << 16).flatten().collect();
    p.s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let (mut sent, end) = (0usize, Instant::now() + Duration::from_secs(20));
    while Instant::now() < end && sent < 200 << 20 {
        // Go on where the last write stopped: starting the buffer over would cut a frame.
        match p.s.write(&pings[sent % pings.len()..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("the server closed the connection: {e}"),
        }
    }
    assert!(sent >= 100 << 20, "only {} MiB of pings went out in 20 s", sent >> 20);
    let rss = server.agent.peak_rss();
    assert!(rss < 160 * 1024 * 1024, "the server grew to {} MiB for {} MiB of pings", rss >> 20, sent >> 20);
    assert_still_serving(&server, &area, "b");
}

/// 5,000 pipelined requests used to open 5,000 files on the server. Past 256 waiting to be sent
/// the peer is cut off.
#[test]
fn pipelined_requests_beyond_the_limit_close_that_connection() {
    let area = Area::new();
    let content = vec![7u8; 64 * 1024];
    write(&area.path("server/p/f.bin"), &content);
    let server = Server::start(&area.server_root(), &[]);
    let mut p = Peer::connect(server.port, 9, "p");
    p.asked_since();
    p.send(&Message::IndexFrom { since: 0 });
    let mut batch = Vec::new();
    for id in 0..5000u64 {
        batch.extend(encode(&Message::Request {
            id,
            path: RelPath::new("f.bin").unwrap(),
            size: content.len() as u64,
            hash: *blake3::hash(&content).as_bytes(),
            base: None,
        }));
    }
    p.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = p.s.write_all(&batch);
    server.agent.wait_log("requests in flight");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.agent.pid())).unwrap().count();
    assert!(fds < 1100, "the server holds {fds} descriptors");
    assert_still_serving(&server, &area, "c");
}

/// A file announced as 2^62 bytes used to be requested and written until the disk filled.
/// A file that does not fit in the free space is not requested; it is reported instead.
#[test]
fn a_file_larger_than_the_free_space_is_not_requested() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let mut p = Peer::connect(server.port, 9, "p");
    p.asked_since();
    let huge = Entry {
        path: RelPath::new("huge.bin").unwrap(),
        kind: Kind::File { size: 1 << 62, hash: [1; 32], mode: 0o644 },
        mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
        version: VersionVector::new().incremented(9),
        origin: "scripted".into(),
    };
    p.index(vec![huge], 1);
    server.agent.wait_log("no room for it (disk full)");
    let asked = p.next(Duration::from_millis(500));
    assert!(!matches!(asked, Some(Message::Request { .. })), "requested anyway: {asked:?}");
    assert_still_serving(&server, &area, "d");
}

/// A slowloris peer: one byte of a valid handshake every half second. The handshake deadline
/// used to restart with each byte, so such connections lived for ever; now it is absolute.
#[test]
fn a_handshake_trickled_a_byte_at_a_time_is_closed_at_its_deadline() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut bytes = mirror_protocol::Preamble::ours().encode().to_vec();
    bytes.extend(encode(&Message::Hello(mirror_protocol::Hello {
        replica: 9,
        host: "slow".repeat(20),
        remote: b"p".to_vec(),
        includes: vec![],
        excludes: vec![],
    })));
    let started = Instant::now();
    let mut closed = false;
    'trickle: for b in bytes {
        if s.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        let next = Instant::now() + Duration::from_millis(500);
        while Instant::now() < next {
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) | Err(_) if started.elapsed() > Duration::from_secs(60) => break 'trickle,
                Ok(0) => {
                    closed = true;
                    break 'trickle;
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
    let took = started.elapsed();
    assert!(closed && took < Duration::from_secs(20), "closed: {closed}, after {took:?}");
    server.agent.wait_log("no complete handshake within");
}

/// Connections in their handshake are limited per address: 40 idle ones from one address, and
/// those past the limit are closed at once; the rest close at the handshake deadline.
#[test]
fn idle_connections_from_one_address_are_limited() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let conns: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    for mut c in conns {
        c.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 64];
        // The server sends its preamble first; a refused connection is closed without it.
        if matches!(c.read(&mut buf), Ok(0)) || c.read(&mut buf).is_ok_and(|n| n == 0) {
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 40 idle connections from one address were refused");
    server.agent.wait_log("refusing a connection from 127.0.0.1");
}
