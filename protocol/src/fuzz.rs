//! Entry points for fuzzing (hidden from the docs): each takes arbitrary bytes and must never
//! panic. The in-repo harness (`protocol/tests/fuzz.rs`) drives them with mutated frames; a
//! coverage-guided fuzzer can call them the same way.

use crate::session::{Connection, Side};
use crate::{Decoder, Message, Preamble, Welcome, encode};

/// Feeds `data` to a decoder in chunks whose sizes come from `data` itself, decoding as it goes.
/// Every message that decodes must encode back to bytes that decode to the same message, and
/// is fed to the session state machines of a server, a client, and an open client with
/// requests under way (a violation ends one; nothing may panic).
pub fn decode_stream(data: &[u8]) {
    let _ = Preamble::decode(data);
    let mut sessions = vec![Some(Connection::new(Side::Server)), Some(Connection::new(Side::Client))];
    if let Ok((mut open, _)) =
        Connection::new(Side::Client).receive(Message::Welcome(Welcome { replica: 1, host: String::new() }))
    {
        for (id, path) in (0..8).zip(std::iter::repeat_with(|| crate::RelPath::new("f"))) {
            if let Ok(path) = path {
                open.sent(&Message::Request { id, path, size: 16 * id, hash: [0; 32], base: None });
            }
        }
        sessions.push(Some(open));
    }
    let mut d = Decoder::new();
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        d.extend(&rest[..n]);
        rest = &rest[n..];
        step = step * 3 % 97 + 1;
        loop {
            match d.decode() {
                Ok(Some(m)) => {
                    round_trip(&m);
                    for s in &mut sessions {
                        *s = s.take().and_then(|c| c.receive(m.clone()).ok()).map(|(next, _)| next);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn round_trip(m: &Message) {
    let bytes = encode(m);
    let mut d = Decoder::new();
    d.extend(&bytes);
    match d.decode() {
        Ok(Some(again)) => assert_eq!(&again, m, "re-encoding changed the message"),
        other => panic!("a decoded message did not decode again after encoding: {other:?}"),
    }
}

/// splitmix64: a small, seedable generator for the randomized tests of every crate (the
/// decoder fuzzer, the model-based sync test). Not for anything that needs real randomness.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with the given percent chance.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// `n` bytes that neither repeat nor compress (a file for the delta and transfer tests).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// One element of `v`, if it has any.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() { None } else { Some(&v[self.below(v.len())]) }
    }
}
