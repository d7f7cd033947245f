//! A scripted peer: the protocol spoken by hand over one plaintext TCP connection, so a test
//! can play races and hostile sequences in a fixed order.
#![allow(clippy::unwrap_used)]

use mirror_protocol::{Decoder, Entry, Hello, Message, Preamble, ReplicaId, encode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A hand-driven client: one TCP connection, the preamble and `Hello` sent, `Welcome` read.
#[derive(Debug)]
pub struct Peer {
    pub s: TcpStream,
    pub dec: Decoder,
}

impl Peer {
    /// Connects to `port`, sends the preamble and a `Hello` for `remote`, and reads `Welcome`.
    pub fn connect(port: u16, replica: ReplicaId, remote: &str) -> Peer {
        let mut p = Self::hello(port, replica, remote, vec![], vec![]);
        match p.next(Duration::from_secs(10)) {
            Some(Message::Welcome(_)) => p,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Sends the preamble and a `Hello`, and reads the server's preamble; nothing more.
    pub fn hello(port: u16, replica: ReplicaId, remote: &str, includes: Vec<String>, excludes: Vec<String>) -> Peer {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut p = Peer { s, dec: Decoder::new() };
        let mut first = Preamble::ours().encode().to_vec();
        first.extend(encode(&Message::Hello(Hello {
            replica,
            host: format!("scripted-{replica}"),
            remote: remote.as_bytes().to_vec(),
            includes,
            excludes,
        })));
        p.s.write_all(&first).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.dec.buffered() < mirror_protocol::PREAMBLE_LEN {
            assert!(Instant::now() < deadline, "no preamble from the server");
            p.fill();
        }
        p.dec.take_raw(mirror_protocol::PREAMBLE_LEN).unwrap();
        p
    }

    pub fn fill(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.dec.extend(&buf[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => true,
            Err(_) => false,
        }
    }

    /// The next message other than a heartbeat, or `None` if the connection closed or nothing
    /// came within `within`.
    pub fn next(&mut self, within: Duration) -> Option<Message> {
        let deadline = Instant::now() + within;
        loop {
            match self.dec.decode().unwrap() {
                Some(Message::Ping) => self.send(&Message::Pong),
                Some(Message::Pong) => {}
                Some(m) => return Some(m),
                None => {
                    if Instant::now() >= deadline || !self.fill() {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits for a message `pick` accepts, answering heartbeats and skipping the rest.
    pub fn expect<T>(&mut self, what: &str, within: Duration, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) => {
                    if let Some(t) = pick(&m) {
                        return t;
                    }
                }
                None => panic!("no {what} within {within:?}"),
            }
        }
    }

    pub fn send(&mut self, m: &Message) {
        let _ = self.s.write_all(&encode(m));
    }

    /// The server's `IndexFrom`: what it asks of us.
    pub fn asked_since(&mut self) -> u64 {
        self.expect("IndexFrom", Duration::from_secs(10), |m| match m {
            Message::IndexFrom { since } => Some(*since),
            _ => None,
        })
    }

    /// Offers `entries` as our whole index, with our counter at `seq`.
    pub fn index(&mut self, entries: Vec<Entry>, seq: u64) {
        self.send(&Message::IndexBatch { entries, last: true, seq });
    }

    /// Waits for the server to request `path`; returns the request id.
    pub fn requested(&mut self, path: &str, within: Duration) -> u64 {
        self.expect(&format!("request for {path}"), within, |m| match m {
            Message::Request { id, path: p, .. } if p.as_bytes() == path.as_bytes() => Some(*id),
            _ => None,
        })
    }

    pub fn serve(&mut self, id: u64, content: &[u8]) {
        self.send(&Message::Data { id, bytes: content.to_vec() });
        self.send(&Message::DataEnd { id, size: content.len() as u64, hash: *blake3::hash(content).as_bytes() });
    }

    /// Whether the server closes this connection within `within` (reading and dropping the rest).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.dec = Decoder::new();
            if !self.fill() {
                return true;
            }
        }
        false
    }
}
