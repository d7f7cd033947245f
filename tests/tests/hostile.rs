//! Bad input from the network: each case closes that connection with a clear error, writes
//! nothing outside the root, and the server keeps serving everyone else.
#![allow(clippy::unwrap_used)]

use mirror_protocol::{
    Entry, Hello, Kind, Message, PROTOCOL_VERSION, Preamble, RelPath, Timestamp, VersionVector, encode,
};
use mirror_tests::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn hello(remote: &str) -> Vec<u8> {
    let mut v = Preamble::ours().encode().to_vec();
    v.extend(encode(&Message::Hello(Hello {
        replica: 7,
        host: "hostile".into(),
        remote: remote.as_bytes().to_vec(),
        includes: vec![],
        excludes: vec![],
    })));
    v
}

/// Reads until the server closes the connection; returns everything it sent.
fn read_to_close(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn file_entry(path: &[u8], content: &[u8]) -> Vec<u8> {
    // Built by hand: RelPath refuses hostile paths, so they must be encoded without it.
    let good = Entry {
        path: RelPath::new("placeholder").unwrap(),
        kind: Kind::File { size: content.len() as u64, hash: *blake3::hash(content).as_bytes(), mode: 0o644 },
        mtime: Timestamp { secs: 1, nanos: 0 },
        version: VersionVector::new().incremented(7),
        origin: "hostile".into(),
    };
    let frame = encode(&Message::Update { entries: vec![good], seq: 1 });
    let payload = &frame[4..];
    let needle = b"\x0bplaceholder";
    let at = payload.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut p = payload[..at].to_vec();
    p.push(path.len() as u8);
    p.extend_from_slice(path);
    p.extend_from_slice(&payload[at + needle.len()..]);
    let mut out = (p.len() as u32).to_be_bytes().to_vec();
    out.extend(p);
    out
}

#[test]
fn garbage_oversized_and_truncated_input_close_only_that_connection() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);

    let mut s = raw(server.port);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_to_close(s);
    server.agent.wait_log("does not speak the mirror-agent protocol");

    let mut s = raw(server.port);
    s.write_all(&Preamble { version: 99 }.encode()).unwrap();
    read_to_close(s);
    server.agent.wait_log(&format!("we speak version {PROTOCOL_VERSION}, the peer speaks version 99"));

    let mut s = raw(server.port);
    let mut bytes = hello("x");
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    s.write_all(&bytes).unwrap();
    read_to_close(s);
    server.agent.wait_log("exceeds the");

    let mut s = raw(server.port);
    let mut bytes = hello("x");
    bytes.extend_from_slice(&[0, 0, 0, 3, 0xee, 0xee, 0xee]);
    s.write_all(&bytes).unwrap();
    read_to_close(s);
    server.agent.wait_log("malformed message");

    // A truncated frame followed by a hang-up.
    let mut s = raw(server.port);
    let mut bytes = hello("x");
    bytes.extend_from_slice(&[0, 0, 1, 0, 3]);
    s.write_all(&bytes).unwrap();
    drop(s);

    assert_still_serving(&server, &area, "a");
}

#[test]
fn hostile_paths_write_nothing_outside_the_root() {
    let area = Area::new();
    let outside = area.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir_all(area.path("server/proj")).unwrap();
    std::os::unix::fs::symlink(&outside, area.path("server/proj/link")).unwrap();
    let server = Server::start(&area.server_root(), &[]);

    for (path, expect) in [
        // Regression (issue 11, item 17): these said "Serde Deserialization Error".
        (&b"../escape.txt"[..], "malformed message: Update: a path is refused: path with a '..' component"),
        (b"/etc/evil", "malformed message: Update: a path is refused: absolute path"),
        (b"a\0b", "malformed message: Update: a path is refused: path containing NUL"),
        (b"link/pwned.txt", "passes through the symlink link"),
    ] {
        let mut s = raw(server.port);
        let mut bytes = hello("proj");
        bytes.extend(file_entry(path, b"evil"));
        s.write_all(&bytes).unwrap();
        read_to_close(s);
        server.agent.wait_log(expect);
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was written through the symlink");
    assert!(!area.path("escape.txt").exists() && !area.dir.path().join("escape.txt").exists());
    assert_still_serving(&server, &area, "b");
}

#[test]
fn a_remote_path_outside_the_root_is_refused() {
    let area = Area::new();
    std::os::unix::fs::symlink("/", area.path("server/to-root")).unwrap();
    let server = Server::start(&area.server_root(), &[]);
    for remote in ["../../etc", "/etc", "to-root/etc"] {
        let mut s = raw(server.port);
        s.write_all(&hello(remote)).unwrap();
        let reply = read_to_close(s);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.contains("outside the server root")
                || text.contains("escapes the server root")
                || text.contains("passes through the symlink to-root"),
            "{remote}: {text}"
        );
    }
    // The real client reports the refusal and exits with an error.
    let port = server.port.to_string();
    let local = area.path("c");
    let mut client = Agent::spawn(
        "client",
        &["client", "-h", "127.0.0.1", "-p", &port, "-l", local.to_str().unwrap(), "-r", "../x", "--insecure"],
    );
    assert_eq!(client.wait_exit(), Some(1));
    assert!(client.log().contains("escapes the server root"), "{}", client.log());
}

#[test]
fn a_client_meeting_another_protocol_version_exits_with_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&Preamble { version: 42 }.encode()).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    });
    let area = Area::new();
    let local = area.path("c");
    let mut client = Agent::spawn(
        "client",
        &["client", "-h", "127.0.0.1", "-p", &port, "-l", local.to_str().unwrap(), "-r", "x", "--insecure"],
    );
    assert_eq!(client.wait_exit(), Some(1));
    let log = client.log();
    assert!(log.contains(&format!("we speak version {PROTOCOL_VERSION}, the peer speaks version 42")), "{log}");
    fake.join().unwrap();
}

/// Session fuzzing: random sequences of well-formed messages (and some garbage) after a real
/// handshake. Whatever a peer sends, the server stays up, serves others, and writes nothing
/// outside its root. Longer: `MIRROR_FUZZ_SESSIONS=2000 cargo test -p mirror-tests --test hostile`.
#[test]
fn random_message_sequences_never_take_the_server_down() {
    use mirror_protocol::*;
    let sessions: u64 = std::env::var("MIRROR_FUZZ_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let area = Area::new();
    let outside = area.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir_all(area.path("server/proj")).unwrap();
    std::os::unix::fs::symlink(&outside, area.path("server/proj/link")).unwrap();
    write(&area.path("server/proj/real.txt"), "real");
    let server = Server::start(&area.server_root(), &[]);
    let mut rng = mirror_protocol::fuzz::Rng(0x2545_f491_4f6c_dd1d);
    let mut rnd = move |n: u64| rng.next_u64() % n.max(1);
    for _ in 0..sessions {
        let mut bytes = hello("proj");
        for _ in 0..rnd(12) + 1 {
            let id = rnd(8);
            let path = RelPath::new(["real.txt", "new.txt", "link/evil", "d/e/f", "link"][rnd(5) as usize]).unwrap();
            let content = b"fuzz".to_vec();
            let kind = match rnd(4) {
                0 => Kind::File { size: rnd(3), hash: *blake3::hash(&content).as_bytes(), mode: 0o644 },
                1 => Kind::Directory,
                2 => Kind::Symlink { target: b"/etc".to_vec() },
                _ => Kind::Deleted,
            };
            let entry = Entry {
                path: path.clone(),
                kind,
                mtime: Timestamp { secs: rnd(1 << 40) as i64, nanos: 0 },
                version: VersionVector::new().with(rnd(4) + 1, rnd(100) + 1),
                origin: "fuzz".into(),
            };
            let msg = match rnd(10) {
                0 => Message::IndexBatch { entries: vec![entry], last: rnd(2) == 0, seq: rnd(1000) },
                1 | 2 => Message::Update { entries: vec![entry], seq: rnd(1000) },
                3 => Message::Request { id, path, size: rnd(10), hash: [0; 32], base: None },
                4 => Message::Data { id, bytes: content },
                5 => Message::DataEnd { id, size: rnd(8), hash: *blake3::hash(b"fuzz").as_bytes() },
                6 => Message::DataAbort { id, reason: "fuzz".into() },
                7 => Message::Ping,
                8 => Message::Welcome(Welcome { replica: 1, host: "x".into() }),
                _ => Message::Goodbye { reason: "fuzz".into() },
            };
            bytes.extend(encode(&msg));
            if rnd(15) == 0 {
                bytes.extend((0..rnd(20)).map(|_| rnd(256) as u8));
            }
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", server.port)) else { continue };
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let _ = s.write_all(&bytes);
        let mut sink = [0u8; 65536];
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was written through the symlink");
    // (A peer may legitimately replace `link` itself with a newer version; never write through it.)
    assert_still_serving(&server, &area, "after-fuzz");
}

/// Reads frames from `s` until a `Request` arrives; returns its id.
fn next_request(s: &mut TcpStream) -> u64 {
    use mirror_protocol::{Decoder, Message, PREAMBLE_LEN};
    let mut d = Decoder::new();
    let mut buf = [0u8; 65536];
    let mut preamble_done = false;
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed before asking for the file");
        d.extend(&buf[..n]);
        if !preamble_done {
            if d.take_raw(PREAMBLE_LEN).is_none() {
                continue;
            }
            preamble_done = true;
        }
        while let Ok(Some(m)) = d.decode() {
            if let Message::Request { id, .. } = m {
                return id;
            }
        }
    }
}

#[test]
fn a_peer_whose_bytes_do_not_match_its_claimed_size_is_cut_off() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    for (case, expect) in
        [("more bytes than declared", "peer sent more than the 4 bytes"), ("a false total", "claimed 3 bytes")]
    {
        let mut s = raw(server.port);
        let mut bytes = hello("proj");
        bytes.extend(file_entry(b"f.txt", b"abcd"));
        s.write_all(&bytes).unwrap();
        let id = next_request(&mut s);
        let reply = if case == "more bytes than declared" {
            encode(&Message::Data { id, bytes: b"abcdefgh".to_vec() })
        } else {
            let mut v = encode(&Message::Data { id, bytes: b"abcd".to_vec() });
            v.extend(encode(&Message::DataEnd { id, size: 3, hash: *blake3::hash(b"abcd").as_bytes() }));
            v
        };
        s.write_all(&reply).unwrap();
        read_to_close(s);
        server.agent.wait_log(expect);
        assert!(!area.path("server/proj/f.txt").exists(), "{case}: a file was written");
    }
    assert_still_serving(&server, &area, "c");
}

/// Regression (issue 11, item 16): a host name or a reason with a newline forged log records
/// (under journald, `<0>` even gave them the emergency priority).
#[test]
fn peer_strings_with_newlines_cannot_forge_log_records() {
    let area = Area::new();
    fs::create_dir_all(area.path("server/proj")).unwrap();
    let server = Server::start_env(&area.server_root(), "127.0.0.1:0", &[], &[("JOURNAL_STREAM", "8:1")]);
    let mut s = raw(server.port);
    let mut v = Preamble::ours().encode().to_vec();
    v.extend(encode(&Message::Hello(Hello {
        replica: 9,
        host: "x\n<0>FORGED-HOST".into(),
        remote: b"proj".to_vec(),
        includes: vec![],
        excludes: vec![],
    })));
    v.extend(encode(&Message::DataAbort { id: 1, reason: "r\n<0>FORGED-ABORT".into() }));
    v.extend(encode(&Message::Goodbye { reason: "bye\r\n<0>FORGED-BYE\u{1b}[2J".into() }));
    s.write_all(&v).unwrap();
    read_to_close(s);
    let log = server.agent.wait_log("FORGED-BYE");
    assert!(log.contains("x\\n<0>FORGED-HOST"), "{log}");
    for line in log.lines() {
        assert!(!line.starts_with("<0>"), "forged record: {line:?}\n{log}");
        assert!(["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)), "not a record: {line:?}\n{log}");
        assert!(!line.contains('\u{1b}'), "raw escape: {line:?}");
    }
    // The same peer on another connection, rejected during the handshake.
    let mut s = raw(server.port);
    let mut v = Preamble::ours().encode().to_vec();
    v.extend(encode(&Message::Hello(Hello {
        replica: 9,
        host: "y\n<0>FORGED-REFUSED".into(),
        remote: b"../nope".to_vec(),
        includes: vec![],
        excludes: vec![],
    })));
    s.write_all(&v).unwrap();
    read_to_close(s);
    let log = server.agent.wait_log("FORGED-REFUSED");
    assert!(!log.lines().any(|l| l.starts_with("<0>")), "{log}");
}

/// Regression (issue 11, item 17): a server refusing a peer's protocol version closed without a
/// word, so a client that accepted the server's version retried silently. Now the server sends,
/// after its preamble, a `Goodbye` naming both versions (PROTOCOL.md, "Version mismatch").
#[test]
fn a_server_refusing_a_version_says_why_in_a_goodbye() {
    use mirror_protocol::{Decoder, PREAMBLE_LEN};
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let mut s = raw(server.port);
    s.write_all(&Preamble { version: 99 }.encode()).unwrap();
    let reply = read_to_close(s);
    assert_eq!(Preamble::decode(&reply[..PREAMBLE_LEN]).unwrap(), Some(Preamble::ours()));
    let mut d = Decoder::new();
    d.extend(&reply[PREAMBLE_LEN..]);
    match d.decode().unwrap() {
        Some(Message::Goodbye { reason }) => {
            assert!(
                reason.contains(&format!("we speak version {PROTOCOL_VERSION}, the peer speaks version 99")),
                "{reason}"
            )
        }
        other => panic!("expected a Goodbye, got {other:?}"),
    }
    assert_still_serving(&server, &area, "v");
}

/// Issue 13, item 2: a small file may come with its entry (`Push`, then the `Update`): the
/// server installs it with no `Request`, and only if the pushed bytes hash to what they claim.
#[test]
fn a_pushed_file_needs_no_request_and_a_false_push_is_cut_off() {
    use mirror_protocol::{Decoder, PREAMBLE_LEN};
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content = b"pushed with its entry";
    let hash = *blake3::hash(content).as_bytes();
    let mut s = raw(server.port);
    let mut bytes = hello("proj");
    bytes.extend(encode(&Message::Push { hash, bytes: content.to_vec() }));
    bytes.extend(file_entry(b"f.txt", content));
    s.write_all(&bytes).unwrap();
    // Everything the server says until the file is there.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let (mut d, mut said, mut buf) = (Decoder::new(), Vec::new(), [0u8; 65536]);
    let mut preamble_done = false;
    wait_until("the pushed file", || {
        if let Ok(n) = s.read(&mut buf) {
            d.extend(&buf[..n]);
        }
        preamble_done = preamble_done || d.take_raw(PREAMBLE_LEN).is_some();
        while preamble_done && let Ok(Some(m)) = d.decode() {
            said.push(m.name());
        }
        (fs::read(area.path("server/proj/f.txt")).ok().as_deref() == Some(&content[..])).then_some(())
    });
    assert!(!said.contains(&"Request"), "the server asked for a file it was pushed: {said:?}");
    drop(s);
    // Bytes that are not what the push claims: the connection is cut, nothing is written.
    let mut s = raw(server.port);
    let mut bytes = hello("proj");
    bytes.extend(encode(&Message::Push { hash, bytes: b"pushed with its entrY".to_vec() }));
    bytes.extend(file_entry(b"g.txt", content));
    s.write_all(&bytes).unwrap();
    read_to_close(s);
    server.agent.wait_log("the bytes the peer pushed do not match their hash");
    assert!(!area.path("server/proj/g.txt").exists(), "a false push was written");
    assert_still_serving(&server, &area, "c");
}
